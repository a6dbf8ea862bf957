//! The channel's wire format, as pure functions over bytes: no system call, no descriptor.
//!
//! [`decode`] takes the bytes one `recvmsg` returned and the number of descriptors that came
//! with them, and either names the message or says exactly what is wrong. Keeping it apart from
//! the I/O is what lets it be fuzzed (`fuzz/fuzz_targets/frame.rs`) and documented on its own
//! (`docs/channel-protocol.md`), as sozu and quinn separate their parsers from their sockets.
//!
//! ```text
//!  0        2          4                8
//!  +--------+----------+----------------+-----------------------+
//!  |  kind  | fd_count |  payload len   |  payload (len bytes)  |   + fd_count fds (SCM_RIGHTS)
//!  +--------+----------+----------------+-----------------------+
//!   u16 LE    u16 LE      u32 LE
//! ```

use std::fmt;
use std::io;
use std::ops::RangeInclusive;

/// The header's length: kind (u16), fd_count (u16), payload length (u32), little-endian.
pub const HEADER_LEN: usize = 8;
/// The largest frame, header included: 64 KiB.
pub const MAX_FRAME: usize = 64 * 1024;
/// The largest payload, and so the largest user message ([`Message::User`]).
pub const MAX_MESSAGE: usize = MAX_FRAME - HEADER_LEN;
/// The most descriptors a frame may carry (a batch of handed-off connections, or a user
/// message's descriptors).
pub const MAX_FDS: usize = 64;

/// One message on a channel.
///
/// A worker has two channels to the primary: the **control** channel (lifecycle, heartbeats,
/// user messages, flow control) and, in the modes where the primary hands connections out, the
/// **lane** (handoffs one way, acknowledgements the other). See `docs/channel-protocol.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Lane, primary → worker: connections to serve, one per attached descriptor. `seq`
    /// numbers the first of them on this lane (0, 1, 2...), the others follow it.
    Handoff {
        /// The first handoff's sequence number.
        seq: u64,
    },
    /// Lane, worker → primary: the worker has received `received` connections on this lane in
    /// all (a running total, so that a lost or late acknowledgement is made good by the next).
    /// The primary uses it for flow control only: its own copy of each connection was closed
    /// when it sent it.
    Ack {
        /// Connections received on this lane so far.
        received: u64,
    },
    /// Worker → primary: the worker process is running.
    Online,
    /// Worker → primary: the worker is accepting connections.
    Listening,
    /// Worker → primary: this worker is about to exit on its own (Node's "suicide" message);
    /// fork its replacement now, before it goes.
    Retiring,
    /// Primary → worker: stop taking connections, finish the open ones, then exit.
    Stop,
    /// Primary → worker: are you alive? (The heartbeat.)
    Ping,
    /// Worker → primary: the answer to a `Ping`.
    Pong,
    /// Either way: application bytes, at most [`MAX_MESSAGE`], with up to [`MAX_FDS`]
    /// descriptors.
    User(Vec<u8>),
    /// Worker → primary: the worker is out of descriptors and has stopped reading its lane;
    /// take back what is queued in it.
    Pressure,
    /// Primary → worker: everything queued in the lane was taken back; `Resume` when ready.
    Reclaimed,
    /// Worker → primary: the lane may be used again.
    Resume,
    /// Worker → primary: something the primary's program should know (a degraded accept loop,
    /// a bad frame), as UTF-8 text. The library never prints; the primary reports it as an
    /// event.
    Warning(String),
}

/// The kinds, as numbered on the wire.
mod kind {
    pub const HANDOFF: u16 = 1;
    pub const ACK: u16 = 2;
    pub const ONLINE: u16 = 3;
    pub const LISTENING: u16 = 4;
    pub const RETIRING: u16 = 5;
    pub const STOP: u16 = 6;
    pub const PING: u16 = 7;
    pub const PONG: u16 = 8;
    pub const USER: u16 = 9;
    pub const PRESSURE: u16 = 10;
    pub const RECLAIMED: u16 = 11;
    pub const RESUME: u16 = 12;
    pub const WARNING: u16 = 13;
}

impl Message {
    /// The frame kind on the wire.
    pub fn kind(&self) -> u16 {
        match self {
            Message::Handoff { .. } => kind::HANDOFF,
            Message::Ack { .. } => kind::ACK,
            Message::Online => kind::ONLINE,
            Message::Listening => kind::LISTENING,
            Message::Retiring => kind::RETIRING,
            Message::Stop => kind::STOP,
            Message::Ping => kind::PING,
            Message::Pong => kind::PONG,
            Message::User(_) => kind::USER,
            Message::Pressure => kind::PRESSURE,
            Message::Reclaimed => kind::RECLAIMED,
            Message::Resume => kind::RESUME,
            Message::Warning(_) => kind::WARNING,
        }
    }

    /// How many descriptors a frame of `kind` may carry, or `None` for an unknown kind.
    pub fn fds_allowed(kind: u16) -> Option<RangeInclusive<usize>> {
        match kind {
            kind::HANDOFF => Some(1..=MAX_FDS),
            kind::USER => Some(0..=MAX_FDS),
            kind::ACK..=kind::WARNING => Some(0..=0),
            _ => None,
        }
    }

    /// The payload bytes: fixed-size ones are written into `scratch`, variable ones borrowed.
    pub fn payload<'a>(&'a self, scratch: &'a mut [u8; 8]) -> &'a [u8] {
        match self {
            Message::Handoff { seq: n } | Message::Ack { received: n } => {
                *scratch = n.to_le_bytes();
                &scratch[..]
            }
            Message::User(bytes) => bytes,
            Message::Warning(text) => text.as_bytes(),
            Message::Online
            | Message::Listening
            | Message::Retiring
            | Message::Stop
            | Message::Ping
            | Message::Pong
            | Message::Pressure
            | Message::Reclaimed
            | Message::Resume => &[],
        }
    }
}

/// Why a frame could not be sent or received. Any descriptors that arrived with a bad frame
/// have already been closed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelError {
    /// The peer closed its end (end of file): the other process exited or closed the channel.
    Closed,
    /// `MSG_TRUNC`: the frame was longer than [`MAX_FRAME`]; its tail was discarded by the kernel.
    Truncated,
    /// `MSG_CTRUNC`: descriptors were sent but could not all be received — more than
    /// [`MAX_FDS`], or the receiver hit its descriptor limit (`EMFILE`). `kind` is the frame's
    /// kind when its header could be read.
    ControlTruncated {
        /// The frame kind, if the header was intact.
        kind: Option<u16>,
    },
    /// The header names a kind herd does not know.
    UnknownKind(u16),
    /// A frame (or user message) larger than [`MAX_FRAME`] was about to be sent, or a header
    /// declared one.
    Oversized {
        /// The frame's length in bytes.
        len: usize,
    },
    /// The frame is shorter than its header, its length field disagrees with its size, or its
    /// payload does not fit its kind.
    Malformed {
        /// The frame kind (0 if the header itself was short).
        kind: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// The frame carried a number of descriptors its kind does not allow.
    WrongFdCount {
        /// The frame kind.
        kind: u16,
        /// How many its kind allows (the smallest and the largest).
        allowed: (usize, usize),
        /// How many arrived.
        got: usize,
    },
    /// The send or receive system call failed.
    Io(io::Error),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Closed => write!(f, "channel closed by peer"),
            ChannelError::Truncated => write!(f, "recvmsg: frame truncated (MSG_TRUNC): longer than {MAX_FRAME} bytes"),
            ChannelError::ControlTruncated { kind } => write!(
                f,
                "recvmsg: descriptors lost (MSG_CTRUNC) in frame kind {}: more than {MAX_FDS} sent, or descriptor limit reached",
                kind.map_or("?".to_owned(), |k| k.to_string())
            ),
            ChannelError::UnknownKind(k) => write!(f, "channel frame of unknown kind {k}"),
            ChannelError::Oversized { len } => {
                write!(f, "channel frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")
            }
            ChannelError::Malformed { kind, why } => write!(f, "malformed channel frame (kind {kind}): {why}"),
            ChannelError::WrongFdCount { kind, allowed: (lo, hi), got } if lo == hi => {
                write!(f, "channel frame kind {kind} carried {got} descriptors, expected {lo}")
            }
            ChannelError::WrongFdCount { kind, allowed: (lo, hi), got } => {
                write!(f, "channel frame kind {kind} carried {got} descriptors, expected {lo} to {hi}")
            }
            ChannelError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChannelError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ChannelError> for io::Error {
    fn from(e: ChannelError) -> io::Error {
        match e {
            ChannelError::Io(e) => e,
            ChannelError::Closed => io::Error::new(io::ErrorKind::ConnectionReset, e),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Checks that `kind` may carry `fds` descriptors and `payload_len` bytes, and writes its
/// header.
///
/// # Errors
/// [`ChannelError::WrongFdCount`], [`ChannelError::Oversized`].
pub fn encode_header(kind: u16, fds: usize, payload_len: usize) -> Result<[u8; HEADER_LEN], ChannelError> {
    let allowed = Message::fds_allowed(kind).ok_or(ChannelError::UnknownKind(kind))?;
    if !allowed.contains(&fds) {
        return Err(ChannelError::WrongFdCount { kind, allowed: (*allowed.start(), *allowed.end()), got: fds });
    }
    if payload_len > MAX_MESSAGE {
        return Err(ChannelError::Oversized { len: HEADER_LEN + payload_len });
    }
    let mut header = [0u8; HEADER_LEN];
    header[0..2].copy_from_slice(&kind.to_le_bytes());
    header[2..4].copy_from_slice(&(fds as u16).to_le_bytes());
    header[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    Ok(header)
}

/// The kind a frame's header names, if the frame is long enough to have one.
pub fn peek_kind(frame: &[u8]) -> Option<u16> {
    (frame.len() >= HEADER_LEN).then(|| u16::from_le_bytes([frame[0], frame[1]]))
}

/// Decodes one frame: the bytes one `recvmsg` returned, which carried `fds` descriptors.
///
/// # Errors
/// Every way a frame can be wrong, each its own [`ChannelError`] variant: short of a header,
/// unknown kind, a length field that disagrees with the frame, a payload that does not fit its
/// kind, a descriptor count its kind does not allow (or that disagrees with the header).
pub fn decode(frame: &[u8], fds: usize) -> Result<Message, ChannelError> {
    if frame.len() < HEADER_LEN {
        return Err(ChannelError::Malformed { kind: 0, why: "shorter than the 8-byte header" });
    }
    let kind = u16::from_le_bytes([frame[0], frame[1]]);
    let fd_count = u16::from_le_bytes([frame[2], frame[3]]) as usize;
    let len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    let Some(allowed) = Message::fds_allowed(kind) else {
        return Err(ChannelError::UnknownKind(kind));
    };
    if len > MAX_MESSAGE {
        return Err(ChannelError::Oversized { len: len + HEADER_LEN });
    }
    let payload = &frame[HEADER_LEN..];
    if len != payload.len() {
        return Err(ChannelError::Malformed { kind, why: "length field disagrees with the frame size" });
    }
    if !allowed.contains(&fds) {
        return Err(ChannelError::WrongFdCount { kind, allowed: (*allowed.start(), *allowed.end()), got: fds });
    }
    if fd_count != fds {
        return Err(ChannelError::Malformed { kind, why: "fd_count field disagrees with the descriptors received" });
    }
    let malformed = |why: &'static str| ChannelError::Malformed { kind, why };
    let u64_payload = || -> Result<u64, ChannelError> {
        let bytes: [u8; 8] = payload.try_into().map_err(|_| malformed("wrong payload length for its kind"))?;
        Ok(u64::from_le_bytes(bytes))
    };
    let empty =
        |m: Message| if payload.is_empty() { Ok(m) } else { Err(malformed("wrong payload length for its kind")) };
    match kind {
        kind::HANDOFF => Ok(Message::Handoff { seq: u64_payload()? }),
        kind::ACK => Ok(Message::Ack { received: u64_payload()? }),
        kind::ONLINE => empty(Message::Online),
        kind::LISTENING => empty(Message::Listening),
        kind::RETIRING => empty(Message::Retiring),
        kind::STOP => empty(Message::Stop),
        kind::PING => empty(Message::Ping),
        kind::PONG => empty(Message::Pong),
        kind::USER => Ok(Message::User(payload.to_vec())),
        kind::PRESSURE => empty(Message::Pressure),
        kind::RECLAIMED => empty(Message::Reclaimed),
        kind::RESUME => empty(Message::Resume),
        kind::WARNING => std::str::from_utf8(payload)
            .map(|s| Message::Warning(s.to_owned()))
            .map_err(|_| malformed("warning text is not UTF-8")),
        _ => Err(ChannelError::UnknownKind(kind)),
    }
}

/// Encodes `message` as the bytes of one frame (header and payload), for tests and fuzzing;
/// the channel itself gathers header and payload without copying them.
pub fn encode(message: &Message, fds: usize) -> Result<Vec<u8>, ChannelError> {
    let mut scratch = [0u8; 8];
    let payload = message.payload(&mut scratch);
    let header = encode_header(message.kind(), fds, payload.len())?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_message() -> Vec<(Message, usize)> {
        vec![
            (Message::Handoff { seq: 0 }, 1),
            (Message::Handoff { seq: u64::MAX }, MAX_FDS),
            (Message::Ack { received: 42 }, 0),
            (Message::Online, 0),
            (Message::Listening, 0),
            (Message::Retiring, 0),
            (Message::Stop, 0),
            (Message::Ping, 0),
            (Message::Pong, 0),
            (Message::User(vec![]), 0),
            (Message::User(vec![7; MAX_MESSAGE]), 3),
            (Message::Pressure, 0),
            (Message::Reclaimed, 0),
            (Message::Resume, 0),
            (Message::Warning("accept4: EMFILE".into()), 0),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for (m, fds) in every_message() {
            let bytes = encode(&m, fds).unwrap();
            assert_eq!(decode(&bytes, fds).unwrap(), m);
            assert_eq!(peek_kind(&bytes), Some(m.kind()));
        }
    }

    #[test]
    fn a_frame_with_the_wrong_descriptor_count_is_refused_both_ways() {
        assert!(matches!(encode(&Message::Handoff { seq: 1 }, 0), Err(ChannelError::WrongFdCount { .. })));
        assert!(matches!(encode(&Message::Ping, 1), Err(ChannelError::WrongFdCount { .. })));
        let bytes = encode(&Message::Handoff { seq: 1 }, 2).unwrap();
        assert!(matches!(decode(&bytes, 1), Err(ChannelError::Malformed { .. })), "fd_count says 2, 1 arrived");
        assert!(matches!(decode(&bytes, 0), Err(ChannelError::WrongFdCount { .. })));
    }

    #[test]
    fn truncations_and_garbage_are_errors_not_panics() {
        for (m, fds) in every_message() {
            let bytes = encode(&m, fds).unwrap();
            for cut in 0..bytes.len().min(40) {
                assert!(decode(&bytes[..cut], fds).is_err(), "{m:?} cut at {cut}");
            }
        }
        assert!(matches!(decode(&[0xff; 8], 0), Err(ChannelError::UnknownKind(0xffff))));
        let mut bad_utf8 = encode(&Message::Warning("ab".into()), 0).unwrap();
        bad_utf8[HEADER_LEN] = 0xff;
        assert!(matches!(decode(&bad_utf8, 0), Err(ChannelError::Malformed { .. })));
    }
}

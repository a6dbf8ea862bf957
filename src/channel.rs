//! The channel between the primary and one worker: framed messages with optional attached
//! descriptors over an `AF_UNIX` `SOCK_SEQPACKET` socket pair.
//!
//! Like nginx's channel (a tiny fixed struct `{command, pid, slot, fd}`) and Node's IPC pipe
//! (JSON plus a handle), each frame is a small header and a payload, and a frame that carries a
//! connection carries its descriptor with it through `SCM_RIGHTS` (see [`unix(7)`]).
//!
//! ```text
//!  0        2          4                8
//!  +--------+----------+----------------+-----------------------+
//!  |  kind  | fd_count |  payload len   |  payload (len bytes)  |   + fd_count fds (SCM_RIGHTS)
//!  +--------+----------+----------------+-----------------------+
//!   u16 LE    u16 LE      u32 LE
//! ```
//!
//! Because the socket is `SOCK_SEQPACKET`, one `recvmsg` returns exactly one frame and the
//! frame's descriptors, so there is no reassembly and no way for descriptors to arrive with the
//! wrong frame. What can still go wrong is checked on every receive and reported as a
//! [`ChannelError`] naming the cause; descriptors that did arrive with a bad frame are closed
//! before the error is returned, never leaked.
//!
//! [`unix(7)`]: https://man7.org/linux/man-pages/man7/unix.7.html

use std::fmt;
use std::io;
use std::mem::offset_of;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::fdpass;

/// The largest frame, header included: 64 KiB.
pub const MAX_FRAME: usize = 64 * 1024;
/// The largest user message ([`Message::User`]) payload: [`MAX_FRAME`] minus the header.
pub const MAX_MESSAGE: usize = MAX_FRAME - HEADER_LEN;
/// The most descriptors a frame may carry.
pub const MAX_FDS: usize = fdpass::MAX_FDS;

/// The frame header, as laid out on the wire (little-endian).
#[repr(C)]
struct Header {
    kind: u16,
    fd_count: u16,
    len: u32,
}

const HEADER_LEN: usize = std::mem::size_of::<Header>();

/// One message on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Primary → worker: a connection (the attached descriptor) for the worker to serve;
    /// `seq` numbers handoffs to this worker.
    Handoff {
        /// The handoff's sequence number.
        seq: u64,
    },
    /// Worker → primary: the `count` oldest unsettled handoffs are now the worker's; the primary
    /// may close its copies.
    Ack {
        /// How many handoffs this settles.
        count: u32,
    },
    /// Worker → primary: the worker could not take the `count` oldest unsettled handoffs (the
    /// descriptor could not be installed, e.g. `EMFILE`); the primary gives them to another worker.
    Reject {
        /// How many handoffs this returns.
        count: u32,
    },
    /// Worker → primary: the worker process is running.
    Online,
    /// Worker → primary: the worker is accepting connections.
    Listening,
    /// Primary → worker: stop accepting, finish the open connections, then exit.
    Disconnect,
    /// Either way: application bytes, at most [`MAX_MESSAGE`].
    User(Vec<u8>),
    /// Primary → worker: are you alive? (The heartbeat.)
    Ping,
    /// Worker → primary: the answer to a `Ping`.
    Pong,
    /// Worker → primary: this worker is about to exit on its own (Node's "suicide" message);
    /// fork its replacement now, before it goes.
    Retiring,
}

impl Message {
    fn kind(&self) -> u16 {
        match self {
            Message::Handoff { .. } => 1,
            Message::Ack { .. } => 2,
            Message::Reject { .. } => 3,
            Message::Online => 4,
            Message::Listening => 5,
            Message::Disconnect => 6,
            Message::User(_) => 7,
            Message::Ping => 8,
            Message::Pong => 9,
            Message::Retiring => 10,
        }
    }

    /// How many descriptors a frame of `kind` must carry, or `None` for an unknown kind.
    fn fds_for_kind(kind: u16) -> Option<usize> {
        match kind {
            1 => Some(1),
            2..=10 => Some(0),
            _ => None,
        }
    }

    /// The payload bytes: fixed-size ones are written into `scratch`, a user message is borrowed.
    fn payload<'a>(&'a self, scratch: &'a mut [u8; 8]) -> &'a [u8] {
        match self {
            Message::Handoff { seq } => {
                *scratch = seq.to_le_bytes();
                &scratch[..]
            }
            Message::Ack { count } | Message::Reject { count } => {
                scratch[..4].copy_from_slice(&count.to_le_bytes());
                &scratch[..4]
            }
            Message::User(bytes) => bytes,
            Message::Online
            | Message::Listening
            | Message::Disconnect
            | Message::Ping
            | Message::Pong
            | Message::Retiring => &[],
        }
    }

    fn decode(kind: u16, payload: &[u8]) -> Result<Message, ChannelError> {
        let malformed = |why: &'static str| ChannelError::Malformed { kind, why };
        let fixed =
            |n: usize| if payload.len() == n { Ok(()) } else { Err(malformed("wrong payload length for its kind")) };
        Ok(match kind {
            1 => {
                fixed(8)?;
                Message::Handoff { seq: u64::from_le_bytes(payload.try_into().unwrap()) }
            }
            2 | 3 => {
                fixed(4)?;
                let count = u32::from_le_bytes(payload.try_into().unwrap());
                if kind == 2 { Message::Ack { count } } else { Message::Reject { count } }
            }
            4..=6 => {
                fixed(0)?;
                [Message::Online, Message::Listening, Message::Disconnect][kind as usize - 4].clone()
            }
            7 => Message::User(payload.to_vec()),
            8..=10 => {
                fixed(0)?;
                [Message::Ping, Message::Pong, Message::Retiring][kind as usize - 8].clone()
            }
            _ => return Err(ChannelError::UnknownKind(kind)),
        })
    }
}

/// Why a frame could not be sent or received. Any descriptors that arrived with a bad frame
/// have already been closed.
#[derive(Debug)]
pub enum ChannelError {
    /// The peer closed its end (end of file): the other process exited or closed the channel.
    Closed,
    /// `MSG_TRUNC`: the frame was longer than [`MAX_FRAME`]; its tail was discarded by the kernel.
    Truncated,
    /// `MSG_CTRUNC`: descriptors were sent but could not all be received — more than
    /// [`MAX_FDS`], or the receiver hit its descriptor limit (`EMFILE`). `kind` is the frame's
    /// kind when its header could be read, so that a lost handoff can be rejected.
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
    /// The frame carried a different number of descriptors than its kind requires.
    WrongFdCount {
        /// The frame kind.
        kind: u16,
        /// How many its kind requires.
        expected: usize,
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
            ChannelError::WrongFdCount { kind, expected, got } => {
                write!(f, "channel frame kind {kind} carried {got} descriptors, expected {expected}")
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

/// A received frame: the message and the descriptors that came with it.
#[derive(Debug)]
pub struct Received {
    /// The decoded message.
    pub message: Message,
    /// Its descriptors (exactly as many as the message kind requires), owned and close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// One end of a primary ↔ worker channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    /// The receive buffer, [`MAX_FRAME`] bytes, allocated on the first receive and reused, so
    /// the hot path neither allocates nor zero-fills 64 KiB per frame.
    buf: Vec<u8>,
}

impl Channel {
    /// Creates a connected pair (`socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`).
    ///
    /// # Errors
    /// The `socketpair` failure, e.g. `EMFILE`.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = fdpass::seqpacket_pair()?;
        Ok((Channel::from(a), Channel::from(b)))
    }

    /// Sends `message` with `fds` attached, blocking if the peer's receive buffer is full.
    ///
    /// # Errors
    /// [`ChannelError::Oversized`] for a user message over [`MAX_MESSAGE`],
    /// [`ChannelError::WrongFdCount`] if `fds` does not match the kind,
    /// [`ChannelError::Closed`] if the peer is gone (`EPIPE`, `ECONNRESET`),
    /// [`ChannelError::Io`] otherwise.
    pub fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_inner(message, fds, false)
    }

    /// Like [`send`](Self::send), but fails with an `Io` error of kind `WouldBlock` instead of
    /// waiting when the peer's receive buffer is full (`MSG_DONTWAIT`).
    pub fn try_send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_inner(message, fds, true)
    }

    /// Sends `bytes` as a [`Message::User`] without copying them into a `Message` first.
    ///
    /// # Errors
    /// As [`send`](Self::send); [`ChannelError::Oversized`] over [`MAX_MESSAGE`] bytes.
    pub fn send_user(&self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.send_frame(Message::User(Vec::new()).kind(), bytes, &[], false)
    }

    fn send_inner(&self, message: &Message, fds: &[BorrowedFd<'_>], nonblocking: bool) -> Result<(), ChannelError> {
        let mut scratch = [0u8; 8];
        self.send_frame(message.kind(), message.payload(&mut scratch), fds, nonblocking)
    }

    /// Writes the header on the stack and sends it and `payload` as one frame: no allocation,
    /// since this runs for every handoff and every ack.
    fn send_frame(
        &self,
        kind: u16,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        nonblocking: bool,
    ) -> Result<(), ChannelError> {
        let expected = Message::fds_for_kind(kind).unwrap_or(0);
        if fds.len() != expected {
            return Err(ChannelError::WrongFdCount { kind, expected, got: fds.len() });
        }
        if payload.len() > MAX_MESSAGE {
            return Err(ChannelError::Oversized { len: HEADER_LEN + payload.len() });
        }
        let mut header = [0u8; HEADER_LEN];
        header[offset_of!(Header, kind)..][..2].copy_from_slice(&kind.to_le_bytes());
        header[offset_of!(Header, fd_count)..][..2].copy_from_slice(&(fds.len() as u16).to_le_bytes());
        header[offset_of!(Header, len)..][..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        match fdpass::send_with_fds(self.fd.as_fd(), &[&header, payload], fds, nonblocking) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => Err(ChannelError::Closed),
            // A full peer (`try_send`) is the caller's to handle, not an error worth a message.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(ChannelError::Io(e)),
            Err(e) => Err(ChannelError::Io(crate::sys::context(e, "sendmsg on the channel"))),
        }
    }

    /// Receives one frame, blocking until one arrives.
    ///
    /// # Errors
    /// Every variant of [`ChannelError`] but `Oversized`-on-send; see there. Descriptors that
    /// arrived with a bad frame are closed before returning.
    pub fn recv(&mut self) -> Result<Received, ChannelError> {
        self.recv_inner(false)
    }

    /// Receives one frame if one is waiting; `Ok(None)` if none is (`MSG_DONTWAIT`).
    pub fn try_recv(&mut self) -> Result<Option<Received>, ChannelError> {
        match self.recv_inner(true) {
            Ok(r) => Ok(Some(r)),
            Err(ChannelError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn recv_inner(&mut self, nonblocking: bool) -> Result<Received, ChannelError> {
        if self.buf.len() < MAX_FRAME {
            self.buf = vec![0; MAX_FRAME];
        }
        let buf = &mut self.buf[..];
        let r = match fdpass::recv_with_fds(self.fd.as_fd(), buf, nonblocking) {
            Ok(r) => r,
            // A peer that closed its end with frames still unread in it leaves ECONNRESET
            // pending on ours — reported once, *before* the frames it sent us, which are still
            // queued. Those matter (a dead worker's last acks), so read on: the next call
            // returns them, and end of file after them.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => fdpass::recv_with_fds(self.fd.as_fd(), buf, true)
                .map_err(|e| match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ECONNRESET) => ChannelError::Closed,
                _ => ChannelError::Io(crate::sys::context(e, "recvmsg on the channel")),
            })?,
            // Nothing waiting (`try_recv`): not an error worth a message — and the common case.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(ChannelError::Io(e)),
            Err(e) => return Err(ChannelError::Io(crate::sys::context(e, "recvmsg on the channel"))),
        };
        // From here on, returning early drops `r.fds`, which closes whatever arrived.
        if r.truncated {
            return Err(ChannelError::Truncated);
        }
        let frame = &buf[..r.len];
        if frame.is_empty() && r.fds.is_empty() && !r.control_truncated && fdpass::peer_closed(self.fd.as_fd()) {
            return Err(ChannelError::Closed);
        }
        if frame.len() < HEADER_LEN {
            if r.control_truncated {
                return Err(ChannelError::ControlTruncated { kind: None });
            }
            return Err(ChannelError::Malformed { kind: 0, why: "shorter than the 8-byte header" });
        }
        let field = |offset: usize, n: usize| &frame[offset..offset + n];
        let kind = u16::from_le_bytes(field(offset_of!(Header, kind), 2).try_into().unwrap());
        let fd_count = u16::from_le_bytes(field(offset_of!(Header, fd_count), 2).try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(field(offset_of!(Header, len), 4).try_into().unwrap()) as usize;
        if r.control_truncated {
            return Err(ChannelError::ControlTruncated { kind: Some(kind) });
        }
        let Some(expected) = Message::fds_for_kind(kind) else {
            return Err(ChannelError::UnknownKind(kind));
        };
        if len > MAX_MESSAGE {
            return Err(ChannelError::Oversized { len: len + HEADER_LEN });
        }
        if len != frame.len() - HEADER_LEN {
            return Err(ChannelError::Malformed { kind, why: "length field disagrees with the frame size" });
        }
        if r.fds.len() != expected {
            return Err(ChannelError::WrongFdCount { kind, expected, got: r.fds.len() });
        }
        if fd_count != expected {
            return Err(ChannelError::Malformed {
                kind,
                why: "fd_count field disagrees with the descriptors received",
            });
        }
        let message = Message::decode(kind, &frame[HEADER_LEN..])?;
        Ok(Received { message, fds: r.fds })
    }
}

impl From<OwnedFd> for Channel {
    /// Wraps one end of an `AF_UNIX` `SOCK_SEQPACKET` socket (for example one made by
    /// `rustix::net::socketpair`). Herd does not check the socket type.
    fn from(fd: OwnedFd) -> Channel {
        Channel { fd, buf: Vec::new() }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

//! The channel between the primary and one worker: framed messages with optional attached
//! descriptors over an `AF_UNIX` `SOCK_SEQPACKET` socket pair.
//!
//! This module is public as a teaching API: it is what the primary and its workers say to each
//! other, usable on its own over any socket pair (the tests and `benches/channel.rs` do), and
//! documented byte by byte in `docs/channel-protocol.md` so that a worker written in another
//! language can speak it.
//!
//! Like nginx's channel (a tiny fixed struct `{command, pid, slot, fd}`) and Node's IPC pipe
//! (JSON plus a handle), each frame is a small header and a payload, and a frame that carries
//! connections carries their descriptors with it through `SCM_RIGHTS` (see [`unix(7)`]). The
//! format itself — pure functions over bytes — is in [`frame`].
//!
//! Because the socket is `SOCK_SEQPACKET`, one `recvmsg` returns exactly one frame and the
//! frame's descriptors, so there is no reassembly and no way for descriptors to arrive with the
//! wrong frame. What can still go wrong is checked on every receive and reported as a
//! [`ChannelError`] naming the cause; descriptors that did arrive with a bad frame are closed
//! before the error is returned, never leaked.
//!
//! [`unix(7)`]: https://man7.org/linux/man-pages/man7/unix.7.html

pub mod frame;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

pub use frame::{ChannelError, HEADER_LEN, MAX_FDS, MAX_FRAME, MAX_MESSAGE, Message};

use crate::sys::fdpass::{self, RecvOptions};

/// A received frame: the message and the descriptors that came with it.
#[derive(Debug)]
pub struct Received {
    /// The decoded message.
    pub message: Message,
    /// Its descriptors (as many as the frame declared), owned and close-on-exec.
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
    /// [`ChannelError::Oversized`] for a payload over [`MAX_MESSAGE`],
    /// [`ChannelError::WrongFdCount`] if the kind does not allow `fds.len()` descriptors,
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

    /// Sends `bytes` (with `fds`) as a [`Message::User`] without copying them into a `Message`
    /// first. `nonblocking` as [`try_send`](Self::try_send).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_user(&self, bytes: &[u8], fds: &[BorrowedFd<'_>], nonblocking: bool) -> Result<(), ChannelError> {
        self.send_frame(Message::User(Vec::new()).kind(), bytes, fds, nonblocking)
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
        let header = frame::encode_header(kind, fds.len(), payload.len())?;
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
        self.recv_inner(RecvOptions { nonblocking: false, peek: false })
    }

    /// Receives one frame if one is waiting; `Ok(None)` if none is (`MSG_DONTWAIT`).
    pub fn try_recv(&mut self) -> Result<Option<Received>, ChannelError> {
        would_block_is_none(self.recv_inner(RecvOptions { nonblocking: true, peek: false }))
    }

    /// Receives one frame if one is waiting, without ever losing its descriptors.
    ///
    /// A plain `recvmsg` that finds the process out of descriptors (`EMFILE`) installs what it
    /// can and *closes the rest* (`MSG_CTRUNC`): a handed-off connection would be reset. So this
    /// reads in two steps: a `MSG_PEEK`, which installs copies of the frame's descriptors and
    /// leaves the frame queued, then — only if every copy was installed — a read that removes
    /// the frame without installing anything. When the peek runs out of descriptors, the copies
    /// it made are closed, the frame stays queued, and the error is
    /// [`ChannelError::ControlTruncated`]: nothing was lost, and the caller can back off.
    ///
    /// The price is one more `recvmsg` per frame. Only one reader may use this on a socket at a
    /// time (a frame taken by another reader between the two steps would be the one removed).
    pub fn try_recv_keeping_fds(&mut self) -> Result<Option<Received>, ChannelError> {
        let peeked = would_block_is_none(self.recv_inner(RecvOptions { nonblocking: true, peek: true }));
        let keep_queued = match &peeked {
            Ok(None) | Err(ChannelError::Io(_) | ChannelError::Closed) => true,
            // Out of descriptors: the frame stays for later.
            Err(ChannelError::ControlTruncated { kind: Some(kind) }) => {
                let claimed = u16::from_le_bytes([self.buf[2], self.buf[3]]) as usize;
                if claimed > MAX_FDS {
                    // Unless it claims more descriptors than a frame may carry: no later read
                    // would do better, and it is not a shortage but a bad frame.
                    fdpass::discard(self.fd.as_fd())
                        .map_err(|e| ChannelError::Io(crate::sys::context(e, "recvmsg on the channel")))?;
                    let allowed = Message::fds_allowed(*kind).map_or((0, 0), |r| (*r.start(), *r.end()));
                    return Err(ChannelError::WrongFdCount { kind: *kind, allowed, got: claimed });
                }
                true
            }
            // A good frame, or a bad one: it goes, so that one bad frame cannot wedge the channel.
            _ => false,
        };
        if !keep_queued {
            fdpass::discard(self.fd.as_fd())
                .map_err(|e| ChannelError::Io(crate::sys::context(e, "recvmsg on the channel")))?;
        }
        peeked
    }

    fn recv_inner(&mut self, options: RecvOptions) -> Result<Received, ChannelError> {
        if self.buf.len() < MAX_FRAME {
            self.buf = vec![0; MAX_FRAME];
        }
        let buf = &mut self.buf[..];
        let r = match fdpass::recv_with_fds(self.fd.as_fd(), buf, options) {
            Ok(r) => r,
            // A peer that closed its end with frames still unread in it leaves ECONNRESET
            // pending on ours — reported once, *before* the frames it sent us, which are still
            // queued. Those matter (a dead worker's last messages), so read on: the next call
            // returns them, and end of file after them.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                fdpass::recv_with_fds(self.fd.as_fd(), buf, RecvOptions { nonblocking: true, ..options }).map_err(
                    |e| match e.raw_os_error() {
                        Some(libc::EAGAIN | libc::ECONNRESET) => ChannelError::Closed,
                        _ => ChannelError::Io(crate::sys::context(e, "recvmsg on the channel")),
                    },
                )?
            }
            // Nothing waiting (`try_recv`): not an error worth a message — and the common case.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(ChannelError::Io(e)),
            Err(e) => return Err(ChannelError::Io(crate::sys::context(e, "recvmsg on the channel"))),
        };
        // From here on, returning early drops `r.fds`, which closes whatever arrived.
        if r.truncated {
            return Err(ChannelError::Truncated);
        }
        let bytes = &buf[..r.len];
        if bytes.is_empty() && r.fds.is_empty() && !r.control_truncated && fdpass::peer_closed(self.fd.as_fd()) {
            return Err(ChannelError::Closed);
        }
        if r.control_truncated {
            return Err(ChannelError::ControlTruncated { kind: frame::peek_kind(bytes) });
        }
        let message = frame::decode(bytes, r.fds.len())?;
        Ok(Received { message, fds: r.fds })
    }
}

fn would_block_is_none(r: Result<Received, ChannelError>) -> Result<Option<Received>, ChannelError> {
    match r {
        Ok(r) => Ok(Some(r)),
        Err(ChannelError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

impl From<OwnedFd> for Channel {
    /// Wraps one end of an `AF_UNIX` `SOCK_SEQPACKET` socket (for example one made by
    /// `rustix::net::socketpair`). Herd does not check the socket type.
    fn from(fd: OwnedFd) -> Channel {
        Channel { fd, buf: Vec::new() }
    }
}

impl From<Channel> for OwnedFd {
    /// The socket, for closing it some other way (through an io_uring, say).
    fn from(channel: Channel) -> OwnedFd {
        channel.fd
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

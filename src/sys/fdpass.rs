//! `socketpair(2)` and `sendmsg(2)` / `recvmsg(2)` with `SCM_RIGHTS`: passing descriptors between
//! the primary and its workers.
//!
//! The channel is `AF_UNIX` + `SOCK_SEQPACKET`: reliable, ordered, connection-oriented like a
//! stream, yet it keeps message boundaries like a datagram. One `recvmsg` reads exactly one
//! frame, and a frame's descriptors arrive with that frame, never split across two reads — so
//! the framing layer above needs no reassembly. See [`unix(7)`].
//!
//! Received descriptors are installed with `MSG_CMSG_CLOEXEC` (atomically close-on-exec) and
//! become [`OwnedFd`]s at once: whatever happens next (a truncated frame, a bad header), dropping
//! them closes them, so nothing leaks.
//!
//! [`unix(7)`]: https://man7.org/linux/man-pages/man7/unix.7.html

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// The most descriptors one message may carry. The receive buffer has room for exactly this
/// many; a sender that attaches more makes the kernel set `MSG_CTRUNC` and close the rest.
pub const MAX_FDS: usize = 64;

/// The most slices one [`send_with_fds`] gathers.
pub const MAX_IOV: usize = 4;

/// Corresponds to `socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)`; see
/// [`socketpair(2)`].
///
/// [`socketpair(2)`]: https://man7.org/linux/man-pages/man2/socketpair.2.html
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(|e| super::context(super::from_errno(e), "socketpair(AF_UNIX, SOCK_SEQPACKET)"))
}

/// Corresponds to `sendmsg(fd, {bytes}, SCM_RIGHTS{fds}, MSG_NOSIGNAL | flags)`; see
/// [`sendmsg(2)`]: the slices of `bytes` (at most [`MAX_IOV`]) are gathered into one message.
/// `nonblocking` adds `MSG_DONTWAIT`. Retries `EINTR`.
///
/// A seqpacket send is all or nothing: it returns the whole length or an error.
///
/// [`sendmsg(2)`]: https://man7.org/linux/man-pages/man2/sendmsg.2.html
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[&[u8]],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<usize> {
    // On the stack: this runs once per handed-off connection.
    let mut iov = [IoSlice::new(&[]); MAX_IOV];
    if bytes.len() > MAX_IOV {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sendmsg: {} slices, at most {MAX_IOV}", bytes.len()),
        ));
    }
    for (slot, b) in iov.iter_mut().zip(bytes) {
        *slot = IoSlice::new(b);
    }
    let iov = &iov[..bytes.len()];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS * 2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sendmsg(SCM_RIGHTS): {} descriptors do not fit one message", fds.len()),
        ));
    }
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    loop {
        super::tally::count(1);
        match rustix::net::sendmsg(sock, iov, &mut control, flags) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(super::from_errno(e)),
        }
    }
}

/// What one [`recv_with_fds`] call read.
#[derive(Debug)]
pub struct Received {
    /// Bytes copied into the caller's buffer (at most its length).
    pub len: usize,
    /// `MSG_TRUNC`: the datagram was longer than the buffer; the rest is lost.
    pub truncated: bool,
    /// `MSG_CTRUNC`: descriptors did not fit the control buffer, or could not be installed
    /// (`EMFILE`), and the kernel closed them.
    pub control_truncated: bool,
    /// The descriptors that did arrive, already owned (and close-on-exec).
    pub fds: Vec<OwnedFd>,
}

/// How [`recv_with_fds`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvOptions {
    /// `MSG_DONTWAIT`: return `EAGAIN` instead of waiting.
    pub nonblocking: bool,
    /// `MSG_PEEK`: leave the message queued. Its descriptors are still installed — as *new*
    /// descriptors for the same files (see `unix(7)`) — and the ones queued stay in flight.
    pub peek: bool,
}

/// Corresponds to `recvmsg(fd, buf, .., MSG_CMSG_CLOEXEC | flags)`; see [`recvmsg(2)`].
/// Retries `EINTR`. A return with `len == 0` and no flags is end of file: the peer closed its
/// end.
///
/// [`recvmsg(2)`]: https://man7.org/linux/man-pages/man2/recvmsg.2.html
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], options: RecvOptions) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if options.nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    if options.peek {
        flags |= RecvFlags::PEEK;
    }
    let msg = loop {
        let mut iov = [IoSliceMut::new(buf)];
        super::tally::count(1);
        match rustix::net::recvmsg(sock, &mut iov, &mut control, flags) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(super::from_errno(e)),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let mut control_truncated = msg.flags.contains(ReturnFlags::CTRUNC);
    // `cmsg_space!` rounds the buffer up for alignment, so the kernel may fit a descriptor or
    // two beyond MAX_FDS without setting MSG_CTRUNC; hold the limit ourselves.
    if fds.len() > MAX_FDS {
        fds.clear();
        control_truncated = true;
    }
    Ok(Received {
        len: msg.bytes.min(buf.len()),
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        control_truncated,
        fds,
    })
}

/// Removes the message at the head of the queue without installing its descriptors:
/// `recvmsg(fd, {}, no control buffer, MSG_DONTWAIT)`. The kernel drops the queue's references
/// to the attached files; copies the caller took with a [`RecvOptions::peek`] keep them open.
/// Retries `EINTR`.
pub fn discard(sock: BorrowedFd<'_>) -> io::Result<()> {
    let mut control = RecvAncillaryBuffer::new(&mut []);
    loop {
        super::tally::count(1);
        match rustix::net::recvmsg(sock, &mut [], &mut control, RecvFlags::DONTWAIT) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(super::from_errno(e)),
        }
    }
}

/// Whether the peer of a connected socket has closed or shut down its end: a `poll(2)` for
/// `POLLRDHUP` that does not wait. On a `SOCK_SEQPACKET` socket, `recvmsg` returns 0 both at end of
/// file and for an empty record; this tells the two apart.
pub fn peer_closed(sock: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(&sock, PollFlags::RDHUP)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(1))
        && fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP)
}

//! Listening sockets and `accept4(2)`.
//!
//! Every listener is created with `SOCK_CLOEXEC`, and `SO_REUSEADDR` is always set on TCP
//! listeners, so that a restarted server can bind while old connections sit in `TIME_WAIT`.
//! `SO_REUSEPORT` is set only for the reuseport mode, where several listeners bind the same
//! address and the kernel spreads incoming connections over them by a hash of the 4-tuple
//! (see [`socket(7)`]).
//!
//! [`socket(7)`]: https://man7.org/linux/man-pages/man7/socket.7.html

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};

use super::{context, from_errno};

/// Options for [`tcp_listener`].
#[derive(Clone, Copy, Debug)]
pub struct TcpOptions {
    /// Set `SO_REUSEPORT` before `bind`.
    pub reuseport: bool,
    /// The `listen(2)` backlog (the kernel caps it at `net.core.somaxconn`).
    pub backlog: i32,
    /// Set `O_NONBLOCK` on the listener.
    pub nonblocking: bool,
}

/// Corresponds to `socket(AF_INET|AF_INET6, SOCK_STREAM | SOCK_CLOEXEC)`, `SO_REUSEADDR`,
/// optionally `SO_REUSEPORT`, then [`bind(2)`] and [`listen(2)`].
///
/// # Errors
/// Each failure names the call and the address, e.g. `bind(127.0.0.1:80): Address already in
/// use (os error 98)`, with the [`io::ErrorKind`] of the underlying errno.
///
/// [`bind(2)`]: https://man7.org/linux/man-pages/man2/bind.2.html
/// [`listen(2)`]: https://man7.org/linux/man-pages/man2/listen.2.html
pub fn tcp_listener(addr: SocketAddr, opts: TcpOptions) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let mut flags = SocketFlags::CLOEXEC;
    if opts.nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)
        .map_err(|e| context(from_errno(e), format!("socket() for {addr}")))?;
    sockopt::set_socket_reuseaddr(&fd, true)
        .map_err(|e| context(from_errno(e), format!("setsockopt(SO_REUSEADDR) on {addr}")))?;
    if opts.reuseport {
        sockopt::set_socket_reuseport(&fd, true)
            .map_err(|e| context(from_errno(e), format!("setsockopt(SO_REUSEPORT) on {addr}")))?;
    }
    rustix::net::bind(&fd, &addr).map_err(|e| context(from_errno(e), format!("bind({addr})")))?;
    rustix::net::listen(&fd, opts.backlog).map_err(|e| context(from_errno(e), format!("listen({addr})")))?;
    Ok(fd)
}

/// Corresponds to `socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`, [`bind(2)`] to `path` and
/// [`listen(2)`]. The caller removes a stale socket file first (see [`crate::ListenAddr`]).
///
/// [`bind(2)`]: https://man7.org/linux/man-pages/man2/bind.2.html
/// [`listen(2)`]: https://man7.org/linux/man-pages/man2/listen.2.html
pub fn unix_listener(path: &Path, backlog: i32, nonblocking: bool) -> io::Result<OwnedFd> {
    let shown = path.display();
    let mut flags = SocketFlags::CLOEXEC;
    if nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    let addr = SocketAddrUnix::new(path).map_err(|e| context(from_errno(e), format!("unix socket path {shown}")))?;
    let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)
        .map_err(|e| context(from_errno(e), format!("socket(AF_UNIX) for {shown}")))?;
    rustix::net::bind(&fd, &addr).map_err(|e| context(from_errno(e), format!("bind({shown})")))?;
    rustix::net::listen(&fd, backlog).map_err(|e| context(from_errno(e), format!("listen({shown})")))?;
    Ok(fd)
}

/// Whether something accepts connections on the Unix socket at `path` (a `connect(2)` probe),
/// to tell a live server from a stale socket file left by a crash.
pub fn unix_socket_is_live(path: &Path) -> bool {
    let Ok(addr) = SocketAddrUnix::new(path) else { return false };
    let Ok(fd) = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None) else {
        return false;
    };
    rustix::net::connect(&fd, &addr).is_ok()
}

/// The TCP address a listener is bound to (`getsockname(2)`), to learn the port after binding
/// port 0.
pub fn local_tcp_addr(fd: impl AsFd) -> io::Result<SocketAddr> {
    let any = rustix::net::getsockname(fd).map_err(|e| context(from_errno(e), "getsockname"))?;
    SocketAddr::try_from(any).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "getsockname: not an IP socket"))
}

/// Corresponds to `accept4(fd, NULL, NULL, SOCK_CLOEXEC [| SOCK_NONBLOCK])`; see
/// [`accept4(2)`].
///
/// Returns the errno untouched (no context string): accept loops sort errors by kind on the hot
/// path, see [`crate::accept`].
///
/// [`accept4(2)`]: https://man7.org/linux/man-pages/man2/accept4.2.html
pub fn accept(listener: impl AsFd, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = SocketFlags::CLOEXEC;
    if nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    super::tally::count(1);
    rustix::net::accept_with(listener, flags).map_err(from_errno)
}

/// Sets `SO_RCVTIMEO` on a listener: a blocking `accept` then returns `EAGAIN` after `timeout`,
/// which lets a thread parked in `accept` look up now and then (to notice it should stop).
pub fn set_accept_timeout(fd: impl AsFd, timeout: std::time::Duration) -> io::Result<()> {
    sockopt::set_socket_timeout(fd, sockopt::Timeout::Recv, Some(timeout))
        .map_err(|e| context(from_errno(e), "setsockopt(SO_RCVTIMEO)"))
}

/// What [`inspect_inherited`] found out about a socket this process was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inherited {
    /// `AF_UNIX` rather than `AF_INET`/`AF_INET6`.
    pub unix: bool,
    /// `SO_REUSEPORT` is set: more listeners may be bound to its address.
    pub reuseport: bool,
}

/// Checks that `fd` is a listening stream socket (`SO_ACCEPTCONN`, `SO_TYPE`, `getsockname`).
/// Its `O_NONBLOCK` is left as it is: the flag belongs to the open file, which other processes
/// share (herd's blocking strategy wants it off, the others on).
///
/// # Errors
/// `InvalidInput` naming `what` and what the socket is instead (not a socket, a datagram
/// socket, a socket that is not listening).
pub fn inspect_inherited(fd: impl AsFd, what: &str) -> io::Result<Inherited> {
    let fd = fd.as_fd();
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {why}"));
    let kind = sockopt::socket_type(fd).map_err(|e| invalid(format!("not a socket ({})", from_errno(e))))?;
    if kind != SocketType::STREAM {
        return Err(invalid(format!("not a stream socket ({kind:?})")));
    }
    if !sockopt::socket_acceptconn(fd).map_err(|e| invalid(from_errno(e).to_string()))? {
        return Err(invalid("a socket that is not listening (listen(2) was never called on it)".into()));
    }
    let addr = rustix::net::getsockname(fd).map_err(|e| context(from_errno(e), format!("{what}: getsockname")))?;
    let unix = addr.address_family() == AddressFamily::UNIX;
    let reuseport = !unix && sockopt::socket_reuseport(fd).unwrap_or(false);
    Ok(Inherited { unix, reuseport })
}

/// Sets or clears `O_NONBLOCK` on a socket (`ioctl(FIONBIO)`).
pub fn set_nonblocking(fd: impl AsFd, on: bool) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, on).map_err(|e| context(from_errno(e), "ioctl(FIONBIO)"))
}

/// The path a Unix listener is bound to (`getsockname(2)`).
///
/// # Errors
/// `InvalidInput` for an abstract or unnamed socket, or one that is not `AF_UNIX`.
pub fn local_unix_path(fd: impl AsFd) -> io::Result<std::path::PathBuf> {
    let any = rustix::net::getsockname(fd).map_err(|e| context(from_errno(e), "getsockname"))?;
    let unix = SocketAddrUnix::try_from(any)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "getsockname: not a Unix socket"))?;
    match unix.path() {
        Some(p) => Ok(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes()))),
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, "a Unix socket with no path (abstract or unnamed)")),
    }
}

/// Whether a connection is waiting on `listener` right now (`poll` with a zero timeout).
/// Errors count as "not ready": the caller's accept would report them.
pub fn has_pending(listener: impl AsFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN)];
    super::tally::count(1);
    matches!(rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
}

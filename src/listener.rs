//! A bound, listening socket and the kind of stream it accepts.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::ListenAddr;
use crate::sys::listen::{self, TcpOptions};

/// Which kind of stream a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// A Unix-domain stream socket.
    Unix,
}

/// A listening socket (close-on-exec), owned by the primary and inherited by workers across
/// `fork`.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

/// How to create a listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BindOptions {
    pub reuseport: bool,
    pub backlog: i32,
    pub nonblocking: bool,
    /// `TCP_DEFER_ACCEPT` with this many seconds (TCP only).
    pub defer_accept: Option<i32>,
}

impl Listener {
    /// Binds `addr` (a Unix path must have been prepared by [`UnixPath::claim`]).
    pub(crate) fn bind(addr: &ListenAddr, opts: BindOptions) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => {
                let fd = listen::tcp_listener(
                    *a,
                    TcpOptions { reuseport: opts.reuseport, backlog: opts.backlog, nonblocking: opts.nonblocking },
                )?;
                if let Some(seconds) = opts.defer_accept {
                    crate::sys::sockopt::set_defer_accept(&fd, seconds)?;
                }
                Ok(Listener { fd })
            }
            ListenAddr::Unix(p) => Ok(Listener { fd: listen::unix_listener(p, opts.backlog, opts.nonblocking)? }),
        }
    }

    /// A listening socket this process was given (across `execve`, by `herd run` or by a
    /// service manager), checked, with what it accepts and whether it has
    /// `SO_REUSEPORT`.
    ///
    /// # Errors
    /// `InvalidInput` naming `what` if `fd` is not a listening stream socket.
    pub(crate) fn inherited(fd: OwnedFd, what: &str) -> io::Result<(Listener, StreamKind, bool)> {
        let found = listen::inspect_inherited(&fd, what)?;
        let kind = if found.unix { StreamKind::Unix } else { StreamKind::Tcp };
        Ok((Listener { fd }, kind, found.reuseport))
    }

    /// Sets or clears `O_NONBLOCK` (on the open file: every process holding it sees the change).
    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        listen::set_nonblocking(&self.fd, on)
    }

    /// The address it is bound to, as a [`ListenAddr`].
    pub(crate) fn local_addr(&self, kind: StreamKind) -> io::Result<ListenAddr> {
        match kind {
            StreamKind::Tcp => Ok(ListenAddr::Tcp(self.tcp_addr()?)),
            StreamKind::Unix => Ok(ListenAddr::Unix(listen::local_unix_path(&self.fd)?)),
        }
    }

    /// A listener handed over by the primary's previous image (an in-place upgrade).
    pub(crate) fn adopt(fd: OwnedFd) -> Listener {
        Listener { fd }
    }

    /// The socket itself.
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// The TCP address actually bound (with the port the kernel chose for port 0).
    pub(crate) fn tcp_addr(&self) -> io::Result<std::net::SocketAddr> {
        listen::local_tcp_addr(&self.fd)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A Unix socket path this primary bound: removed again when the primary (and only the primary,
/// not a forked worker holding a copy) drops it — and only if the socket file there is still the
/// one it bound, so that a failed bind, or another server that took the path since, loses
/// nothing.
#[derive(Debug)]
pub(crate) struct UnixPath {
    path: PathBuf,
    owner: rustix::process::Pid,
    /// (device, inode) of the socket file once bound.
    bound: Option<(u64, u64)>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl UnixPath {
    /// Makes `path` free to bind: a stale socket file (left by a crash, nobody accepting on it)
    /// is removed; a live one, or a path that is not a socket, is an error.
    pub(crate) fn claim(path: &Path) -> io::Result<UnixPath> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if listen::unix_socket_is_live(path) {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("bind({}): address in use: another server accepts on this socket", path.display()),
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| crate::sys::context(e, format!("remove stale socket {}", path.display())))?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("bind({}): the path exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::sys::context(e, format!("stat({})", path.display()))),
        }
        Ok(UnixPath { path: path.to_owned(), owner: rustix::process::getpid(), bound: None })
    }

    /// The path the primary's previous image bound (an in-place upgrade): still ours to remove
    /// if the socket file there is the one found now.
    pub(crate) fn adopt(path: PathBuf) -> UnixPath {
        let bound = identity(&path);
        UnixPath { path, owner: rustix::process::getpid(), bound }
    }

    /// The path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The bind succeeded: the socket file now at the path is ours to remove.
    pub(crate) fn bound(&mut self) {
        self.bound = identity(&self.path);
    }
}

impl Drop for UnixPath {
    fn drop(&mut self) {
        if rustix::process::getpid() == self.owner && self.bound.is_some() && identity(&self.path) == self.bound {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_path_whose_bind_failed_leaves_another_servers_socket_alone() {
        let path = std::env::temp_dir().join(format!("herd-unixpath-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let claim = UnixPath::claim(&path).unwrap();
        // Another server binds the path before we do; our bind fails, and we drop the claim.
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(claim);
        assert!(path.exists(), "the other server's socket file was removed");
        drop(theirs);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_bound_path_is_removed_on_drop() {
        let path = std::env::temp_dir().join(format!("herd-unixpath-bound-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut claim = UnixPath::claim(&path).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        claim.bound();
        drop(claim);
        assert!(!path.exists());
    }
}

//! An accepted connection, as a worker gets it in every mode.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::listener::StreamKind;
use crate::stats::{Counters, WorkerCounter};

/// An accepted connection: a [`TcpStream`] or a [`UnixStream`].
///
/// Whether the worker accepted it itself (shared, reuseport) or received it from the primary
/// (handoff), it is the same kind of value and behaves the same way: the worker holds the only
/// descriptor of it (the primary closes its own as soon as it has handed the connection on), so
/// dropping it — or the std stream [`into_std`](Stream::into_std) gave — closes the connection
/// and sends its FIN. Dropping it also counts it in the worker's `closed` counter.
#[derive(Debug)]
pub struct Stream {
    inner: Option<StdStream>,
    /// The counters and the worker slot whose `closed` count the drop bumps.
    counters: Counters,
    slot: usize,
}

/// The standard-library stream inside a [`Stream`].
#[derive(Debug)]
pub enum StdStream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-domain connection.
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn new(fd: OwnedFd, kind: StreamKind, counters: Counters, slot: usize) -> Stream {
        let inner = match kind {
            StreamKind::Tcp => StdStream::Tcp(TcpStream::from(fd)),
            StreamKind::Unix => StdStream::Unix(UnixStream::from(fd)),
        };
        Stream { inner: Some(inner), counters, slot }
    }

    fn inner(&self) -> &StdStream {
        self.inner.as_ref().expect("stream used after into_std")
    }

    fn inner_mut(&mut self) -> &mut StdStream {
        self.inner.as_mut().expect("stream used after into_std")
    }

    /// The TCP stream, if this is a TCP connection.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self.inner() {
            StdStream::Tcp(s) => Some(s),
            StdStream::Unix(_) => None,
        }
    }

    /// The Unix stream, if this is a Unix-domain connection.
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match self.inner() {
            StdStream::Unix(s) => Some(s),
            StdStream::Tcp(_) => None,
        }
    }

    /// Moves the connection in or out of non-blocking mode (`O_NONBLOCK`).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self.inner() {
            StdStream::Tcp(s) => s.set_nonblocking(nonblocking),
            StdStream::Unix(s) => s.set_nonblocking(nonblocking),
        }
    }

    /// Sets the read timeout of a blocking stream (`SO_RCVTIMEO`); `None` waits forever.
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        match self.inner() {
            StdStream::Tcp(s) => s.set_read_timeout(timeout),
            StdStream::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// Shuts down the read, write or both halves (`shutdown(2)`).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self.inner() {
            StdStream::Tcp(s) => s.shutdown(how),
            StdStream::Unix(s) => s.shutdown(how),
        }
    }

    /// Hands the connection over as a standard-library stream (for tokio's `from_std`, say).
    /// It counts as closed in the worker's counters from this point on.
    pub fn into_std(mut self) -> StdStream {
        self.inner.take().expect("stream used after into_std")
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.counters.bump_worker(self.slot, WorkerCounter::Closed, 1);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner_mut() {
            StdStream::Tcp(s) => s.read(buf),
            StdStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner_mut() {
            StdStream::Tcp(s) => s.write(buf),
            StdStream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self.inner_mut() {
            StdStream::Tcp(s) => s.write_vectored(bufs),
            StdStream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self.inner() {
            StdStream::Tcp(s) => s.as_fd(),
            StdStream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

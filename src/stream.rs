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
/// (handoff), it is the same kind of value. Dropping it closes the connection and counts it in
/// the worker's `closed` counter.
///
/// A handed-off stream is also shut down for writing when dropped (`shutdown(SHUT_WR)`): the
/// primary may not have closed its copy of the descriptor yet (it does when it reads the
/// worker's acknowledgement), and a socket sends its FIN only when its *last* descriptor closes
/// — so without the shutdown, a client reading to end of file would wait for the primary to
/// wake up.
#[derive(Debug)]
pub struct Stream {
    inner: Option<StdStream>,
    /// The counters and the worker slot whose `closed` count the drop bumps.
    counters: Counters,
    slot: usize,
    handed_off: bool,
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
    /// `handed_off`: the descriptor came from the primary, which may still hold a copy.
    pub(crate) fn new(fd: OwnedFd, kind: StreamKind, counters: Counters, slot: usize, handed_off: bool) -> Stream {
        let inner = match kind {
            StreamKind::Tcp => StdStream::Tcp(TcpStream::from(fd)),
            StreamKind::Unix => StdStream::Unix(UnixStream::from(fd)),
        };
        Stream { inner: Some(inner), counters, slot, handed_off }
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
        if self.handed_off && self.inner.is_some() {
            let _ = self.shutdown(Shutdown::Write);
        }
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

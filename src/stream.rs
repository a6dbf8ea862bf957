//! An accepted connection, as a worker gets it in every mode.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::listener::StreamKind;
use crate::stats::{Counters, WorkerCounter};

/// An accepted connection: TCP or Unix-domain, depending on the cluster's address.
///
/// Whether the worker accepted it itself (shared, reuseport) or received it from the primary
/// (handoff), it is the same kind of value and behaves the same way: the worker holds the only
/// descriptor of it (the primary closes its own as soon as it has handed the connection on), so
/// dropping it — or what [`into_tcp`](Stream::into_tcp) / [`into_unix`](Stream::into_unix) /
/// `OwnedFd::from` gave — closes the connection and sends its FIN.
///
/// herd counts the connection in the worker's `closed` counter when the `Stream` is dropped,
/// or when it is converted into a std stream or a descriptor: from then on herd cannot see it.
///
/// It reads and writes like a std stream, through `&Stream` too, so one thread can read while
/// another writes.
#[derive(Debug)]
pub struct Stream {
    inner: Option<Inner>,
    /// The counters and the worker slot whose `closed` count the drop bumps.
    counters: Counters,
    slot: usize,
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Runs `$body` on the std stream inside, whichever it is.
macro_rules! either {
    ($inner:expr, $s:ident => $body:expr) => {
        match $inner {
            Inner::Tcp($s) => $body,
            Inner::Unix($s) => $body,
        }
    };
}

impl Stream {
    pub(crate) fn new(fd: OwnedFd, kind: StreamKind, counters: Counters, slot: usize) -> Stream {
        let inner = match kind {
            StreamKind::Tcp => Inner::Tcp(TcpStream::from(fd)),
            StreamKind::Unix => Inner::Unix(UnixStream::from(fd)),
        };
        counters.live_changed(slot, true);
        Stream { inner: Some(inner), counters, slot }
    }

    fn inner(&self) -> &Inner {
        self.inner.as_ref().expect("a Stream holds its socket until it is consumed")
    }

    /// Takes the socket out; the connection counts as closed in the worker's counters.
    fn release(mut self) -> Inner {
        self.inner.take().expect("a Stream holds its socket until it is consumed")
    }

    /// Whether this is a TCP or a Unix-domain connection.
    pub fn kind(&self) -> StreamKind {
        match self.inner() {
            Inner::Tcp(_) => StreamKind::Tcp,
            Inner::Unix(_) => StreamKind::Unix,
        }
    }

    /// The TCP stream, if this is a TCP connection.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self.inner() {
            Inner::Tcp(s) => Some(s),
            Inner::Unix(_) => None,
        }
    }

    /// The Unix stream, if this is a Unix-domain connection.
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match self.inner() {
            Inner::Unix(s) => Some(s),
            Inner::Tcp(_) => None,
        }
    }

    /// The std TCP stream, for another runtime (tokio's `TcpStream::from_std`, say); gives the
    /// `Stream` back if this is a Unix-domain connection. It counts as closed in the worker's
    /// counters from then on.
    pub fn into_tcp(self) -> Result<TcpStream, Stream> {
        match self.inner() {
            Inner::Tcp(_) => match self.release() {
                Inner::Tcp(s) => Ok(s),
                Inner::Unix(_) => unreachable!("checked just above"),
            },
            Inner::Unix(_) => Err(self),
        }
    }

    /// The std Unix stream; gives the `Stream` back if this is a TCP connection. It counts as
    /// closed in the worker's counters from then on.
    pub fn into_unix(self) -> Result<UnixStream, Stream> {
        match self.inner() {
            Inner::Unix(_) => match self.release() {
                Inner::Unix(s) => Ok(s),
                Inner::Tcp(_) => unreachable!("checked just above"),
            },
            Inner::Tcp(_) => Err(self),
        }
    }

    /// The remote address of a TCP connection (`getpeername(2)`).
    ///
    /// # Errors
    /// `Unsupported` for a Unix-domain connection (see [`as_unix`](Self::as_unix)); the system
    /// call's error otherwise.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.inner() {
            Inner::Tcp(s) => s.peer_addr(),
            Inner::Unix(_) => Err(unix_has_no_ip("peer_addr")),
        }
    }

    /// The local address of a TCP connection (`getsockname(2)`).
    ///
    /// # Errors
    /// As [`peer_addr`](Self::peer_addr).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.inner() {
            Inner::Tcp(s) => s.local_addr(),
            Inner::Unix(_) => Err(unix_has_no_ip("local_addr")),
        }
    }

    /// Sets `TCP_NODELAY` (Nagle's algorithm off). A Unix-domain socket has no Nagle delay to
    /// turn off: nothing to do.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self.inner() {
            Inner::Tcp(s) => s.set_nodelay(nodelay),
            Inner::Unix(_) => Ok(()),
        }
    }

    /// Moves the connection in or out of non-blocking mode (`O_NONBLOCK`).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        either!(self.inner(), s => s.set_nonblocking(nonblocking))
    }

    /// Sets the read timeout of a blocking stream (`SO_RCVTIMEO`); `None` waits forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        either!(self.inner(), s => s.set_read_timeout(timeout))
    }

    /// Sets the write timeout of a blocking stream (`SO_SNDTIMEO`); `None` waits forever.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        either!(self.inner(), s => s.set_write_timeout(timeout))
    }

    /// Shuts down the read, write or both halves (`shutdown(2)`).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        either!(self.inner(), s => s.shutdown(how))
    }
}

fn unix_has_no_ip(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("{what}: a Unix-domain connection has no IP address"))
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.counters.bump_worker(self.slot, WorkerCounter::Closed, 1);
        self.counters.live_changed(self.slot, false);
    }
}

impl From<Stream> for OwnedFd {
    /// The connection's descriptor; it counts as closed in the worker's counters from then on.
    fn from(stream: Stream) -> OwnedFd {
        either!(stream.release(), s => OwnedFd::from(s))
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        either!(self.inner(), s => (&*s).read(buf))
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        either!(self.inner(), s => (&*s).read_vectored(bufs))
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        either!(self.inner(), s => (&*s).write(buf))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        either!(self.inner(), s => (&*s).write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self).read_vectored(bufs)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        either!(self.inner(), s => s.as_fd())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Stream, TcpStream, Counters) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let counters = Counters::new(1).unwrap();
        (Stream::new(server.into(), StreamKind::Tcp, counters.clone(), 0), client, counters)
    }

    #[test]
    fn a_shared_reference_reads_and_writes() {
        let (stream, mut client, _) = pair();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        (&stream).read_exact(&mut buf).unwrap();
        (&stream).write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(stream.peer_addr().unwrap(), client.local_addr().unwrap());
        stream.set_nodelay(true).unwrap();
    }

    #[test]
    fn converting_counts_the_stream_closed_once_and_closes_on_drop() {
        let (stream, mut client, counters) = pair();
        let tcp = stream.into_tcp().unwrap();
        assert_eq!(counters.worker(0).closed, 1);
        drop(tcp);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(counters.worker(0).closed, 1);
        let (stream, _client, counters) = pair();
        let stream = stream.into_unix().unwrap_err();
        assert_eq!(counters.worker(0).closed, 0, "a failed conversion gives the stream back, still open");
        let fd = OwnedFd::from(stream);
        assert_eq!(counters.worker(0).closed, 1);
        drop(fd);
    }
}

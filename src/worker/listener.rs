//! A worker's listener, taken out of herd's accept loop for another runtime's
//! ([`Worker::into_listener`]).

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixListener;

use super::{Accepting, Worker};
use crate::accept::{self, Accepted};
use crate::listener::{Listener, StreamKind};
use crate::stats::{Counters, WorkerCounter};
use crate::stream::Stream;

/// The listener a worker accepts on in shared (epoll strategies) and reuseport mode, handed
/// over to the program's own event loop: non-blocking and close-on-exec.
///
/// Accept with [`accept`](Self::accept) and herd's counters go on counting (`accepts`, and
/// `closed` when the [`Stream`] is dropped) — with tokio, wrap it in `AsyncFd` and call
/// `accept` inside `try_io`. [`into_tcp`](Self::into_tcp) gives the std listener instead, for
/// `tokio::net::TcpListener::from_std`; herd then sees none of its connections.
///
/// In shared mode every worker's loop waits on the same listener: a foreign loop registers it
/// without `EPOLLEXCLUSIVE`, so every idle worker wakes for each connection (see
/// [`crate::SharedAccept`]). Reuseport has no such herd.
#[derive(Debug)]
pub struct WorkerListener {
    listener: Listener,
    kind: StreamKind,
    counters: Counters,
    slot: usize,
}

impl WorkerListener {
    /// Accepts one connection (`accept4(SOCK_CLOEXEC | SOCK_NONBLOCK)`), counted in the worker's
    /// `accepts`. A failure of that one connection (`ECONNABORTED`...) is retried; nothing
    /// waiting is `WouldBlock`.
    ///
    /// # Errors
    /// `WouldBlock` when no connection is waiting; `EMFILE` and the like, to back off on; any
    /// other `accept4` error.
    pub fn accept(&self) -> io::Result<Stream> {
        loop {
            match accept::accept(&self.listener) {
                Accepted::Connection(fd) => {
                    self.counters.bump_worker(self.slot, WorkerCounter::Accepts, 1);
                    return Ok(Stream::new(fd, self.kind, self.counters.clone(), self.slot));
                }
                Accepted::Empty => return Err(io::ErrorKind::WouldBlock.into()),
                Accepted::Retry => continue,
                Accepted::BackOff(e) | Accepted::Failed(e) => return Err(crate::sys::context(e, "accept4")),
            }
        }
    }

    /// Whether it accepts TCP or Unix-domain connections.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// The std TCP listener; gives this back for a Unix-domain one. Connections accepted from
    /// it are not counted.
    pub fn into_tcp(self) -> Result<TcpListener, WorkerListener> {
        match self.kind {
            StreamKind::Tcp => Ok(TcpListener::from(self.listener.into_fd())),
            StreamKind::Unix => Err(self),
        }
    }

    /// The std Unix-domain listener; gives this back for a TCP one. Connections accepted from
    /// it are not counted.
    pub fn into_unix(self) -> Result<UnixListener, WorkerListener> {
        match self.kind {
            StreamKind::Unix => Ok(UnixListener::from(self.listener.into_fd())),
            StreamKind::Tcp => Err(self),
        }
    }
}

impl AsFd for WorkerListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl AsRawFd for WorkerListener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_fd().as_raw_fd()
    }
}

impl Worker {
    /// Takes the listener out of herd's accept loop, for the program's own event loop (tokio,
    /// mio): from now on herd accepts nothing itself, and the program accepts on it. Call
    /// [`ready`](Self::ready) once the loop runs, and go on draining
    /// [`try_event`](Self::try_event) when the worker's own descriptor is readable: it still
    /// brings the primary's messages, its stop request, and — in reuseport mode — connections
    /// the primary hands over for slots without a worker.
    ///
    /// # Errors
    /// `Unsupported` in handoff mode (connections come over the lane: register the worker
    /// itself) and with the `blocking` strategy (its listener is in blocking mode, which is
    /// shared by every worker); `NotFound` if it was taken already or the worker is stopping.
    pub fn into_listener(&mut self) -> io::Result<WorkerListener> {
        match std::mem::replace(&mut self.accepting, Accepting::Nothing) {
            Accepting::Epoll(mut watch) => {
                watch.disarm(&self.epoll)?;
                Ok(WorkerListener {
                    listener: watch.listener,
                    kind: self.kind,
                    counters: self.counters.clone(),
                    slot: self.id,
                })
            }
            #[cfg(feature = "io-uring")]
            Accepting::Uring(uring) => {
                // Connections the ring took before the cancel are served here, as events.
                let mut taken = Vec::new();
                let (listener, spent) = uring.stop(&mut taken)?;
                self.spent_ring = Some(spent);
                for fd in taken {
                    self.counters.bump_worker(self.id, WorkerCounter::Accepts, 1);
                    let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id);
                    self.events.push_back(super::WorkerEvent::Connection(stream));
                }
                Ok(WorkerListener { listener, kind: self.kind, counters: self.counters.clone(), slot: self.id })
            }
            Accepting::Thread(acceptor) => {
                self.accepting = Accepting::Thread(acceptor);
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "into_listener: the blocking strategy's listener is in blocking mode for every worker; use an epoll strategy",
                ))
            }
            Accepting::Nothing if self.lane_only => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "into_listener: in handoff mode connections come over the lane; register the worker's descriptor instead",
            )),
            Accepting::Nothing => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "into_listener: the listener was taken already, or the worker is stopping",
            )),
        }
    }
}

//! Accept backends: how a worker (or, in handoff mode, the primary) takes connections off a
//! listener, and what it does with each way `accept4(2)` can fail.
//!
//! Two backends ([`Backend`]): **epoll** (`accept/epoll.rs`, always there; plus the blocking
//! thread of `accept/blocking.rs`) and **io_uring** (`accept/uring.rs`, with the cargo feature
//! `io-uring`: a multishot accept that delivers connections with no system call per
//! connection). Every backend sorts errors by one table, `classify`, written once in the style
//! of nginx's `ngx_event_accept.c`:
//!
//! | `accept4` result | meaning | what herd does |
//! |---|---|---|
//! | a descriptor | a connection | serve it |
//! | `EAGAIN` / `EWOULDBLOCK` | the queue is empty (another worker won the race) | stop, count an EAGAIN |
//! | `EINTR` | a signal interrupted the call | retry |
//! | `ECONNABORTED`, `EPROTO`, `ENETDOWN`, `ENOPROTOOPT`, `EHOSTDOWN`, `ENONET`, `EHOSTUNREACH`, `EOPNOTSUPP`, `ENETUNREACH`, `EPERM` | that one connection failed before it was accepted (see `accept(2)`, "Error handling") | skip it, accept the next |
//! | `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM` | out of descriptors or memory | back off: stop watching the listener for [`BACKOFF`], leave connections queued in the kernel (another worker may take them), then resume |
//! | anything else | a bug or a closed listener | report it |
//!
//! Backing off instead of accepting-and-closing (libuv's reserve-descriptor trick) is a choice:
//! herd never drops a connection it could serve a moment later.

pub(crate) mod blocking;
pub(crate) mod epoll;
#[cfg(feature = "io-uring")]
pub(crate) mod uring;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::time::Duration;

use crate::listener::Listener;

/// How connections are taken off listeners, by the workers and by the primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// epoll readiness, then `accept4` for each connection. Always available; the default.
    #[default]
    Epoll,
    /// io_uring: a multishot accept that delivers connections without a system call each; in
    /// handoff mode the primary also sends descriptors, closes its copies and reads
    /// acknowledgements through the ring. Needs the cargo feature `io-uring` and Linux 5.19;
    /// where either is missing, or the kernel refuses io_uring (`kernel.io_uring_disabled`, a
    /// seccomp filter), herd falls back to epoll and says why (an [`crate::Event::Warning`]).
    IoUring,
}

impl Backend {
    /// Both backends, in the order `herd bench` shows them.
    pub const ALL: [Backend; 2] = [Backend::Epoll, Backend::IoUring];

    /// The backend's name, as `--backend` takes it: `epoll` or `io-uring`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::IoUring => "io-uring",
        }
    }

    /// Whether this backend can run here; if not, why not.
    pub fn available(&self) -> Result<(), String> {
        match self {
            Backend::Epoll => Ok(()),
            #[cfg(feature = "io-uring")]
            Backend::IoUring => crate::sys::uring::probe(),
            #[cfg(not(feature = "io-uring"))]
            Backend::IoUring => Err("herd was built without the `io-uring` feature".to_owned()),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a string is not a [`Backend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseBackendError(String);

impl fmt::Display for ParseBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown backend {:?}: expected epoll or io-uring", self.0)
    }
}

impl std::error::Error for ParseBackendError {}

impl FromStr for Backend {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Backend, ParseBackendError> {
        Backend::ALL.into_iter().find(|b| b.name() == s).ok_or_else(|| ParseBackendError(s.to_owned()))
    }
}

/// How a worker waits for connections on its listener (the mode decides; see
/// [`crate::mode::Distribution::worker_accept`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A listener nobody else waits on (reuseport): level-triggered epoll, or a multishot
    /// accept on io_uring.
    Own,
    /// Level-triggered epoll: on a shared listener, every idle worker wakes (the herd).
    Level,
    /// `EPOLLEXCLUSIVE`: one wakes, the first registered first.
    Exclusive,
    /// `EPOLLEXCLUSIVE`, re-armed at the tail of the wait queue after each wakeup.
    Rotate,
    /// A thread parked in a blocking `accept` (the kernel's FIFO of exclusive waiters).
    Thread,
    /// [`Wait::Rotate`], and out of the wait queue while this worker holds more live
    /// connections than the mean (`epoll-balance`).
    Balance,
}

/// A listener a worker accepts on, how it waits on it, and with which backend.
#[derive(Debug)]
pub(crate) struct WorkerAccept {
    pub(crate) listener: Listener,
    pub(crate) wait: Wait,
    #[cfg_attr(not(feature = "io-uring"), allow(dead_code))]
    pub(crate) backend: Backend,
    /// [`Wait::Balance`]: the cluster's hand-on eventfd (see `accept/epoll.rs`).
    pub(crate) nudge: Option<crate::sys::eventfd::EventFd>,
}

impl WorkerAccept {
    /// `listener`, waited on as `wait` on epoll (the primary chooses the backend: [`Self::on`]).
    pub(crate) fn new(listener: Listener, wait: Wait) -> WorkerAccept {
        WorkerAccept { listener, wait, backend: Backend::Epoll, nudge: None }
    }

    /// The same, with the cluster's hand-on eventfd ([`Wait::Balance`]).
    pub(crate) fn with_nudge(self, nudge: Option<crate::sys::eventfd::EventFd>) -> WorkerAccept {
        WorkerAccept { nudge, ..self }
    }

    /// The same, on `backend`.
    pub(crate) fn on(self, backend: Backend) -> WorkerAccept {
        WorkerAccept { backend, ..self }
    }
}

#[cfg(feature = "io-uring")]
impl Wait {
    /// How this way of waiting is done on io_uring, or `None` if it has no io_uring form (the
    /// level-triggered herd, which io_uring's exclusive accept cannot reproduce, and the
    /// blocking thread, which needs no backend).
    pub(crate) fn on_uring(self) -> Option<UringWait> {
        match self {
            Wait::Own | Wait::Exclusive => Some(UringWait::Multishot),
            Wait::Rotate | Wait::Balance => Some(UringWait::Rearmed),
            Wait::Level | Wait::Thread => None,
        }
    }
}

/// How a worker waits on io_uring.
#[cfg(feature = "io-uring")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UringWait {
    /// One multishot accept, armed once: no system call per connection. Like `EPOLLEXCLUSIVE`
    /// it stays at its place in the listener's wait queue, so on a shared listener the first
    /// worker armed takes the most.
    Multishot,
    /// A single accept, submitted again after each connection: it goes back to the tail of the
    /// wait queue, so a shared listener's connections rotate over the idle workers.
    Rearmed,
}

/// How long a worker stops accepting after running out of descriptors.
pub const BACKOFF: Duration = Duration::from_millis(100);

/// What one `accept4` call came to, per the table above.
#[derive(Debug)]
pub(crate) enum Accepted {
    /// A connection.
    Connection(OwnedFd),
    /// `EAGAIN`: nothing to accept.
    Empty,
    /// A failure of one connection, or `EINTR`: try again at once.
    Retry,
    /// Out of descriptors or memory: back off.
    BackOff(io::Error),
    /// Anything else.
    Failed(io::Error),
}

/// Sorts an `accept4` error per the table in the module docs.
pub(crate) fn classify(err: io::Error) -> Accepted {
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Accepted::Empty,
        Some(
            libc::EINTR
            | libc::ECONNABORTED
            | libc::EPROTO
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::EPERM,
        ) => Accepted::Retry,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => Accepted::BackOff(err),
        _ => Accepted::Failed(err),
    }
}

/// [`accept`] on a listener another program shares and may have made blocking (its
/// `O_NONBLOCK` belongs to the open file, which the program holds too): looks first, and only
/// accepts if a connection is waiting, so the caller never sleeps in `accept4`.
pub(crate) fn accept_shared(listener: impl AsFd) -> Accepted {
    if !crate::sys::listen::has_pending(&listener) {
        return Accepted::Empty;
    }
    accept(listener)
}

/// One `accept4(SOCK_CLOEXEC | SOCK_NONBLOCK)`, classified.
pub(crate) fn accept(listener: impl AsFd) -> Accepted {
    match crate::sys::listen::accept(listener, true) {
        Ok(fd) => Accepted::Connection(fd),
        Err(e) => classify(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_table_sorts_errnos() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert!(matches!(classify(e(libc::EAGAIN)), Accepted::Empty));
        assert!(matches!(classify(e(libc::ECONNABORTED)), Accepted::Retry));
        assert!(matches!(classify(e(libc::EINTR)), Accepted::Retry));
        assert!(matches!(classify(e(libc::EMFILE)), Accepted::BackOff(_)));
        assert!(matches!(classify(e(libc::ENFILE)), Accepted::BackOff(_)));
        assert!(matches!(classify(e(libc::EBADF)), Accepted::Failed(_)));
    }
}

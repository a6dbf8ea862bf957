//! Accept loops: how a worker (or, in handoff mode, the primary) takes connections off a
//! listener, and what it does with each way `accept4(2)` can fail.
//!
//! The epoll backend (`accept/epoll.rs`) is always there. Every strategy shares one error
//! table, `classify`, written once in the style of nginx's `ngx_event_accept.c`:
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

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::listener::Listener;

/// How a worker waits for connections on its listener (the mode decides; see
/// [`crate::mode::Distribution::worker_accept`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Level-triggered epoll: on a shared listener, every idle worker wakes (the herd).
    Level,
    /// `EPOLLEXCLUSIVE`: one wakes, the first registered first.
    Exclusive,
    /// `EPOLLEXCLUSIVE`, re-armed at the tail of the wait queue after each wakeup.
    Rotate,
    /// A thread parked in a blocking `accept` (the kernel's FIFO of exclusive waiters).
    Thread,
}

/// A listener a worker accepts on, and how it waits on it.
#[derive(Debug)]
pub(crate) struct WorkerAccept {
    pub(crate) listener: Listener,
    pub(crate) wait: Wait,
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

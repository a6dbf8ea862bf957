//! **shared** — one listener, created by the primary before `fork` with `SO_REUSEADDR`;
//! every worker inherits it and accepts on it. Node's `SCHED_NONE`, nginx's default.
//!
//! The kernel keeps one accept queue; who gets each connection depends on how the workers wait
//! for it, which is the [`SharedAccept`] strategy.

use std::fmt;
use std::io;
use std::str::FromStr;

use super::ParseModeError;
use crate::ListenAddr;
use crate::accept::blocking::{BlockingAcceptor, LOOK_UP_EVERY};
use crate::accept::epoll::{ListenerWatch, Watch};
use crate::listener::{BindOptions, Listener};
use crate::stats::Counters;
use crate::worker::Source;

/// How workers wait on the shared listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SharedAccept {
    /// Level-triggered epoll in every worker: each connection wakes every idle worker (the
    /// thundering herd, kept so it can be measured).
    Epoll,
    /// `EPOLLEXCLUSIVE`: one wakeup per connection, but the first-registered idle worker wins
    /// nearly every time under light load (unfair).
    EpollExclusive,
    /// `EPOLLEXCLUSIVE`, re-armed at the tail of the wait queue after each wakeup: no herd,
    /// round-robin over idle workers. The default.
    #[default]
    EpollRotate,
    /// A thread per worker parked in a blocking `accept`: the kernel queues blocked acceptors
    /// FIFO and wakes one, so this is fair too.
    Blocking,
}

impl SharedAccept {
    /// Every strategy, in the order `herd bench` shows them.
    pub const ALL: [SharedAccept; 4] =
        [SharedAccept::Epoll, SharedAccept::EpollExclusive, SharedAccept::EpollRotate, SharedAccept::Blocking];

    /// The strategy's name, as `--accept` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            SharedAccept::Epoll => "epoll",
            SharedAccept::EpollExclusive => "epoll-exclusive",
            SharedAccept::EpollRotate => "epoll-rotate",
            SharedAccept::Blocking => "blocking",
        }
    }
}

impl FromStr for SharedAccept {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<SharedAccept, ParseModeError> {
        SharedAccept::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| ParseModeError {
            what: "accept strategy",
            input: s.to_owned(),
            expected: "epoll, epoll-exclusive, epoll-rotate, blocking",
        })
    }
}

impl fmt::Display for SharedAccept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Creates the one shared listener. It is non-blocking for the epoll strategies, blocking (with
/// `SO_RCVTIMEO`) for [`SharedAccept::Blocking`] — `O_NONBLOCK` belongs to the open file, which
/// every worker shares, so the whole cluster uses one strategy.
pub(crate) fn bind(addr: &ListenAddr, strategy: SharedAccept, base: BindOptions) -> io::Result<Listener> {
    let blocking = strategy == SharedAccept::Blocking;
    let listener = Listener::bind(addr, BindOptions { reuseport: false, nonblocking: !blocking, ..base })?;
    if blocking {
        crate::sys::listen::set_accept_timeout(&listener, LOOK_UP_EVERY)?;
    }
    Ok(listener)
}

/// The worker's source for its copy of the shared listener.
pub(crate) fn worker_source(
    listener: Listener,
    strategy: SharedAccept,
    counters: &Counters,
    slot: usize,
    token: u64,
) -> io::Result<Source> {
    let watch = match strategy {
        SharedAccept::Epoll => Watch::Level,
        SharedAccept::EpollExclusive => Watch::Exclusive,
        SharedAccept::EpollRotate => Watch::Rotate,
        SharedAccept::Blocking => {
            return Ok(Source::Blocking(BlockingAcceptor::start(listener, counters.clone(), slot)?));
        }
    };
    Ok(Source::Listener(ListenerWatch::new(listener, watch, token)))
}

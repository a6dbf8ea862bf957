//! **shared** — one listener, created by the primary before `fork` with `SO_REUSEADDR`;
//! every worker inherits it and accepts on it. Node's `SCHED_NONE`, nginx's default.
//!
//! The kernel keeps one accept queue; who gets each connection depends on how the workers wait
//! for it, which is the [`SharedAccept`] strategy.

use std::fmt;
use std::io;
use std::str::FromStr;

use super::{Distribution, ParseModeError, Slots};
use crate::ListenAddr;
use crate::accept::blocking::LOOK_UP_EVERY;
use crate::accept::{Wait, WorkerAccept};
use crate::listener::{BindOptions, Listener};
use crate::upgrade::{Line, Writer};
use std::os::fd::AsFd;

/// How workers wait on the shared listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SharedAccept {
    /// Level-triggered epoll in every worker: each connection wakes every idle worker (the
    /// thundering herd, kept so it can be measured).
    Epoll,
    /// `EPOLLEXCLUSIVE`: one wakeup per connection, but the first-registered idle worker wins
    /// nearly every time under light load (unfair).
    EpollExclusive,
    /// `EPOLLEXCLUSIVE`, re-armed at the tail of the wait queue after each wakeup: no herd,
    /// round-robin over idle workers.
    EpollRotate,
    /// A thread per worker parked in a blocking `accept`: the kernel queues blocked acceptors
    /// FIFO and wakes one, so this is fair too.
    Blocking,
    /// `epoll-rotate`, load-aware: a worker whose live connections are above the mean of the
    /// workers that take connections (read from the shared counters, no message) steps out of
    /// the listener's wait queue until it is back at the mean — nginx's `ngx_accept_disabled`,
    /// made exact. Even under long keep-alive connections, which rotation alone cannot spread:
    /// whoever is back in its wait first takes the connection, however many it holds. The
    /// default (docs/fairness.md has the measurements that chose it).
    #[default]
    EpollBalance,
}

impl SharedAccept {
    /// Every strategy, in the order `herd bench` shows them.
    pub const ALL: [SharedAccept; 5] = [
        SharedAccept::Epoll,
        SharedAccept::EpollExclusive,
        SharedAccept::EpollRotate,
        SharedAccept::Blocking,
        SharedAccept::EpollBalance,
    ];

    /// The strategy's name, as `--accept` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            SharedAccept::Epoll => "epoll",
            SharedAccept::EpollExclusive => "epoll-exclusive",
            SharedAccept::EpollRotate => "epoll-rotate",
            SharedAccept::Blocking => "blocking",
            SharedAccept::EpollBalance => "epoll-balance",
        }
    }
}

impl FromStr for SharedAccept {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<SharedAccept, ParseModeError> {
        SharedAccept::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| ParseModeError {
            what: "accept strategy",
            input: s.to_owned(),
            expected: "epoll, epoll-exclusive, epoll-rotate, blocking, epoll-balance",
        })
    }
}

impl fmt::Display for SharedAccept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shared mode: one listener, and every worker accepts on it.
#[derive(Debug)]
pub(crate) struct Shared {
    listener: Option<Listener>,
    strategy: SharedAccept,
    /// `epoll-balance`: the hand-on eventfd every worker watches (see `accept/epoll.rs`).
    nudge: Option<crate::sys::eventfd::EventFd>,
}

impl Shared {
    /// Creates the one shared listener. It is non-blocking for the epoll strategies, blocking
    /// (with `SO_RCVTIMEO`) for [`SharedAccept::Blocking`] — `O_NONBLOCK` belongs to the open
    /// file, which every worker shares, so the whole cluster uses one strategy.
    pub(crate) fn bind(
        addr: &ListenAddr,
        strategy: SharedAccept,
        base: BindOptions,
        inherited: Option<Listener>,
    ) -> io::Result<(Shared, ListenAddr)> {
        let blocking = strategy == SharedAccept::Blocking;
        let listener = match inherited {
            Some(listener) => {
                listener.set_nonblocking(!blocking)?;
                listener
            }
            None => Listener::bind(addr, BindOptions { reuseport: false, nonblocking: !blocking, ..base })?,
        };
        if blocking {
            crate::sys::listen::set_accept_timeout(&listener, LOOK_UP_EVERY)?;
        }
        let bound = super::bound_addr(addr, &listener)?;
        let nudge = match strategy {
            SharedAccept::EpollBalance => Some(crate::sys::eventfd::EventFd::new()?),
            _ => None,
        };
        Ok((Shared { listener: Some(listener), strategy, nudge }, bound))
    }
}

impl Shared {
    pub(crate) fn import(strategy: SharedAccept, lines: &[Line]) -> io::Result<Shared> {
        let line = super::line(lines, "mode_shared")?;
        let listener = line.opt_fd("listener")?.map(Listener::adopt);
        let nudge = line.opt_fd("nudge")?.map(crate::sys::eventfd::EventFd::adopt);
        Ok(Shared { listener, strategy, nudge })
    }
}

impl Distribution for Shared {
    fn uses_lanes(&self) -> bool {
        false
    }

    fn listener_count(&self) -> usize {
        1
    }

    fn listener(&self, id: usize) -> Option<&Listener> {
        self.listener.as_ref().filter(|_| id == 0)
    }

    /// Never: the workers share one accept queue, so a slot without a worker strands nothing —
    /// the others take what it would have.
    fn primary_accepts(&self, _id: usize, _slots: &dyn Slots) -> bool {
        false
    }

    fn prepare_slot(&mut self, _slot: usize) -> io::Result<()> {
        Ok(())
    }

    fn release_slot(&mut self, _slot: usize) -> Option<Listener> {
        None
    }

    fn export(&self, w: &mut Writer) {
        let line = w.line("mode_shared");
        match &self.listener {
            Some(l) => line.fd("listener", l.as_fd()),
            None => line.kv("listener", "-"),
        };
        match &self.nudge {
            Some(n) => line.fd("nudge", n.as_fd()),
            None => line.kv("nudge", "-"),
        };
    }

    fn worker_accept(&mut self, _slot: usize) -> Option<WorkerAccept> {
        let wait = self.strategy.wait();
        let nudge = self.nudge.take();
        self.listener.take().map(|listener| WorkerAccept::new(listener, wait).with_nudge(nudge))
    }
}

impl SharedAccept {
    /// How a worker waits on the shared listener with this strategy.
    pub(crate) fn wait(self) -> Wait {
        match self {
            SharedAccept::Epoll => Wait::Level,
            SharedAccept::EpollExclusive => Wait::Exclusive,
            SharedAccept::EpollRotate => Wait::Rotate,
            SharedAccept::Blocking => Wait::Thread,
            SharedAccept::EpollBalance => Wait::Balance,
        }
    }
}

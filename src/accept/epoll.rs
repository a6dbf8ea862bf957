//! The epoll accept backend: how a worker's epoll instance watches its listener.
//!
//! Three ways, one per shared-mode strategy (reuseport uses [`Wait::Own`]: level-triggered on
//! its own listener, where there is nobody to race):
//!
//! - [`Wait::Level`] — a plain level-triggered `EPOLLIN`. When every worker's epoll watches
//!   the same listener, each new connection wakes *every* idle worker; one wins `accept`, the
//!   others get `EAGAIN` and go back to sleep. That is the thundering herd, kept on purpose so
//!   it can be measured.
//! - [`Wait::Exclusive`] — `EPOLLEXCLUSIVE` (Linux 4.5): the kernel wakes one idle waiter
//!   instead of all. No herd, but the kernel tries the epoll instances in the order they were
//!   registered on the listener, so under light load the first idle worker gets nearly every
//!   connection.
//! - [`Wait::Rotate`] — `EPOLLEXCLUSIVE`, re-armed after every wakeup: `EPOLL_CTL_DEL` then
//!   `EPOLL_CTL_ADD` moves this worker's entry to the tail of the listener's wait queue, so the
//!   next connection goes to the next idle worker. Two extra system calls per wakeup buy
//!   round-robin fairness with no herd and no extra thread (this is what the proposed
//!   `EPOLLROUNDROBIN` flag would have done in the kernel).
//! - [`Wait::Balance`] — `Wait::Rotate`, and out of the wait queue (`EPOLL_CTL_DEL`) while the
//!   worker holds more live connections than the mean of the workers that serve, as the shared
//!   counters say; back in (`EPOLL_CTL_ADD`) once it is at the mean again. Rotation alone cannot
//!   spread long keep-alive connections: the kernel gives a wakeup to the first exclusive
//!   entry in the queue whether or not its worker is waiting, so a busy worker keeps taking
//!   new connections it will only get to later. The same rule has a trap: connections that
//!   arrived while a worker was first in the queue woke *it*, and nobody else will be woken
//!   for them; so a worker that steps out with connections still queued writes to the
//!   cluster's **hand-on eventfd**, which every balancing worker in the queue watches with
//!   `EPOLLEXCLUSIVE`: one of them wakes and takes them.
//!
//! A caveat the docs repeat: `EPOLLEXCLUSIVE` only helps when the worker is blocked in
//! `epoll_wait` on *this* epoll instance. Nest it in another epoll (as a foreign event loop
//! does with [`crate::Worker`]'s descriptor) and the kernel sees no direct waiter, so it keeps
//! looking and wakes every nested instance: the herd comes back.

use std::io;

use super::Wait;
use crate::listener::Listener;
use crate::sys::epoll::{Epoll, Interest};
use crate::sys::eventfd::EventFd;

/// A listener registered (or not, while backing off) in a worker's epoll.
#[derive(Debug)]
pub(crate) struct ListenerWatch {
    pub(crate) listener: Listener,
    wait: Wait,
    token: u64,
    armed: bool,
    /// [`Wait::Balance`]: the cluster's hand-on eventfd, watched (exclusively) beside the
    /// listener under `nudge_token`.
    nudge: Option<(EventFd, u64)>,
}

impl ListenerWatch {
    /// `wait` is one of the epoll ways ([`Wait::Level`], [`Wait::Exclusive`], [`Wait::Rotate`]).
    pub(crate) fn new(listener: Listener, wait: Wait, token: u64) -> ListenerWatch {
        ListenerWatch { listener, wait, token, armed: false, nudge: None }
    }

    /// Watches `nudge` too, under `token`, while the listener is watched ([`Wait::Balance`]).
    pub(crate) fn with_nudge(mut self, nudge: Option<EventFd>, token: u64) -> ListenerWatch {
        self.nudge = nudge.map(|n| (n, token));
        self
    }

    /// Steps out of the wait queue (`epoll-balance`). Connections still queued had their
    /// wakeups delivered here, and no other worker would hear of them: the hand-on eventfd
    /// wakes one worker still in the queue to take them.
    pub(crate) fn step_out(&mut self, epoll: &Epoll) -> io::Result<()> {
        self.disarm(epoll)?;
        if let Some((nudge, _)) = &self.nudge {
            if crate::sys::listen::has_pending(&self.listener) {
                nudge.notify();
            }
        }
        Ok(())
    }

    /// A hand-on arrived: consume it (the eventfd is level-triggered).
    pub(crate) fn take_nudge(&self) {
        if let Some((nudge, _)) = &self.nudge {
            nudge.clear();
        }
    }

    fn interest(&self) -> Interest {
        Interest {
            exclusive: matches!(self.wait, Wait::Exclusive | Wait::Rotate | Wait::Balance),
            ..Interest::READABLE
        }
    }

    /// Starts watching (`EPOLL_CTL_ADD`).
    pub(crate) fn arm(&mut self, epoll: &Epoll) -> io::Result<()> {
        if !self.armed {
            epoll.add(&self.listener, self.token, self.interest())?;
            if let Some((nudge, token)) = &self.nudge {
                epoll.add(nudge, *token, self.interest())?;
            }
            self.armed = true;
        }
        Ok(())
    }

    /// Stops watching (`EPOLL_CTL_DEL`).
    pub(crate) fn disarm(&mut self, epoll: &Epoll) -> io::Result<()> {
        if self.armed {
            epoll.delete(&self.listener)?;
            if let Some((nudge, _)) = &self.nudge {
                epoll.delete(nudge)?;
            }
            self.armed = false;
        }
        Ok(())
    }

    /// Called once the worker has drained the listener after a wakeup.
    pub(crate) fn after_wakeup(&mut self, epoll: &Epoll) -> io::Result<()> {
        if matches!(self.wait, Wait::Rotate | Wait::Balance) && self.armed {
            // The listener only: the hand-on eventfd is rarely used, and need not rotate.
            epoll.delete(&self.listener)?;
            epoll.add(&self.listener, self.token, self.interest())?;
        }
        Ok(())
    }
}

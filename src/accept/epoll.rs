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
//!
//! A caveat the docs repeat: `EPOLLEXCLUSIVE` only helps when the worker is blocked in
//! `epoll_wait` on *this* epoll instance. Nest it in another epoll (as a foreign event loop
//! does with [`crate::Worker`]'s descriptor) and the kernel sees no direct waiter, so it keeps
//! looking and wakes every nested instance: the herd comes back.

use std::io;

use super::Wait;
use crate::listener::Listener;
use crate::sys::epoll::{Epoll, Interest};

/// A listener registered (or not, while backing off) in a worker's epoll.
#[derive(Debug)]
pub(crate) struct ListenerWatch {
    pub(crate) listener: Listener,
    wait: Wait,
    token: u64,
    armed: bool,
}

impl ListenerWatch {
    /// `wait` is one of the epoll ways ([`Wait::Level`], [`Wait::Exclusive`], [`Wait::Rotate`]).
    pub(crate) fn new(listener: Listener, wait: Wait, token: u64) -> ListenerWatch {
        ListenerWatch { listener, wait, token, armed: false }
    }

    fn interest(&self) -> Interest {
        Interest { exclusive: matches!(self.wait, Wait::Exclusive | Wait::Rotate), ..Interest::READABLE }
    }

    /// Starts watching (`EPOLL_CTL_ADD`).
    pub(crate) fn arm(&mut self, epoll: &Epoll) -> io::Result<()> {
        if !self.armed {
            epoll.add(&self.listener, self.token, self.interest())?;
            self.armed = true;
        }
        Ok(())
    }

    /// Stops watching (`EPOLL_CTL_DEL`).
    pub(crate) fn disarm(&mut self, epoll: &Epoll) -> io::Result<()> {
        if self.armed {
            epoll.delete(&self.listener)?;
            self.armed = false;
        }
        Ok(())
    }

    /// Called once the worker has drained the listener after a wakeup.
    pub(crate) fn after_wakeup(&mut self, epoll: &Epoll) -> io::Result<()> {
        if self.wait == Wait::Rotate && self.armed {
            self.disarm(epoll)?;
            self.arm(epoll)?;
        }
        Ok(())
    }
}

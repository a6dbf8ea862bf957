//! Handoff mode's accepting, in the primary: accept in batches, hand each connection to the
//! dispatcher, and stop watching the listener when descriptors run out, the queue is full, or
//! the cluster is shutting down.

use std::io;

use super::{Primary, TOKEN_LISTENER};
use crate::accept::{self, Accepted};
use crate::cluster::Listeners;
use crate::stats::PrimaryCounter;
use crate::sys::epoll::Interest;

/// How many connections the primary accepts per wakeup before looking at its channels again.
const ACCEPT_BATCH: usize = 64;

/// Why the primary is not watching its listener (handoff mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AcceptPause {
    /// Out of descriptors: resume when the back-off timer fires.
    BackOff,
    /// The queue reached its limit: resume when it is half empty.
    QueueFull,
    /// Shutting down.
    Stopped,
}

impl Primary {
    /// Handoff: accepts up to [`ACCEPT_BATCH`] connections and gives each to a worker.
    pub(super) fn accept_and_dispatch(&mut self) -> io::Result<()> {
        let Some(Listeners::Handoff(listener)) = &self.listeners else { return Ok(()) };
        let Some(dispatcher) = &mut self.dispatcher else { return Ok(()) };
        let workers = &self.workers;
        let mut backoff = None;
        for _ in 0..ACCEPT_BATCH {
            match accept::accept(listener) {
                Accepted::Connection(fd) => {
                    self.counters.bump_primary(PrimaryCounter::Accepted, 1);
                    dispatcher.dispatch(fd, |k| workers.get(&k).filter(|w| w.connected).map(|w| &w.channel));
                }
                Accepted::Empty => break,
                Accepted::Retry => continue,
                Accepted::BackOff(e) => {
                    backoff = Some(e);
                    break;
                }
                Accepted::Failed(e) => return Err(crate::sys::context(e, "primary: accept4")),
            }
        }
        if let Some(e) = backoff {
            eprintln!("herd: primary: accept4: {e}; pausing accepts for {:?}", accept::BACKOFF);
            self.pause_accepting(AcceptPause::BackOff)?;
            self.io().backoff.arm(accept::BACKOFF)?;
        } else if dispatcher.queued() >= self.config.handoff_queue_limit {
            self.pause_accepting(AcceptPause::QueueFull)?;
        }
        Ok(())
    }

    pub(super) fn pause_accepting(&mut self, why: AcceptPause) -> io::Result<()> {
        if self.accept_paused.is_none() {
            if let Some(Listeners::Handoff(l)) = &self.listeners {
                self.io().epoll.delete(l)?;
            }
        }
        if self.accept_paused != Some(AcceptPause::Stopped) {
            self.accept_paused = Some(why);
        }
        Ok(())
    }

    pub(super) fn resume_accepting(&mut self, why: AcceptPause) -> io::Result<()> {
        if self.accept_paused != Some(why) {
            return Ok(());
        }
        self.accept_paused = None;
        if let Some(Listeners::Handoff(l)) = &self.listeners {
            self.io().epoll.add(l, TOKEN_LISTENER, Interest::READABLE)?;
        }
        Ok(())
    }
}

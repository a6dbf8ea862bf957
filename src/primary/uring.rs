//! The primary on io_uring (handoff mode with [`crate::Backend::IoUring`]).
//!
//! The ring is the primary's waiter: each turn is one `io_uring_enter` that submits everything
//! the last turn queued and waits for the next completion. Everything else the primary watches
//! — signals, the alarm, the workers' control channels and pidfds — stays in its epoll
//! instance, and that instance is itself watched by a poll in the ring, so it costs an
//! `epoll_wait` only when one of them has something to say, never per connection.
//!
//! | per handed-off connection | epoll | io_uring |
//! |---|---|---|
//! | take it off the listener | `accept4` (after an `epoll_wait` per burst) | a multishot `IORING_OP_ACCEPT`: a completion, no call |
//! | hand it to a worker | a share of one `sendmsg` per batch | a share of one `IORING_OP_SENDMSG` per batch |
//! | close the primary's copy | `close` | `IORING_OP_CLOSE` |
//! | read the worker's ack | a share of `epoll_wait` + `recvmsg` per ack | an `IORING_OP_RECV` completion |
//!
//! and one `io_uring_enter` per turn for all of it, however many connections the turn moved.
//! The primary's descriptor ([`std::os::fd::AsFd`]) is then the ring's, readable when
//! completions wait.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::Primary;
use crate::accept::{self, Accepted};
use crate::stats::PrimaryCounter;
use crate::sys::uring::{Completion, PollFor, Ring};

/// The kinds of the primary's own ring operations, in the top byte of their tags (the
/// dispatcher's are `mode::handoff::uring`'s).
const KIND_SHIFT: u32 = 56;
const ACCEPT: u64 = 0x21;
const EPOLL: u64 = 0x22;

/// Submission queue entries; the completion queue is four times as deep, and the kernel keeps
/// what overflows it.
const ENTRIES: u32 = 256;

/// A turn that moved at least this many connections means the primary is busy: the next wait
/// gathers a batch — [`BATCH`] completions, or what [`LINGER`] brings — instead of waking for
/// each one (interrupt coalescing, as a NIC does). Measured on the project's machine (4
/// workers, 64 connections in flight, churn, 2026-11-29), the primary's system calls per
/// connection were 0.34 without lingering, 0.29 at 50 µs, 0.20 at 100 µs, 0.16 at 200 µs and
/// 0.09 at 400 µs; 100 µs is under a tenth of that load's median latency (1.4 ms). A light
/// load never lingers: a turn that moved one connection is not busy.
const BUSY: usize = 2;
const BATCH: usize = 16;
const LINGER: Duration = Duration::from_micros(100);

/// The primary's ring and what it has armed.
#[derive(Debug)]
pub(super) struct PrimaryRing {
    pub(super) ring: Ring,
    /// The multishot accept armed on each listener, by listener id: its operation, and the
    /// arm number its tag carries (to tell its completions from an earlier arm's).
    accepts: BTreeMap<usize, (u64, u32)>,
    arms: u32,
    /// The last turn moved [`BUSY`] connections or more: gather the next ones in a batch.
    busy: bool,
    /// The poll on the primary's epoll instance is in the ring.
    epoll_armed: bool,
    completions: Vec<Completion>,
}

impl PrimaryRing {
    pub(super) fn new() -> io::Result<PrimaryRing> {
        Ok(PrimaryRing {
            ring: Ring::new(ENTRIES)?,
            accepts: BTreeMap::new(),
            arms: 0,
            busy: false,
            epoll_armed: false,
            completions: Vec::new(),
        })
    }

    /// Arms a multishot accept on listener `id`.
    pub(super) fn arm_accept(&mut self, id: usize, listener: impl AsFd) -> io::Result<()> {
        self.arms = self.arms.wrapping_add(1);
        let tag = (ACCEPT << KIND_SHIFT) | ((self.arms as u64) << 24) | (id as u64 & 0xff_ffff);
        let op = self.ring.accept(listener.as_fd(), tag, true)?;
        self.accepts.insert(id, (op, self.arms));
        Ok(())
    }

    /// Cancels listener `id`'s accept. Connections it took before the cancellation still come.
    /// If the cancellation cannot be queued, the accept stays on the books (and armed).
    pub(super) fn disarm_accept(&mut self, id: usize) -> io::Result<()> {
        let Some(&(op, _)) = self.accepts.get(&id) else { return Ok(()) };
        self.ring.cancel(op)?;
        self.accepts.remove(&id);
        Ok(())
    }
}

impl Primary {
    /// One `io_uring_enter`: submits what the last turn queued and waits, at most `timeout`,
    /// for a completion; then handles every completion. Returns how many.
    pub(super) fn turn_ring(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let mut completions = {
            let r = self.ring_mut().expect("turn_ring runs with a ring");
            if timeout == Some(Duration::ZERO) {
                // A host polls the ring's notifier level-triggered: clear it, then look.
                r.ring.clear_notifier();
                r.ring.submit()?;
            } else if r.busy {
                r.ring.submit_and_wait_for_batch(timeout, BATCH, LINGER)?;
            } else {
                r.ring.submit_and_wait(timeout)?;
            }
            let mut completions = std::mem::take(&mut r.completions);
            r.ring.completions(&mut completions);
            completions
        };
        let n = completions.len();
        let mut accepted: Vec<OwnedFd> = Vec::new();
        let mut epoll_ready = false;
        for completion in completions.drain(..) {
            match completion {
                Completion::Accepted { tag, result, more } => self.on_ring_accept(tag, result, more, &mut accepted),
                Completion::Polled { tag, result } if tag >> KIND_SHIFT == EPOLL => {
                    if let Some(r) = self.ring_mut() {
                        r.epoll_armed = false;
                    }
                    if let Err(e) = result {
                        self.warn(format!("io_uring: polling the primary's epoll instance: {e}"));
                    }
                    epoll_ready = true;
                }
                other if crate::mode::handoff::uring::owns(other.tag()) => {
                    if let Some(d) = &mut self.dispatcher {
                        d.on_completion(other);
                    }
                }
                // Nothing else is queued with a tag of its own (closes and cancellations
                // complete silently).
                _ => {}
            }
        }
        let moved = accepted.len();
        if let Some(r) = self.ring_mut() {
            r.completions = completions;
            r.busy = moved >= BUSY;
        }
        if !accepted.is_empty() {
            self.counters.bump_primary(PrimaryCounter::Accepted, accepted.len() as u64);
            self.hand_on_accepted(accepted);
        }
        // What the epoll instance reports (signals, exits, messages) comes last: acting on it
        // may fork (a replacement, a reload, a scale-up), and a fork copies every descriptor
        // open at the time — connections still in a local here would stay open in the child
        // for its whole life. By now every one of them is the dispatcher's (which a forked
        // child drops).
        if epoll_ready {
            let mut ready = std::mem::take(&mut self.ready);
            let result =
                self.io().epoll.wait(&mut ready, Some(Duration::ZERO)).and_then(|_| self.dispatch_ready(&ready));
            self.ready = ready;
            result?;
        }
        self.after_turn()?;
        Ok(n)
    }

    /// A completion of a listener's multishot accept.
    fn on_ring_accept(&mut self, tag: u64, result: io::Result<OwnedFd>, more: bool, accepted: &mut Vec<OwnedFd>) {
        let id = (tag & 0xff_ffff) as usize;
        let arm = ((tag >> 24) & 0xffff_ffff) as u32;
        if !more {
            // This arm has ended; if it is the current one, the listener is no longer watched.
            if let Some(r) = self.ring_mut() {
                if r.accepts.get(&id).is_some_and(|&(_, a)| a == arm) {
                    r.accepts.remove(&id);
                    self.accepting.unwatch(id);
                }
            }
        }
        match result {
            Ok(fd) => accepted.push(fd),
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) => match accept::classify(e) {
                Accepted::Connection(fd) => accepted.push(fd),
                Accepted::Empty | Accepted::Retry => {}
                Accepted::BackOff(e) => self.back_off_accepting(&e),
                Accepted::Failed(e) => self.warn(format!("io_uring accept on listener {id}: {e}")),
            },
        }
    }

    /// What every turn on the ring ends with: the dispatcher's batches and receives go into
    /// the ring, and the poll on the epoll instance is armed again if it fired.
    pub(super) fn ring_after_turn(&mut self) {
        let Some(io) = self.io.as_mut() else { return };
        let Some(r) = io.ring.as_mut() else { return };
        if let Some(d) = &mut self.dispatcher {
            d.flush(&mut r.ring);
        }
        if !r.epoll_armed {
            match r.ring.poll(io.epoll.as_fd(), PollFor::Readable, EPOLL << KIND_SHIFT) {
                Ok(_) => r.epoll_armed = true,
                Err(e) => {
                    let message = format!("io_uring: watching the primary's epoll instance: {e}");
                    self.warn(message);
                }
            }
        }
    }

    /// Hands what the ring queued to the kernel, before the caller waits on the primary's
    /// descriptor: a poll not yet submitted would never make it readable.
    pub(super) fn submit_ring(&mut self) -> io::Result<()> {
        match self.ring_mut() {
            Some(r) => r.ring.submit(),
            None => Ok(()),
        }
    }

    fn ring_mut(&mut self) -> Option<&mut PrimaryRing> {
        self.io.as_mut().and_then(|io| io.ring.as_mut())
    }
}

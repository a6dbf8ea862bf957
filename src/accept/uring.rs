//! The io_uring accept backend, for a worker: its listener's accept runs in a ring whose
//! descriptor sits in the worker's epoll instance, so connections arrive as completions and the
//! worker's three ways of taking them (the iterator, its own loop, a foreign loop) work as on
//! epoll.
//!
//! - [`UringWait::Multishot`] arms one multishot accept: every connection is a completion, with
//!   no system call of the worker's own to take it — only the `epoll_wait` that wakes it, shared
//!   by every completion waiting. The accept stays armed until an error ends it (it is then
//!   armed again, or after the `EMFILE` back-off).
//! - [`UringWait::Rearmed`] submits a single accept, and after each connection submits it
//!   again only when the worker is about to wait ([`UringAccept::before_wait`]): the worker
//!   goes back to the tail of the listener's wait queue, so connections rotate over the idle
//!   workers (the fair strategy for a shared listener), and a busy worker has no accept in the
//!   queue to claim a connection it cannot serve yet. One `io_uring_enter` per connection.
//!
//! Why the second half matters: io_uring's accept waits on the listener exclusively, and the
//! wakeup goes to the first armed accept whether or not its worker is waiting — unlike
//! `EPOLLEXCLUSIVE`, which passes a wakeup on when nobody waits on an epoll instance. A
//! multishot accept stays armed while its worker is busy, so on a shared listener a connection
//! can wait behind a long request in one worker while another worker idles (and, with the
//! ring's work deferred to its owner, it is not even accepted until then).
//!
//! Errors are sorted by the same table as on epoll ([`super::classify`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::{Accepted, UringWait};
use crate::listener::Listener;
use crate::sys::uring::{Completion, Ring};

/// A worker's listener, accepted on through a ring.
#[derive(Debug)]
pub(crate) struct UringAccept {
    ring: Ring,
    pub(crate) listener: Listener,
    wait: UringWait,
    /// The accept in flight, if any.
    armed: Option<u64>,
    /// `epoll-balance` stepped this worker out: the accept is not submitted again until it is
    /// back at the mean. (A single accept takes one connection and leaves the rest queued for
    /// the other workers' accepts: nothing needs handing on.)
    paused: bool,
    /// It ended out of descriptors: not armed again until [`arm`](Self::arm) after the back-off.
    backing_off: bool,
    completions: Vec<Completion>,
}

impl UringAccept {
    /// Sets up a ring for `listener` and arms its accept.
    pub(crate) fn new(listener: Listener, wait: UringWait) -> io::Result<UringAccept> {
        let mut accept = UringAccept {
            ring: Ring::new(64)?,
            listener,
            wait,
            armed: None,
            paused: false,
            backing_off: false,
            completions: Vec::new(),
        };
        accept.arm()?;
        Ok(accept)
    }

    /// Arms the accept (if it is not armed) and submits.
    /// Steps out of (or back into) the accept queue: a rearmed accept is not submitted again
    /// while paused.
    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    pub(crate) fn arm(&mut self) -> io::Result<()> {
        self.backing_off = false;
        if self.armed.is_none() {
            let multishot = self.wait == UringWait::Multishot;
            self.armed = Some(self.ring.accept(self.listener.as_fd(), 0, multishot)?);
        }
        self.ring.submit()
    }

    /// The worker is about to wait: a [`UringWait::Rearmed`] accept goes back into the
    /// listener's wait queue now (unless backing off).
    pub(crate) fn before_wait(&mut self) -> io::Result<()> {
        if self.wait == UringWait::Rearmed && self.armed.is_none() && !self.backing_off && !self.paused {
            self.arm()?;
        }
        Ok(())
    }

    /// What the ring delivered since the last call, sorted by the error table; re-arms a
    /// multishot accept that has ended (a rearmed one waits for [`before_wait`](Self::before_wait)),
    /// unless it ended out of descriptors (the caller backs off and calls [`arm`](Self::arm)
    /// after).
    pub(crate) fn take(&mut self, out: &mut Vec<Accepted>) -> io::Result<()> {
        // The kernel's work for the ring waits for this call (see `Ring::new`): it accepts
        // what is waiting and posts the completions.
        self.ring.run_and_take(&mut self.completions)?;
        let mut backing_off = false;
        for completion in self.completions.drain(..) {
            let Completion::Accepted { result, more, .. } = completion else { continue };
            if !more {
                self.armed = None;
            }
            let accepted = match result {
                Ok(fd) => Accepted::Connection(fd),
                // Cancelled: the worker is stopping or handing its listener over.
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => continue,
                Err(e) => super::classify(e),
            };
            backing_off |= matches!(accepted, Accepted::BackOff(_));
            out.push(accepted);
        }
        self.backing_off |= backing_off;
        if self.armed.is_none() && !self.backing_off && self.wait == UringWait::Multishot {
            self.arm()?;
        }
        Ok(())
    }

    /// Stops accepting: cancels the accept and waits for it to end, handing over every
    /// connection it had already taken. Gives the listener back, and the ring, to keep until
    /// the worker ends ([`Spent`]).
    pub(crate) fn stop(mut self, out: &mut Vec<OwnedFd>) -> io::Result<(Listener, Spent)> {
        if let Some(id) = self.armed {
            self.ring.cancel(id)?;
            let mut accepted = Vec::new();
            // The cancellation completes at once; the bound is for a kernel that misbehaves.
            for _ in 0..100 {
                self.ring.submit_and_wait(Some(Duration::from_millis(10)))?;
                self.ring.completions(&mut self.completions);
                for completion in self.completions.drain(..) {
                    if let Completion::Accepted { result, more, .. } = completion {
                        if let Ok(fd) = result {
                            accepted.push(fd);
                        }
                        if !more {
                            self.armed = None;
                        }
                    }
                }
                if self.armed.is_none() {
                    break;
                }
            }
            out.extend(accepted);
        }
        let UringAccept { listener, ring, .. } = self;
        Ok((listener, Spent(ring)))
    }
}

/// A ring whose accept has ended, kept open until the worker ends. Closing a ring interrupts
/// the thread that set it up, some milliseconds later (the kernel's exit work for the ring): a
/// worker still serving its last connections with blocking reads under a timeout would see
/// `EINTR`. At the worker's end it no longer matters.
#[derive(Debug)]
pub(crate) struct Spent(#[allow(dead_code)] Ring);

impl AsFd for UringAccept {
    /// The ring's notifier: signalled (an edge; it is never cleared) when connections or
    /// errors are waiting, or the kernel has work for the ring.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

//! The primary's own accepting: on handoff's listener always, and on a reuseport slot's
//! listener while the slot has no worker (the mode decides, [`crate::mode::Distribution`]).
//! Connections are accepted in bursts and handed to the dispatcher, which sends them to workers
//! in batches. Accepting pauses when descriptors run out (`EMFILE`: for a back-off), when the
//! queue is full (until it is half empty) and for good at shutdown.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::{Primary, Token};
use crate::accept::{self, Accepted};
use crate::listener::Listener;
use crate::stats::PrimaryCounter;
use crate::sys::epoll::Interest;

/// How many connections the primary accepts per listener per wakeup before it looks at its
/// channels again.
const ACCEPT_BURST: usize = 64;

/// The primary says it is out of descriptors at most this often.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Why the primary is not accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pause {
    /// Out of descriptors: resume when the back-off ends.
    BackOff,
    /// The queue reached its limit: resume when it is half empty.
    QueueFull,
    /// Shutting down.
    Stopped,
}

/// The state of the primary's accepting.
#[derive(Debug, Default)]
pub(super) struct Accepting {
    /// The listener ids registered in the primary's epoll.
    watched: BTreeSet<usize>,
    paused: Option<Pause>,
    /// The set of listeners to watch may have changed: reconcile after this turn.
    pub(super) dirty: bool,
    /// Listeners of slots scaled away whose draining hit `EMFILE`, by slot: out of the epoll,
    /// drained and closed after the back-off.
    closing: Vec<(usize, Listener)>,
    last_warning: Option<Instant>,
}

impl Accepting {
    /// Nothing watched yet, and everything to reconcile.
    pub(super) fn new() -> Accepting {
        Accepting { dirty: true, ..Accepting::default() }
    }

    /// Listener `id` is no longer watched (its io_uring accept ended): reconcile again.
    #[cfg(feature = "io-uring")]
    pub(super) fn unwatch(&mut self, id: usize) {
        self.watched.remove(&id);
        self.dirty = true;
    }
}

impl Primary {
    /// Brings the epoll registrations of the listeners in line with what the mode wants now.
    pub(super) fn reconcile_accepting(&mut self) -> io::Result<()> {
        if !self.accepting.dirty {
            return Ok(());
        }
        self.accepting.dirty = false;
        let slots = self.slot_view();
        let Some(mode) = &self.mode else { return Ok(()) };
        let io = self.io.as_mut().expect("the primary's descriptors exist in the primary");
        for id in 0..mode.listener_count() {
            let Some(listener) = mode.listener(id) else {
                // Released by the mode: nothing may wait on it any more (on io_uring, an
                // accept left armed would keep the socket open).
                #[cfg(feature = "io-uring")]
                if self.accepting.watched.remove(&id) {
                    if let Some(r) = &mut io.ring {
                        let _ = r.disarm_accept(id);
                    }
                }
                self.accepting.watched.remove(&id);
                continue;
            };
            let want = self.accepting.paused.is_none() && mode.primary_accepts(id, &slots);
            let have = self.accepting.watched.contains(&id);
            #[cfg(feature = "io-uring")]
            if let Some(r) = &mut io.ring {
                // A multishot accept in the ring instead of an epoll registration.
                let result = if want && !have {
                    r.arm_accept(id, listener).map(|()| {
                        self.accepting.watched.insert(id);
                    })
                } else if !want && have {
                    r.disarm_accept(id).map(|()| {
                        self.accepting.watched.remove(&id);
                    })
                } else {
                    Ok(())
                };
                if let Err(e) = result {
                    self.events.push_back(crate::Event::Warning {
                        id: None,
                        pid: None,
                        message: format!("io_uring: accepting on listener {id}: {e}"),
                    });
                }
                continue;
            }
            let result = if want && !have {
                io.epoll.add(listener, Token::Listener(id).into(), Interest::READABLE).map(|()| {
                    self.accepting.watched.insert(id);
                })
            } else if !want && have {
                io.epoll.delete(listener).map(|()| {
                    self.accepting.watched.remove(&id);
                })
            } else {
                Ok(())
            };
            if let Err(e) = result {
                // Not fatal: the next change of who accepts tries again.
                self.events.push_back(crate::Event::Warning {
                    id: None,
                    pid: None,
                    message: format!("watching listener {id} for connections: {e}"),
                });
            }
        }
        Ok(())
    }

    /// Listener `id` is readable: accepts a burst and hands it to the dispatcher.
    pub(super) fn accept_burst(&mut self, id: usize) -> io::Result<()> {
        let guarded = self.listeners_shared_with_programs();
        let Some(listener) = self.mode.as_ref().and_then(|m| m.listener(id)) else { return Ok(()) };
        if guarded {
            let _ = listener.set_nonblocking(true);
        }
        let mut burst: Vec<OwnedFd> = Vec::new();
        let mut backoff = None;
        while burst.len() < ACCEPT_BURST {
            let accepted = if guarded { accept::accept_shared(listener) } else { accept::accept(listener) };
            match accepted {
                Accepted::Connection(fd) => burst.push(fd),
                Accepted::Empty => break,
                Accepted::Retry => continue,
                Accepted::BackOff(e) => {
                    backoff = Some(e);
                    break;
                }
                Accepted::Failed(e) => {
                    self.warn(format!("accept4 on listener {id}: {e}"));
                    break;
                }
            }
        }
        self.counters.bump_primary(PrimaryCounter::Accepted, burst.len() as u64);
        self.hand_on_accepted(burst);
        if let Some(e) = backoff {
            self.back_off_accepting(&e);
        }
        Ok(())
    }

    /// Gives freshly accepted connections to the dispatcher; a queue at its limit pauses
    /// accepting.
    pub(super) fn hand_on_accepted(&mut self, burst: Vec<OwnedFd>) {
        if let Some(d) = &mut self.dispatcher {
            d.push_all(burst);
        }
        if self.dispatcher.as_ref().is_some_and(|d| d.queued() >= self.config.handoff_queue_limit) {
            self.pause_accepting(Pause::QueueFull);
        }
    }

    pub(super) fn back_off_accepting(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self.accepting.last_warning.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            self.accepting.last_warning = Some(now);
            // `accept4`, or on io_uring the ring's accept: the same errno either way.
            let call = if self.backend == crate::accept::Backend::IoUring { "accept (io_uring)" } else { "accept4" };
            self.warn(format!("{call}: {e}; pausing accepts for {:?}", accept::BACKOFF));
        }
        self.pause_accepting(Pause::BackOff);
        self.deadlines.accept = Some(now + accept::BACKOFF);
    }

    pub(super) fn pause_accepting(&mut self, why: Pause) {
        if self.accepting.paused != Some(Pause::Stopped) {
            self.accepting.paused = Some(why);
        }
        self.accepting.dirty = true;
    }

    pub(super) fn resume_accepting(&mut self, why: Pause) {
        if self.accepting.paused == Some(why) {
            self.accepting.paused = None;
            self.accepting.dirty = true;
        }
    }

    /// After each turn: a full queue that has half emptied lets accepting resume.
    pub(super) fn resume_if_queue_drained(&mut self) {
        if self.accepting.paused == Some(Pause::QueueFull)
            && self.dispatcher.as_ref().is_some_and(|d| d.queued() <= self.config.handoff_queue_limit / 2)
        {
            self.resume_accepting(Pause::QueueFull);
        }
    }

    /// Slot `slot` was scaled away and its last worker has exited: accept what is still
    /// queued on its listener, hand it on, and close the listener (see `mode::reuseport`).
    pub(super) fn close_slot_listener(&mut self, slot: usize) {
        if let Some(listener) = self.mode.as_mut().and_then(|m| m.release_slot(slot)) {
            if self.accepting.watched.remove(&slot) {
                self.stop_watching(slot, &listener);
            }
            self.accepting.dirty = true;
            self.drain_and_close(slot, listener);
        }
    }

    /// Stops waiting for connections on listener `id`: its epoll registration goes, or, on
    /// io_uring, its multishot accept is cancelled at once — an armed accept holds the socket
    /// open (and in its `SO_REUSEPORT` group) however many descriptors for it are closed.
    fn stop_watching(&mut self, id: usize, listener: &Listener) {
        #[cfg(feature = "io-uring")]
        if let Some(r) = self.io.as_mut().and_then(|io| io.ring.as_mut()) {
            if let Err(e) = r.disarm_accept(id).and_then(|()| r.ring.submit()) {
                self.warn(format!("io_uring: cancelling the accept on listener {id}: {e}"));
            }
            return;
        }
        let _ = (id, self.io.as_ref().map(|io| io.epoll.delete(listener)));
    }

    /// Whether the listeners the primary accepts on are also held by programs its workers
    /// execute (reuseport mode under `herd run`). Such a program may clear the listener's
    /// `O_NONBLOCK` — the flag belongs to the open file, shared with the primary — and an
    /// `accept4` on an empty queue would then put the primary to sleep. So the primary sets the
    /// flag again before each burst and looks (`poll`) before each accept.
    fn listeners_shared_with_programs(&self) -> bool {
        matches!(self.worker_main, super::WorkerProgram::Exec(_)) && self.config.mode == crate::Mode::Reuseport
    }

    fn drain_and_close(&mut self, slot: usize, listener: Listener) {
        let guarded = self.listeners_shared_with_programs();
        if guarded {
            let _ = listener.set_nonblocking(true);
        }
        let mut burst = Vec::new();
        loop {
            let accepted = if guarded { accept::accept_shared(&listener) } else { accept::accept(&listener) };
            match accepted {
                Accepted::Connection(fd) => burst.push(fd),
                Accepted::Retry => continue,
                Accepted::Empty => break,
                Accepted::BackOff(e) => {
                    // Out of descriptors: keep it open (connections wait in it) and try again
                    // after the back-off.
                    self.back_off_accepting(&e);
                    self.accepting.closing.push((slot, listener));
                    self.hand_on(burst);
                    return;
                }
                Accepted::Failed(e) => {
                    self.warn(format!("accept4 on slot {slot}'s listener before closing it: {e}"));
                    break;
                }
            }
        }
        self.hand_on(burst);
        drop(listener);
        let target = self.target;
        if let Some(warning) = self.mode.as_mut().and_then(|m| m.slot_closed(slot, target)) {
            self.warn(warning);
        }
    }

    fn hand_on(&mut self, burst: Vec<OwnedFd>) {
        self.counters.bump_primary(PrimaryCounter::Accepted, burst.len() as u64);
        if let Some(d) = &mut self.dispatcher {
            d.push_all(burst);
        }
    }

    /// The accept back-off ended: resume, and finish closing what could not be drained.
    pub(super) fn accept_backoff_ended(&mut self) {
        self.resume_accepting(Pause::BackOff);
        for (slot, listener) in std::mem::take(&mut self.accepting.closing) {
            self.drain_and_close(slot, listener);
        }
    }
}

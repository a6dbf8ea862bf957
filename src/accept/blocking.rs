//! The `blocking` shared-accept strategy: a dedicated thread parked in a blocking `accept4`.
//!
//! Why it is fair: threads blocked in `accept` on one listener sleep on the socket's wait queue
//! as *exclusive* waiters, queued in FIFO order, and each new connection wakes exactly the one
//! at the head. The thread that just accepted re-enters at the tail, so connections rotate over
//! the idle workers — one wakeup per connection and no herd. (epoll with `EPOLLEXCLUSIVE` does
//! not rotate: it always tries the epoll instances in registration order, so under light load
//! the first idle worker takes nearly everything.)
//!
//! The thread hands each connection to the worker's event loop through a queue and an
//! [`EventFd`]. To stop, it cannot be interrupted out of `accept` without signals, so the
//! listener carries `SO_RCVTIMEO` ([`LOOK_UP_EVERY`]): the thread looks at its stop flag at
//! least that often. Connections it accepted before it stopped are still delivered.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Accepted;
use crate::listener::Listener;
use crate::stats::{Counters, WorkerCounter};
use crate::sys::eventfd::EventFd;

/// How often a thread parked in `accept` wakes to check whether it should stop (`SO_RCVTIMEO`).
pub const LOOK_UP_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<VecDeque<OwnedFd>>,
    stop: AtomicBool,
    finished: AtomicBool,
    /// Why the thread ended, when it was not asked to.
    failure: Mutex<Option<io::Error>>,
    /// A warning for the worker to pass on (the thread backing off, out of descriptors).
    warning: Mutex<Option<String>>,
}

/// The accepting thread and its queue.
#[derive(Debug)]
pub(crate) struct BlockingAcceptor {
    shared: Arc<Shared>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl BlockingAcceptor {
    /// Starts the thread on `listener` (which must be in blocking mode, with `SO_RCVTIMEO`).
    pub(crate) fn start(listener: Listener, counters: Counters, slot: usize) -> io::Result<BlockingAcceptor> {
        let shared = Arc::new(Shared::default());
        let wake = Arc::new(EventFd::new()?);
        let (s, w) = (shared.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name(format!("herd-accept-{slot}"))
            .spawn(move || accept_until_stopped(&listener, &s, &w, &counters, slot))
            .map_err(|e| crate::sys::context(e, "spawn the accept thread"))?;
        Ok(BlockingAcceptor { shared, wake, thread: Some(thread) })
    }

    /// The descriptor that becomes readable when connections are queued or the thread ended.
    pub(crate) fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Takes every queued connection.
    pub(crate) fn drain(&self, into: &mut Vec<OwnedFd>) {
        self.wake.clear();
        into.extend(self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
    }

    /// Asks the thread to stop; it does within [`LOOK_UP_EVERY`].
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }

    /// What the thread would have the primary know, once.
    pub(crate) fn take_warning(&self) -> Option<String> {
        self.shared.warning.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Why the thread ended on its own (an `accept4` error the table calls fatal), once.
    pub(crate) fn take_failure(&self) -> Option<io::Error> {
        self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether the thread has ended, with every connection it accepted queued. Joins it.
    pub(crate) fn finished(&mut self) -> bool {
        if !self.shared.finished.load(Ordering::Acquire) {
            return false;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

fn accept_until_stopped(listener: &Listener, shared: &Shared, wake: &EventFd, counters: &Counters, slot: usize) {
    // Say so once per run of back-offs, not every time.
    let mut backing_off = false;
    while !shared.stop.load(Ordering::Acquire) {
        let result = crate::sys::listen::accept(listener, true);
        let outcome = match result {
            Ok(fd) => Accepted::Connection(fd),
            Err(e) => super::classify(e),
        };
        match outcome {
            Accepted::Connection(fd) => {
                backing_off = false;
                counters.bump_worker(slot, WorkerCounter::Wakeups, 1);
                counters.bump_worker(slot, WorkerCounter::Accepts, 1);
                shared.queue.lock().unwrap_or_else(|e| e.into_inner()).push_back(fd);
                wake.notify();
            }
            // SO_RCVTIMEO expired: look at the stop flag and park again.
            Accepted::Empty | Accepted::Retry => {}
            Accepted::BackOff(e) => {
                if !std::mem::replace(&mut backing_off, true) {
                    *shared.warning.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("accept4: {e}; pausing accepts for {:?} at a time", super::BACKOFF));
                    wake.notify();
                }
                std::thread::sleep(super::BACKOFF)
            }
            Accepted::Failed(e) => {
                *shared.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(crate::sys::context(e, format!("worker {slot}: the accept thread stopped: accept4")));
                break;
            }
        }
    }
    shared.finished.store(true, Ordering::Release);
    wake.notify();
}

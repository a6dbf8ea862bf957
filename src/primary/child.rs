//! In the forked child: shed the primary, become a worker, run the user's function.

use std::io;

use super::Primary;
use crate::ListenAddr;
use crate::accept::epoll::{ListenerWatch, Watch};
use crate::channel::{Channel, Message};
use crate::cluster::Listeners;
use crate::listener::{Listener, StreamKind};
use crate::mode::{Mode, shared};
use crate::sys::signal::{Disposition, set_disposition};
use crate::worker::{Source, Worker};

/// The worker epoll's token for the listener.
const WORKER_TOKEN_LISTENER: u64 = u64::MAX;

impl Primary {
    /// Drops everything that belongs to the primary, sets up the worker and runs the user's
    /// function. Returns the exit code.
    pub(super) fn become_worker(&mut self, slot: usize, channel: Channel) -> i32 {
        // Close the primary's descriptors: its epoll, signalfd and timers, the other workers'
        // channels, and — vital in handoff mode — the primary's copies of connections in flight,
        // or those connections would stay open as long as this worker lives.
        self.io = None;
        self.workers.clear();
        self.dispatcher = None;
        self.events.clear();
        self.reload = None;
        if let Err(e) = self.reset_signals_for_worker() {
            eprintln!("herd: worker {slot}: {e}");
            return 1;
        }
        let listener = take_worker_listener(self.listeners.take(), slot);
        let mut worker = match self.make_worker(slot, channel, listener) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("herd: worker {slot}: setting up: {e}");
                return 1;
            }
        };
        let main = &mut self.worker_main;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| main(&mut worker))) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("herd: worker {slot} (pid {}): {e}", std::process::id());
                1
            }
            Err(_) => 101,
        }
    }

    /// Workers leave SIGINT, SIGQUIT, SIGHUP, SIGTTIN and SIGTTOU to the primary (a terminal
    /// sends Ctrl-C to the whole process group, and the primary decides what the workers do),
    /// die on SIGTERM as Node's `worker.kill()` expects, and ignore SIGPIPE (a client that hung
    /// up must not kill a worker mid-write).
    fn reset_signals_for_worker(&self) -> io::Result<()> {
        for s in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGPIPE] {
            set_disposition(s, Disposition::Ignore)?;
        }
        for s in [libc::SIGTERM, libc::SIGCHLD] {
            set_disposition(s, Disposition::Default)?;
        }
        self.saved_mask.set_mask()
    }

    fn make_worker(&self, slot: usize, channel: Channel, listener: Option<Listener>) -> io::Result<Worker> {
        let kind = match &self.local_addr {
            ListenAddr::Tcp(_) => StreamKind::Tcp,
            ListenAddr::Unix(_) => StreamKind::Unix,
        };
        let source = match (self.config.mode, listener) {
            (Mode::Shared(strategy), Some(l)) => {
                shared::worker_source(l, strategy, &self.counters, slot, WORKER_TOKEN_LISTENER)?
            }
            (Mode::Reuseport, Some(l)) => Source::Listener(ListenerWatch::new(l, Watch::Level, WORKER_TOKEN_LISTENER)),
            (Mode::Handoff, _) => Source::Handoff,
            (mode, None) => return Err(io::Error::other(format!("no listener for slot {slot} in {mode} mode"))),
        };
        channel.send(&Message::Online, &[]).map_err(io::Error::from)?;
        Worker::new(slot, self.generation, kind, channel, source, self.counters.clone())
    }
}

/// The listener a worker in `slot` keeps; the others are dropped (closed) with `listeners`.
fn take_worker_listener(listeners: Option<Listeners>, slot: usize) -> Option<Listener> {
    match listeners? {
        Listeners::Shared(l) => Some(l),
        Listeners::Handoff(_) => None,
        Listeners::Reuseport(mut ls) => ls.get_mut(slot).and_then(Option::take),
    }
}

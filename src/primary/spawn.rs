//! Forking a worker, and what the forked child does before it runs the user's code.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::time::Instant;

use super::{Primary, Token, WorkerHandle, WorkerProgram};
use crate::Event;
use crate::ListenAddr;
use crate::channel::{Channel, Message};
use crate::listener::StreamKind;
use crate::sys::epoll::Interest;
use crate::sys::process::{self, Forked, ThreadCheck};
use crate::sys::signal::{Disposition, SignalSet, set_disposition};
use crate::worker::Worker;

impl Primary {
    /// Forks a worker for `slot` of `generation`; returns its key.
    ///
    /// # Errors
    /// `socketpair` (out of descriptors), the mode's preparation of the slot (reuseport binds its
    /// listener), `fork` (`EAGAIN` under `RLIMIT_NPROC`, the thread check) or `pidfd_open` —
    /// each naming the call and the slot. Nothing is left behind: a child that was forked but
    /// cannot be watched is killed and reaped.
    pub(super) fn spawn(&mut self, slot: usize, generation: u64) -> io::Result<u64> {
        let context = |e: io::Error| crate::sys::context(e, format!("spawning worker {slot}"));
        let (ours, theirs) = Channel::pair().map_err(context)?;
        let uses_lanes = self.mode.as_ref().is_some_and(|m| m.uses_lanes());
        let lane = if uses_lanes { Some(Channel::pair().map_err(context)?) } else { None };
        self.mode.as_mut().expect("the mode exists in the primary").prepare_slot(slot).map_err(context)?;
        self.counters.use_slot(slot);
        // What the program buffered on stdout must not be written again by every worker.
        let _ = io::stdout().flush();
        let key = self.next_key;
        let execs = matches!(self.worker_main, WorkerProgram::Exec(_));
        let notify = if execs { Some(self.notify_receiver(key).map_err(context)?) } else { None };
        let check = if self.config.allow_threads { ThreadCheck::Allow } else { ThreadCheck::Refuse };
        match process::fork_worker(check).map_err(context)? {
            Forked::Parent(child) => {
                drop(theirs);
                self.next_key += 1;
                let io = self.io();
                // On io_uring the lane's acknowledgements come through the primary's ring.
                #[cfg(feature = "io-uring")]
                let lane_in_epoll = io.ring.is_none();
                #[cfg(not(feature = "io-uring"))]
                let lane_in_epoll = true;
                let watched = io
                    .epoll
                    .add(&ours, Token::Control(key).into(), Interest::READABLE)
                    .and_then(|()| io.epoll.add(&child, Token::Pidfd(key).into(), Interest::READABLE))
                    .and_then(|()| match &lane {
                        Some((lane_ours, _)) if lane_in_epoll => {
                            io.epoll.add(lane_ours, Token::Lane(key).into(), Interest::READABLE)
                        }
                        _ => Ok(()),
                    });
                if let Err(e) = watched {
                    // A worker the primary cannot hear from must not live on unsupervised.
                    child.kill_and_wait();
                    return Err(context(e));
                }
                if let (Some(d), Some((lane_ours, lane_theirs))) = (&mut self.dispatcher, lane) {
                    // The primary keeps its descriptor for the worker's end of the lane: what
                    // the worker never reads is taken back through it (see `mode::handoff`).
                    d.add_lane(key, slot, lane_ours, lane_theirs);
                }
                let handle = WorkerHandle {
                    id: slot,
                    generation,
                    child,
                    control: ours,
                    outbox: Default::default(),
                    connected: true,
                    listening: false,
                    asked_to_exit: false,
                    last_seen: Instant::now(),
                    hung: false,
                    watching_writable: false,
                    outbox_retry: None,
                    speaks: !execs,
                    program: execs,
                    notify,
                    ready_at: match &self.worker_main {
                        WorkerProgram::Exec(plan) => plan.program.delay().map(|d| Instant::now() + d),
                        WorkerProgram::Function(_) => None,
                    },
                };
                self.events.push_back(Event::Fork { id: slot, pid: handle.pid() });
                self.workers.insert(key, handle);
                self.accepting.dirty = true;
                Ok(key)
            }
            Forked::Child { mask } => {
                drop(ours);
                let lane = lane.map(|(lane_ours, lane_theirs)| {
                    drop(lane_ours);
                    lane_theirs
                });
                let code = if execs {
                    let notify_socket = notify.as_ref().map(|n| n.env_value().to_owned());
                    self.become_program(slot, generation, theirs, lane, notify_socket)
                } else {
                    self.become_worker(slot, generation, theirs, lane, mask)
                };
                process::exit_now(code)
            }
        }
    }

    /// In the forked child: drops everything that belongs to the primary, sets up the worker
    /// and runs the user's function. Returns the exit code.
    fn become_worker(
        &mut self,
        slot: usize,
        generation: u64,
        control: Channel,
        lane: Option<Channel>,
        fork_mask: SignalSet,
    ) -> i32 {
        // From here on this process's system calls are the worker's, not the primary's.
        self.counters.count_syscalls_as_worker(slot);
        // Close the primary's descriptors: its epoll, signalfd and timer, the other workers'
        // channels, lanes and pidfds, and the connections queued in the primary — or those
        // connections would stay open as long as this worker lives.
        self.io = None;
        self.workers.clear();
        self.dispatcher = None;
        self.accepting = super::accepting::Accepting::new();
        self.events.clear();
        self.reload = None;
        let accept = self.mode.as_mut().and_then(|m| m.worker_accept(slot));
        self.mode = None;
        let report = |control: &Channel, what: String| {
            let _ = control.send(&Message::Warning(what), &[]);
        };
        if let Err(e) = self.reset_signals_for_worker(fork_mask) {
            report(&control, format!("setting up: {e}"));
            return 1;
        }
        let kind = match &self.local_addr {
            ListenAddr::Tcp(_) => StreamKind::Tcp,
            ListenAddr::Unix(_) => StreamKind::Unix,
        };
        if let Err(e) = control.send(&Message::Online, &[]) {
            report(&control, format!("setting up: {e}"));
            return 1;
        }
        let window = self.config.handoff_window;
        // For reporting a set-up failure after `control` has moved into the worker.
        let control_copy = control.as_fd().try_clone_to_owned().ok().map(Channel::from);
        let mut worker = match Worker::new(
            slot,
            generation,
            kind,
            control,
            accept.map(|a| a.on(self.backend)),
            lane.map(|l| (l, window)),
            self.counters.clone(),
        ) {
            Ok(w) => {
                drop(control_copy);
                w
            }
            Err(e) => {
                if let Some(c) = &control_copy {
                    report(c, format!("setting up: {e}"));
                }
                return 1;
            }
        };
        let WorkerProgram::Function(main) = &mut self.worker_main else {
            unreachable!("become_worker runs in clusters of forked functions only")
        };
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| main(&mut worker))) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                let _ = worker.warn_primary(format!("the worker function failed: {e}"));
                1
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                let _ = worker.warn_primary(format!("the worker function panicked: {what}"));
                101
            }
        };
        let _ = io::stdout().flush();
        code
    }

    /// Workers leave SIGINT, SIGQUIT, SIGHUP, SIGTTIN and SIGTTOU to the primary, die on
    /// SIGTERM as Node's `worker.kill()` expects, and do not die of SIGPIPE (see
    /// `worker::leave_signals_to_the_primary`). The signal mask the program had before the
    /// primary blocked its signals comes back (`fork_mask`, the mask at the fork, when the
    /// primary blocked none).
    fn reset_signals_for_worker(&self, fork_mask: SignalSet) -> io::Result<()> {
        crate::worker::leave_signals_to_the_primary()?;
        for s in [libc::SIGTERM, libc::SIGCHLD] {
            set_disposition(s, Disposition::Default)?;
        }
        self.saved_mask.unwrap_or(fork_mask).set_mask()
    }
}

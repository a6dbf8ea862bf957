//! The primary: forks the workers, watches them over their channels and a signalfd, keeps
//! every slot filled, and — in handoff mode — accepts every connection and hands it on.
//!
//! It is one single-threaded epoll loop. Everything that can happen is a readable descriptor:
//! a signal (read from a signalfd, so there are no signal handlers and no async-signal-safety
//! rules), a worker's channel, the listener (handoff), or a deadline (timerfd: the shutdown kill
//! timeout, the accept back-off, the reload timeout, the heartbeat). [`Primary::next_event`]
//! turns the loop until it has an [`Event`] to report.
//!
//! | signal | what the primary does |
//! |---|---|
//! | `SIGTERM`, `SIGINT` | graceful shutdown: stop accepting, workers finish their connections and exit; SIGKILL after the shutdown timeout |
//! | second `SIGINT`, `SIGQUIT` | immediate shutdown: SIGKILL every worker |
//! | `SIGHUP` | rolling reload: fork a new generation; retire each old worker once its replacement listens |
//! | `SIGTTIN` / `SIGTTOU` | one worker more / one fewer |
//! | `SIGCHLD` | reap; replace a worker that exited without being asked, within the restart limit |
//!
//! The supervision logic (restarts, reloads, scaling, heartbeats) is in `supervise.rs`; what a
//! forked child does before it runs the user's code, in `child.rs`; the program's API to its
//! workers (messages, kill, disconnect), in `control.rs`; handoff's accepting, in `handoff.rs`.

mod child;
mod control;
mod handoff;
mod supervise;

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::time::Instant;

use rustix::process::Pid;

use crate::channel::{Channel, ChannelError, Message};
use crate::cluster::{Cluster, Config, Listeners};
use crate::listener::{BindOptions, UnixPath};
use crate::mode::Mode;
use crate::mode::handoff::Dispatcher;
use crate::stats::{Counters, Snapshot};
use crate::sys::epoll::{Epoll, Interest, Ready};
use crate::sys::process::{self, Forked};
use crate::sys::signal::{SignalFd, SignalSet};
use crate::sys::timerfd::Timer;
use crate::worker::Worker;
use crate::{Event, ListenAddr};

use handoff::AcceptPause;
use supervise::{Reload, Restarts};

pub use control::WorkerInfo;

/// The user's worker function, run in each forked worker.
pub(crate) type WorkerMain = Box<dyn FnMut(&mut Worker) -> io::Result<()>>;

/// Signals the primary reads from its signalfd.
const PRIMARY_SIGNALS: [i32; 7] =
    [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU];

const TOKEN_SIGNALS: u64 = u64::MAX;
const TOKEN_LISTENER: u64 = u64::MAX - 1;
const TOKEN_KILL_TIMER: u64 = u64::MAX - 2;
const TOKEN_BACKOFF: u64 = u64::MAX - 3;
const TOKEN_RELOAD_TIMER: u64 = u64::MAX - 4;
const TOKEN_HEARTBEAT: u64 = u64::MAX - 5;

/// The primary's descriptors that a forked worker must close.
#[derive(Debug)]
struct PrimaryIo {
    epoll: Epoll,
    signals: SignalFd,
    kill_timer: Timer,
    backoff: Timer,
    reload_timer: Timer,
    heartbeat: Timer,
}

impl PrimaryIo {
    fn new(signals: &SignalSet) -> io::Result<PrimaryIo> {
        let io = PrimaryIo {
            epoll: Epoll::new()?,
            signals: SignalFd::new(signals)?,
            kill_timer: Timer::new()?,
            backoff: Timer::new()?,
            reload_timer: Timer::new()?,
            heartbeat: Timer::new()?,
        };
        io.epoll.add(&io.signals, TOKEN_SIGNALS, Interest::READABLE)?;
        io.epoll.add(&io.kill_timer, TOKEN_KILL_TIMER, Interest::READABLE)?;
        io.epoll.add(&io.backoff, TOKEN_BACKOFF, Interest::READABLE)?;
        io.epoll.add(&io.reload_timer, TOKEN_RELOAD_TIMER, Interest::READABLE)?;
        io.epoll.add(&io.heartbeat, TOKEN_HEARTBEAT, Interest::READABLE)?;
        Ok(io)
    }
}

/// The primary's view of one worker process.
#[derive(Debug)]
struct WorkerHandle {
    id: usize,
    pid: Pid,
    generation: u64,
    channel: Channel,
    /// The channel is open (no hangup seen yet).
    connected: bool,
    /// It reported `listening`.
    listening: bool,
    /// Its exit is expected: the primary asked it to go (disconnect, kill), or it announced it
    /// would (retiring). Such an exit is not a crash and is not replaced.
    asked_to_exit: bool,
    /// When a frame last arrived from it (or it was forked).
    last_seen: Instant,
    /// The heartbeat already declared it hung.
    hung: bool,
}

impl WorkerHandle {
    fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }
}

/// A running cluster, seen from the primary process.
pub struct Primary {
    config: Config,
    local_addr: ListenAddr,
    counters: Counters,
    listeners: Option<Listeners>,
    bind_options: BindOptions,
    _unix_path: Option<UnixPath>,
    io: Option<PrimaryIo>,
    saved_mask: SignalSet,
    workers: BTreeMap<u64, WorkerHandle>,
    next_key: u64,
    /// How many slots the cluster aims to keep filled.
    target: usize,
    /// The generation newly forked workers belong to.
    generation: u64,
    restarts: Restarts,
    reload: Option<Reload>,
    gave_up: bool,
    dispatcher: Option<Dispatcher>,
    accept_paused: Option<AcceptPause>,
    events: VecDeque<Event>,
    shutting_down: bool,
    finished: bool,
    ready: Vec<Ready>,
    worker_main: WorkerMain,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("config", &self.config)
            .field("local_addr", &self.local_addr)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Primary {
    pub(crate) fn start(cluster: Cluster, worker_main: WorkerMain) -> io::Result<Primary> {
        let Cluster { config, local_addr, listeners, unix_path, counters, bind_options } = cluster;
        let set = SignalSet::of(&PRIMARY_SIGNALS);
        let saved_mask = set.block()?;
        let io = match PrimaryIo::new(&set) {
            Ok(io) => io,
            Err(e) => {
                let _ = saved_mask.set_mask();
                return Err(e);
            }
        };
        let dispatcher =
            (config.mode == Mode::Handoff).then(|| Dispatcher::new(config.handoff_window, counters.clone()));
        let restarts = Restarts::new(config.restart_limit, config.restart_window);
        let mut primary = Primary {
            target: config.workers,
            config,
            local_addr,
            counters,
            listeners: Some(listeners),
            bind_options,
            _unix_path: unix_path,
            io: Some(io),
            saved_mask,
            workers: BTreeMap::new(),
            next_key: 0,
            generation: 0,
            restarts,
            reload: None,
            gave_up: false,
            dispatcher,
            accept_paused: None,
            events: VecDeque::new(),
            shutting_down: false,
            finished: false,
            ready: Vec::with_capacity(64),
            worker_main,
        };
        if let Some(Listeners::Handoff(l)) = &primary.listeners {
            primary.io().epoll.add(l, TOKEN_LISTENER, Interest::READABLE)?;
        }
        if let Some(hb) = primary.config.heartbeat {
            primary.io().heartbeat.arm(hb.interval)?;
        }
        for slot in 0..primary.target {
            primary.spawn(slot)?;
        }
        Ok(primary)
    }

    fn io(&self) -> &PrimaryIo {
        self.io.as_ref().expect("the primary's descriptors exist in the primary")
    }

    /// The address every worker serves (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local_addr
    }

    /// The shared counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Turns the primary's loop until something happens, and reports it. Returns `Ok(None)` once
    /// every worker has exited after a shutdown (or once none is left at all).
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.finished {
                return Ok(None);
            }
            self.turn()?;
        }
    }

    /// Runs until shutdown, passing every event to `on_event`; returns the final counters.
    ///
    /// # Errors
    /// An `Other` error naming the cause if the primary gave up after too many restarts, or if
    /// every worker exited without a shutdown having been asked for.
    pub fn run(mut self, mut on_event: impl FnMut(&Event)) -> io::Result<Snapshot> {
        while let Some(event) = self.next_event()? {
            on_event(&event);
        }
        if self.gave_up {
            return Err(io::Error::other(format!(
                "gave up: more than {} restarts within {}s",
                self.config.restart_limit,
                self.config.restart_window.as_secs()
            )));
        }
        if !self.shutting_down {
            return Err(io::Error::other("every worker exited; nothing is left to serve"));
        }
        Ok(self.counters.snapshot())
    }

    /// Begins a shutdown, as SIGTERM does (`graceful`) or SIGQUIT does (not).
    pub fn shutdown(&mut self, graceful: bool) -> io::Result<()> {
        self.begin_shutdown(0, graceful)
    }

    /// One `epoll_wait` and everything it reported.
    fn turn(&mut self) -> io::Result<()> {
        let mut ready = std::mem::take(&mut self.ready);
        self.io().epoll.wait(&mut ready, None)?;
        for r in &ready {
            match r.token {
                TOKEN_SIGNALS => self.on_signals()?,
                TOKEN_LISTENER => self.accept_and_dispatch()?,
                TOKEN_KILL_TIMER => {
                    self.io().kill_timer.clear();
                    self.kill_all(libc::SIGKILL);
                }
                TOKEN_BACKOFF => {
                    self.io().backoff.clear();
                    self.resume_accepting(AcceptPause::BackOff)?;
                }
                TOKEN_RELOAD_TIMER => {
                    self.io().reload_timer.clear();
                    self.reload_timed_out()?;
                }
                TOKEN_HEARTBEAT => {
                    self.io().heartbeat.clear();
                    self.heartbeat()?;
                }
                key => self.on_channel(key, r.hangup && !r.readable)?,
            }
        }
        self.ready = ready;
        self.after_turn()
    }

    fn after_turn(&mut self) -> io::Result<()> {
        self.disconnect_all_once_drained();
        if self.accept_paused == Some(AcceptPause::QueueFull)
            && self.dispatcher.as_ref().is_some_and(|d| d.queued() <= self.config.handoff_queue_limit / 2)
        {
            self.resume_accepting(AcceptPause::QueueFull)?;
        }
        if self.workers.is_empty() {
            self.finished = true;
        }
        Ok(())
    }

    /// While shutting down: asks every worker to finish and exit — in handoff mode only once the
    /// connections still queued in the primary have been handed out.
    fn disconnect_all_once_drained(&mut self) {
        if !self.shutting_down || self.dispatcher.as_ref().is_some_and(|d| d.queued() > 0) {
            return;
        }
        let keys: Vec<u64> = self.workers.iter().filter(|(_, w)| !w.asked_to_exit).map(|(k, _)| *k).collect();
        for key in keys {
            self.disconnect_key(key);
        }
    }

    fn on_signals(&mut self) -> io::Result<()> {
        while let Some((signal, _sender)) = self.io().signals.read()? {
            match signal {
                libc::SIGCHLD => self.reap()?,
                libc::SIGINT if self.shutting_down => self.begin_shutdown(signal, false)?,
                libc::SIGINT | libc::SIGTERM => self.begin_shutdown(signal, true)?,
                libc::SIGQUIT => self.begin_shutdown(signal, false)?,
                libc::SIGHUP => self.reload()?,
                libc::SIGTTIN => self.scale(self.target + 1)?,
                libc::SIGTTOU => self.scale(self.target.saturating_sub(1).max(1))?,
                _ => {}
            }
        }
        Ok(())
    }

    fn begin_shutdown(&mut self, signal: i32, graceful: bool) -> io::Result<()> {
        self.events.push_back(Event::Shutdown { signal, graceful });
        self.reload = None;
        self.io().reload_timer.disarm()?;
        if !graceful {
            self.shutting_down = true;
            self.kill_all(libc::SIGKILL);
            return Ok(());
        }
        if self.shutting_down {
            return Ok(());
        }
        self.shutting_down = true;
        self.pause_accepting(AcceptPause::Stopped)?;
        self.io().kill_timer.arm(self.config.shutdown_timeout)?;
        self.disconnect_all_once_drained();
        Ok(())
    }

    /// Takes worker `key` out of the handoff rotation (its unacknowledged handoffs stay until
    /// acknowledged).
    fn stop_dispatching_to(&mut self, key: u64) {
        if let Some(d) = &mut self.dispatcher {
            let workers = &self.workers;
            d.remove_worker(key, false, |k| workers.get(&k).map(|w| &w.channel));
        }
    }

    /// Puts worker `key` (back) into the handoff rotation.
    fn dispatch_to(&mut self, key: u64) {
        if let Some(d) = &mut self.dispatcher {
            let workers = &self.workers;
            d.add_worker(key, |k| workers.get(&k).filter(|w| w.connected).map(|w| &w.channel));
        }
    }

    /// Asks worker `key` to stop accepting, finish its connections and exit.
    fn disconnect_key(&mut self, key: u64) {
        self.stop_dispatching_to(key);
        let Some(w) = self.workers.get_mut(&key) else { return };
        w.asked_to_exit = true;
        if w.connected && w.channel.send(&Message::Disconnect, &[]).is_err() {
            let _ = process::kill(w.pid, libc::SIGTERM);
        }
    }

    fn kill_all(&mut self, signal: i32) {
        for w in self.workers.values_mut() {
            w.asked_to_exit = true;
            let _ = process::kill(w.pid, signal);
        }
    }

    fn reap(&mut self) -> io::Result<()> {
        let keys: Vec<u64> = self.workers.keys().copied().collect();
        for key in keys {
            let pid = self.workers[&key].pid;
            if let Some(status) = process::reap(pid)? {
                // Read what the worker sent before it died — above all its last acks — before
                // its unacknowledged handoffs are requeued: a connection it acknowledged is its
                // own, and giving it to another worker would serve it twice.
                self.on_channel(key, false)?;
                self.on_channel_closed(key);
                let w = self.workers.remove(&key).expect("reaped worker is known");
                let expected = w.asked_to_exit || self.shutting_down;
                self.events.push_back(Event::Exit {
                    id: w.id,
                    pid: w.pid(),
                    status,
                    exited_after_disconnect: expected,
                });
                self.after_exit(key, &w, status, expected)?;
            }
        }
        Ok(())
    }

    /// Reads every frame waiting on worker `key`'s channel.
    fn on_channel(&mut self, key: u64, hangup: bool) -> io::Result<()> {
        if hangup {
            self.on_channel_closed(key);
            return Ok(());
        }
        // A readable channel means the worker sent something: it is alive (one clock read per
        // wakeup, not per frame).
        if let Some(w) = self.workers.get_mut(&key) {
            w.last_seen = Instant::now();
        }
        loop {
            let Some(w) = self.workers.get_mut(&key) else { return Ok(()) };
            let (id, pid) = (w.id, w.pid());
            let received = match w.channel.try_recv() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(ChannelError::Closed) => {
                    self.on_channel_closed(key);
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("herd: primary: bad frame from worker {id} (pid {pid}): {e}");
                    if matches!(e, ChannelError::Io(_)) {
                        self.on_channel_closed(key);
                        return Ok(());
                    }
                    continue;
                }
            };
            let workers = &self.workers;
            let channel_of = |k: u64| workers.get(&k).filter(|w| w.connected).map(|w| &w.channel);
            match received.message {
                Message::Online => self.events.push_back(Event::Online { id, pid }),
                Message::Listening => self.on_listening(key)?,
                Message::Ack { count } => {
                    if let Some(d) = &mut self.dispatcher {
                        d.ack(key, count, channel_of);
                    }
                }
                Message::Reject { count } => {
                    if let Some(d) = &mut self.dispatcher {
                        d.reject(key, count, channel_of);
                    }
                }
                Message::User(data) => self.events.push_back(Event::Message { id, pid, data }),
                Message::Pong => {}
                Message::Retiring => self.on_retiring(key)?,
                other => eprintln!("herd: primary: unexpected {other:?} from worker {id} (pid {pid})"),
            }
        }
    }

    /// The worker's end of the channel closed: it is exiting (or gone). Its unacknowledged
    /// handoffs go to other workers.
    fn on_channel_closed(&mut self, key: u64) {
        let Some(w) = self.workers.get_mut(&key) else { return };
        if !w.connected {
            return;
        }
        w.connected = false;
        let (id, pid) = (w.id, w.pid());
        let _ = self.io().epoll.delete(&self.workers[&key].channel);
        if let Some(d) = &mut self.dispatcher {
            let workers = &self.workers;
            d.remove_worker(key, true, |k| workers.get(&k).filter(|w| w.connected).map(|w| &w.channel));
        }
        self.events.push_back(Event::Disconnect { id, pid });
    }

    /// Forks a worker for `slot`, of the current generation; returns its key.
    fn spawn(&mut self, slot: usize) -> io::Result<u64> {
        let (ours, theirs) = Channel::pair().map_err(|e| crate::sys::context(e, format!("spawning worker {slot}")))?;
        self.counters.use_slot(slot);
        match process::fork_worker().map_err(|e| crate::sys::context(e, format!("spawning worker {slot}")))? {
            Forked::Parent(pid) => {
                drop(theirs);
                let key = self.next_key;
                self.next_key += 1;
                if let Err(e) = self.io().epoll.add(&ours, key, Interest::READABLE) {
                    // A worker the primary cannot hear from must not live on unsupervised.
                    process::kill_and_wait(pid);
                    return Err(crate::sys::context(e, format!("watching worker {slot}'s channel")));
                }
                let handle = WorkerHandle {
                    id: slot,
                    pid,
                    generation: self.generation,
                    channel: ours,
                    connected: true,
                    listening: false,
                    asked_to_exit: false,
                    last_seen: Instant::now(),
                    hung: false,
                };
                self.events.push_back(Event::Fork { id: slot, pid: handle.pid() });
                self.workers.insert(key, handle);
                Ok(key)
            }
            Forked::Child => {
                drop(ours);
                let code = self.become_worker(slot, theirs);
                let _ = io::stdout().flush();
                let _ = io::stderr().flush();
                process::exit_now(code)
            }
        }
    }
}

impl Drop for Primary {
    /// Kills any worker still running (a primary dropped mid-run must not leave orphans), reaps
    /// it, and restores the signal mask the process had before [`Cluster::start`].
    fn drop(&mut self) {
        if self.io.is_none() {
            return; // a forked worker's copy
        }
        for w in self.workers.values() {
            process::kill_and_wait(w.pid);
        }
        let _ = self.saved_mask.set_mask();
    }
}

//! The primary: forks the workers, watches them, keeps every slot filled, and — where the mode
//! says so — accepts connections and hands them on.
//!
//! It is one single-threaded epoll loop. Everything that can happen is a readable descriptor:
//! a worker's **pidfd** (it exited), its control channel and its lane, a listener the primary
//! accepts on, a signal (read from a signalfd, so there are no signal handlers and no
//! async-signal-safety rules), and one timerfd for every deadline. [`Primary::next_event`]
//! turns the loop until it has an [`Event`] to report; [`Primary::try_event`] turns it without
//! waiting, for a host that polls the primary's descriptor ([`AsFd`]) in its own loop.
//!
//! | signal (with [`crate::Builder::handle_signals`]) | what the primary does | the same from code |
//! |---|---|---|
//! | `SIGTERM`, `SIGINT` | graceful shutdown: stop accepting, workers finish their connections and exit; SIGKILL after the shutdown timeout | [`Primary::shutdown`]`(true)` |
//! | second `SIGINT`, `SIGQUIT` | immediate shutdown: SIGKILL every worker | [`Primary::shutdown`]`(false)` |
//! | `SIGHUP` | rolling reload: fork a new generation; retire each old worker once its replacement listens | [`Primary::reload`] |
//! | `SIGTTIN` / `SIGTTOU` | one worker more / one fewer | [`Primary::scale`] |
//! | `SIGUSR2` (with [`crate::Builder::upgrade_on_sigusr2`]) | upgrade in place: execute the binary now at this program's path, same pid, same workers (`upgrade.rs`) | [`Primary::upgrade`] |
//!
//! The supervision logic (restarts, fork retries, reloads, scaling, heartbeats) is in
//! `supervise.rs`; forking and what a forked child does before it runs the user's code, in
//! `spawn.rs`; the program's API to its workers (messages, kill, disconnect), in `control.rs`;
//! the primary's accepting, in `accepting.rs`; sends that never block, in `outbox.rs`; workers
//! that execute a program (`herd run`), in `exec.rs`; telling a service manager how the cluster
//! is doing (sd_notify), in `notify.rs`; the in-place upgrade, in `upgrade.rs`.

mod accepting;
mod control;
mod exec;
mod notify;
mod outbox;
mod spawn;
mod supervise;
mod timers;
mod upgrade;
#[cfg(feature = "io-uring")]
mod uring;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::accept::Backend;
use crate::channel::{Channel, ChannelError, Message};
use crate::config::Config;
use crate::listener::UnixPath;
use crate::mode::handoff::Dispatcher;
use crate::mode::{Distribution, Slots};
use crate::stats::{Counters, Snapshot};
use crate::sys::epoll::{Epoll, Interest, Ready};
use crate::sys::process::Child;
use crate::sys::signal::{SignalFd, SignalSet};
use crate::worker::Worker;
use crate::{Event, ListenAddr};

use accepting::{Accepting, Pause};
use outbox::{Outbox, Pending};
use supervise::{Reload, Restarts, Retries};
use timers::{Alarm, Deadlines};

pub use control::WorkerInfo;

/// The user's worker function, run in each forked worker.
pub(crate) type WorkerMain = Box<dyn FnMut(&mut Worker) -> io::Result<()>>;

/// What each worker runs: a function of this program, or another program (`exec.rs`).
pub(crate) enum WorkerProgram {
    Function(WorkerMain),
    Exec(Box<exec::Plan>),
}

impl WorkerProgram {
    /// A program to execute: checked and converted once, here.
    pub(crate) fn exec(program: crate::Program) -> io::Result<WorkerProgram> {
        Ok(WorkerProgram::Exec(Box::new(exec::Plan::new(program)?)))
    }
}

/// What [`crate::Cluster`] hands the primary: everything bound, nothing forked.
pub(crate) struct Bound {
    pub(crate) config: Config,
    pub(crate) local_addr: ListenAddr,
    pub(crate) mode: Box<dyn Distribution>,
    pub(crate) unix_path: Option<UnixPath>,
    pub(crate) counters: Counters,
}

/// How long a worker may stay away from its loop before the primary counts it as stalled (see
/// [`Primary::check_stalls`]).
const STALL: Duration = Duration::from_millis(50);

/// Signals the primary reads from its signalfd (unless the host keeps them).
const PRIMARY_SIGNALS: [i32; 6] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU];

/// The signals a primary with `config` takes: [`PRIMARY_SIGNALS`], and SIGUSR2 if it upgrades
/// in place.
fn primary_signals(config: &Config) -> Vec<i32> {
    let mut signals = PRIMARY_SIGNALS.to_vec();
    if config.upgrade_on_sigusr2 {
        signals.push(libc::SIGUSR2);
    }
    signals
}

/// What an epoll token stands for: the kind in the top byte, an index below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Signals,
    Alarm,
    /// A listener the primary accepts on, by the mode's listener id.
    Listener(usize),
    /// Worker `key`'s control channel.
    Control(u64),
    /// Worker `key`'s lane.
    Lane(u64),
    /// Worker `key`'s pidfd.
    Pidfd(u64),
    /// Worker `key`'s sd_notify socket (workers that execute a program).
    Notify(u64),
}

const KIND_SHIFT: u32 = 56;
const INDEX_MASK: u64 = (1 << KIND_SHIFT) - 1;

impl From<Token> for u64 {
    fn from(t: Token) -> u64 {
        let (kind, index) = match t {
            Token::Signals => (1, 0),
            Token::Alarm => (2, 0),
            Token::Listener(id) => (3, id as u64),
            Token::Control(key) => (4, key),
            Token::Lane(key) => (5, key),
            Token::Pidfd(key) => (6, key),
            Token::Notify(key) => (7, key),
        };
        (kind << KIND_SHIFT) | (index & INDEX_MASK)
    }
}

impl Token {
    fn from_u64(raw: u64) -> Option<Token> {
        let index = raw & INDEX_MASK;
        Some(match raw >> KIND_SHIFT {
            1 => Token::Signals,
            2 => Token::Alarm,
            3 => Token::Listener(index as usize),
            4 => Token::Control(index),
            5 => Token::Lane(index),
            6 => Token::Pidfd(index),
            7 => Token::Notify(index),
            _ => return None,
        })
    }
}

/// The primary's descriptors, which a forked worker drops.
#[derive(Debug)]
struct PrimaryIo {
    epoll: Epoll,
    signals: Option<SignalFd>,
    alarm: Alarm,
    /// The ring, in handoff mode on io_uring: then the primary waits in it (`uring.rs`).
    #[cfg(feature = "io-uring")]
    ring: Option<uring::PrimaryRing>,
}

impl PrimaryIo {
    /// A fresh epoll with the signalfd (if the primary takes signals) and the alarm in it.
    fn new(signals: Option<SignalFd>) -> io::Result<PrimaryIo> {
        let io = PrimaryIo {
            epoll: Epoll::new()?,
            signals,
            alarm: Alarm::new()?,
            #[cfg(feature = "io-uring")]
            ring: None,
        };
        if let Some(s) = &io.signals {
            io.epoll.add(s, Token::Signals.into(), Interest::READABLE)?;
        }
        io.epoll.add(io.alarm.timer(), Token::Alarm.into(), Interest::READABLE)?;
        Ok(io)
    }
}

/// The primary's view of one worker process.
#[derive(Debug)]
struct WorkerHandle {
    id: usize,
    generation: u64,
    child: Child,
    control: Channel,
    outbox: Outbox,
    /// The control channel is open (no hangup seen yet).
    connected: bool,
    /// It reported `listening`.
    listening: bool,
    /// Its exit is expected: the primary asked it to go (disconnect, kill), or it announced it
    /// would (retiring). Such an exit is not a crash and is not replaced.
    asked_to_exit: bool,
    /// When a frame last arrived from it (or it was forked).
    last_seen: Instant,
    /// The heartbeat (or an overflowing outbox) already declared it hung.
    hung: bool,
    /// Its control channel is watched for writability (its outbox waits for room).
    watching_writable: bool,
    /// Its outbox's send failed for a passing reason: try again then.
    outbox_retry: Option<Instant>,
    /// It reads its control channel: a forked worker always does; a program it executes once it
    /// sent something there besides the `Online` herd sent for it. Such a worker is stopped with
    /// `Stop`, pinged by the heartbeat and handed connections; another is stopped with SIGTERM.
    speaks: bool,
    /// It executes a program (`herd run`) rather than running a function of this one.
    program: bool,
    /// A program's sd_notify socket.
    notify: Option<crate::sys::notify::Receiver>,
    /// A program not heard from is counted as listening at this time (its ready delay).
    ready_at: Option<Instant>,
}

impl WorkerHandle {
    fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// A running cluster, seen from the primary process.
///
/// Drive it with [`next_event`](Self::next_event) (blocking), [`run`](Self::run), or — from a
/// host's own event loop — by polling its descriptor ([`AsFd`]) for readability and calling
/// [`try_event`](Self::try_event) until it returns `Ok(None)`.
pub struct Primary {
    config: Config,
    local_addr: ListenAddr,
    counters: Counters,
    /// The backend that runs: the one asked for, or epoll if io_uring cannot run here.
    backend: Backend,
    /// `None` in a forked worker once it took what it needs.
    mode: Option<Box<dyn Distribution>>,
    _unix_path: Option<UnixPath>,
    /// `None` in a forked worker.
    io: Option<PrimaryIo>,
    saved_mask: Option<SignalSet>,
    workers: BTreeMap<u64, WorkerHandle>,
    next_key: u64,
    /// How many slots the cluster aims to keep filled.
    target: usize,
    /// Slots the program emptied on purpose (disconnect, kill): not refilled.
    vacated: std::collections::BTreeSet<usize>,
    /// The generation newly forked workers belong to.
    generation: u64,
    /// Per slot: the generation of its last worker that listened — what a refill forks.
    slot_generation: BTreeMap<usize, u64>,
    restarts: Restarts,
    retries: Retries,
    reload: Option<Reload>,
    gave_up: bool,
    dispatcher: Option<Dispatcher>,
    accepting: Accepting,
    deadlines: Deadlines,
    events: VecDeque<Event>,
    shutting_down: bool,
    finished: bool,
    ready: Vec<Ready>,
    worker_main: WorkerProgram,
    /// The service manager to tell how the cluster is doing (sd_notify), if any.
    service_manager: Option<notify::Notifier>,
    /// An in-place upgrade was asked for: done once the queued events are out.
    upgrade_asked: bool,
    /// This program's path, for an in-place upgrade.
    exe: Option<std::path::PathBuf>,
    /// The serving-slot mask last published in the counters.
    serving_slots: u64,
    /// Slots whose worker is stalled (see `check_stalls`).
    stalled: std::collections::BTreeSet<usize>,
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

/// The slots as the mode sees them.
struct SlotView {
    live: Vec<bool>,
}

impl Slots for SlotView {
    fn live(&self, slot: usize) -> bool {
        self.live.get(slot).copied().unwrap_or(false)
    }
}

impl Primary {
    /// The primary the previous image of this program handed over in an in-place upgrade
    /// (SIGUSR2; see [`crate::upgrade`]), going on with the same listeners, workers and
    /// counters, its workers now running `worker_main` when forked; `Ok(None)` if this process
    /// is not such a new image — then bind and start a cluster as usual.
    ///
    /// # Errors
    /// A hand-over state that cannot be read (`InvalidData`, naming what is wrong), or the
    /// primary's own descriptors failing.
    pub fn resume<F>(worker_main: F) -> io::Result<Option<Primary>>
    where
        F: FnMut(&mut Worker) -> io::Result<()> + 'static,
    {
        match crate::upgrade::take_state()? {
            Some(lines) => Primary::resume_from(lines, WorkerProgram::Function(Box::new(worker_main))).map(Some),
            None => Ok(None),
        }
    }

    /// [`resume`](Self::resume) for a cluster whose workers execute `program`
    /// ([`crate::Cluster::start_program`]).
    ///
    /// # Errors
    /// As [`resume`](Self::resume).
    pub fn resume_program(program: crate::Program) -> io::Result<Option<Primary>> {
        match crate::upgrade::take_state()? {
            Some(lines) => Primary::resume_from(lines, WorkerProgram::exec(program)?).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn start(bound: Bound, worker_main: WorkerProgram) -> io::Result<Primary> {
        let Bound { config, local_addr, mode, unix_path, counters } = bound;
        counters.count_syscalls_as_primary();
        let (signals, saved_mask) = if config.handle_signals {
            let set = SignalSet::of(&primary_signals(&config));
            let saved = set.block()?;
            match SignalFd::new(&set) {
                Ok(fd) => (Some(fd), Some(saved)),
                Err(e) => {
                    let _ = saved.set_mask();
                    return Err(e);
                }
            }
        } else {
            (None, None)
        };
        #[cfg_attr(not(feature = "io-uring"), allow(unused_mut))]
        let mut io = PrimaryIo::new(signals)?;
        #[cfg_attr(not(feature = "io-uring"), allow(unused_mut))]
        let mut dispatcher = mode
            .uses_lanes()
            .then(|| Dispatcher::new(config.handoff_window, counters.clone()).with_policy(config.handoff_policy));
        let (backend, warnings) = resolve_backend(config.backend, config.mode, config.backend.available());
        // In handoff mode the primary accepts and hands on every connection: on io_uring it
        // does so through its own ring, and waits in it.
        #[cfg(feature = "io-uring")]
        if let (Backend::IoUring, Some(d)) = (backend, &mut dispatcher) {
            io.ring = Some(uring::PrimaryRing::new()?);
            d.use_ring();
        }
        let service_manager = if config.sd_notify { notify::Notifier::from_env() } else { None };
        let mut primary = Primary {
            backend,
            target: config.workers,
            restarts: Restarts::new(config.restart_limit, config.restart_window),
            config,
            local_addr,
            counters,
            mode: Some(mode),
            _unix_path: unix_path,
            io: Some(io),
            saved_mask,
            workers: BTreeMap::new(),
            next_key: 0,
            vacated: Default::default(),
            generation: 0,
            slot_generation: BTreeMap::new(),
            retries: Retries::default(),
            reload: None,
            gave_up: false,
            dispatcher,
            accepting: Accepting::new(),
            deadlines: Deadlines::default(),
            events: VecDeque::new(),
            shutting_down: false,
            finished: false,
            ready: Vec::with_capacity(64),
            service_manager,
            upgrade_asked: false,
            exe: upgrade::program_path(),
            serving_slots: u64::MAX,
            stalled: Default::default(),
            worker_main,
        };
        if primary.dispatcher.is_some() {
            primary.deadlines.stall_check = Some(Instant::now() + STALL);
        }
        if let Some(hb) = primary.config.heartbeat {
            primary.deadlines.heartbeat = Some(Instant::now() + hb.interval);
        }
        for message in warnings {
            primary.warn(message);
        }
        // The first fork's failure is the caller's to see (a multi-threaded primary, say); later
        // ones are events, retried, while the workers already forked serve.
        primary.spawn(0, 0)?;
        for slot in 1..primary.target {
            primary.spawn_or_retry(slot, 0);
        }
        primary.settle()?;
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

    /// The accept backend that runs: the one asked for ([`crate::Builder::backend`]), or epoll
    /// if io_uring cannot run here.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Turns the primary's loop until something happens, and reports it. Returns `Ok(None)` once
    /// every worker has exited after a shutdown (or once none is left at all).
    ///
    /// # Errors
    /// Only what leaves the primary unable to go on: its own epoll or timer failing. Everything
    /// that concerns one worker — a failed fork, a bad frame, a send that does not fit — is an
    /// [`Event`] and the primary carries on.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        self.next_event_timeout(None)
    }

    /// [`next_event`](Self::next_event), waiting at most `timeout` (`None`: for ever). Returns
    /// `Ok(None)` at the timeout as at the end; tell them apart with
    /// [`is_finished`](Self::is_finished).
    pub fn next_event_timeout(&mut self, timeout: Option<Duration>) -> io::Result<Option<Event>> {
        let result = self.next_event_inner(timeout);
        // On io_uring, what the turns queued goes to the kernel before the caller has control.
        self.submit_ring()?;
        result
    }

    fn next_event_inner(&mut self, timeout: Option<Duration>) -> io::Result<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.upgrade_asked {
                // Returns only if the upgrade did not happen, with a warning queued.
                self.upgrade_if_asked();
                continue;
            }
            if self.finished {
                return Ok(None);
            }
            let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ready = self.turn(wait)?;
            // At the deadline, one turn is the last — unless it came back full, and more may be
            // waiting: a host driving an edge-triggered loop must not be told "nothing" then.
            // (A descriptor that stays ready without producing an event cannot hold the call
            // past its timeout.)
            if wait.is_some_and(|w| w.is_zero()) && ready < crate::sys::epoll::MAX_EVENTS {
                return Ok(self.events.pop_front());
            }
        }
    }

    /// The next event if one is ready, without waiting: what a host calls when the primary's
    /// descriptor is readable, until it returns `Ok(None)`.
    pub fn try_event(&mut self) -> io::Result<Option<Event>> {
        self.next_event_timeout(Some(Duration::ZERO))
    }

    /// Whether every worker has exited after a shutdown (or none is left at all): no event
    /// will come any more.
    pub fn is_finished(&self) -> bool {
        self.finished && self.events.is_empty()
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
        self.begin_shutdown(0, graceful);
        self.settle()
    }

    /// One `epoll_wait` (at most `timeout`) and everything it reported — or, on io_uring, one
    /// `io_uring_enter` (`uring.rs`); returns how many descriptors or completions were ready.
    fn turn(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        #[cfg(feature = "io-uring")]
        if self.io().ring.is_some() {
            return self.turn_ring(timeout);
        }
        let mut ready = std::mem::take(&mut self.ready);
        self.io().epoll.wait(&mut ready, timeout)?;
        let result = self.dispatch_ready(&ready);
        let n = ready.len();
        self.ready = ready;
        result?;
        self.after_turn()?;
        Ok(n)
    }

    /// Acts on what `epoll_wait` reported.
    fn dispatch_ready(&mut self, ready: &[Ready]) -> io::Result<()> {
        for r in ready {
            match Token::from_u64(r.token) {
                Some(Token::Signals) => self.on_signals()?,
                Some(Token::Alarm) => self.on_alarm(),
                Some(Token::Listener(id)) => self.accept_burst(id)?,
                Some(Token::Control(key)) => {
                    if r.writable {
                        self.flush_outbox(key);
                    }
                    if r.readable || r.hangup {
                        self.on_control(key, r.hangup && !r.readable);
                    }
                }
                Some(Token::Lane(key)) => {
                    if let Some(d) = &mut self.dispatcher {
                        if r.writable {
                            d.on_lane_writable(key);
                        }
                        if r.readable || r.hangup {
                            d.on_lane_readable(key);
                        }
                    }
                }
                Some(Token::Pidfd(key)) => self.on_pidfd(key),
                Some(Token::Notify(key)) => self.on_notify(key),
                None => {}
            }
        }
        Ok(())
    }

    /// [`after_turn`](Self::after_turn) for the program's calls from outside a turn (a
    /// shutdown, a reload...): on io_uring, what it queued is submitted at once.
    fn settle(&mut self) -> io::Result<()> {
        self.after_turn()?;
        self.submit_ring()
    }

    /// Without io_uring there is no ring to submit to.
    #[cfg(not(feature = "io-uring"))]
    fn submit_ring(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// What every turn ends with: hand out what the dispatcher can, settle which listeners the
    /// primary watches, collect warnings, arm the alarm, decide whether it is all over.
    fn after_turn(&mut self) -> io::Result<()> {
        #[cfg(feature = "io-uring")]
        self.ring_after_turn();
        self.disconnect_all_once_drained();
        self.resume_if_queue_drained();
        self.reconcile_accepting()?;
        if let (Some(d), Some(io)) = (&mut self.dispatcher, &self.io) {
            for message in d.take_warnings() {
                self.events.push_back(Event::Warning { id: None, pid: None, message });
            }
            // A lane found full is watched for room; once it has room, no longer.
            for (key, writable) in d.take_writability_changes() {
                if let Some(fd) = d.lane_fd(key) {
                    let interest = Interest { readable: true, writable, ..Interest::default() };
                    if let Err(e) = io.epoll.modify(fd, Token::Lane(key).into(), interest) {
                        self.events.push_back(Event::Warning {
                            id: None,
                            pid: None,
                            message: format!("watching worker (key {key})'s lane for room: {e}"),
                        });
                    }
                }
            }
        }
        let next = [
            self.deadlines.kill,
            self.deadlines.accept,
            self.deadlines.reload,
            self.deadlines.heartbeat,
            self.deadlines.stall_check,
            self.retries.next_due(),
            self.dispatcher.as_ref().and_then(Dispatcher::next_deadline),
            self.workers.values().filter_map(|w| w.outbox_retry).min(),
            self.workers.values().filter_map(|w| w.ready_at).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(io) = &mut self.io {
            io.alarm.set(next)?;
        }
        self.notify_service_manager();
        self.publish_serving_slots();
        if self.workers.is_empty() && (self.shutting_down || !self.retries.any()) && !self.finished {
            self.finished = true;
            let stranded = self.dispatcher.as_ref().map_or(0, Dispatcher::queued);
            if stranded > 0 {
                self.warn(format!("closing {stranded} connections no worker was left to take"));
            }
        }
        Ok(())
    }

    /// Tells the workers (through the counters) which slots take connections now — listening,
    /// not leaving — for `epoll-balance`'s mean.
    fn publish_serving_slots(&mut self) {
        let mask = self
            .workers
            .values()
            .filter(|w| w.listening && !w.asked_to_exit && w.id < 64)
            .fold(0u64, |mask, w| mask | 1 << w.id);
        if mask != self.serving_slots {
            self.serving_slots = mask;
            self.counters.set_serving_slots(mask);
        }
    }

    /// The alarm rang: act on every deadline that has passed.
    fn on_alarm(&mut self) {
        if let Some(io) = &mut self.io {
            io.alarm.fired();
        }
        let now = Instant::now();
        if timers::due(&mut self.deadlines.kill, now) {
            self.kill_all(libc::SIGKILL);
        }
        if timers::due(&mut self.deadlines.accept, now) {
            self.accept_backoff_ended();
        }
        if timers::due(&mut self.deadlines.reload, now) {
            self.reload_timed_out();
        }
        if timers::due(&mut self.deadlines.heartbeat, now) {
            self.heartbeat(now);
        }
        if timers::due(&mut self.deadlines.stall_check, now) {
            self.check_stalls(now);
        }
        self.retry_due_spawns(now);
        self.ready_delays_due(now);
        if let Some(d) = &mut self.dispatcher {
            d.on_timer(now);
        }
        let due: Vec<u64> =
            self.workers.iter().filter(|(_, w)| w.outbox_retry.is_some_and(|t| t <= now)).map(|(k, _)| *k).collect();
        for key in due {
            self.flush_outbox(key);
        }
    }

    /// A warning from the primary itself.
    fn warn(&mut self, message: String) {
        self.events.push_back(Event::Warning { id: None, pid: None, message });
    }

    /// Which slots have a live worker (forked and not asked to exit) that is not stalled.
    fn slot_view(&self) -> SlotView {
        let mut live = Vec::new();
        for w in self.workers.values().filter(|w| !w.asked_to_exit && !self.stalled.contains(&w.id)) {
            if live.len() <= w.id {
                live.resize(w.id + 1, false);
            }
            live[w.id] = true;
        }
        SlotView { live }
    }

    /// The stall check (modes with lanes): a worker that has not looked at its sources for
    /// [`STALL`] — stuck in a slow handler — gets no handoffs, and in reuseport mode the primary
    /// takes the connections hashed to its listener and hands them to the others, until it is
    /// back in its loop. Workers waiting idle, and programs that do not keep the loop clock, are
    /// never stalled; nor is anyone when every worker is (there would be nobody to serve instead).
    fn check_stalls(&mut self, now: Instant) {
        let now_us = crate::sys::timerfd::monotonic_us();
        let serving = self.workers.values().filter(|w| w.listening && !w.asked_to_exit && w.speaks).count();
        let mut stalled: std::collections::BTreeSet<usize> = self
            .workers
            .values()
            .filter(|w| w.listening && !w.asked_to_exit && w.speaks)
            .filter(|w| {
                let look = self.counters.last_look(w.id, w.generation);
                look != 0 && now_us.saturating_sub(look) > STALL.as_micros() as u64
            })
            .map(|w| w.id)
            .collect();
        if stalled.len() >= serving {
            // Nobody else to serve: the connections would wait in the primary instead of in
            // the workers; leave them where they go.
            stalled.clear();
        }
        if stalled != self.stalled {
            let changed: Vec<(u64, bool)> = self
                .workers
                .iter()
                .filter(|(_, w)| w.listening && !w.asked_to_exit && w.speaks)
                .filter(|(_, w)| stalled.contains(&w.id) != self.stalled.contains(&w.id))
                .map(|(k, w)| (*k, !stalled.contains(&w.id)))
                .collect();
            self.stalled = stalled;
            if let Some(d) = &mut self.dispatcher {
                for (key, back) in changed {
                    d.set_stalled(key, !back);
                }
            }
            self.accepting.dirty = true;
        }
        self.deadlines.stall_check = Some(now + STALL / 2);
    }

    fn slot_has_live_worker(&self, slot: usize) -> bool {
        self.workers.values().any(|w| w.id == slot && !w.asked_to_exit)
    }

    /// While shutting down: asks every worker to finish and exit — once the connections still
    /// queued in the primary have been handed out.
    fn disconnect_all_once_drained(&mut self) {
        if !self.shutting_down || self.dispatcher.as_ref().is_some_and(|d| !d.drained()) {
            return;
        }
        let keys: Vec<u64> = self.workers.iter().filter(|(_, w)| !w.asked_to_exit).map(|(k, _)| *k).collect();
        for key in keys {
            self.stop_worker(key);
        }
    }

    fn on_signals(&mut self) -> io::Result<()> {
        loop {
            let Some(signals) = self.io().signals.as_ref() else { return Ok(()) };
            let Some((signal, _sender)) = signals.read()? else { return Ok(()) };
            match signal {
                libc::SIGINT if self.shutting_down => self.begin_shutdown(signal, false),
                libc::SIGINT | libc::SIGTERM => self.begin_shutdown(signal, true),
                libc::SIGQUIT => self.begin_shutdown(signal, false),
                libc::SIGHUP => self.start_reload(),
                libc::SIGTTIN => self.change_scale(self.target + 1),
                libc::SIGTTOU => self.change_scale(self.target.saturating_sub(1).max(1)),
                libc::SIGUSR2 => self.upgrade(),
                _ => {}
            }
        }
    }

    fn begin_shutdown(&mut self, signal: i32, graceful: bool) {
        self.events.push_back(Event::Shutdown { signal, graceful });
        self.reload = None;
        self.deadlines.reload = None;
        self.retries.clear();
        if !graceful {
            self.shutting_down = true;
            self.kill_all(libc::SIGKILL);
            return;
        }
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        // Whatever a reload left out of the rotation takes connections again: the ones queued
        // in the primary go out before anyone is asked to stop.
        let serving: Vec<u64> =
            self.workers.iter().filter(|(_, w)| w.listening && w.speaks && !w.asked_to_exit).map(|(k, _)| *k).collect();
        for key in serving {
            self.set_serving(key, true);
        }
        self.pause_accepting(Pause::Stopped);
        self.deadlines.kill = Some(Instant::now() + self.config.shutdown_timeout);
    }

    /// Puts worker `key` in or out of the handoff rotation.
    fn set_serving(&mut self, key: u64, serving: bool) {
        if let Some(d) = &mut self.dispatcher {
            d.set_serving(key, serving);
        }
    }

    /// Asks worker `key` to stop accepting, finish its connections and exit.
    fn stop_worker(&mut self, key: u64) {
        self.set_serving(key, false);
        let Some(w) = self.workers.get_mut(&key) else { return };
        if !w.asked_to_exit {
            w.asked_to_exit = true;
            self.accepting.dirty = true;
        }
        if !w.speaks || (w.program && !w.connected) {
            // A program that does not read its channel (or closed it) takes the usual signal
            // instead.
            let _ = w.child.signal(libc::SIGTERM);
        } else if w.connected {
            self.send_control(key, Message::Stop, &[]);
        }
    }

    /// Sends on worker `key`'s control channel without ever blocking (see `outbox.rs`). A worker
    /// whose outbox overflows is not reading: it is killed as hung. Returns whether the message
    /// went out or waits in the outbox.
    fn send_control(&mut self, key: u64, message: Message, fds: &[BorrowedFd<'_>]) -> bool {
        let Some(w) = self.workers.get_mut(&key) else { return false };
        let mut warnings = Vec::new();
        let pending = w.outbox.send(&w.control, message, fds, &mut warnings);
        let (id, pid) = (w.id, w.pid());
        for message in warnings {
            self.events.push_back(Event::Warning { id: Some(id), pid: Some(pid), message });
        }
        match pending {
            Ok(Pending::Overflow) => {
                let w = self.workers.get_mut(&key).expect("looked up above");
                if !w.hung {
                    w.hung = true;
                    let _ = w.child.signal(libc::SIGKILL);
                    self.events.push_back(Event::Unresponsive { id, pid, silent_for: w.last_seen.elapsed() });
                }
                false
            }
            Ok(Pending::Closed) => false,
            Ok(pending) => {
                self.outbox_pending(key, pending);
                true
            }
            Err(e) => {
                self.events.push_back(Event::Warning { id: Some(id), pid: Some(pid), message: e.to_string() });
                false
            }
        }
    }

    /// Acts on what worker `key`'s outbox still waits for: room in the channel (watch it for
    /// writability), or the end of a back-off (the alarm).
    fn outbox_pending(&mut self, key: u64, pending: Pending) {
        let Some(w) = self.workers.get_mut(&key) else { return };
        let want_writable = pending == Pending::Writable;
        if let Pending::RetryAt(at) = pending {
            w.outbox_retry = Some(at);
        }
        if want_writable != w.watching_writable {
            let interest = Interest { readable: true, writable: want_writable, ..Interest::default() };
            if let Some(io) = &self.io {
                if io.epoll.modify(&w.control, Token::Control(key).into(), interest).is_ok() {
                    w.watching_writable = want_writable;
                }
            }
        }
    }

    /// Worker `key`'s control channel is writable, or its outbox's back-off ended: send what
    /// waits.
    fn flush_outbox(&mut self, key: u64) {
        let Some(w) = self.workers.get_mut(&key) else { return };
        w.outbox_retry = None;
        let mut warnings = Vec::new();
        let pending = w.outbox.flush(&w.control, &mut warnings);
        let (id, pid) = (w.id, w.pid());
        for message in warnings {
            self.events.push_back(Event::Warning { id: Some(id), pid: Some(pid), message });
        }
        // Closed: the exit handling follows; stop watching for room either way.
        let pending = if pending == Pending::Closed { Pending::Nothing } else { pending };
        self.outbox_pending(key, pending);
    }

    fn kill_all(&mut self, signal: i32) {
        for w in self.workers.values_mut() {
            w.asked_to_exit = true;
            let _ = w.child.signal(signal);
        }
        self.accepting.dirty = true;
    }

    /// Reads every frame waiting on worker `key`'s control channel.
    fn on_control(&mut self, key: u64, hangup: bool) {
        if hangup {
            self.on_control_closed(key);
            return;
        }
        // A readable channel means the worker sent something: it is alive (one clock read per
        // wakeup, not per frame).
        if let Some(w) = self.workers.get_mut(&key) {
            w.last_seen = Instant::now();
        }
        loop {
            let Some(w) = self.workers.get_mut(&key) else { return };
            let (id, pid) = (w.id, w.pid());
            let received = match w.control.try_recv() {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(ChannelError::Closed) => {
                    self.on_control_closed(key);
                    return;
                }
                Err(e) => {
                    let closed = matches!(e, ChannelError::Io(_));
                    self.events.push_back(Event::Warning {
                        id: Some(id),
                        pid: Some(pid),
                        message: format!("bad frame from the worker: {e}"),
                    });
                    if closed {
                        self.on_control_closed(key);
                        return;
                    }
                    continue;
                }
            };
            if !matches!(received.message, Message::Online | Message::Warning(_)) {
                w.speaks = true;
            }
            let (listening, exiting) = (w.listening, w.asked_to_exit);
            match received.message {
                Message::Online => self.events.push_back(Event::Online { id, pid }),
                Message::Listening if listening => {
                    // Ready already (by sd_notify or its delay), and now reading its channel: it
                    // can be handed connections.
                    if !exiting {
                        self.set_serving(key, true);
                    }
                }
                Message::Listening => self.on_listening(key),
                Message::User(data) => self.events.push_back(Event::Message { id, pid, data, fds: received.fds }),
                Message::Pong => {}
                Message::Retiring => self.on_retiring(key),
                Message::Pressure => self.on_pressure(key),
                Message::Resume => {
                    if let Some(d) = &mut self.dispatcher {
                        d.resume(key);
                    }
                }
                Message::Warning(message) => {
                    self.events.push_back(Event::Warning { id: Some(id), pid: Some(pid), message })
                }
                other => self.events.push_back(Event::Warning {
                    id: Some(id),
                    pid: Some(pid),
                    message: format!("unexpected {other:?} from the worker"),
                }),
            }
        }
    }

    /// Worker `key` ran out of descriptors and stopped reading its lane: take back what is
    /// queued in it (what the primary has room for), then tell it so.
    fn on_pressure(&mut self, key: u64) {
        if let Some(d) = &mut self.dispatcher {
            d.pressure(key);
        }
        self.send_control(key, Message::Reclaimed, &[]);
    }

    /// The worker's control channel closed: it is exiting (or gone), or closed its end.
    fn on_control_closed(&mut self, key: u64) {
        let Some(w) = self.workers.get_mut(&key) else { return };
        if !w.connected {
            return;
        }
        w.connected = false;
        let (id, pid) = (w.id, w.pid());
        let _ = self.io.as_ref().map(|io| io.epoll.delete(&w.control));
        self.set_serving(key, false);
        self.events.push_back(Event::Disconnect { id, pid });
    }

    /// Worker `key`'s pidfd is readable: it has exited. Reap it, read what it sent last, take
    /// back what it never read from its lane, and report it.
    fn on_pidfd(&mut self, key: u64) {
        let Some(w) = self.workers.get(&key) else { return };
        let status = match w.child.try_reap() {
            Ok(Some(status)) => status,
            Ok(None) => return,
            Err(e) => {
                // The pidfd is readable, so the process has ended; how is unknown.
                let (id, pid) = (w.id, w.pid());
                self.events.push_back(Event::Warning { id: Some(id), pid: Some(pid), message: e.to_string() });
                crate::sys::process::ExitStatus::Unknown
            }
        };
        let exit = crate::event::WorkerExit::from(status);
        // Its last messages first (a retiring notice, a warning), then its lane.
        self.on_control(key, false);
        self.on_control_closed(key);
        if let Some(d) = &mut self.dispatcher {
            d.remove_lane(key);
        }
        let w = self.workers.remove(&key).expect("reaped worker is known");
        self.accepting.dirty = true;
        // Its gauges: the connections it held died with it.
        self.counters.worker_gone(w.id, w.generation);
        let expected = w.asked_to_exit || self.shutting_down;
        let (id, pid) = (w.id, w.pid());
        self.events.push_back(Event::Exit { id, pid, status: exit, expected });
        // Its pidfd and control channel close here, before `after_exit` forks a replacement:
        // a descriptor still open in a local would be inherited by the child, which never
        // closes it — and a pidfd left registered in the primary's epoll, open in the child,
        // would report readiness for ever.
        if let Some(io) = &self.io {
            let _ = io.epoll.delete(&w.child);
            if let Some(r) = &w.notify {
                let _ = io.epoll.delete(r);
            }
        }
        drop(w);
        self.after_exit(key, id, pid, exit, expected);
    }
}

/// The backend that runs for `requested` in `mode`, given whether io_uring is `available`, and
/// what the program should hear about it.
fn resolve_backend(requested: Backend, mode: crate::Mode, available: Result<(), String>) -> (Backend, Vec<String>) {
    let mut warnings = Vec::new();
    let backend = match available {
        Ok(()) => requested,
        Err(why) => {
            warnings.push(format!("{requested} is unavailable: {why}; using epoll"));
            Backend::Epoll
        }
    };
    if backend == Backend::IoUring
        && matches!(mode, crate::Mode::Shared(s) if !matches!(s, crate::SharedAccept::EpollExclusive | crate::SharedAccept::EpollRotate | crate::SharedAccept::EpollBalance))
    {
        warnings.push(format!("{mode} has no io_uring form: its workers wait on epoll"));
    }
    (backend, warnings)
}

impl AsFd for Primary {
    /// The primary's epoll instance — or, in handoff mode on io_uring, its ring: readable
    /// whenever [`Primary::try_event`] has something to do. Register it (level- or
    /// edge-triggered) in a host's event loop.
    fn as_fd(&self) -> BorrowedFd<'_> {
        #[cfg(feature = "io-uring")]
        if let Some(r) = &self.io().ring {
            return r.ring.as_fd();
        }
        self.io().epoll.as_fd()
    }
}

impl Drop for Primary {
    /// Kills any worker still running (a primary dropped mid-run must not leave orphans), reaps
    /// it, and restores the signal mask the process had before [`crate::Cluster::start`].
    fn drop(&mut self) {
        if self.io.is_none() {
            return; // a forked worker's copy
        }
        for w in self.workers.values() {
            w.child.kill_and_wait();
        }
        if let Some(mask) = &self.saved_mask {
            let _ = mask.set_mask();
        }
        // The ring goes first, while every descriptor its operations name is still open; and
        // quietly (see `Ring::close_quietly`), so the program's next blocking call is not
        // interrupted by its teardown.
        #[cfg(feature = "io-uring")]
        if let Some(r) = self.io.as_mut().and_then(|io| io.ring.take()) {
            r.ring.close_quietly();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolving_the_backend_falls_back_to_epoll_and_says_why() {
        use crate::{Mode, SharedAccept};
        let refused = Err("io_uring_setup: Operation not permitted (a seccomp filter)".to_owned());
        let (backend, warnings) = resolve_backend(Backend::IoUring, Mode::Handoff, refused);
        assert_eq!(backend, Backend::Epoll);
        assert_eq!(
            warnings,
            ["io-uring is unavailable: io_uring_setup: Operation not permitted (a seccomp filter); using epoll"]
        );
        assert_eq!(resolve_backend(Backend::IoUring, Mode::Reuseport, Ok(())), (Backend::IoUring, vec![]));
        let (backend, warnings) = resolve_backend(Backend::IoUring, Mode::Shared(SharedAccept::Epoll), Ok(()));
        assert_eq!(backend, Backend::IoUring);
        assert_eq!(warnings, ["shared/epoll has no io_uring form: its workers wait on epoll"]);
        assert_eq!(
            resolve_backend(Backend::Epoll, Mode::Shared(SharedAccept::Epoll), Ok(())),
            (Backend::Epoll, vec![])
        );
    }

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::Signals,
            Token::Alarm,
            Token::Listener(0),
            Token::Listener(1023),
            Token::Control(7),
            Token::Lane(u32::MAX as u64),
            Token::Pidfd(42),
            Token::Notify(3),
        ] {
            assert_eq!(Token::from_u64(t.into()), Some(t));
        }
        assert_eq!(Token::from_u64(0), None);
    }
}

//! The primary: forks the workers, watches them over their channels and a signalfd, and — in
//! handoff mode — accepts every connection and hands it on.
//!
//! It is one single-threaded epoll loop. Everything that can happen is a readable descriptor:
//! a signal (`SIGCHLD`, `SIGINT`, `SIGTERM`, `SIGQUIT`, read from a signalfd, so there are no
//! signal handlers), a worker's channel, the listener (handoff), or a deadline (timerfd).
//! [`Primary::next_event`] turns the loop until it has an [`Event`] to report.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};

use rustix::process::Pid;

use crate::accept::{self, Accepted};
use crate::channel::{Channel, ChannelError, Message};
use crate::cluster::{Cluster, Config, Listeners};
use crate::listener::{Listener, StreamKind, UnixPath};
use crate::mode::handoff::Dispatcher;
use crate::mode::{Mode, shared};
use crate::stats::{Counters, PrimaryCounter, Snapshot};
use crate::sys::epoll::{Epoll, Interest, Ready};
use crate::sys::process::{self, Forked};
use crate::sys::signal::{Disposition, SignalFd, SignalSet, set_disposition};
use crate::sys::timerfd::Timer;
use crate::worker::{Source, Worker};
use crate::{Event, ListenAddr};

/// Signals the primary reads from its signalfd.
const PRIMARY_SIGNALS: [i32; 4] = [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGQUIT];

const TOKEN_SIGNALS: u64 = u64::MAX;
const TOKEN_LISTENER: u64 = u64::MAX - 1;
const TOKEN_KILL_TIMER: u64 = u64::MAX - 2;
const TOKEN_BACKOFF: u64 = u64::MAX - 3;
/// Token of the listener inside a worker's epoll.
const WORKER_TOKEN_LISTENER: u64 = u64::MAX;
/// How many connections the primary accepts per wakeup before looking at its channels again.
const ACCEPT_BATCH: usize = 64;

/// The user's worker function, run in each forked worker.
pub(crate) type WorkerMain = Box<dyn FnMut(&mut Worker) -> io::Result<()>>;

/// The primary's descriptors that a forked worker must close.
#[derive(Debug)]
struct PrimaryIo {
    epoll: Epoll,
    signals: SignalFd,
    kill_timer: Timer,
    backoff: Timer,
}

/// The primary's view of one worker process.
#[derive(Debug)]
struct WorkerHandle {
    id: usize,
    pid: Pid,
    channel: Channel,
    /// The channel is open (no hangup seen yet).
    connected: bool,
    /// The primary asked it to go (disconnect or kill).
    asked_to_exit: bool,
}

impl WorkerHandle {
    fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }
}

/// Why the primary is not watching its listener (handoff mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptPause {
    /// Out of descriptors: resume when the back-off timer fires.
    BackOff,
    /// The queue reached its limit: resume when it is half empty.
    QueueFull,
    /// Shutting down.
    Stopped,
}

/// A running cluster, seen from the primary process.
pub struct Primary {
    config: Config,
    local_addr: ListenAddr,
    counters: Counters,
    listeners: Option<Listeners>,
    _unix_path: Option<UnixPath>,
    io: Option<PrimaryIo>,
    saved_mask: SignalSet,
    workers: BTreeMap<u64, WorkerHandle>,
    next_key: u64,
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
        let Cluster { config, local_addr, listeners, unix_path, counters } = cluster;
        let set = SignalSet::of(&PRIMARY_SIGNALS);
        let saved_mask = set.block()?;
        let io = (|| {
            let io = PrimaryIo {
                epoll: Epoll::new()?,
                signals: SignalFd::new(&set)?,
                kill_timer: Timer::new()?,
                backoff: Timer::new()?,
            };
            io.epoll.add(&io.signals, TOKEN_SIGNALS, Interest::READABLE)?;
            io.epoll.add(&io.kill_timer, TOKEN_KILL_TIMER, Interest::READABLE)?;
            io.epoll.add(&io.backoff, TOKEN_BACKOFF, Interest::READABLE)?;
            Ok::<_, io::Error>(io)
        })();
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                let _ = saved_mask.set_mask();
                return Err(e);
            }
        };
        let dispatcher =
            (config.mode == Mode::Handoff).then(|| Dispatcher::new(config.handoff_window, counters.clone()));
        let mut primary = Primary {
            config,
            local_addr,
            counters,
            listeners: Some(listeners),
            _unix_path: unix_path,
            io: Some(io),
            saved_mask,
            workers: BTreeMap::new(),
            next_key: 0,
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
        for slot in 0..primary.config.workers {
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

    /// The live workers: `(id, pid)` pairs, in fork order.
    pub fn workers(&self) -> Vec<(usize, u32)> {
        self.workers.values().map(|w| (w.id, w.pid())).collect()
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
    /// An `Other` error if every worker exited without a shutdown having been asked for.
    pub fn run(mut self, mut on_event: impl FnMut(&Event)) -> io::Result<Snapshot> {
        while let Some(event) = self.next_event()? {
            on_event(&event);
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
                key => self.on_channel(key, r.hangup && !r.readable),
            }
        }
        self.ready = ready;
        self.after_turn()
    }

    fn after_turn(&mut self) -> io::Result<()> {
        if self.shutting_down {
            // In handoff mode, connections still queued in the primary are served first.
            let queue_empty = self.dispatcher.as_ref().is_none_or(|d| d.queued() == 0);
            if queue_empty {
                let keys: Vec<u64> = self.workers.iter().filter(|(_, w)| !w.asked_to_exit).map(|(k, _)| *k).collect();
                for key in keys {
                    self.disconnect(key);
                }
            }
        }
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

    fn on_signals(&mut self) -> io::Result<()> {
        while let Some((signal, _sender)) = self.io().signals.read()? {
            match signal {
                libc::SIGCHLD => self.reap()?,
                libc::SIGINT if self.shutting_down => self.begin_shutdown(signal, false)?,
                libc::SIGINT | libc::SIGTERM => self.begin_shutdown(signal, true)?,
                libc::SIGQUIT => self.begin_shutdown(signal, false)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn begin_shutdown(&mut self, signal: i32, graceful: bool) -> io::Result<()> {
        self.events.push_back(Event::Shutdown { signal, graceful });
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
        Ok(())
    }

    /// Asks worker `key` to stop accepting, finish its connections and exit.
    fn disconnect(&mut self, key: u64) {
        let Some(w) = self.workers.get_mut(&key) else { return };
        w.asked_to_exit = true;
        if let Some(d) = &mut self.dispatcher {
            let workers = &self.workers;
            d.remove_worker(key, false, |k| workers.get(&k).map(|w| &w.channel));
        }
        let w = &self.workers[&key];
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
                self.on_channel_closed(key);
                let w = self.workers.remove(&key).expect("reaped worker is known");
                self.events.push_back(Event::Exit {
                    id: w.id,
                    pid: w.pid(),
                    status,
                    exited_after_disconnect: w.asked_to_exit,
                });
            }
        }
        Ok(())
    }

    /// Reads every frame waiting on worker `key`'s channel.
    fn on_channel(&mut self, key: u64, hangup: bool) {
        if hangup {
            self.on_channel_closed(key);
            return;
        }
        loop {
            let Some(w) = self.workers.get_mut(&key) else { return };
            let (id, pid) = (w.id, w.pid());
            let received = match w.channel.try_recv() {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(ChannelError::Closed) => {
                    self.on_channel_closed(key);
                    return;
                }
                Err(e) => {
                    eprintln!("herd: primary: bad frame from worker {id} (pid {pid}): {e}");
                    if matches!(e, ChannelError::Io(_)) {
                        self.on_channel_closed(key);
                        return;
                    }
                    continue;
                }
            };
            let workers = &self.workers;
            let channel_of = |k: u64| workers.get(&k).map(|w| &w.channel);
            match received.message {
                Message::Online => self.events.push_back(Event::Online { id, pid }),
                Message::Listening => {
                    if let Some(d) = &mut self.dispatcher {
                        if !workers[&key].asked_to_exit {
                            d.add_worker(key, channel_of);
                        }
                    }
                    self.events.push_back(Event::Listening { id, pid });
                }
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

    /// Handoff: accepts up to [`ACCEPT_BATCH`] connections and gives each to a worker.
    fn accept_and_dispatch(&mut self) -> io::Result<()> {
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

    fn pause_accepting(&mut self, why: AcceptPause) -> io::Result<()> {
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

    fn resume_accepting(&mut self, why: AcceptPause) -> io::Result<()> {
        if self.accept_paused != Some(why) {
            return Ok(());
        }
        self.accept_paused = None;
        if let Some(Listeners::Handoff(l)) = &self.listeners {
            self.io().epoll.add(l, TOKEN_LISTENER, Interest::READABLE)?;
        }
        Ok(())
    }

    /// Forks the worker for `slot`.
    fn spawn(&mut self, slot: usize) -> io::Result<()> {
        let (ours, theirs) = Channel::pair().map_err(|e| crate::sys::context(e, format!("spawning worker {slot}")))?;
        self.counters.use_slot(slot);
        match process::fork_worker().map_err(|e| crate::sys::context(e, format!("spawning worker {slot}")))? {
            Forked::Parent(pid) => {
                drop(theirs);
                self.io().epoll.add(&ours, self.next_key, Interest::READABLE)?;
                let handle = WorkerHandle { id: slot, pid, channel: ours, connected: true, asked_to_exit: false };
                self.events.push_back(Event::Fork { id: slot, pid: handle.pid() });
                self.workers.insert(self.next_key, handle);
                self.next_key += 1;
                Ok(())
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

    /// In the forked child: drop everything that belongs to the primary, set up the worker and
    /// run the user's function. Returns the exit code.
    fn become_worker(&mut self, slot: usize, channel: Channel) -> i32 {
        // Close the primary's descriptors: its epoll and signalfd, the other workers' channels,
        // and — vital in handoff mode — the primary's copies of connections in flight, or those
        // connections would stay open as long as this worker lives.
        self.io = None;
        self.workers.clear();
        self.dispatcher = None;
        self.events.clear();
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

    /// Workers leave SIGINT, SIGQUIT and SIGHUP to the primary (a terminal sends Ctrl-C to the
    /// whole process group, and the primary decides what the workers do), die on SIGTERM as
    /// Node's `worker.kill()` expects, and ignore SIGPIPE (a client that hung up must not kill a
    /// worker mid-write).
    fn reset_signals_for_worker(&self) -> io::Result<()> {
        for s in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGPIPE] {
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
            (Mode::Reuseport, Some(l)) => Source::Listener(crate::accept::epoll::ListenerWatch::new(
                l,
                crate::accept::epoll::Watch::Level,
                WORKER_TOKEN_LISTENER,
            )),
            (Mode::Handoff, _) => Source::Handoff,
            (mode, None) => return Err(io::Error::other(format!("no listener for slot {slot} in {mode} mode"))),
        };
        channel.send(&Message::Online, &[]).map_err(io::Error::from)?;
        Worker::new(slot, kind, channel, source, self.counters.clone())
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

impl Drop for Primary {
    /// Kills any worker still running (a primary dropped mid-run must not leave orphans), reaps
    /// it, and restores the signal mask the process had before [`Cluster::start`].
    fn drop(&mut self) {
        if self.io.is_none() {
            return; // a forked worker's copy
        }
        for w in self.workers.values() {
            let _ = process::kill(w.pid, libc::SIGKILL);
        }
        for w in self.workers.values() {
            while let Ok(None) = process::reap(w.pid) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let _ = self.saved_mask.set_mask();
    }
}

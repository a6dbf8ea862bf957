//! The worker side of the fork: what the user's code gets in every mode.
//!
//! A [`Worker`] owns one epoll instance that watches every source of the worker's connections
//! and messages: its listener (shared, reuseport) or the accept thread's queue (shared,
//! `blocking`), its lane from the primary (handoff, and reuseport for slots without a worker),
//! and its control channel. The user takes connections from it in one of three ways:
//!
//! 1. **Blocking iterator**: `for stream in worker.incoming() { ... }` — one connection at a
//!    time, streams in blocking mode. The loop ends when the primary asks the worker to stop.
//! 2. **Its own event loop, on the worker's epoll**: [`Worker::register`] your connections,
//!    [`Worker::poll`] for readiness, and drain herd's events with [`Worker::try_event`]. One
//!    epoll instance, no nesting: this is what `herd serve` does, and the only way
//!    `EPOLLEXCLUSIVE` keeps its promise.
//! 3. **A foreign event loop** (tokio, mio...): register the worker's descriptor
//!    ([`AsFd`]) for readability, edge- or level-triggered, and whenever it fires call
//!    [`Worker::try_event`] until it returns `Ok(None)`: then nothing is ready, so an
//!    edge-triggered loop loses no wakeup. Nesting one epoll in another defeats
//!    `EPOLLEXCLUSIVE` (see [`crate::accept`]), so with the exclusive strategies prefer 2.
//!
//! Streams are non-blocking (`accept4(SOCK_NONBLOCK)`) except from [`Worker::incoming`].
//!
//! A program with its own runtime can also take the listener out of herd's loop
//! ([`Worker::into_listener`]) and accept on it itself.
//!
//! A program that `herd run` started (a worker that is a program of its own) gets the same
//! [`Worker`] from [`Worker::from_env`].
//!
//! The files: `env.rs` builds a worker from what `herd run` passed; `sources.rs` multiplexes the worker's sources into events; `lane.rs` reads
//! handed-off connections and acknowledges them; `incoming.rs` is the blocking iterator;
//! `listener.rs` is the listener handed to another runtime.

mod env;
mod incoming;
mod lane;
mod listener;
mod sources;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub(crate) use env::leave_signals_to_the_primary;
pub use incoming::Incoming;
use lane::LaneReader;
pub use listener::WorkerListener;

#[cfg(feature = "io-uring")]
use crate::accept::Backend;
use crate::accept::blocking::BlockingAcceptor;
use crate::accept::epoll::ListenerWatch;
use crate::accept::{Wait, WorkerAccept};
use crate::channel::{self, Channel, Message};
use crate::listener::StreamKind;
use crate::stats::Counters;
use crate::stream::Stream;
use crate::sys::epoll::{Epoll, Interest, MAX_EVENTS, Ready};
use crate::sys::timerfd::Timer;

/// Tokens at or above this value are herd's own; [`Worker::register`] refuses them.
pub const RESERVED_TOKENS: u64 = u64::MAX - 15;
const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_CONTROL: u64 = u64::MAX - 1;
const TOKEN_ACCEPT_THREAD: u64 = u64::MAX - 2;
const TOKEN_TIMER: u64 = u64::MAX - 3;
const TOKEN_LANE: u64 = u64::MAX - 4;
const TOKEN_NUDGE: u64 = u64::MAX - 5;

/// How long a worker out of descriptors waits before it tries its lane again; doubles while
/// the shortage lasts, up to [`MAX_LANE_BACKOFF`].
const LANE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_LANE_BACKOFF: Duration = Duration::from_secs(1);

/// How long a worker waits for `Reclaimed` before it asks again.
const RECLAIM_WAIT: Duration = Duration::from_secs(1);
/// How soon a `Resume` the control channel could not take is tried again.
const RESUME_RETRY: Duration = Duration::from_millis(100);

/// At most this many warnings a second go to the primary; the rest are counted.
const WARNINGS_PER_SECOND: u32 = 10;

/// Something that happened to a worker.
#[derive(Debug)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// A new connection, to serve.
    Connection(Stream),
    /// A message from the primary ([`crate::Primary::send`]), with the descriptors it attached
    /// ([`crate::Primary::send_with_fds`]), this worker's own copies, close-on-exec.
    Message {
        /// The bytes.
        data: Vec<u8>,
        /// The descriptors.
        fds: Vec<OwnedFd>,
    },
    /// The primary asked this worker to stop (or the primary is gone): no more connections will
    /// come. Finish the open ones and return from the worker function.
    Stop,
}

/// How the worker takes connections off a listener, if it does.
#[derive(Debug)]
enum Accepting {
    /// It does not (handoff), or no longer (stopping).
    Nothing,
    /// From its epoll.
    Epoll(ListenerWatch),
    /// From a thread parked in `accept`.
    Thread(BlockingAcceptor),
    /// From an io_uring accept, the ring in the worker's epoll.
    #[cfg(feature = "io-uring")]
    Uring(Box<crate::accept::uring::UringAccept>),
}

/// Where the lane stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneState {
    /// Watched and read.
    Reading,
    /// Out of descriptors: not watched, `Pressure` sent at `asked_at` (again after
    /// [`RECLAIM_WAIT`] without an answer). `reclaimed` once the primary answered that it took the
    /// lane back; `Resume` goes out when that and the back-off are both done.
    Pressured { reclaimed: bool, resume_at: Instant, asked_at: Instant },
    /// The primary closed it.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Asked to stop; waiting for the accept thread to finish and the lane to be empty.
    Stopping,
    /// The `Stop` event has been queued.
    Stopped,
}

/// The ready flags one `epoll_wait` left for [`Worker::service`].
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    listener: bool,
    control: bool,
    accept_thread: bool,
    timer: bool,
    lane: bool,
    /// The hand-on eventfd (`epoll-balance`): another worker stepped out with connections queued.
    nudge: bool,
}

impl Pending {
    fn any(&self) -> bool {
        self.listener || self.control || self.accept_thread || self.timer || self.lane || self.nudge
    }
}

/// Warnings for the primary, at most [`WARNINGS_PER_SECOND`].
#[derive(Debug, Default)]
struct Warnings {
    queue: Vec<String>,
    second: Option<Instant>,
    sent_this_second: u32,
    suppressed: u32,
}

/// A worker process's handle on the cluster: its id, its connections and its channel to the
/// primary. The user's worker function receives it.
#[derive(Debug)]
pub struct Worker {
    id: usize,
    generation: u64,
    kind: StreamKind,
    control: Channel,
    epoll: Epoll,
    accepting: Accepting,
    /// Handoff mode: the worker never had a listener.
    lane_only: bool,
    lane: Option<LaneReader>,
    lane_state: LaneState,
    lane_backoff: Duration,
    /// A `Resume` the control channel did not take yet: tried again at this time.
    resume_owed: Option<Instant>,
    counters: Counters,
    events: VecDeque<WorkerEvent>,
    messages: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    /// The user's readiness found by herd's own waits, one entry per token.
    user_ready: Vec<Ready>,
    user_index: HashMap<u64, usize>,
    scratch: Vec<Ready>,
    handed: VecDeque<OwnedFd>,
    pending: Pending,
    /// The last `epoll_wait` was the user's [`Worker::poll`], whose next call reports whatever
    /// is still ready: [`Worker::try_event`] need not look again before saying `None`.
    polled: bool,
    listening_sent: Cell<bool>,
    state: State,
    /// One timer for the accept back-off and the lane's: made at start, not when needed —
    /// when it is needed, descriptors have run out.
    timer: Timer,
    accept_resume_at: Option<Instant>,
    /// `epoll-balance`: out of the accept queue (above the mean); look again at this time.
    balance_check_at: Option<Instant>,
    /// `epoll-balance`, on either backend.
    balances: bool,
    /// When this worker last left a blocking wait (monotonic µs): the start of its busy time.
    busy_since: Option<u64>,
    /// The accept ring, once stopped: kept until the worker ends (see `accept::uring::Spent`).
    #[cfg(feature = "io-uring")]
    spent_ring: Option<crate::accept::uring::Spent>,
    warnings: Warnings,
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        generation: u64,
        kind: StreamKind,
        control: Channel,
        accept: Option<WorkerAccept>,
        lane: Option<(Channel, usize)>,
        counters: Counters,
    ) -> io::Result<Worker> {
        let counters = counters.for_generation(generation);
        let epoll = Epoll::new()?;
        epoll.add(&control, TOKEN_CONTROL, Interest::READABLE)?;
        let timer = Timer::new()?;
        epoll.add(&timer, TOKEN_TIMER, Interest::READABLE)?;
        let lane_only = accept.is_none();
        let balances = accept.as_ref().is_some_and(|a| a.wait == Wait::Balance);
        let accepting = match accept {
            None => Accepting::Nothing,
            Some(WorkerAccept { listener, wait: Wait::Thread, .. }) => {
                let acceptor = BlockingAcceptor::start(listener, counters.clone(), id)?;
                epoll.add(acceptor.wake_fd(), TOKEN_ACCEPT_THREAD, Interest::READABLE)?;
                Accepting::Thread(acceptor)
            }
            #[cfg(feature = "io-uring")]
            Some(WorkerAccept { listener, wait, backend: Backend::IoUring, .. }) if wait.on_uring().is_some() => {
                let uring = crate::accept::uring::UringAccept::new(listener, wait.on_uring().expect("checked"))?;
                // Edge-triggered: the ring's eventfd is never read, each signal is an edge.
                epoll.add(&uring, TOKEN_LISTENER, Interest { edge: true, ..Interest::READABLE })?;
                Accepting::Uring(Box::new(uring))
            }
            Some(WorkerAccept { listener, wait, nudge, .. }) => {
                let mut watch = ListenerWatch::new(listener, wait, TOKEN_LISTENER).with_nudge(nudge, TOKEN_NUDGE);
                watch.arm(&epoll)?;
                Accepting::Epoll(watch)
            }
        };
        let lane = match lane {
            Some((channel, window)) => {
                epoll.add(&channel, TOKEN_LANE, Interest::READABLE)?;
                Some(LaneReader::new(channel, window, counters.clone(), id))
            }
            None => None,
        };
        Ok(Worker {
            id,
            generation,
            kind,
            control,
            epoll,
            accepting,
            lane_only,
            lane,
            lane_state: LaneState::Reading,
            lane_backoff: LANE_BACKOFF,
            resume_owed: None,
            counters,
            events: VecDeque::new(),
            messages: VecDeque::new(),
            user_ready: Vec::new(),
            user_index: HashMap::new(),
            scratch: Vec::with_capacity(64),
            handed: VecDeque::new(),
            pending: Pending::default(),
            polled: false,
            listening_sent: Cell::new(false),
            state: State::Running,
            timer,
            accept_resume_at: None,
            balance_check_at: None,
            balances,
            busy_since: None,
            #[cfg(feature = "io-uring")]
            spent_ring: None,
            warnings: Warnings::default(),
        })
    }

    /// This worker's id: its slot, from 0 to N-1. A replacement for a worker gets the same id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// This worker's generation: 0 for the first workers, one more with each rolling reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// This process's pid.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// The cluster's shared counters (read-only for the user; herd keeps them).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Sends `bytes` to the primary, which sees a [`crate::Event::Message`].
    ///
    /// # Errors
    /// `InvalidInput` if `bytes` is longer than [`channel::MAX_MESSAGE`]; the channel's error
    /// if the primary is gone.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.send_with_fds(bytes, &[])
    }

    /// [`send`](Self::send) with descriptors attached (at most [`channel::MAX_FDS`]), as Node's
    /// `process.send(message, handle)`: the primary receives its own copies of them. Blocks
    /// while the primary's end of the channel is full.
    ///
    /// # Errors
    /// As [`send`](Self::send); `InvalidInput` for too many descriptors.
    pub fn send_with_fds(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if bytes.len() > channel::MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes exceeds the {}-byte limit", bytes.len(), channel::MAX_MESSAGE),
            ));
        }
        if fds.len() > channel::MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} descriptors exceed the {}-descriptor limit of a message", fds.len(), channel::MAX_FDS),
            ));
        }
        self.control.send_user(bytes, fds, false).map_err(io::Error::from)
    }

    /// Announces that this worker is about to exit on its own — Node's "suicide" message — and
    /// stops accepting. The primary forks the replacement at once, before this worker goes, so
    /// the slot is never empty; this worker's exit is then expected, not a crash. Connections
    /// already taken are still delivered, then [`WorkerEvent::Stop`]: finish them and
    /// return from the worker function.
    pub fn retire(&mut self) -> io::Result<()> {
        self.control.send(&Message::Retiring, &[]).map_err(io::Error::from)?;
        self.begin_stopping()
    }

    /// Messages from the primary (bytes and descriptors) that arrived while
    /// [`incoming`](Self::incoming) was iterating.
    pub fn take_messages(&mut self) -> Vec<(Vec<u8>, Vec<OwnedFd>)> {
        self.messages.drain(..).collect()
    }

    /// The connections, one at a time, as blocking streams; ends when the primary asks this
    /// worker to stop. Messages from the primary are kept for [`take_messages`](Self::take_messages).
    pub fn incoming(&mut self) -> Incoming<'_> {
        Incoming { worker: self }
    }

    /// Blocks until the next event. Once the worker has stopped, returns [`WorkerEvent::Stop`]
    /// at once, every time.
    pub fn next_event(&mut self) -> io::Result<WorkerEvent> {
        self.ready();
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            if self.pending.any() {
                self.service()?;
                continue;
            }
            if self.state == State::Stopped {
                return Ok(WorkerEvent::Stop);
            }
            self.epoll_wait(None)?;
        }
    }

    /// The next event if one is ready, without blocking; `Ok(None)` means nothing is ready
    /// now. [`WorkerEvent::Stop`] is returned once.
    ///
    /// After [`poll`](Self::poll), this returns what that poll found; whatever is still ready
    /// after it (a second connection in the accept queue) the next `poll` reports. Without
    /// `poll` — in a foreign event loop — `Ok(None)` is only returned once a look at the
    /// worker's epoll found nothing, so an edge-triggered loop misses no wakeup.
    pub fn try_event(&mut self) -> io::Result<Option<WorkerEvent>> {
        self.ready();
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.pending.any() {
                self.service()?;
                continue;
            }
            if std::mem::take(&mut self.polled) {
                return Ok(None);
            }
            // Nothing of herd's in a wait that did not fill its buffer: nothing is ready. (A
            // full buffer of the user's own readiness may hide herd's: look again.)
            let (ours, all) = self.epoll_wait(Some(Duration::ZERO))?;
            if ours == 0 && all < MAX_EVENTS {
                // The caller's loop waits on the worker's descriptor next.
                self.before_wait()?;
                self.going_idle();
                return Ok(None);
            }
        }
    }

    /// Registers one of the user's descriptors (a connection, a timer...) in the worker's epoll,
    /// under `token` (below [`RESERVED_TOKENS`]). Level-triggered unless `interest.edge`.
    pub fn register(&self, fd: impl AsFd, token: u64, interest: Interest) -> io::Result<()> {
        check_token(token)?;
        self.epoll.add(fd, token, interest)
    }

    /// Changes a registration made with [`register`](Self::register).
    pub fn reregister(&self, fd: impl AsFd, token: u64, interest: Interest) -> io::Result<()> {
        check_token(token)?;
        self.epoll.modify(fd, token, interest)
    }

    /// Removes a registration. (Closing the descriptor removes it too.)
    pub fn deregister(&self, fd: impl AsFd) -> io::Result<()> {
        self.epoll.delete(fd)
    }

    /// Waits up to `timeout` (`None`: forever) for the user's registered descriptors or for
    /// herd's own sources. The user's readiness goes to `ready`; herd's becomes events for
    /// [`try_event`](Self::try_event), which the caller should drain after every `poll`.
    /// Returns at once if herd events are already waiting.
    pub fn poll(&mut self, ready: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
        self.ready();
        ready.clear();
        let busy = !self.user_ready.is_empty() || !self.events.is_empty() || self.pending.any();
        let timeout = if busy { Some(Duration::ZERO) } else { timeout };
        self.epoll_wait(timeout)?;
        self.user_index.clear();
        ready.append(&mut self.user_ready);
        self.polled = true;
        Ok(())
    }

    /// Sends a warning to the primary now (on the way out: the worker function failed).
    pub(crate) fn warn_primary(&self, text: String) -> io::Result<()> {
        self.control.try_send(&Message::Warning(text), &[]).map_err(io::Error::from)
    }

    /// Tells the primary this worker takes connections now — Node's `listening` — once. Until
    /// then the primary hands it nothing, and a reload does not retire the worker it replaces.
    ///
    /// herd calls it on the first [`next_event`](Self::next_event),
    /// [`try_event`](Self::try_event), [`poll`](Self::poll) or [`incoming`](Self::incoming);
    /// call it yourself when you take connections another way (a foreign event loop waiting on
    /// the worker's descriptor, or [`into_listener`](Self::into_listener)), once you are ready.
    pub fn ready(&self) {
        if !self.listening_sent.replace(true) {
            let _ = self.control.send(&Message::Listening, &[]);
        }
    }
}

fn check_token(token: u64) -> io::Result<()> {
    if token >= RESERVED_TOKENS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("token {token} is reserved for herd (use tokens below {RESERVED_TOKENS})"),
        ));
    }
    Ok(())
}

impl AsFd for Worker {
    /// The worker's epoll instance: readable whenever [`Worker::try_event`] may have something.
    /// Register it, edge- or level-triggered, in a foreign event loop (tokio's `AsyncFd`, mio's
    /// `SourceFd`), and drain [`Worker::try_event`] to `Ok(None)` on every wakeup. Call
    /// [`Worker::ready`] when the loop runs.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl AsRawFd for Worker {
    /// The same descriptor as [`AsFd`], for APIs that take a raw one (tokio's `AsyncFd`).
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ListenAddr;
    use crate::listener::{BindOptions, Listener};
    use crate::stats::Counters;

    /// A worker in shared mode on a fresh listener, with the primary's end of its channel.
    fn shared_worker(wait: Wait) -> (Worker, Channel, std::net::SocketAddr) {
        let options = BindOptions { reuseport: false, backlog: 64, nonblocking: true, defer_accept: None };
        let listener = Listener::bind(&"127.0.0.1:0".parse::<ListenAddr>().unwrap(), options).unwrap();
        let addr = listener.tcp_addr().unwrap();
        let (primary, control) = Channel::pair().unwrap();
        let counters = Counters::new(1).unwrap();
        let worker =
            Worker::new(0, 0, StreamKind::Tcp, control, Some(WorkerAccept::new(listener, wait)), None, counters)
                .unwrap();
        (worker, primary, addr)
    }

    /// Two `epoll-balance` workers of one cluster on one listener, in this process: a worker
    /// above the mean takes the connection it was woken for, steps out of the queue and hands
    /// what is still queued on to the other (the hand-on eventfd); back at the mean, it steps in
    /// again.
    #[test]
    fn a_balancing_worker_above_the_mean_steps_out_and_hands_on() {
        let options = BindOptions { reuseport: false, backlog: 64, nonblocking: true, defer_accept: None };
        let listener = Listener::bind(&"127.0.0.1:0".parse::<ListenAddr>().unwrap(), options).unwrap();
        let addr = listener.tcp_addr().unwrap();
        let copy = Listener::adopt(rustix::io::dup(&listener).unwrap());
        let nudge = crate::sys::eventfd::EventFd::new().unwrap();
        let counters = Counters::new(2).unwrap();
        counters.set_serving_slots(0b11);
        // The primary's ends of the channels stay open: a closed one means "stop".
        let mut primary_ends = Vec::new();
        let mut worker = |id, listener| {
            let (primary, control) = Channel::pair().unwrap();
            primary_ends.push(primary);
            let nudge = crate::sys::eventfd::EventFd::adopt(rustix::io::dup(&nudge).unwrap());
            let accept = Some(WorkerAccept::new(listener, Wait::Balance).with_nudge(Some(nudge)));
            Worker::new(id, 0, StreamKind::Tcp, control, accept, None, counters.clone()).unwrap()
        };
        // Worker 0 first in the listener's queue: it gets the wakeups.
        let (mut busy, mut other) = (worker(0, listener), worker(1, copy));
        let connection = |w: &mut Worker| loop {
            match w.try_event().unwrap() {
                Some(WorkerEvent::Connection(s)) => return Some(s),
                Some(_) => continue,
                None => return None,
            }
        };
        // Worker 0 already holds three long connections; worker 1 none.
        for _ in 0..3 {
            counters.live_changed(0, true);
        }
        let first: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(20));
        let a = connection(&mut busy).expect("worker 0 had the wakeups: it takes one");
        assert!(busy.balance_check_at.is_some(), "4 live against a mean of 2: out of the queue");
        assert!(connection(&mut busy).is_none(), "and takes no more");
        let b = connection(&mut other).expect("the queued one is handed on to worker 1");
        assert_eq!(counters.worker(1).live, 1);
        let next = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(connection(&mut busy).is_none(), "out of the queue, worker 0 hears nothing");
        let c = connection(&mut other).expect("the next connection goes to worker 1");
        // Worker 0 finishes its connections: at the mean again, it steps in at its next wait.
        drop(a);
        for _ in 0..3 {
            counters.live_changed(0, false);
        }
        assert_eq!(counters.worker(0).live, 0);
        assert!(connection(&mut busy).is_none());
        assert!(busy.balance_check_at.is_none(), "back in the queue");
        drop((first, next, b, c));
    }

    #[test]
    fn busy_time_counts_what_is_spent_out_of_the_blocking_wait() {
        let (mut worker, _primary, _addr) = shared_worker(Wait::Rotate);
        let mut ready = Vec::new();
        worker.poll(&mut ready, Some(Duration::from_millis(1))).unwrap();
        let before = worker.counters.worker(0).busy_us;
        // Busy, as a handler would be, then back to a blocking wait.
        std::thread::sleep(Duration::from_millis(30));
        worker.poll(&mut ready, Some(Duration::from_millis(20))).unwrap();
        let busy = worker.counters.worker(0).busy_us - before;
        assert!((30_000..1_000_000).contains(&busy), "{busy} µs busy");
        // Idle in the wait: not busy.
        worker.poll(&mut ready, Some(Duration::from_millis(50))).unwrap();
        let idle = worker.counters.worker(0).busy_us - before - busy;
        assert!(idle < 20_000, "{idle} µs counted busy while the worker waited");
    }

    #[test]
    fn try_event_says_none_only_when_no_connection_is_left() {
        for wait in [Wait::Level, Wait::Exclusive, Wait::Rotate] {
            let (mut worker, _primary, addr) = shared_worker(wait);
            let clients: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
            std::thread::sleep(Duration::from_millis(50));
            let mut connections = 0;
            while let Some(event) = worker.try_event().unwrap() {
                if let WorkerEvent::Connection(_) = event {
                    connections += 1;
                }
            }
            assert_eq!(connections, clients.len(), "{wait:?}: every queued connection before Ok(None)");
        }
    }

    #[test]
    fn readiness_the_user_never_collects_does_not_pile_up() {
        let (mut worker, _primary, _addr) = shared_worker(Wait::Level);
        let always = crate::sys::eventfd::EventFd::new().unwrap();
        always.notify();
        worker.register(&always, 7, Interest::READABLE).unwrap();
        for _ in 0..1000 {
            let _ = worker.try_event().unwrap();
        }
        assert_eq!(worker.user_ready.len(), 1, "one entry per token, however many waits");
        let mut ready = Vec::new();
        worker.poll(&mut ready, Some(Duration::ZERO)).unwrap();
        assert_eq!(ready.iter().filter(|r| r.token == 7).count(), 1);
    }
}

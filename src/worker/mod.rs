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
//! Source by source: `lane.rs` reads handed-off connections and acknowledges them.

mod lane;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use lane::{LaneReader, Read};

use crate::accept::blocking::BlockingAcceptor;
use crate::accept::epoll::ListenerWatch;
use crate::accept::{self, Accepted, Wait, WorkerAccept};
use crate::channel::{self, Channel, ChannelError, Message};
use crate::listener::StreamKind;
use crate::stats::{Counters, WorkerCounter};
use crate::stream::Stream;
use crate::sys::epoll::{Epoll, Interest, Ready};
use crate::sys::timerfd::Timer;

/// Tokens at or above this value are herd's own; [`Worker::register`] refuses them.
pub const RESERVED_TOKENS: u64 = u64::MAX - 15;
const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_CONTROL: u64 = u64::MAX - 1;
const TOKEN_ACCEPT_THREAD: u64 = u64::MAX - 2;
const TOKEN_TIMER: u64 = u64::MAX - 3;
const TOKEN_LANE: u64 = u64::MAX - 4;

/// How long a worker out of descriptors waits before it tries its lane again; doubles while
/// the shortage lasts, up to [`MAX_LANE_BACKOFF`].
const LANE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_LANE_BACKOFF: Duration = Duration::from_secs(1);

/// At most this many warnings a second go to the primary; the rest are counted.
const WARNINGS_PER_SECOND: u32 = 10;

/// Something that happened to a worker.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A new connection, to serve.
    Connection(Stream),
    /// A message from the primary.
    Message(Vec<u8>),
    /// The primary asked this worker to stop (or the primary is gone): no more connections will
    /// come. Finish the open ones and return from the worker function.
    Disconnect,
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
}

/// Where the lane stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneState {
    /// Watched and read.
    Reading,
    /// Out of descriptors: not watched, `Pressure` sent. `reclaimed` once the primary answered
    /// that it took the lane back; `Resume` goes out when that and the back-off are both done.
    Pressured { reclaimed: bool, resume_at: Instant },
    /// The primary closed it.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Asked to stop; waiting for the accept thread to finish and the lane to be empty.
    Stopping,
    /// The `Disconnect` event has been queued.
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
}

impl Pending {
    fn any(&self) -> bool {
        self.listener || self.control || self.accept_thread || self.timer || self.lane
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
    lane: Option<LaneReader>,
    lane_state: LaneState,
    lane_backoff: Duration,
    counters: Counters,
    events: VecDeque<WorkerEvent>,
    messages: VecDeque<Vec<u8>>,
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
        let epoll = Epoll::new()?;
        epoll.add(&control, TOKEN_CONTROL, Interest::READABLE)?;
        let timer = Timer::new()?;
        epoll.add(&timer, TOKEN_TIMER, Interest::READABLE)?;
        let accepting = match accept {
            None => Accepting::Nothing,
            Some(WorkerAccept { listener, wait: Wait::Thread }) => {
                let acceptor = BlockingAcceptor::start(listener, counters.clone(), id)?;
                epoll.add(acceptor.wake_fd(), TOKEN_ACCEPT_THREAD, Interest::READABLE)?;
                Accepting::Thread(acceptor)
            }
            Some(WorkerAccept { listener, wait }) => {
                let mut watch = ListenerWatch::new(listener, wait, TOKEN_LISTENER);
                watch.arm(&epoll)?;
                Accepting::Epoll(watch)
            }
        };
        let lane = match lane {
            Some((channel, window)) => {
                epoll.add(&channel, TOKEN_LANE, Interest::READABLE)?;
                Some(LaneReader::new(channel, window))
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
            lane,
            lane_state: LaneState::Reading,
            lane_backoff: LANE_BACKOFF,
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
        if bytes.len() > channel::MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes exceeds the {}-byte limit", bytes.len(), channel::MAX_MESSAGE),
            ));
        }
        self.control.send_user(bytes, &[], false).map_err(io::Error::from)
    }

    /// Announces that this worker is about to exit on its own — Node's "suicide" message — and
    /// stops accepting. The primary forks the replacement at once, before this worker goes, so
    /// the slot is never empty; this worker's exit is then expected, not a crash. Connections
    /// already taken are still delivered, then [`WorkerEvent::Disconnect`]: finish them and
    /// return from the worker function.
    pub fn retire(&mut self) -> io::Result<()> {
        self.control.send(&Message::Retiring, &[]).map_err(io::Error::from)?;
        self.begin_stopping()
    }

    /// Messages from the primary that arrived while [`incoming`](Self::incoming) was iterating.
    pub fn take_messages(&mut self) -> Vec<Vec<u8>> {
        self.messages.drain(..).collect()
    }

    /// The connections, one at a time, as blocking streams; ends when the primary asks this
    /// worker to stop. Messages from the primary are kept for [`take_messages`](Self::take_messages).
    pub fn incoming(&mut self) -> Incoming<'_> {
        Incoming { worker: self }
    }

    /// Blocks until the next event. Once the worker has stopped, returns
    /// [`WorkerEvent::Disconnect`] at once, every time.
    pub fn next_event(&mut self) -> io::Result<WorkerEvent> {
        self.announce_listening();
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            if self.pending.any() {
                self.service()?;
                continue;
            }
            if self.state == State::Stopped {
                return Ok(WorkerEvent::Disconnect);
            }
            self.epoll_wait(None)?;
        }
    }

    /// The next event if one is ready, without blocking; `Ok(None)` means nothing is ready
    /// now. [`WorkerEvent::Disconnect`] is returned once.
    ///
    /// After [`poll`](Self::poll), this returns what that poll found; whatever is still ready
    /// after it (a second connection in the accept queue) the next `poll` reports. Without
    /// `poll` — in a foreign event loop — `Ok(None)` is only returned once a look at the
    /// worker's epoll found nothing, so an edge-triggered loop misses no wakeup.
    pub fn try_event(&mut self) -> io::Result<Option<WorkerEvent>> {
        self.announce_listening();
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
            if self.epoll_wait(Some(Duration::ZERO))? == 0 {
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
        self.announce_listening();
        ready.clear();
        let busy = !self.user_ready.is_empty() || !self.events.is_empty() || self.pending.any();
        let timeout = if busy { Some(Duration::ZERO) } else { timeout };
        self.epoll_wait(timeout)?;
        self.user_index.clear();
        ready.append(&mut self.user_ready);
        self.polled = true;
        Ok(())
    }

    /// One `epoll_wait`: herd's readiness becomes pending work, the user's is kept (merged per
    /// token, so that waits the user does not collect cannot pile it up). Returns how many of
    /// herd's own sources were ready.
    fn epoll_wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        self.epoll.wait(&mut self.scratch, timeout)?;
        self.polled = false;
        let mut ours = 0;
        for ready in &self.scratch {
            match ready.token {
                TOKEN_LISTENER => self.pending.listener = true,
                TOKEN_CONTROL => self.pending.control = true,
                TOKEN_ACCEPT_THREAD => self.pending.accept_thread = true,
                TOKEN_TIMER => self.pending.timer = true,
                TOKEN_LANE => self.pending.lane = true,
                token => {
                    match self.user_index.get(&token) {
                        Some(&i) => {
                            let kept = &mut self.user_ready[i];
                            kept.readable |= ready.readable;
                            kept.writable |= ready.writable;
                            kept.hangup |= ready.hangup;
                        }
                        None => {
                            self.user_index.insert(token, self.user_ready.len());
                            self.user_ready.push(*ready);
                        }
                    }
                    continue;
                }
            }
            ours += 1;
        }
        Ok(ours)
    }

    /// Acts on the flags the last `epoll_wait` set, turning readiness into events.
    fn service(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        if pending.control {
            self.read_control()?;
        }
        if pending.lane {
            self.read_lane()?;
        }
        if pending.listener {
            self.accept_one()?;
        }
        if pending.accept_thread {
            self.take_from_accept_thread()?;
        }
        if pending.timer {
            self.on_timer()?;
        }
        self.send_warnings();
        Ok(())
    }

    /// One accept per wakeup, as nginx does by default: with several workers woken at once this
    /// spreads a burst instead of letting the first one drain it.
    fn accept_one(&mut self) -> io::Result<()> {
        let Accepting::Epoll(watch) = &mut self.accepting else { return Ok(()) };
        self.counters.bump_worker(self.id, WorkerCounter::Wakeups, 1);
        loop {
            match accept::accept(&watch.listener) {
                Accepted::Connection(fd) => {
                    self.counters.bump_worker(self.id, WorkerCounter::Accepts, 1);
                    let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id);
                    self.events.push_back(WorkerEvent::Connection(stream));
                }
                Accepted::Empty => self.counters.bump_worker(self.id, WorkerCounter::Eagains, 1),
                Accepted::Retry => continue,
                Accepted::BackOff(e) => {
                    watch.disarm(&self.epoll)?;
                    self.warnings.queue.push(format!("accept4: {e}; pausing accepts for {:?}", accept::BACKOFF));
                    self.accept_resume_at = Some(Instant::now() + accept::BACKOFF);
                    return self.arm_timer();
                }
                Accepted::Failed(e) => return Err(crate::sys::context(e, format!("worker {}: accept4", self.id))),
            }
            break;
        }
        watch.after_wakeup(&self.epoll)
    }

    fn take_from_accept_thread(&mut self) -> io::Result<()> {
        let Accepting::Thread(acceptor) = &mut self.accepting else { return Ok(()) };
        let mut fds: Vec<OwnedFd> = Vec::new();
        acceptor.drain(&mut fds);
        for fd in fds {
            let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id);
            self.events.push_back(WorkerEvent::Connection(stream));
        }
        if let Some(warning) = acceptor.take_warning() {
            self.warnings.queue.push(warning);
        }
        if let Some(e) = acceptor.take_failure() {
            return Err(e);
        }
        if self.state == State::Stopping && acceptor.finished() {
            self.accepting = Accepting::Nothing;
            self.check_stopped()?;
        }
        Ok(())
    }

    /// Reads what the lane holds; acknowledges every half window.
    fn read_lane(&mut self) -> io::Result<()> {
        let Some(lane) = &mut self.lane else { return Ok(()) };
        if self.lane_state != LaneState::Reading {
            return Ok(());
        }
        let read = lane.read(&mut self.handed, &mut self.warnings.queue)?;
        let acked = lane.acknowledge(self.state != State::Running);
        self.counters.bump_worker(self.id, WorkerCounter::HandoffsAcked, acked);
        if !self.handed.is_empty() {
            self.counters.bump_worker(self.id, WorkerCounter::Wakeups, 1);
            self.counters.bump_worker(self.id, WorkerCounter::HandoffsReceived, self.handed.len() as u64);
        }
        for fd in self.handed.drain(..) {
            let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id);
            self.events.push_back(WorkerEvent::Connection(stream));
        }
        match read {
            Read::Empty | Read::More => {}
            Read::Closed => {
                self.epoll.delete(lane)?;
                self.lane_state = LaneState::Closed;
            }
            Read::OutOfDescriptors => {
                // Stop reading and let the primary take the lane back; see `mode::handoff`.
                self.epoll.delete(lane)?;
                let resume_at = Instant::now() + self.lane_backoff;
                self.lane_state = LaneState::Pressured { reclaimed: false, resume_at };
                // Installing a received descriptor fails only on this process's own limit.
                self.warnings.queue.push(format!(
                    "recvmsg(SCM_RIGHTS) on the lane: {}; handing the lane back to the primary for {:?}",
                    io::Error::from_raw_os_error(libc::EMFILE),
                    self.lane_backoff
                ));
                self.lane_backoff = (self.lane_backoff * 2).min(MAX_LANE_BACKOFF);
                if self.control.try_send(&Message::Pressure, &[]).is_err() {
                    // The primary cannot hear us: nobody will take the lane back; just wait.
                    self.lane_state = LaneState::Pressured { reclaimed: true, resume_at };
                }
                self.arm_timer()?;
            }
        }
        if read == Read::Empty && matches!(self.lane_state, LaneState::Reading) {
            self.lane_backoff = LANE_BACKOFF;
        }
        if self.state == State::Stopping {
            self.check_stopped()?;
        }
        Ok(())
    }

    /// A back-off ended: watch the listener again, or give the lane a new try.
    fn on_timer(&mut self) -> io::Result<()> {
        self.timer.clear();
        let now = Instant::now();
        if self.accept_resume_at.is_some_and(|t| t <= now) {
            self.accept_resume_at = None;
            if let (State::Running, Accepting::Epoll(watch)) = (self.state, &mut self.accepting) {
                watch.arm(&self.epoll)?;
            }
        }
        if let LaneState::Pressured { reclaimed: true, resume_at } = self.lane_state {
            if resume_at <= now {
                self.resume_lane()?;
            }
        }
        self.arm_timer()
    }

    fn resume_lane(&mut self) -> io::Result<()> {
        let Some(lane) = &self.lane else { return Ok(()) };
        self.lane_state = LaneState::Reading;
        self.epoll.add(lane, TOKEN_LANE, Interest::READABLE)?;
        let _ = self.control.try_send(&Message::Resume, &[]);
        self.pending.lane = true;
        Ok(())
    }

    /// Arms the timer for the earliest back-off still running.
    fn arm_timer(&mut self) -> io::Result<()> {
        let lane = match self.lane_state {
            LaneState::Pressured { reclaimed: true, resume_at } => Some(resume_at),
            _ => None,
        };
        match [self.accept_resume_at, lane].into_iter().flatten().min() {
            Some(at) => self.timer.arm(at.saturating_duration_since(Instant::now())),
            None => self.timer.disarm(),
        }
    }

    /// Reads every frame waiting on the control channel.
    fn read_control(&mut self) -> io::Result<()> {
        loop {
            match self.control.try_recv() {
                Ok(None) => return Ok(()),
                Ok(Some(received)) => match received.message {
                    Message::User(bytes) => self.events.push_back(WorkerEvent::Message(bytes)),
                    Message::Stop => self.begin_stopping()?,
                    // The heartbeat: answering proves this worker's loop is running.
                    Message::Ping => {
                        let _ = self.control.try_send(&Message::Pong, &[]);
                    }
                    Message::Reclaimed => self.lane_reclaimed()?,
                    other => self.warnings.queue.push(format!("unexpected {other:?} from the primary")),
                },
                Err(ChannelError::Closed) => {
                    // The primary is gone (PR_SET_PDEATHSIG will usually have killed us first).
                    self.epoll.delete(&self.control)?;
                    return self.begin_stopping();
                }
                Err(ChannelError::Io(e)) => {
                    return Err(crate::sys::context(e, format!("worker {}: the control channel", self.id)));
                }
                Err(e) => self.warnings.queue.push(format!("bad frame from the primary: {e}")),
            }
        }
    }

    /// The primary took back everything queued in the lane.
    fn lane_reclaimed(&mut self) -> io::Result<()> {
        if let LaneState::Pressured { resume_at, .. } = self.lane_state {
            self.lane_state = LaneState::Pressured { reclaimed: true, resume_at };
            if self.state == State::Stopping {
                return self.check_stopped();
            }
            self.arm_timer()?;
        }
        Ok(())
    }

    /// Stops accepting. The `Disconnect` event follows every connection already taken.
    fn begin_stopping(&mut self) -> io::Result<()> {
        if self.state != State::Running {
            return Ok(());
        }
        self.state = State::Stopping;
        match std::mem::replace(&mut self.accepting, Accepting::Nothing) {
            Accepting::Epoll(mut watch) => watch.disarm(&self.epoll)?,
            Accepting::Thread(acceptor) => {
                acceptor.stop();
                self.accepting = Accepting::Thread(acceptor);
            }
            Accepting::Nothing => {}
        }
        // Handoffs sent before the stop are this worker's to serve: read the lane to the end.
        self.pending.lane = self.lane.is_some();
        self.check_stopped()
    }

    /// Queues `Disconnect` once nothing more can come: the accept thread has ended and the lane
    /// is empty (or was taken back, or closed).
    fn check_stopped(&mut self) -> io::Result<()> {
        if self.state != State::Stopping || matches!(self.accepting, Accepting::Thread(_)) {
            return Ok(());
        }
        if let Some(lane) = &mut self.lane {
            match self.lane_state {
                LaneState::Reading => {
                    let read = lane.read(&mut self.handed, &mut self.warnings.queue)?;
                    for fd in self.handed.drain(..) {
                        self.counters.bump_worker(self.id, WorkerCounter::HandoffsReceived, 1);
                        let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id);
                        self.events.push_back(WorkerEvent::Connection(stream));
                    }
                    let acked = lane.acknowledge(true);
                    self.counters.bump_worker(self.id, WorkerCounter::HandoffsAcked, acked);
                    match read {
                        Read::Empty | Read::Closed => {}
                        Read::More => return Ok(()),
                        Read::OutOfDescriptors => {
                            // Let the ordinary path hand the lane back, then finish.
                            self.pending.lane = true;
                            return Ok(());
                        }
                    }
                }
                LaneState::Pressured { reclaimed: false, .. } => return Ok(()),
                LaneState::Pressured { reclaimed: true, .. } | LaneState::Closed => {}
            }
        }
        self.state = State::Stopped;
        self.events.push_back(WorkerEvent::Disconnect);
        Ok(())
    }

    /// Sends a warning to the primary now (on the way out: the worker function failed).
    pub(crate) fn warn_primary(&self, text: String) -> io::Result<()> {
        self.control.try_send(&Message::Warning(text), &[]).map_err(io::Error::from)
    }

    /// Tells the primary this worker is accepting (Node's `listening` event), once.
    fn announce_listening(&self) {
        if !self.listening_sent.replace(true) {
            let _ = self.control.send(&Message::Listening, &[]);
        }
    }

    /// Sends queued warnings to the primary, at most [`WARNINGS_PER_SECOND`].
    fn send_warnings(&mut self) {
        if self.warnings.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        let w = &mut self.warnings;
        if w.second.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            if w.suppressed > 0 {
                w.queue.push(format!("{} more warnings suppressed", w.suppressed));
                w.suppressed = 0;
            }
            w.second = Some(now);
            w.sent_this_second = 0;
        }
        for text in w.queue.drain(..) {
            if w.sent_this_second >= WARNINGS_PER_SECOND {
                w.suppressed += 1;
                continue;
            }
            w.sent_this_second += 1;
            let _ = self.control.try_send(&Message::Warning(text), &[]);
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
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.announce_listening();
        self.epoll.as_fd()
    }
}

/// The iterator of [`Worker::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    worker: &'a mut Worker,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<Stream>;

    fn next(&mut self) -> Option<io::Result<Stream>> {
        loop {
            match self.worker.next_event() {
                Ok(WorkerEvent::Connection(stream)) => return Some(stream.set_nonblocking(false).map(|()| stream)),
                Ok(WorkerEvent::Message(m)) => self.worker.messages.push_back(m),
                Ok(WorkerEvent::Disconnect) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ListenAddr;
    use crate::listener::{BindOptions, Listener};

    /// A worker in shared mode on a fresh listener, with the primary's end of its channel.
    fn shared_worker(wait: Wait) -> (Worker, Channel, std::net::SocketAddr) {
        let options = BindOptions { reuseport: false, backlog: 64, nonblocking: true, defer_accept: None };
        let listener = Listener::bind(&"127.0.0.1:0".parse::<ListenAddr>().unwrap(), options).unwrap();
        let addr = listener.tcp_addr().unwrap();
        let (primary, control) = Channel::pair().unwrap();
        let counters = Counters::new(1).unwrap();
        let worker =
            Worker::new(0, 0, StreamKind::Tcp, control, Some(WorkerAccept { listener, wait }), None, counters).unwrap();
        (worker, primary, addr)
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

//! The worker side of the fork: what the user's code gets in every mode.
//!
//! A [`Worker`] owns one epoll instance that watches the worker's accept source (its listener,
//! or the accept thread's queue, or — always — the channel from the primary, which carries
//! handed-off connections and control messages). The user takes connections from it in one of
//! three ways:
//!
//! 1. **Blocking iterator**: `for stream in worker.incoming() { ... }` — one connection at a
//!    time, streams in blocking mode. The loop ends when the primary asks the worker to stop.
//! 2. **Its own event loop, on the worker's epoll**: [`Worker::register`] your connections,
//!    [`Worker::poll`] for readiness, and drain herd's events with [`Worker::try_event`]. One
//!    epoll instance, no nesting: this is what `herd serve` does, and the only way
//!    `EPOLLEXCLUSIVE` keeps its promise.
//! 3. **A foreign event loop** (tokio, mio...): register the worker's descriptor
//!    ([`AsFd`]) for readability, and call [`Worker::try_event`] until it returns `Ok(None)`
//!    whenever it fires. Nesting one epoll in another defeats `EPOLLEXCLUSIVE` (see
//!    [`crate::accept::epoll`]), so with the exclusive strategies prefer 2.
//!
//! Streams are non-blocking (`accept4(SOCK_NONBLOCK)`) except from [`Worker::incoming`].

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::accept::blocking::BlockingAcceptor;
use crate::accept::epoll::ListenerWatch;
use crate::accept::{self, Accepted};
use crate::channel::{self, Channel, ChannelError, Message};
use crate::listener::StreamKind;
use crate::stats::{Counters, WorkerCounter};
use crate::stream::Stream;
use crate::sys::epoll::{Epoll, Interest, Ready};
use crate::sys::timerfd::Timer;

/// Tokens at or above this value are herd's own; [`Worker::register`] refuses them.
pub const RESERVED_TOKENS: u64 = u64::MAX - 15;
const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_CHANNEL: u64 = u64::MAX - 1;
const TOKEN_ACCEPT_THREAD: u64 = u64::MAX - 2;
const TOKEN_BACKOFF: u64 = u64::MAX - 3;

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

/// Where the worker's connections come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// Shared or reuseport: the worker accepts on this listener from its epoll.
    Listener(ListenerWatch),
    /// Shared with the `blocking` strategy: a thread parked in `accept`.
    Blocking(BlockingAcceptor),
    /// Handoff: the primary sends connections over the channel.
    Handoff,
    /// Stopped accepting.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Asked to stop; waiting for the accept thread to finish.
    Stopping,
    /// The `Disconnect` event has been queued.
    Stopped,
}

/// The ready flags one `epoll_wait` left for [`Worker::service`].
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    listener: bool,
    channel: bool,
    accept_thread: bool,
    backoff: bool,
}

impl Pending {
    fn any(&self) -> bool {
        self.listener || self.channel || self.accept_thread || self.backoff
    }
}

/// A worker process's handle on the cluster: its id, its connections and its channel to the
/// primary. The user's worker function receives it.
#[derive(Debug)]
pub struct Worker {
    id: usize,
    generation: u64,
    kind: StreamKind,
    channel: Channel,
    epoll: Epoll,
    source: Source,
    counters: Counters,
    events: VecDeque<WorkerEvent>,
    messages: VecDeque<Vec<u8>>,
    user_ready: Vec<Ready>,
    scratch: Vec<Ready>,
    pending: Pending,
    polled_since_service: bool,
    listening_sent: Cell<bool>,
    state: State,
    /// Made at start, not when needed: when it is needed, descriptors have run out.
    backoff: Timer,
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        generation: u64,
        kind: StreamKind,
        channel: Channel,
        source: Source,
        counters: Counters,
    ) -> io::Result<Worker> {
        let epoll = Epoll::new()?;
        epoll.add(&channel, TOKEN_CHANNEL, Interest::READABLE)?;
        let backoff = Timer::new()?;
        epoll.add(&backoff, TOKEN_BACKOFF, Interest::READABLE)?;
        let mut worker = Worker {
            id,
            generation,
            kind,
            channel,
            epoll,
            source,
            counters,
            events: VecDeque::new(),
            messages: VecDeque::new(),
            user_ready: Vec::new(),
            scratch: Vec::with_capacity(64),
            pending: Pending::default(),
            polled_since_service: false,
            listening_sent: Cell::new(false),
            state: State::Running,
            backoff,
        };
        match &mut worker.source {
            Source::Listener(watch) => watch.arm(&worker.epoll)?,
            Source::Blocking(acceptor) => {
                worker.epoll.add(acceptor.wake_fd(), TOKEN_ACCEPT_THREAD, Interest::READABLE)?
            }
            Source::Handoff | Source::None => {}
        }
        Ok(worker)
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
        self.channel.send_user(bytes).map_err(io::Error::from)
    }

    /// Announces that this worker is about to exit on its own — Node's "suicide" message — and
    /// stops accepting. The primary forks the replacement at once, before this worker goes, so
    /// the slot is never empty; this worker's exit is then expected, not a crash. Connections
    /// already taken are still delivered, then [`WorkerEvent::Disconnect`]: finish them and
    /// return from the worker function.
    pub fn retire(&mut self) -> io::Result<()> {
        self.channel.send(&Message::Retiring, &[]).map_err(io::Error::from)?;
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
        loop {
            if let Some(event) = self.fetch(None)? {
                return Ok(event);
            }
            if self.state == State::Stopped {
                return Ok(WorkerEvent::Disconnect);
            }
        }
    }

    /// The next event if one is ready, without blocking. [`WorkerEvent::Disconnect`] is
    /// returned once.
    pub fn try_event(&mut self) -> io::Result<Option<WorkerEvent>> {
        self.fetch(Some(Duration::ZERO))
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
        ready.append(&mut self.user_ready);
        let busy = !ready.is_empty() || !self.events.is_empty() || self.pending.any();
        let timeout = if busy { Some(Duration::ZERO) } else { timeout };
        self.epoll_wait(timeout)?;
        ready.append(&mut self.user_ready);
        Ok(())
    }

    /// One round: hand out a queued event, else act on what the last `epoll_wait` reported,
    /// else wait (at most once) for more.
    fn fetch(&mut self, timeout: Option<Duration>) -> io::Result<Option<WorkerEvent>> {
        self.announce_listening();
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.pending.any() {
                self.service()?;
                continue;
            }
            if self.polled_since_service || self.state == State::Stopped && timeout.is_none() {
                self.polled_since_service = false;
                return Ok(None);
            }
            self.epoll_wait(timeout)?;
        }
    }

    fn epoll_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.epoll.wait(&mut self.scratch, timeout)?;
        for ready in &self.scratch {
            match ready.token {
                TOKEN_LISTENER => self.pending.listener = true,
                TOKEN_CHANNEL => self.pending.channel = true,
                TOKEN_ACCEPT_THREAD => self.pending.accept_thread = true,
                TOKEN_BACKOFF => self.pending.backoff = true,
                _ => self.user_ready.push(*ready),
            }
        }
        self.polled_since_service = true;
        Ok(())
    }

    /// Acts on the flags the last `epoll_wait` set, turning readiness into events.
    fn service(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        if pending.channel {
            self.read_channel()?;
        }
        if pending.listener {
            self.accept_one()?;
        }
        if pending.accept_thread {
            self.take_from_accept_thread();
        }
        if pending.backoff {
            self.end_backoff()?;
        }
        Ok(())
    }

    /// One accept per wakeup, as nginx does by default: with several workers woken at once this
    /// spreads a burst instead of letting the first one drain it.
    fn accept_one(&mut self) -> io::Result<()> {
        let Source::Listener(watch) = &mut self.source else { return Ok(()) };
        self.counters.bump_worker(self.id, WorkerCounter::Wakeups, 1);
        loop {
            match accept::accept(&watch.listener) {
                Accepted::Connection(fd) => {
                    self.counters.bump_worker(self.id, WorkerCounter::Accepts, 1);
                    let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id, false);
                    self.events.push_back(WorkerEvent::Connection(stream));
                }
                Accepted::Empty => self.counters.bump_worker(self.id, WorkerCounter::Eagains, 1),
                Accepted::Retry => continue,
                Accepted::BackOff(e) => {
                    eprintln!("herd: worker {}: accept4: {e}; pausing accepts for {:?}", self.id, accept::BACKOFF);
                    watch.disarm(&self.epoll)?;
                    self.backoff.arm(accept::BACKOFF)?;
                    return Ok(());
                }
                Accepted::Failed(e) => return Err(crate::sys::context(e, format!("worker {}: accept4", self.id))),
            }
            break;
        }
        watch.after_wakeup(&self.epoll)
    }

    fn end_backoff(&mut self) -> io::Result<()> {
        self.backoff.clear();
        if let (State::Running, Source::Listener(watch)) = (self.state, &mut self.source) {
            watch.arm(&self.epoll)?;
        }
        Ok(())
    }

    fn take_from_accept_thread(&mut self) {
        let Source::Blocking(acceptor) = &mut self.source else { return };
        let mut fds: Vec<OwnedFd> = Vec::new();
        acceptor.drain(&mut fds);
        for fd in fds {
            let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id, false);
            self.events.push_back(WorkerEvent::Connection(stream));
        }
        if self.state == State::Stopping && acceptor.finished() {
            self.source = Source::None;
            self.finish_stopping();
        }
    }

    /// Reads every frame waiting on the channel, then acknowledges the handoffs among them in
    /// one batch (`Ack`), or hands back (`Reject`) the ones whose descriptor was lost.
    fn read_channel(&mut self) -> io::Result<()> {
        if matches!(self.source, Source::Handoff) {
            self.counters.bump_worker(self.id, WorkerCounter::Wakeups, 1);
        }
        let mut settle = Settle::default();
        loop {
            match self.channel.try_recv() {
                Ok(None) => break,
                Ok(Some(received)) => match received.message {
                    Message::Handoff { .. } => {
                        let fd = received.fds.into_iter().next().expect("a handoff frame carries one descriptor");
                        self.counters.bump_worker(self.id, WorkerCounter::HandoffsReceived, 1);
                        let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id, true);
                        self.events.push_back(WorkerEvent::Connection(stream));
                        settle.push(true);
                    }
                    Message::User(bytes) => self.events.push_back(WorkerEvent::Message(bytes)),
                    Message::Disconnect => self.begin_stopping()?,
                    // The heartbeat: answering proves this worker's loop is running.
                    Message::Ping => {
                        let _ = self.channel.try_send(&Message::Pong, &[]);
                    }
                    other => eprintln!("herd: worker {}: unexpected message from the primary: {other:?}", self.id),
                },
                Err(ChannelError::ControlTruncated { kind: Some(1) }) => {
                    eprintln!(
                        "herd: worker {}: a handed-off connection could not be received (descriptor limit?); returning it",
                        self.id
                    );
                    settle.push(false);
                }
                Err(ChannelError::Closed) => {
                    // The primary is gone (PR_SET_PDEATHSIG will usually have killed us first).
                    self.epoll.delete(&self.channel)?;
                    self.begin_stopping()?;
                    break;
                }
                Err(ChannelError::Io(e)) => return Err(crate::sys::context(e, format!("worker {}: recvmsg", self.id))),
                Err(e) => eprintln!("herd: worker {}: bad frame from the primary: {e}", self.id),
            }
        }
        settle.send(&self.channel, &self.counters, self.id);
        Ok(())
    }

    /// Stops accepting. The `Disconnect` event follows every connection already taken.
    fn begin_stopping(&mut self) -> io::Result<()> {
        if self.state != State::Running {
            return Ok(());
        }
        self.state = State::Stopping;
        match std::mem::replace(&mut self.source, Source::None) {
            Source::Listener(mut watch) => watch.disarm(&self.epoll)?,
            Source::Blocking(acceptor) => {
                acceptor.stop();
                self.source = Source::Blocking(acceptor);
                return Ok(());
            }
            Source::Handoff | Source::None => {}
        }
        self.finish_stopping();
        Ok(())
    }

    fn finish_stopping(&mut self) {
        self.state = State::Stopped;
        self.events.push_back(WorkerEvent::Disconnect);
    }

    /// Tells the primary this worker is accepting (Node's `listening` event), once.
    fn announce_listening(&self) {
        if !self.listening_sent.replace(true) {
            let _ = self.channel.send(&Message::Listening, &[]);
        }
    }
}

/// Runs of handoffs to acknowledge (`true`) or hand back (`false`), in arrival order.
#[derive(Debug, Default)]
struct Settle {
    runs: Vec<(bool, u32)>,
}

impl Settle {
    fn push(&mut self, taken: bool) {
        match self.runs.last_mut() {
            Some((t, n)) if *t == taken => *n += 1,
            _ => self.runs.push((taken, 1)),
        }
    }

    fn send(self, channel: &Channel, counters: &Counters, id: usize) {
        for (taken, count) in self.runs {
            let message = if taken { Message::Ack { count } } else { Message::Reject { count } };
            if channel.send(&message, &[]).is_ok() && taken {
                counters.bump_worker(id, WorkerCounter::HandoffsAcked, count as u64);
            }
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

//! **handoff** — only the primary accepts; it passes each connection's descriptor to a worker
//! over the worker's **lane** (`sendmsg` with `SCM_RIGHTS`), in round-robin order. This is
//! Node's `cluster` default (`SCHED_RR`, its `RoundRobinHandle`).
//!
//! # Exactly once, without keeping copies
//!
//! Node keeps its handle on each connection until the worker acknowledges it, so that a worker
//! that dies first loses nothing. herd gets the same guarantee a cheaper way, and without the
//! copy: each worker's lane is a socket pair, and the primary keeps a descriptor for the
//! *worker's* end too. When a worker dies, every handoff it never read is still queued in that
//! end — so the primary reads them back (`reclaim`) and gives them to another worker. A handoff
//! the worker did read was its own; it is never given to anyone else. So each connection is
//! served once, by construction, and the primary closes its descriptor of a connection as soon
//! as `sendmsg` returns: a handed-off connection behaves like an accepted one in every way
//! (its FIN goes out when the worker closes it).
//!
//! The worker, for its part, never loses a handoff to a full descriptor table (see
//! [`crate::channel::Channel::try_recv_keeping_fds`]): when it runs out of descriptors it stops
//! reading its lane and says so (`Pressure`); the primary takes back everything queued in the
//! lane and gives it to the others (`Reclaimed`), and the worker resumes (`Resume`) once it has
//! room again.
//!
//! # Flow control
//!
//! A per-worker **window**: at most `window` handoffs in flight (sent, and neither acknowledged
//! nor reclaimed) per worker. Acknowledgements only open the window, so the worker sends one
//! for every half window it receives, not one per connection: under light load the primary is
//! not woken once more per connection to read an ack. Connections that find no worker with room
//! wait in the primary's **queue** (a `VecDeque`: O(1) at both ends, arrival order kept), and
//! go out in batches — one `sendmsg` carries up to [`MAX_FDS`] of them to one worker.
//!
//! A send that fails for a passing reason (`ENOBUFS`, `ENOMEM`, `ETOOMANYREFS`, `EMFILE`...)
//! takes that lane out of rotation for a back-off that doubles from 1 ms up to 1 s, and the
//! connection goes to another worker or waits; nothing spins and no lane is given up for good.
//!
//! Round-robin skips a worker whose window is full, so shares are exact only while no window
//! fills — with a healthy cluster, whenever fewer than `window` connections are in flight per
//! worker.
//!
//! # Least-loaded
//!
//! Beside strict round-robin ([`HandoffPolicy::RoundRobin`], the default), the dispatcher can
//! send each batch to the less loaded of two workers picked at random
//! ([`HandoffPolicy::LeastLoaded`]: "the power of two choices", HAProxy's choice). A worker's
//! load is what it has not finished: the handoffs waiting unread in its lane plus the live
//! connections it holds (both from the shared counters), so a stalled worker — which neither
//! reads its lane nor finishes its connections — loses every comparison after its first extra
//! connection, and long keep-alive connections spread by count rather than by arrival.
//!
//! # On io_uring
//!
//! With the io_uring backend the same dispatcher decides, and the primary's ring carries it out
//! (`uring.rs`): each turn's batches go out as `IORING_OP_SENDMSG`s, the primary's copies are
//! closed with `IORING_OP_CLOSE`, and every lane has an `IORING_OP_RECV` waiting for its next
//! acknowledgement — all in the one `io_uring_enter` with which the primary also waits.

#[cfg(feature = "io-uring")]
pub(crate) mod uring;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{Distribution, Slots};
use crate::ListenAddr;
use crate::accept::WorkerAccept;
use crate::channel::{Channel, ChannelError, MAX_FDS, Message};
use crate::listener::{BindOptions, Listener};
use crate::stats::{Counters, PrimaryCounter};
use crate::upgrade::{Line, Writer};

/// The default window of handoffs in flight per worker.
///
/// Measured on the project's 2-core machine (4 workers, `herd load -c 64` churn, 3 s runs,
/// two rounds, 2026-11-21): a window of 1 — Node's — gave 20.4–21.3k requests/s; windows of 2
/// to 128 all gave 20.7–25.9k, the same within this machine's ±10 % noise. Windows below 16
/// queued 25–65k connections in the primary and shifted shares (Jain 0.9986–0.9999); from 16
/// up (64 in flight over 4 workers) nothing queued and round-robin was exact (Jain 1.0). 32
/// keeps it exact up to 128 connections in flight on 4 workers.
pub const DEFAULT_WINDOW: usize = 32;

/// The default limit on connections waiting in the primary's queue; beyond it the primary stops
/// accepting, and connections wait in the kernel's backlog instead.
pub const DEFAULT_QUEUE_LIMIT: usize = 4096;

/// The first back-off after a transient send error; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Handoff mode: the primary's one listener.
#[derive(Debug)]
pub(crate) struct Handoff {
    listener: Listener,
}

impl Handoff {
    /// Creates the primary's (non-blocking) listener.
    pub(crate) fn bind(
        addr: &ListenAddr,
        base: BindOptions,
        inherited: Option<Listener>,
    ) -> io::Result<(Handoff, ListenAddr)> {
        let listener = match inherited {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                listener
            }
            None => Listener::bind(addr, BindOptions { reuseport: false, nonblocking: true, ..base })?,
        };
        let bound = super::bound_addr(addr, &listener)?;
        Ok((Handoff { listener }, bound))
    }
}

impl Handoff {
    pub(crate) fn import(lines: &[Line]) -> io::Result<Handoff> {
        Ok(Handoff { listener: Listener::adopt(super::line(lines, "mode_handoff")?.fd("listener")?) })
    }
}

impl Distribution for Handoff {
    fn export(&self, w: &mut Writer) {
        w.line("mode_handoff").fd("listener", self.listener.as_fd());
    }

    fn uses_lanes(&self) -> bool {
        true
    }

    fn listener_count(&self) -> usize {
        1
    }

    fn listener(&self, id: usize) -> Option<&Listener> {
        (id == 0).then_some(&self.listener)
    }

    fn primary_accepts(&self, _id: usize, _slots: &dyn Slots) -> bool {
        true
    }

    fn prepare_slot(&mut self, _slot: usize) -> io::Result<()> {
        Ok(())
    }

    fn release_slot(&mut self, _slot: usize) -> Option<Listener> {
        None
    }

    /// Workers accept nothing: their connections come over the lane.
    fn worker_accept(&mut self, _slot: usize) -> Option<WorkerAccept> {
        None
    }
}

/// How the dispatcher chooses the worker for the next batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandoffPolicy {
    /// In turn, skipping workers whose window is full (Node's `SCHED_RR`). The default.
    #[default]
    RoundRobin,
    /// The less loaded of two workers picked at random: handoffs in flight plus live
    /// connections.
    LeastLoaded,
}

impl HandoffPolicy {
    /// The policy's name: `round-robin` or `least-loaded`.
    pub fn name(&self) -> &'static str {
        match self {
            HandoffPolicy::RoundRobin => "round-robin",
            HandoffPolicy::LeastLoaded => "least-loaded",
        }
    }
}

impl std::fmt::Display for HandoffPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for HandoffPolicy {
    type Err = super::ParseModeError;

    fn from_str(s: &str) -> Result<HandoffPolicy, super::ParseModeError> {
        [HandoffPolicy::RoundRobin, HandoffPolicy::LeastLoaded].into_iter().find(|p| p.name() == s).ok_or_else(|| {
            super::ParseModeError { what: "handoff policy", input: s.to_owned(), expected: "round-robin, least-loaded" }
        })
    }
}

/// One worker's lane, seen from the primary.
#[derive(Debug)]
struct Lane {
    key: u64,
    /// The worker's slot: where its live connections and the handoffs it received are counted.
    slot: usize,
    /// The slot's received-handoffs count when this lane was added: what this worker
    /// received since is the count now less this.
    received_base: u64,
    /// The primary's end: handoffs go out, acknowledgements come in.
    ours: Channel,
    /// A descriptor for the worker's end, never read while the worker may read it: what the
    /// worker leaves unread is taken back through it.
    theirs: Channel,
    /// Connections sent on this lane; the next handoff's sequence number.
    sent: u64,
    /// Connections the worker says it received (its latest `Ack`).
    acked: u64,
    /// Connections taken back from the worker's end.
    reclaimed: u64,
    /// The primary wants this worker to get connections (it listens and is not leaving).
    serving: bool,
    /// The worker is stuck in its own code (see `Primary::check_stalls`): passed over until it
    /// is back, whatever `serving` says.
    stalled: bool,
    /// The worker is out of descriptors and not reading its lane.
    pressure: bool,
    /// A transient send error: out of rotation until then.
    retry_at: Option<Instant>,
    /// The back-off that follows the next error.
    next_backoff: Duration,
    /// The last send found the worker's socket buffer full: skip it until its end of the lane
    /// is writable again (the primary watches it for `EPOLLOUT` meanwhile) or it acknowledges.
    full: bool,
    /// The most connections one frame to this worker carries: 1 after it ran out of
    /// descriptors (a frame whose descriptors do not all fit cannot be received at all), then
    /// doubling with every acknowledgement, up to [`MAX_FDS`].
    max_batch: usize,
    /// A send to this lane is in the primary's ring (io_uring): no other goes until it
    /// completes, so frames arrive in order and a failed one can be taken back whole.
    sending: bool,
}

impl Lane {
    fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.acked).saturating_sub(self.reclaimed)
    }

    fn room(&self, window: usize, now: Instant) -> usize {
        if !self.serving
            || self.stalled
            || self.pressure
            || self.full
            || self.sending
            || self.retry_at.is_some_and(|t| t > now)
        {
            return 0;
        }
        (window as u64).saturating_sub(self.in_flight()) as usize
    }
}

/// What is left of a dead worker's lane while its handoffs could not all be taken back yet.
#[derive(Debug)]
struct Orphan {
    key: u64,
    theirs: Channel,
    retry_at: Instant,
}

/// The primary's side of every lane: the round-robin, the windows, the queue.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    window: usize,
    policy: HandoffPolicy,
    /// xorshift64 state for [`HandoffPolicy::LeastLoaded`]'s two random picks.
    rng: u64,
    /// [`HandoffPolicy::LeastLoaded`]'s lanes with room, and lanes a send just failed on:
    /// kept between drains so that handing out does not allocate.
    open: Vec<usize>,
    failed: Vec<usize>,
    /// In fork order; round-robin runs over this.
    lanes: Vec<Lane>,
    /// The index in `lanes` to try first.
    cursor: usize,
    queue: VecDeque<OwnedFd>,
    counters: Counters,
    /// Lanes of workers that died while the primary was out of descriptors, with handoffs
    /// still to take back.
    orphans: Vec<Orphan>,
    /// Lanes whose end the primary should (`true`) or need no longer (`false`) watch for
    /// writability: the primary applies these after each turn.
    writability: Vec<(u64, bool)>,
    /// What went wrong that the primary's program should hear of.
    warnings: Vec<String>,
    /// On io_uring: the ring's side of the lanes. Sends then wait for [`uring`]'s `flush`.
    #[cfg(feature = "io-uring")]
    ring: Option<uring::RingLanes>,
}

impl Dispatcher {
    pub(crate) fn new(window: usize, counters: Counters) -> Dispatcher {
        Dispatcher {
            window: window.max(1),
            policy: HandoffPolicy::RoundRobin,
            rng: u64::from(std::process::id()) << 32 | 0x9e37_79b9,
            open: Vec::new(),
            failed: Vec::new(),
            lanes: Vec::new(),
            cursor: 0,
            queue: VecDeque::new(),
            counters,
            orphans: Vec::new(),
            writability: Vec::new(),
            warnings: Vec::new(),
            #[cfg(feature = "io-uring")]
            ring: None,
        }
    }

    /// Chooses workers by `policy`.
    pub(crate) fn with_policy(mut self, policy: HandoffPolicy) -> Dispatcher {
        self.policy = policy;
        self
    }

    /// Whether sends wait for the primary's ring (io_uring) rather than go out at once.
    fn sends_on_ring(&self) -> bool {
        #[cfg(feature = "io-uring")]
        return self.ring.is_some();
        #[cfg(not(feature = "io-uring"))]
        false
    }

    /// Connections waiting in the primary.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Every connection the primary took has reached a worker's lane: none is queued, and (on
    /// io_uring) no send is still in the ring.
    pub(crate) fn drained(&self) -> bool {
        self.queue.is_empty() && !self.lanes.iter().any(|l| l.sending)
    }

    /// Warnings since the last call.
    pub(crate) fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// A new worker's lane: `ours` is the primary's end, `theirs` the primary's descriptor for
    /// the worker's end. Not in rotation until [`set_serving`](Self::set_serving).
    /// Writes the lanes, the queue and the orphans for the primary's next image (an in-place
    /// upgrade); [`import`](Self::import) reads them back. A send in flight in a ring or a
    /// back-off in progress is not carried over: the caller upgrades only without a ring, and
    /// a back-off simply ends.
    pub(crate) fn export(&self, w: &mut Writer) {
        w.line("dispatcher").kv("window", self.window).kv("cursor", self.cursor).kv("policy", self.policy);
        for l in &self.lanes {
            w.line("lane")
                .kv("key", l.key)
                .kv("slot", l.slot)
                .kv("received_base", l.received_base)
                .fd("ours", l.ours.as_fd())
                .fd("theirs", l.theirs.as_fd())
                .kv("sent", l.sent)
                .kv("acked", l.acked)
                .kv("reclaimed", l.reclaimed)
                .kv("serving", u8::from(l.serving))
                .kv("pressure", u8::from(l.pressure))
                .kv("max_batch", l.max_batch);
        }
        for fd in &self.queue {
            w.line("queued").fd("fd", fd.as_fd());
        }
        for o in &self.orphans {
            w.line("orphan").kv("key", o.key).fd("theirs", o.theirs.as_fd());
        }
    }

    /// The dispatcher as the primary's previous image left it.
    pub(crate) fn import(lines: &[Line], counters: Counters) -> io::Result<Dispatcher> {
        let head = super::line(lines, "dispatcher")?;
        let mut d = Dispatcher::new(head.get("window")?, counters).with_policy(head.get("policy")?);
        d.cursor = head.get("cursor")?;
        for l in lines.iter().filter(|l| l.kind == "lane") {
            d.lanes.push(Lane {
                key: l.get("key")?,
                slot: l.get("slot")?,
                received_base: l.get("received_base")?,
                ours: Channel::from(l.fd("ours")?),
                theirs: Channel::from(l.fd("theirs")?),
                sent: l.get("sent")?,
                acked: l.get("acked")?,
                reclaimed: l.get("reclaimed")?,
                serving: l.flag("serving")?,
                stalled: false,
                pressure: l.flag("pressure")?,
                retry_at: None,
                next_backoff: FIRST_BACKOFF,
                full: false,
                max_batch: l.get::<usize>("max_batch")?.clamp(1, MAX_FDS),
                sending: false,
            });
        }
        for l in lines.iter().filter(|l| l.kind == "queued") {
            d.queue.push_back(l.fd("fd")?);
        }
        let now = Instant::now();
        for l in lines.iter().filter(|l| l.kind == "orphan") {
            d.orphans.push(Orphan { key: l.get("key")?, theirs: Channel::from(l.fd("theirs")?), retry_at: now });
        }
        if d.cursor >= d.lanes.len() {
            d.cursor = 0;
        }
        Ok(d)
    }

    pub(crate) fn add_lane(&mut self, key: u64, slot: usize, ours: Channel, theirs: Channel) {
        let received_base = self.counters.handoffs_received(slot);
        self.lanes.push(Lane {
            key,
            slot,
            received_base,
            ours,
            theirs,
            sent: 0,
            acked: 0,
            reclaimed: 0,
            serving: false,
            stalled: false,
            pressure: false,
            retry_at: None,
            next_backoff: FIRST_BACKOFF,
            full: false,
            max_batch: MAX_FDS,
            sending: false,
        });
    }

    fn lane_mut(&mut self, key: u64) -> Option<&mut Lane> {
        self.lanes.iter_mut().find(|l| l.key == key)
    }

    /// Puts worker `key` in or out of rotation.
    pub(crate) fn set_serving(&mut self, key: u64, serving: bool) {
        if let Some(lane) = self.lane_mut(key) {
            lane.serving = serving;
        }
        if serving {
            self.drain();
        }
    }

    /// Passes worker `key` over while it is stalled (`true`), or not any more.
    pub(crate) fn set_stalled(&mut self, key: u64, stalled: bool) {
        if let Some(lane) = self.lane_mut(key) {
            lane.stalled = stalled;
        }
        if !stalled {
            self.drain();
        }
    }

    /// Reads the acknowledgements waiting on worker `key`'s lane, then sends what the window
    /// now allows.
    pub(crate) fn on_lane_readable(&mut self, key: u64) {
        let Some(i) = self.lanes.iter().position(|l| l.key == key) else { return };
        loop {
            match self.lanes[i].ours.try_recv() {
                Ok(Some(r)) => self.on_message(i, r.message),
                Ok(None) | Err(ChannelError::Closed) => break,
                Err(e) => {
                    self.warnings.push(format!("reading worker lane (key {key}): {e}"));
                    if matches!(e, ChannelError::Io(_)) {
                        break;
                    }
                }
            }
        }
        self.drain();
    }

    /// A frame from lane `i`'s worker: an acknowledgement opens its window.
    fn on_message(&mut self, i: usize, message: Message) {
        let lane = &mut self.lanes[i];
        match message {
            Message::Ack { received } => {
                // A worker cannot have received more than was sent to it: a larger total (a
                // bug in a worker program) would lift the window for good.
                if received > lane.sent {
                    self.warnings.push(format!(
                        "worker lane (key {}) acknowledged {received} handoffs, but {} were sent",
                        lane.key, lane.sent
                    ));
                }
                lane.acked = lane.acked.max(received.min(lane.sent));
                if std::mem::take(&mut lane.full) {
                    self.writability.push((lane.key, false));
                }
                lane.max_batch = (lane.max_batch * 2).min(MAX_FDS);
            }
            other => self.warnings.push(format!("unexpected {other:?} on worker lane (key {})", lane.key)),
        }
    }

    /// Worker `key`'s end of its lane has room again after a send found it full.
    pub(crate) fn on_lane_writable(&mut self, key: u64) {
        if let Some(lane) = self.lane_mut(key) {
            if std::mem::take(&mut lane.full) {
                self.writability.push((key, false));
            }
        }
        self.drain();
    }

    /// The lanes whose end the primary should start (`true`) or stop (`false`) watching for
    /// writability, since the last call, with the descriptor to watch.
    pub(crate) fn take_writability_changes(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.writability)
    }

    /// The primary's end of worker `key`'s lane.
    pub(crate) fn lane_fd(&self, key: u64) -> Option<BorrowedFd<'_>> {
        self.lanes.iter().find(|l| l.key == key).map(|l| l.ours.as_fd())
    }

    /// Worker `key` is out of descriptors and stopped reading its lane: take back the handoffs
    /// queued in it, for the others — as many as the primary itself has descriptors for; the
    /// rest stay, in order, for the worker to read when it resumes. Until then it gets nothing,
    /// and after it, one connection per frame at first.
    pub(crate) fn pressure(&mut self, key: u64) {
        if let Some(lane) = self.lane_mut(key) {
            lane.pressure = true;
            lane.max_batch = 1;
        }
        if let Some(lane) = self.lanes.iter_mut().find(|l| l.key == key) {
            lane.reclaimed +=
                Self::reclaim(key, &mut lane.theirs, &mut self.queue, &self.counters, &mut self.warnings).0;
        }
        self.drain();
    }

    /// Worker `key` has room again.
    pub(crate) fn resume(&mut self, key: u64) {
        if let Some(lane) = self.lane_mut(key) {
            lane.pressure = false;
        }
        self.drain();
    }

    /// Worker `key` is gone: take back what it never read, and drop its lane. If the primary is
    /// out of descriptors itself, the lane is kept until everything in it has been taken back.
    pub(crate) fn remove_lane(&mut self, key: u64) {
        if let Some(i) = self.lanes.iter().position(|l| l.key == key) {
            let mut lane = self.lanes.remove(i);
            // Keep the rotation where it was: the lane after the removed one is still next.
            if i < self.cursor {
                self.cursor -= 1;
            }
            if self.cursor >= self.lanes.len() {
                self.cursor = 0;
            }
            #[cfg(feature = "io-uring")]
            if let Some(ring) = &mut self.ring {
                // The ring may still have a send or a receive on it: the lane is taken back
                // once they are done (`uring.rs`).
                ring.retire(lane.key, lane.ours, lane.theirs, lane.sending);
                return;
            }
            let (_, complete) =
                Self::reclaim(key, &mut lane.theirs, &mut self.queue, &self.counters, &mut self.warnings);
            if !complete {
                // Only the worker's end is needed to take back the rest; the primary's end (and
                // its registration) goes now.
                let retry_at = Instant::now() + crate::accept::BACKOFF;
                self.orphans.push(Orphan { key, theirs: lane.theirs, retry_at });
            }
        }
        self.drain();
    }

    /// Reads the frames queued in a lane's worker end (`theirs`) and puts their connections back
    /// at the front of the queue, oldest first. Returns how many, and false if it stopped early
    /// (out of descriptors): what is left stays queued in the lane, in order.
    fn reclaim(
        key: u64,
        theirs: &mut Channel,
        queue: &mut VecDeque<OwnedFd>,
        counters: &Counters,
        warnings: &mut Vec<String>,
    ) -> (u64, bool) {
        let mut back = Vec::new();
        let complete = loop {
            match theirs.try_recv_keeping_fds() {
                Ok(Some(r)) => {
                    if matches!(r.message, Message::Handoff { .. }) {
                        back.extend(r.fds);
                    }
                }
                Ok(None) | Err(ChannelError::Closed) => break true,
                Err(ChannelError::ControlTruncated { .. }) => break false,
                Err(e) => {
                    warnings.push(format!("recvmsg taking back worker (key {key})'s handoffs: {e}"));
                    if matches!(e, ChannelError::Io(_)) {
                        break false;
                    }
                }
            }
        };
        let n = back.len() as u64;
        counters.bump_primary(PrimaryCounter::Requeued, n);
        for fd in back.into_iter().rev() {
            queue.push_front(fd);
        }
        (n, complete)
    }

    /// Takes a burst of accepted connections, then sends them in batches.
    pub(crate) fn push_all(&mut self, fds: impl IntoIterator<Item = OwnedFd>) {
        let before = self.queue.len();
        self.queue.extend(fds);
        let pushed = self.queue.len() - before;
        #[cfg(feature = "io-uring")]
        if let Some(ring) = &mut self.ring {
            // Counted as queued, or not, once the ring's flush has sent what it can.
            ring.fresh += pushed;
            return;
        }
        self.drain();
        self.counters.bump_primary(PrimaryCounter::Queued, self.queue.len().min(pushed) as u64);
    }

    /// The earliest back-off to wait out, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let orphans = self.orphans.iter().map(|o| o.retry_at).min();
        let lanes = if self.queue.is_empty() { None } else { self.lanes.iter().filter_map(|l| l.retry_at).min() };
        orphans.into_iter().chain(lanes).min()
    }

    /// A back-off may have ended: send what can go, and take back what dead workers left.
    pub(crate) fn on_timer(&mut self, now: Instant) {
        for lane in &mut self.lanes {
            if lane.retry_at.is_some_and(|t| t <= now) {
                lane.retry_at = None;
            }
        }
        let (queue, counters, warnings) = (&mut self.queue, &self.counters, &mut self.warnings);
        self.orphans.retain_mut(|orphan| {
            if orphan.retry_at > now {
                return true;
            }
            let (_, complete) = Self::reclaim(orphan.key, &mut orphan.theirs, queue, counters, warnings);
            orphan.retry_at = now + crate::accept::BACKOFF;
            !complete
        });
        self.drain();
    }

    /// Sends queued connections, oldest first, round-robin over the lanes with room, as many
    /// per `sendmsg` as the lane's window allows (an even share of the queue at most, so that a
    /// burst is spread rather than given to the first lane).
    pub(crate) fn drain(&mut self) {
        if self.sends_on_ring() {
            return; // the primary's next flush sends
        }
        self.drain_with(|d, i, n| d.send(i, n).is_ok());
    }

    /// The round-robin of [`drain`](Self::drain), sending each batch with `send(self, lane
    /// index, count)`, which says whether it went.
    fn drain_with(&mut self, mut send: impl FnMut(&mut Dispatcher, usize, usize) -> bool) {
        if self.policy == HandoffPolicy::LeastLoaded {
            return self.drain_least_loaded(send);
        }
        let now = Instant::now();
        while !self.queue.is_empty() && !self.lanes.is_empty() {
            // One round: every lane with room, in rotation order from the cursor.
            let count = self.lanes.len();
            let open = self.lanes.iter().filter(|l| l.room(self.window, now) > 0).count();
            if open == 0 {
                return;
            }
            let share = self.queue.len().div_ceil(open);
            let mut sent_any = false;
            let first = self.cursor;
            for k in 0..count {
                let i = (first + k) % count;
                let n =
                    self.lanes[i].room(self.window, now).min(share).min(self.lanes[i].max_batch).min(self.queue.len());
                if n == 0 {
                    continue;
                }
                self.cursor = (i + 1) % count;
                sent_any |= send(self, i, n);
            }
            if !sent_any {
                return;
            }
        }
    }

    /// [`HandoffPolicy::LeastLoaded`]: each batch to the less loaded of two lanes with room,
    /// picked at random (one lane with room: that one). A batch is an even share of the queue
    /// over the lanes with room, as in round-robin, so a burst still goes out in few frames.
    fn drain_least_loaded(&mut self, mut send: impl FnMut(&mut Dispatcher, usize, usize) -> bool) {
        let now = Instant::now();
        let (mut open, mut failed) = (std::mem::take(&mut self.open), std::mem::take(&mut self.failed));
        failed.clear();
        while !self.queue.is_empty() {
            open.clear();
            open.extend(
                (0..self.lanes.len()).filter(|&i| self.lanes[i].room(self.window, now) > 0 && !failed.contains(&i)),
            );
            let i = match open.len() {
                0 => break,
                1 => open[0],
                n => {
                    let first = self.random(n);
                    let (a, b) = (open[first], open[(first + 1 + self.random(n - 1)) % n]);
                    if self.load(b) < self.load(a) { b } else { a }
                }
            };
            let share = self.queue.len().div_ceil(open.len());
            let n = self.lanes[i].room(self.window, now).min(share).min(self.lanes[i].max_batch).min(self.queue.len());
            if !send(self, i, n) {
                // That lane is full or failing: the others may still have room.
                failed.push(i);
            }
        }
        (self.open, self.failed) = (open, failed);
    }

    /// Lane `i`'s worker's load: the handoffs it has not read yet and the connections it holds.
    /// (Not the handoffs in flight: acknowledgements come every half window, so that count
    /// says more about when the worker last acknowledged than about what it has to do.)
    fn load(&self, i: usize) -> u64 {
        let lane = &self.lanes[i];
        // A program not linked with herd counts nothing: its acknowledgements say as much.
        let received = self.counters.handoffs_received(lane.slot).saturating_sub(lane.received_base).max(lane.acked);
        lane.sent.saturating_sub(lane.reclaimed + received) + self.counters.live(lane.slot)
    }

    /// A number below `n` (xorshift64: cheap, and good enough to break ties).
    fn random(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    /// Sends the `n` oldest queued connections to lane `i` in one frame.
    fn send(&mut self, i: usize, n: usize) -> Result<(), ()> {
        let lane = &mut self.lanes[i];
        let fds: Vec<BorrowedFd<'_>> = self.queue.make_contiguous()[..n].iter().map(|fd| fd.as_fd()).collect();
        let result = lane.ours.try_send(&Message::Handoff { seq: lane.sent }, &fds);
        drop(fds);
        match result {
            Ok(()) => {
                lane.sent += n as u64;
                lane.next_backoff = FIRST_BACKOFF;
                self.counters.bump_primary(PrimaryCounter::Dispatched, n as u64);
                // The primary's copies close here: each connection now lives only in the
                // worker's lane (see the module docs). One `close` each, counted.
                self.queue.drain(..n);
                crate::sys::tally::count(n as u64);
                Ok(())
            }
            Err(e) => {
                self.send_failed(i, n, e);
                Err(())
            }
        }
    }

    /// A send of `n` connections to lane `i` failed (they are still queued).
    fn send_failed(&mut self, i: usize, n: usize, e: ChannelError) {
        let lane = &mut self.lanes[i];
        match e {
            // The worker's socket buffer is full: its window is, in effect, until the buffer
            // drains.
            ChannelError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => {
                lane.full = true;
                self.writability.push((lane.key, true));
            }
            // Gone: its exit takes back what it had.
            ChannelError::Closed => lane.serving = false,
            e => {
                let delay = lane.next_backoff;
                lane.retry_at = Some(Instant::now() + delay);
                lane.next_backoff = (delay * 2).min(MAX_BACKOFF);
                self.warnings.push(format!(
                    "handing {n} connections to worker (key {}): {e}; retrying that worker in {delay:?}",
                    lane.key
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> OwnedFd {
        rustix::io::dup(std::io::stdin()).expect("dup stdin")
    }

    /// A dispatcher with `n` serving lanes; returns the workers' ends of the lanes.
    fn dispatcher(n: usize, window: usize) -> (Dispatcher, Vec<Channel>) {
        let counters = Counters::new(4).unwrap();
        let mut d = Dispatcher::new(window, counters);
        let mut workers = Vec::new();
        for key in 0..n as u64 {
            let (ours, theirs) = Channel::pair().unwrap();
            let copy = Channel::from(rustix::io::dup(&theirs).unwrap());
            d.add_lane(key, key as usize, ours, copy);
            d.set_serving(key, true);
            workers.push(theirs);
        }
        (d, workers)
    }

    fn received(worker: &mut Channel) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(r) = worker.try_recv().unwrap() {
            let Message::Handoff { seq } = r.message else { panic!("{:?}", r.message) };
            seqs.extend((0..r.fds.len() as u64).map(|i| seq + i));
        }
        seqs
    }

    #[test]
    fn one_at_a_time_goes_round_robin() {
        let (mut d, mut workers) = dispatcher(3, 32);
        for _ in 0..7 {
            d.push_all([connection()]);
        }
        let counts: Vec<usize> = workers.iter_mut().map(|w| received(w).len()).collect();
        assert_eq!(counts, [3, 2, 2]);
    }

    #[test]
    fn removing_a_lane_keeps_the_rotation_where_it_was() {
        let (mut d, mut workers) = dispatcher(3, 32);
        d.push_all([connection()]); // lane 0
        d.push_all([connection()]); // lane 1
        d.remove_lane(0); // lane 0 read nothing: its handoff is taken back and sent on (lane 2)
        d.push_all([connection()]); // next: lane 1 (rotation continues), not lane 0's successor again
        let counts: Vec<usize> = workers.iter_mut().skip(1).map(|w| received(w).len()).collect();
        assert_eq!(counts, [2, 1], "after the removal the rotation went on from where it was");
        assert_eq!(d.counters.primary().requeued, 1);
    }

    #[test]
    fn a_dead_workers_unread_handoffs_go_to_another_exactly_once() {
        let (mut d, mut workers) = dispatcher(2, 32);
        for _ in 0..4 {
            d.push_all([connection()]);
        }
        // Worker 0 reads one of its two handoffs, then dies.
        let first = workers[0].try_recv().unwrap().unwrap();
        assert_eq!(first.fds.len(), 1);
        drop(workers.remove(0));
        d.remove_lane(0);
        assert_eq!(received(&mut workers[0]).len(), 3, "worker 1: its two, and the one worker 0 never read");
        assert_eq!(d.counters.primary().requeued, 1);
        assert_eq!(d.queued(), 0);
    }

    #[test]
    fn a_full_window_queues_and_an_ack_releases_it() {
        let (mut d, mut workers) = dispatcher(1, 2);
        for _ in 0..5 {
            d.push_all([connection()]);
        }
        assert_eq!(received(&mut workers[0]).len(), 2);
        assert_eq!(d.queued(), 3);
        workers[0].send(&Message::Ack { received: 2 }, &[]).unwrap();
        d.on_lane_readable(0);
        assert_eq!(received(&mut workers[0]), [2, 3], "the next two, numbered on");
        assert_eq!(d.queued(), 1);
    }

    #[test]
    fn least_loaded_skips_a_worker_that_holds_more_and_spreads_the_rest() {
        let (d, mut workers) = dispatcher(4, 64);
        let mut d = d.with_policy(HandoffPolicy::LeastLoaded);
        // Worker 0 is stuck with ten connections it does not finish.
        for _ in 0..10 {
            d.counters.live_changed(0, true);
        }
        for _ in 0..24 {
            d.push_all([connection()]);
        }
        let got: Vec<usize> = workers.iter_mut().map(|w| received(w).len()).collect();
        assert_eq!(got[0], 0, "the loaded worker loses every comparison: {got:?}");
        assert!(got[1..].iter().all(|&n| (6..=10).contains(&n)), "the others share evenly: {got:?}");
        // Under round-robin, worker 0 would have had its quarter.
        let (mut rr, mut workers) = dispatcher(4, 64);
        for _ in 0..10 {
            rr.counters.live_changed(0, true);
        }
        for _ in 0..24 {
            rr.push_all([connection()]);
        }
        assert_eq!(received(&mut workers[0]).len(), 6);
    }

    #[test]
    fn handoff_policies_parse_and_print_back() {
        for p in [HandoffPolicy::RoundRobin, HandoffPolicy::LeastLoaded] {
            assert_eq!(p.to_string().parse::<HandoffPolicy>().unwrap(), p);
        }
        let e = "fastest".parse::<HandoffPolicy>().unwrap_err().to_string();
        assert!(e.contains("\"fastest\"") && e.contains("least-loaded"), "{e}");
    }

    #[test]
    fn an_ack_for_more_than_was_sent_does_not_open_the_window_wider() {
        let (mut d, mut workers) = dispatcher(1, 2);
        for _ in 0..6 {
            d.push_all([connection()]);
        }
        assert_eq!(received(&mut workers[0]).len(), 2);
        // A worker program that acknowledges what it never got (a bug in another language's
        // implementation of the protocol) must not lift the window.
        workers[0].send(&Message::Ack { received: 1_000 }, &[]).unwrap();
        d.on_lane_readable(0);
        assert_eq!(received(&mut workers[0]).len(), 2, "the window, not 1 000");
        assert_eq!(d.queued(), 2);
        assert!(d.take_warnings().iter().any(|w| w.contains("acknowledged 1000")), "and it is said");
    }

    #[test]
    fn a_burst_goes_out_in_batches_spread_over_the_lanes() {
        let (mut d, mut workers) = dispatcher(2, 32);
        d.push_all((0..20).map(|_| connection()));
        let mut frames = Vec::new();
        for w in &mut workers {
            let mut n = 0;
            while let Some(r) = w.try_recv().unwrap() {
                frames.push(r.fds.len());
                n += r.fds.len();
            }
            assert_eq!(n, 10);
        }
        assert!(frames.len() <= 4, "a few sendmsg calls, not twenty: {frames:?}");
    }

    #[test]
    fn pressure_takes_the_lane_back_and_resume_reopens_it() {
        let (mut d, mut workers) = dispatcher(2, 32);
        for _ in 0..4 {
            d.push_all([connection()]);
        }
        d.pressure(0);
        assert_eq!(received(&mut workers[0]), Vec::<u64>::new(), "worker 0's lane was emptied");
        assert_eq!(received(&mut workers[1]).len(), 4);
        d.push_all([connection()]);
        assert_eq!(received(&mut workers[1]).len(), 1, "nothing goes to a worker under pressure");
        d.resume(0);
        d.push_all([connection()]);
        assert_eq!(received(&mut workers[0]), [2], "sequence numbers go on after a reclaim");
    }

    #[test]
    fn a_lane_whose_socket_buffer_fills_is_watched_for_room_not_given_up() {
        // A window larger than the socket buffer holds (one connection per frame): sends run into
        // EAGAIN long before the worker's first acknowledgement is due.
        let (mut d, mut workers) = dispatcher(1, 1024);
        for _ in 0..600 {
            d.push_all([connection()]);
        }
        assert!(d.queued() > 0, "the lane's buffer filled");
        assert_eq!(d.take_writability_changes(), [(0, true)], "the primary is asked to watch it for room");
        let mut got = 0;
        for _ in 0..10 {
            got += received(&mut workers[0]).len();
            d.on_lane_writable(0);
            if d.queued() == 0 {
                break;
            }
        }
        got += received(&mut workers[0]).len();
        assert_eq!(got, 600, "every connection reached the worker");
        assert!(d.take_writability_changes().contains(&(0, false)));
    }
}

//! Source multiplexing: the worker's one epoll instance and everything it watches — the
//! listener (or the accept thread), the lane, the control channel, the back-off timer — turned
//! into [`WorkerEvent`]s, and the stop sequence that ends them.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::lane::Read;
use super::{
    Accepting, LANE_BACKOFF, LaneState, MAX_LANE_BACKOFF, RECLAIM_WAIT, RESUME_RETRY, State, TOKEN_ACCEPT_THREAD,
    TOKEN_CONTROL, TOKEN_LANE, TOKEN_LISTENER, TOKEN_NUDGE, TOKEN_TIMER, WARNINGS_PER_SECOND, Worker, WorkerEvent,
};
use crate::accept::{self, Accepted};
use crate::channel::{ChannelError, Message};
use crate::stats::WorkerCounter;
use crate::stream::Stream;
use crate::sys::epoll::Interest;

/// The most connections a stopping worker takes off its listener on the way out.
const DRAIN_LIMIT: usize = 64;

/// How often a worker out of the accept queue (`epoll-balance`) looks whether it is back at
/// the mean while it has nothing else to do.
const BALANCE_CHECK: Duration = Duration::from_millis(5);
impl Worker {
    /// One `epoll_wait`: herd's readiness becomes pending work, the user's is kept (merged per
    /// token, so that waits the user does not collect cannot pile it up). Returns how many of
    /// herd's own sources were ready.
    pub(super) fn epoll_wait(&mut self, timeout: Option<Duration>) -> io::Result<(usize, usize)> {
        self.rebalance()?;
        let blocking = timeout != Some(Duration::ZERO);
        if blocking {
            self.before_wait()?;
            self.going_idle();
        }
        let all = self.epoll.wait(&mut self.scratch, timeout)?;
        let now = crate::sys::timerfd::monotonic_us();
        self.counters.looked_at(self.id, now);
        // Busy from here until the next blocking wait (a zero-timeout look keeps it busy).
        if blocking || self.busy_since.is_none() {
            self.busy_since = Some(now);
        }
        self.polled = false;
        let mut ours = 0;
        for ready in &self.scratch {
            match ready.token {
                TOKEN_LISTENER => self.pending.listener = true,
                TOKEN_CONTROL => self.pending.control = true,
                TOKEN_ACCEPT_THREAD => self.pending.accept_thread = true,
                TOKEN_TIMER => self.pending.timer = true,
                TOKEN_LANE => self.pending.lane = true,
                TOKEN_NUDGE => self.pending.nudge = true,
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
        Ok((ours, all))
    }

    /// The worker is about to wait with nothing to do (in herd's wait, or in a foreign loop's
    /// after `try_event` said nothing is ready): its busy time stops, and its loop clock says
    /// it is idle, not stalled.
    pub(super) fn going_idle(&mut self) {
        if let Some(since) = self.busy_since.take() {
            self.counters.add_busy(self.id, crate::sys::timerfd::monotonic_us().saturating_sub(since));
        }
        self.counters.looked_at(self.id, 0);
    }

    /// Acts on the flags the last `epoll_wait` set, turning readiness into events.
    pub(super) fn service(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        if pending.control {
            self.read_control()?;
        }
        if pending.lane {
            self.read_lane()?;
        }
        if pending.nudge {
            if let Accepting::Epoll(watch) = &self.accepting {
                watch.take_nudge();
            }
        }
        if pending.listener || pending.nudge {
            self.on_listener()?;
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

    /// The worker is about to block (here, or in a foreign loop waiting on its descriptor): a
    /// rearmed io_uring accept is armed now, not while the worker was busy.
    pub(super) fn before_wait(&mut self) -> io::Result<()> {
        #[cfg(feature = "io-uring")]
        if let (State::Running, Accepting::Uring(uring)) = (self.state, &mut self.accepting) {
            uring.before_wait()?;
        }
        Ok(())
    }

    /// The listener (or the accept ring) is ready.
    pub(super) fn on_listener(&mut self) -> io::Result<()> {
        match &mut self.accepting {
            Accepting::Epoll(_) => self.accept_one(),
            #[cfg(feature = "io-uring")]
            Accepting::Uring(_) => self.take_from_ring(),
            _ => Ok(()),
        }
    }

    /// What the accept ring delivered: every connection, with no system call per connection.
    #[cfg(feature = "io-uring")]
    fn take_from_ring(&mut self) -> io::Result<()> {
        let Accepting::Uring(uring) = &mut self.accepting else { return Ok(()) };
        self.counters.bump_worker(self.id, WorkerCounter::Wakeups, 1);
        let mut accepted = Vec::new();
        uring.take(&mut accepted)?;
        let mut step_out = false;
        for a in accepted {
            match a {
                Accepted::Connection(fd) => {
                    self.counters.bump_worker(self.id, WorkerCounter::Accepts, 1);
                    let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id);
                    self.events.push_back(WorkerEvent::Connection(stream));
                    step_out |= self.balances && self.counters.above_mean(self.id);
                }
                Accepted::Empty => self.counters.bump_worker(self.id, WorkerCounter::Eagains, 1),
                Accepted::Retry => {}
                Accepted::BackOff(e) => {
                    self.warnings
                        .queue
                        .push(format!("accept (io_uring): {e}; pausing accepts for {:?}", accept::BACKOFF));
                    self.accept_resume_at = Some(Instant::now() + accept::BACKOFF);
                    self.arm_timer()?;
                }
                Accepted::Failed(e) => {
                    return Err(crate::sys::context(e, format!("worker {}: accept (io_uring)", self.id)));
                }
            }
        }
        if step_out && self.balance_check_at.is_none() {
            // Out of the accept queue: the next accept is not submitted until `rebalance`
            // finds this worker back at the mean.
            if let Accepting::Uring(uring) = &mut self.accepting {
                uring.set_paused(true);
            }
            self.balance_check_at = Some(Instant::now() + BALANCE_CHECK);
            self.arm_timer()?;
        }
        Ok(())
    }

    /// `epoll-balance`: a worker out of the accept queue goes back in once it is at the mean
    /// again (checked before every wait, and every [`BALANCE_CHECK`] while it waits).
    pub(super) fn rebalance(&mut self) -> io::Result<()> {
        if self.balance_check_at.is_none() || self.accept_resume_at.is_some() || self.state != State::Running {
            return Ok(());
        }
        if self.counters.above_mean(self.id) {
            self.balance_check_at = Some(Instant::now() + BALANCE_CHECK);
            return self.arm_timer();
        }
        self.balance_check_at = None;
        match &mut self.accepting {
            Accepting::Epoll(watch) => watch.arm(&self.epoll)?,
            // Submitted again by `before_wait`.
            #[cfg(feature = "io-uring")]
            Accepting::Uring(uring) => uring.set_paused(false),
            _ => {}
        }
        self.arm_timer()
    }

    /// One accept per wakeup, as nginx does by default: with several workers woken at once this
    /// spreads a burst instead of letting the first one drain it.
    pub(super) fn accept_one(&mut self) -> io::Result<()> {
        let Accepting::Epoll(watch) = &mut self.accepting else { return Ok(()) };
        self.counters.bump_worker(self.id, WorkerCounter::Wakeups, 1);
        loop {
            match accept::accept(&watch.listener) {
                Accepted::Connection(fd) => {
                    self.counters.bump_worker(self.id, WorkerCounter::Accepts, 1);
                    let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id);
                    self.events.push_back(WorkerEvent::Connection(stream));
                    if self.balances && self.counters.above_mean(self.id) {
                        // Out of the wait queue until back at the mean (`rebalance`); what is
                        // still queued is handed on to a worker in the queue.
                        watch.step_out(&self.epoll)?;
                        self.balance_check_at = Some(Instant::now() + BALANCE_CHECK);
                        return self.arm_timer();
                    }
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

    pub(super) fn take_from_accept_thread(&mut self) -> io::Result<()> {
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
    pub(super) fn read_lane(&mut self) -> io::Result<()> {
        let Some(lane) = &mut self.lane else { return Ok(()) };
        if self.lane_state != LaneState::Reading {
            return Ok(());
        }
        let read = lane.read(&mut self.handed, &mut self.warnings.queue)?;
        let acked = lane.acknowledge(self.state != State::Running);
        self.counters.bump_worker(self.id, WorkerCounter::HandoffsAcked, acked);
        if !self.handed.is_empty() {
            self.counters.bump_worker(self.id, WorkerCounter::Wakeups, 1);
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
                let now = Instant::now();
                let resume_at = now + self.lane_backoff;
                self.lane_state = LaneState::Pressured { reclaimed: false, resume_at, asked_at: now };
                // Installing a received descriptor fails only on this process's own limit.
                self.warnings.queue.push(format!(
                    "recvmsg(SCM_RIGHTS) on the lane: {}; handing the lane back to the primary for {:?}",
                    io::Error::from_raw_os_error(libc::EMFILE),
                    self.lane_backoff
                ));
                self.lane_backoff = (self.lane_backoff * 2).min(MAX_LANE_BACKOFF);
                // If the channel cannot take it now, the timer asks again after RECLAIM_WAIT.
                let _ = self.control.try_send(&Message::Pressure, &[]);
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

    /// A back-off ended: watch the listener again, give the lane a new try, ask again for a
    /// lane to be taken back, or say `Resume` again.
    pub(super) fn on_timer(&mut self) -> io::Result<()> {
        self.timer.clear();
        self.rebalance()?;
        let now = Instant::now();
        if self.accept_resume_at.is_some_and(|t| t <= now) {
            self.accept_resume_at = None;
            match (self.state, &mut self.accepting) {
                (State::Running, Accepting::Epoll(watch)) => watch.arm(&self.epoll)?,
                #[cfg(feature = "io-uring")]
                (State::Running, Accepting::Uring(uring)) => uring.arm()?,
                _ => {}
            }
        }
        match self.lane_state {
            LaneState::Pressured { reclaimed: true, resume_at, .. } if resume_at <= now => self.resume_lane()?,
            LaneState::Pressured { reclaimed: false, resume_at, asked_at } if asked_at + RECLAIM_WAIT <= now => {
                let _ = self.control.try_send(&Message::Pressure, &[]);
                self.lane_state = LaneState::Pressured { reclaimed: false, resume_at, asked_at: now };
            }
            _ => {}
        }
        if self.resume_owed.is_some_and(|t| t <= now) {
            self.say_resume();
        }
        self.arm_timer()
    }

    pub(super) fn resume_lane(&mut self) -> io::Result<()> {
        let Some(lane) = &self.lane else { return Ok(()) };
        if self.state != State::Running {
            // Stopping: the lane was taken back, and nothing more comes to it.
            self.lane_state = LaneState::Closed;
            return self.check_stopped();
        }
        self.lane_state = LaneState::Reading;
        self.epoll.add(lane, TOKEN_LANE, Interest::READABLE)?;
        self.say_resume();
        self.pending.lane = true;
        Ok(())
    }

    /// Tells the primary the lane may be used again; if the control channel cannot take it
    /// now, the timer tries again.
    fn say_resume(&mut self) {
        self.resume_owed = match self.control.try_send(&Message::Resume, &[]) {
            Ok(()) | Err(ChannelError::Closed) => None,
            Err(_) => Some(Instant::now() + RESUME_RETRY),
        };
    }

    /// Arms the timer for the earliest back-off still running.
    pub(super) fn arm_timer(&mut self) -> io::Result<()> {
        let lane = match self.lane_state {
            LaneState::Pressured { reclaimed: true, resume_at, .. } => Some(resume_at),
            LaneState::Pressured { reclaimed: false, asked_at, .. } => Some(asked_at + RECLAIM_WAIT),
            _ => None,
        };
        match [self.accept_resume_at, lane, self.resume_owed, self.balance_check_at].into_iter().flatten().min() {
            Some(at) => self.timer.arm(at.saturating_duration_since(Instant::now())),
            None => self.timer.disarm(),
        }
    }

    /// Reads every frame waiting on the control channel.
    pub(super) fn read_control(&mut self) -> io::Result<()> {
        loop {
            match self.control.try_recv() {
                Ok(None) => return Ok(()),
                Ok(Some(received)) => match received.message {
                    Message::User(data) => self.events.push_back(WorkerEvent::Message { data, fds: received.fds }),
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
    pub(super) fn lane_reclaimed(&mut self) -> io::Result<()> {
        if let LaneState::Pressured { resume_at, asked_at, .. } = self.lane_state {
            self.lane_state = LaneState::Pressured { reclaimed: true, resume_at, asked_at };
            if self.state == State::Stopping {
                return self.check_stopped();
            }
            self.arm_timer()?;
        }
        Ok(())
    }

    /// Stops accepting. The `Stop` event follows every connection already taken.
    pub(super) fn begin_stopping(&mut self) -> io::Result<()> {
        if self.state != State::Running {
            return Ok(());
        }
        self.state = State::Stopping;
        match std::mem::replace(&mut self.accepting, Accepting::Nothing) {
            Accepting::Epoll(mut watch) => {
                watch.disarm(&self.epoll)?;
                self.take_what_is_queued(&watch.listener);
            }
            Accepting::Thread(acceptor) => {
                acceptor.stop();
                self.accepting = Accepting::Thread(acceptor);
            }
            #[cfg(feature = "io-uring")]
            Accepting::Uring(uring) => {
                // What the ring accepted before the cancel is this worker's, like a connection
                // `accept4` returned: it is served.
                let mut taken = Vec::new();
                let (listener, spent) = uring.stop(&mut taken)?;
                self.spent_ring = Some(spent);
                for fd in taken {
                    self.counters.bump_worker(self.id, WorkerCounter::Accepts, 1);
                    let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id);
                    self.events.push_back(WorkerEvent::Connection(stream));
                }
                self.take_what_is_queued(&listener);
            }
            Accepting::Nothing => {}
        }
        // Handoffs sent before the stop are this worker's to serve: read the lane to the end.
        self.pending.lane = self.lane.is_some();
        self.check_stopped()
    }

    /// Accepts what is queued on a listener this worker has just stopped waiting on (at most
    /// [`DRAIN_LIMIT`]), to serve it before exiting. A shared listener wakes one waiter per
    /// connection (`EPOLLEXCLUSIVE`, io_uring's accept): a wakeup this worker took just before it
    /// stopped waiting would otherwise wake nobody, and its connection would wait for the next
    /// one to arrive.
    fn take_what_is_queued(&mut self, listener: &crate::listener::Listener) {
        for _ in 0..DRAIN_LIMIT {
            match accept::accept(listener) {
                Accepted::Connection(fd) => {
                    self.counters.bump_worker(self.id, WorkerCounter::Accepts, 1);
                    let stream = Stream::new(fd, self.kind, self.counters.clone(), self.id);
                    self.events.push_back(WorkerEvent::Connection(stream));
                }
                Accepted::Retry => {}
                Accepted::Empty | Accepted::BackOff(_) | Accepted::Failed(_) => return,
            }
        }
    }

    /// Queues `Stop` once nothing more can come: the accept thread has ended and the lane
    /// is empty (or was taken back, or closed).
    pub(super) fn check_stopped(&mut self) -> io::Result<()> {
        if self.state != State::Stopping || matches!(self.accepting, Accepting::Thread(_)) {
            return Ok(());
        }
        if let Some(lane) = &mut self.lane {
            match self.lane_state {
                LaneState::Reading => {
                    let read = lane.read(&mut self.handed, &mut self.warnings.queue)?;
                    for fd in self.handed.drain(..) {
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
        // Nothing more is read from the lane: whatever still reaches it (handoffs the primary sent
        // before it heard this worker was leaving) the primary takes back, now.
        if let (Some(lane), LaneState::Reading) = (&self.lane, self.lane_state) {
            self.epoll.delete(lane)?;
            let _ = self.control.try_send(&Message::Pressure, &[]);
            self.lane_state = LaneState::Closed;
        }
        self.state = State::Stopped;
        self.events.push_back(WorkerEvent::Stop);
        Ok(())
    }

    /// Sends queued warnings to the primary, at most [`WARNINGS_PER_SECOND`].
    pub(super) fn send_warnings(&mut self) {
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

//! Keeping the cluster whole: restarts within a limit, fork retries, rolling reloads, scaling,
//! heartbeats.
//!
//! The rules, in one place:
//!
//! - A worker that exits **without being asked** (a crash, a kill from outside, a heartbeat
//!   timeout) is a crash: it counts toward the restart limit, and its slot is refilled. More
//!   than `restart_limit` crashes within `restart_window` and the primary **gives up**: it stops
//!   every worker and [`Primary::run`](super::Primary::run) fails, naming the limit.
//! - A **fork that fails** (`EAGAIN` under `RLIMIT_NPROC`, `EMFILE` on the `socketpair`, a thread
//!   in the primary) is reported as [`Event::SpawnFailed`] and the slot is tried again after a
//!   back-off that doubles from 50 ms up to 2 s, for as long as it takes; the workers already
//!   running go on serving. A failed fork does not count toward the restart limit — it is not
//!   a worker that ran and died, and giving up would take down a cluster that is serving.
//! - A worker that **announces** its exit ([`crate::Worker::retire`], Node's "suicide"
//!   message) gets its replacement forked at once, before it goes. A planned exit is not a
//!   crash, so it does not count toward the restart limit.
//! - A worker the program **disconnects or kills** ([`Primary::disconnect`],
//!   [`Primary::kill`]) leaves its slot empty on purpose: it is not replaced.
//! - A **reload** (SIGHUP) forks a whole new generation. Each old worker is disconnected only
//!   once its replacement reports `listening`; a replacement that exits first, cannot be
//!   forked, or is not listening within `reload_timeout`, fails the reload for its slot and the
//!   old worker keeps serving. If the old worker is gone by then (it crashed during the
//!   reload), the slot is refilled with the generation that worked: whatever the order of
//!   events, every slot ends with a serving worker. In the modes with lanes, new connections go
//!   only to the new generation as soon as one of its workers listens.
//! - **Scaling** (SIGTTIN / SIGTTOU) adds the next slot or drains the last one. In reuseport
//!   mode a new slot gets a new listener; a removed slot's listener is served by the primary
//!   while its worker drains, then drained and closed once the worker has exited.
//! - The **heartbeat** pings every worker; one silent for longer than the timeout is killed, and
//!   replaced like a crash.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::Primary;
use crate::Event;
use crate::channel::Message;
use crate::config::MAX_WORKERS;
use crate::event::ReloadPhase;
use crate::event::WorkerExit;

/// Restart times within the window.
#[derive(Debug)]
pub(super) struct Restarts {
    limit: usize,
    window: Duration,
    times: VecDeque<Instant>,
}

impl Restarts {
    pub(super) fn new(limit: usize, window: Duration) -> Restarts {
        Restarts { limit, window, times: VecDeque::new() }
    }

    /// How long ago each counted restart was (for the primary's next image).
    pub(super) fn ages(&self, now: Instant) -> Vec<Duration> {
        self.times.iter().map(|&t| now.duration_since(t)).collect()
    }

    /// Counts restarts that happened `ages` ago.
    pub(super) fn restore(&mut self, ages: &[Duration], now: Instant) {
        self.times = ages.iter().filter_map(|&a| now.checked_sub(a)).collect();
    }

    /// Records a restart now; returns `false` if it goes over the limit.
    fn allow(&mut self, now: Instant) -> bool {
        while self.times.front().is_some_and(|&t| now.duration_since(t) > self.window) {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len() <= self.limit
    }
}

/// The first wait before a failed fork is tried again; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Slots whose fork failed, and when to try each again.
#[derive(Debug, Default)]
pub(super) struct Retries {
    /// Slot → (when, the wait that follows a further failure, the generation to fork).
    due: BTreeMap<usize, (Instant, Duration, u64)>,
}

impl Retries {
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.values().map(|(at, ..)| *at).min()
    }

    pub(super) fn any(&self) -> bool {
        !self.due.is_empty()
    }

    /// The slots waiting for a fork, with the generation to fork (for the primary's next image).
    pub(super) fn pending(&self) -> Vec<(usize, u64)> {
        self.due.iter().map(|(&slot, &(_, _, generation))| (slot, generation)).collect()
    }

    /// Schedules `slot` for a fork at once.
    pub(super) fn restore(&mut self, slot: usize, generation: u64, now: Instant) {
        self.due.insert(slot, (now, FIRST_RETRY, generation));
    }

    pub(super) fn clear(&mut self) {
        self.due.clear();
    }

    /// Schedules `slot` again; returns the wait.
    fn schedule(&mut self, slot: usize, generation: u64, now: Instant) -> Duration {
        let delay = self.due.get(&slot).map_or(FIRST_RETRY, |(_, next, _)| *next);
        self.due.insert(slot, (now + delay, (delay * 2).min(MAX_RETRY), generation));
        delay
    }
}

/// A rolling reload in progress.
#[derive(Debug)]
pub(super) struct Reload {
    generation: u64,
    /// Slot → the new worker not yet listening.
    waiting: BTreeMap<usize, u64>,
    failures: Vec<String>,
}

impl Primary {
    /// Whether `slot` should have a worker and has none (and no retry is scheduled for it).
    fn slot_needs_worker(&self, slot: usize) -> bool {
        slot < self.target
            && !self.shutting_down
            && !self.gave_up
            && !self.vacated.contains(&slot)
            && !self.retries.due.contains_key(&slot)
            && !self.slot_has_live_worker(slot)
    }

    /// Forks a worker for `slot`; if that fails, reports it and schedules a retry.
    pub(super) fn spawn_or_retry(&mut self, slot: usize, generation: u64) -> Option<u64> {
        match self.spawn(slot, generation) {
            Ok(key) => {
                self.retries.due.remove(&slot);
                Some(key)
            }
            Err(e) => {
                let delay = self.retries.schedule(slot, generation, Instant::now());
                self.events.push_back(Event::SpawnFailed { id: slot, error: e.to_string(), retry_in: Some(delay) });
                None
            }
        }
    }

    /// The alarm rang: fork the slots whose retry is due (if they still need a worker),
    /// keeping the back-off going for those that fail again.
    pub(super) fn retry_due_spawns(&mut self, now: Instant) {
        let due: Vec<usize> =
            self.retries.due.iter().filter(|(_, (at, ..))| *at <= now).map(|(slot, _)| *slot).collect();
        for slot in due {
            let (_, next, generation) = self.retries.due.remove(&slot).expect("listed just now");
            if !self.slot_needs_worker(slot) {
                continue;
            }
            if let Err(e) = self.spawn(slot, generation) {
                self.retries.due.insert(slot, (now + next, (next * 2).min(MAX_RETRY), generation));
                self.events.push_back(Event::SpawnFailed { id: slot, error: e.to_string(), retry_in: Some(next) });
            }
        }
    }

    /// Fills `slot` if it needs a worker, with the generation that last worked there.
    fn refill(&mut self, slot: usize) {
        if self.slot_needs_worker(slot) {
            let generation = self.slot_generation.get(&slot).copied().unwrap_or(0);
            self.spawn_or_retry(slot, generation);
        }
    }

    /// Called for every reaped worker, after its `Exit` event.
    pub(super) fn after_exit(&mut self, key: u64, id: usize, pid: u32, status: WorkerExit, expected: bool) {
        if !expected && !self.gave_up && !self.restarts.allow(Instant::now()) {
            self.gave_up = true;
            self.events.push_back(Event::GaveUp { restarts: self.restarts.times.len(), within: self.restarts.window });
            self.begin_shutdown(0, true);
        }
        let failed_reload = self.reload.as_mut().is_some_and(|reload| {
            let waited = reload.waiting.get(&id) == Some(&key);
            if waited {
                reload.waiting.remove(&id);
                reload.failures.push(format!("worker {id} (pid {pid}) exited with {status} before listening"));
            }
            waited
        });
        if failed_reload {
            self.reload_slot_failed(id);
            self.finish_reload_if_done();
        } else {
            self.refill(id);
        }
        if id >= self.target && !self.workers.values().any(|o| o.id == id) {
            self.close_slot_listener(id);
        }
    }

    /// A worker reported `listening`.
    pub(super) fn on_listening(&mut self, key: u64) {
        let Some(w) = self.workers.get_mut(&key) else { return };
        w.listening = true;
        let (id, pid, generation, exiting) = (w.id, w.pid(), w.generation, w.asked_to_exit);
        self.events.push_back(Event::Listening { id, pid });
        if exiting {
            return;
        }
        self.slot_generation.insert(id, generation);
        let in_reload = self.reload.as_ref().is_some_and(|r| r.waiting.get(&id) == Some(&key));
        if in_reload {
            self.reload.as_mut().expect("checked").waiting.remove(&id);
            // New connections go only to the new generation from now on.
            let older: Vec<u64> =
                self.workers.iter().filter(|(_, w)| w.generation < generation).map(|(k, _)| *k).collect();
            for old in older {
                self.set_serving(old, false);
            }
        }
        if self.workers.get(&key).is_some_and(|w| w.speaks) {
            self.set_serving(key, true);
        }
        // Retire what this worker replaces: older workers of the same slot.
        let replaced: Vec<u64> = self
            .workers
            .iter()
            .filter(|(k, w)| **k != key && w.id == id && w.generation <= generation && !w.asked_to_exit)
            .map(|(k, _)| *k)
            .collect();
        for old in replaced {
            self.stop_worker(old);
        }
        if in_reload {
            self.finish_reload_if_done();
        }
    }

    /// A worker announced it is about to exit: fork its replacement now.
    pub(super) fn on_retiring(&mut self, key: u64) {
        self.set_serving(key, false);
        let Some(w) = self.workers.get_mut(&key) else { return };
        w.asked_to_exit = true;
        let (id, pid, generation) = (w.id, w.pid(), w.generation);
        self.accepting.dirty = true;
        self.events.push_back(Event::Retiring { id, pid });
        // A planned exit is not a crash: its replacement does not count toward the restart limit
        // (a worker that retires after every N requests, like gunicorn's `max_requests`, must not
        // make the primary give up).
        if self.slot_needs_worker(id) {
            self.spawn_or_retry(id, generation);
        }
    }

    /// Starts a rolling reload, as SIGHUP does: a new generation for every slot. A reload while
    /// another runs, or during a shutdown, is ignored (with a warning event).
    ///
    /// # Errors
    /// Only what leaves the primary unable to go on (its timer failing); a fork that fails is
    /// an [`Event::SpawnFailed`] and fails that slot's reload.
    pub fn reload(&mut self) -> std::io::Result<()> {
        self.start_reload();
        self.settle()
    }

    pub(super) fn start_reload(&mut self) {
        if self.shutting_down || self.reload.is_some() {
            let why = if self.shutting_down { "shutting down" } else { "a reload is already running" };
            self.warn(format!("reload ignored: {why}"));
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        self.events.push_back(Event::Reload { generation, phase: ReloadPhase::Started });
        let mut waiting = BTreeMap::new();
        let mut failures = Vec::new();
        let slots: Vec<usize> = (0..self.target).filter(|s| !self.vacated.contains(s)).collect();
        for slot in slots.iter().copied() {
            match self.spawn(slot, generation) {
                Ok(key) => {
                    waiting.insert(slot, key);
                }
                Err(e) => {
                    self.events.push_back(Event::SpawnFailed { id: slot, error: e.to_string(), retry_in: None });
                    failures.push(format!("worker {slot}: {e}"));
                }
            }
        }
        self.reload = Some(Reload { generation, waiting, failures });
        self.deadlines.reload = Some(Instant::now() + self.config.reload_timeout);
        for slot in slots {
            if !self.reload.as_ref().is_some_and(|r| r.waiting.contains_key(&slot)) {
                self.reload_slot_failed(slot);
            }
        }
        self.finish_reload_if_done();
    }

    /// The reload timer fired: every new worker still not listening failed its slot.
    pub(super) fn reload_timed_out(&mut self) {
        let Some(reload) = &mut self.reload else { return };
        let waiting = std::mem::take(&mut reload.waiting);
        for (slot, key) in waiting {
            if let Some(w) = self.workers.get_mut(&key) {
                w.asked_to_exit = true;
                let _ = w.child.signal(libc::SIGKILL);
                let reason = format!(
                    "worker {slot} (pid {}) not listening after {:.1}s",
                    w.pid(),
                    self.config.reload_timeout.as_secs_f64()
                );
                self.reload.as_mut().expect("checked").failures.push(reason);
            }
            self.reload_slot_failed(slot);
        }
        self.finish_reload_if_done();
    }

    /// The old workers of a failed slot keep serving: put them back in the rotation. If none
    /// is left (it crashed during the reload), refill the slot with the generation that worked.
    fn reload_slot_failed(&mut self, slot: usize) {
        let old: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.id == slot && w.listening && !w.asked_to_exit)
            .map(|(k, _)| *k)
            .collect();
        for key in old {
            self.set_serving(key, true);
        }
        self.accepting.dirty = true;
        self.refill(slot);
    }

    fn finish_reload_if_done(&mut self) {
        let Some(reload) = &self.reload else { return };
        if !reload.waiting.is_empty() {
            return;
        }
        let reload = self.reload.take().expect("checked");
        self.deadlines.reload = None;
        let phase = if reload.failures.is_empty() {
            ReloadPhase::Finished
        } else {
            ReloadPhase::Failed { reason: reload.failures.join("; ") }
        };
        self.events.push_back(Event::Reload { generation: reload.generation, phase });
    }

    /// Aims for `workers` worker slots (clamped to 1..=[`MAX_WORKERS`]), as SIGTTIN and
    /// SIGTTOU do one at a time: forks the missing ones, or drains the extra ones (the highest
    /// slots first). Ignored during a shutdown.
    ///
    /// # Errors
    /// As [`reload`](Self::reload).
    pub fn scale(&mut self, workers: usize) -> std::io::Result<()> {
        self.change_scale(workers);
        self.settle()
    }

    pub(super) fn change_scale(&mut self, workers: usize) {
        let workers = workers.clamp(1, MAX_WORKERS);
        if self.shutting_down || workers == self.target {
            return;
        }
        let old = self.target;
        self.target = workers;
        self.events.push_back(Event::Scale { workers });
        if let Some(warning) = self.mode.as_mut().and_then(|m| m.target_changed(workers)) {
            self.warn(warning);
        }
        for slot in workers..old {
            self.retries.due.remove(&slot);
            // A reload's new worker for a slot scaled away is not a failure of the reload.
            if let Some(reload) = &mut self.reload {
                reload.waiting.remove(&slot);
            }
            let keys: Vec<u64> = self.workers.iter().filter(|(_, w)| w.id == slot).map(|(k, _)| *k).collect();
            if keys.is_empty() {
                self.close_slot_listener(slot);
            }
            for key in keys {
                self.stop_worker(key);
            }
        }
        for slot in old..workers {
            self.vacated.remove(&slot);
            let generation = self.generation;
            self.spawn_or_retry(slot, generation);
        }
        self.accepting.dirty = true;
        self.finish_reload_if_done();
    }

    /// The heartbeat timer fired: ping everyone, kill whoever has been silent too long.
    pub(super) fn heartbeat(&mut self, now: Instant) {
        let Some(hb) = self.config.heartbeat else { return };
        let keys: Vec<u64> = self.workers.keys().copied().collect();
        for key in keys {
            let w = &mut self.workers.get_mut(&key).expect("listed just now");
            // A program that does not read its channel cannot answer a ping.
            if !w.connected || w.hung || !w.speaks {
                continue;
            }
            let silent_for = now.duration_since(w.last_seen);
            if silent_for > hb.timeout {
                w.hung = true;
                let (id, pid) = (w.id, w.pid());
                let _ = w.child.signal(libc::SIGKILL);
                self.events.push_back(Event::Unresponsive { id, pid, silent_for });
            } else if w.outbox.is_empty() {
                // A worker with frames still waiting to reach it gets no more pings: it is not
                // reading, and the timeout above will tell.
                self.send_control(key, Message::Ping, &[]);
            }
        }
        self.deadlines.heartbeat = Some(now + hb.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_limited_within_the_window() {
        let mut r = Restarts::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(r.allow(t0));
        assert!(r.allow(t0 + Duration::from_secs(1)));
        assert!(r.allow(t0 + Duration::from_secs(2)));
        assert!(!r.allow(t0 + Duration::from_secs(3)), "the fourth restart within 10 s is one too many");
        let mut r = Restarts::new(3, Duration::from_secs(10));
        for i in 0..10 {
            assert!(r.allow(t0 + Duration::from_secs(6 * i)), "restarts spread out never hit the limit");
        }
    }

    #[test]
    fn fork_retries_back_off_and_cap() {
        let mut r = Retries::default();
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..8).map(|_| r.schedule(3, 0, t0)).collect();
        assert_eq!(waits[0], FIRST_RETRY);
        assert_eq!(waits[1], FIRST_RETRY * 2);
        assert_eq!(*waits.last().unwrap(), MAX_RETRY);
        assert_eq!(r.next_due(), Some(t0 + MAX_RETRY));
    }
}

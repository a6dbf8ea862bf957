//! Keeping the cluster whole: restarts within a limit, rolling reloads, scaling, heartbeats.
//!
//! The rules, in one place:
//!
//! - A worker that exits **without being asked** (a crash, a kill from outside, a heartbeat
//!   timeout) is replaced in the same slot — unless more than `restart_limit` restarts happened
//!   within `restart_window`, in which case the primary **gives up**: it stops every worker and
//!   [`Primary::run`](super::Primary::run) fails, naming the limit.
//! - A worker that **announces** its exit ([`crate::Worker::retire`], Node's "suicide"
//!   message) gets its replacement forked at once, before it goes. A planned exit is not a
//!   crash, so it does not count toward the restart limit.
//! - A **reload** (SIGHUP) forks a whole new generation. Each old worker is disconnected only
//!   once its replacement reports `listening`; a replacement that exits first, or is not
//!   listening within `reload_timeout`, fails the reload for its slot and the old worker keeps
//!   serving. In handoff mode, new connections go only to the new generation as soon as one of
//!   its workers listens.
//! - **Scaling** (SIGTTIN / SIGTTOU) adds the next slot or drains the last one. In reuseport
//!   mode a new slot gets a new listener; a removed slot's listener is closed once its worker has
//!   exited — with `net.ipv4.tcp_migrate_req = 1` the kernel moves connections still queued on it
//!   to the other listeners, without it they are reset.
//! - The **heartbeat** pings every worker; one silent for longer than the timeout is killed, and
//!   replaced like a crash.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use super::{Primary, WorkerHandle};
use crate::Event;
use crate::channel::Message;
use crate::cluster::{Listeners, MAX_WORKERS};
use crate::event::ReloadPhase;
use crate::mode::reuseport;
use crate::sys::process::{self, ExitStatus};

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

    /// Records a restart now; returns `false` if it goes over the limit.
    fn allow(&mut self, now: Instant) -> bool {
        while self.times.front().is_some_and(|&t| now.duration_since(t) > self.window) {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len() <= self.limit
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
    /// Called for every reaped worker, after its `Exit` event.
    pub(super) fn after_exit(
        &mut self,
        key: u64,
        w: &WorkerHandle,
        status: ExitStatus,
        expected: bool,
    ) -> io::Result<()> {
        if let Some(reload) = &mut self.reload {
            if reload.waiting.get(&w.id) == Some(&key) {
                reload.waiting.remove(&w.id);
                reload.failures.push(format!(
                    "worker {} (pid {}) exited with {status} before listening",
                    w.id,
                    w.pid()
                ));
                self.reload_slot_failed(w.id);
                return self.finish_reload_if_done();
            }
        }
        if !expected && !self.shutting_down && w.id < self.target && !self.slot_has_live_worker(w.id) {
            self.restart(w.id)?;
        }
        if w.id >= self.target && !self.slot_has_live_worker(w.id) {
            self.close_reuseport_listener(w.id);
        }
        Ok(())
    }

    fn slot_has_live_worker(&self, slot: usize) -> bool {
        self.workers.values().any(|w| w.id == slot && !w.asked_to_exit)
    }

    /// Replaces the worker of `slot`, or gives up if that is one restart too many.
    fn restart(&mut self, slot: usize) -> io::Result<()> {
        if self.gave_up {
            return Ok(());
        }
        if !self.restarts.allow(Instant::now()) {
            self.gave_up = true;
            self.events.push_back(Event::GaveUp { restarts: self.restarts.times.len(), within: self.restarts.window });
            return self.begin_shutdown(0, true);
        }
        self.spawn(slot).map(drop)
    }

    /// A worker reported `listening`.
    pub(super) fn on_listening(&mut self, key: u64) -> io::Result<()> {
        let w = self.workers.get_mut(&key).expect("listening worker is known");
        w.listening = true;
        let (id, pid, generation, exiting) = (w.id, w.pid(), w.generation, w.asked_to_exit);
        self.events.push_back(Event::Listening { id, pid });
        if exiting {
            return Ok(());
        }
        let in_reload = self.reload.as_ref().is_some_and(|r| r.waiting.get(&id) == Some(&key));
        if in_reload {
            self.reload.as_mut().expect("checked").waiting.remove(&id);
            // New connections go only to the new generation from now on.
            let older: Vec<u64> =
                self.workers.iter().filter(|(_, w)| w.generation < generation).map(|(k, _)| *k).collect();
            for old in older {
                self.stop_dispatching_to(old);
            }
        }
        self.dispatch_to(key);
        // Retire what this worker replaces: older workers of the same slot.
        let replaced: Vec<u64> = self
            .workers
            .iter()
            .filter(|(k, w)| **k != key && w.id == id && w.generation <= generation && !w.asked_to_exit)
            .map(|(k, _)| *k)
            .collect();
        for old in replaced {
            self.disconnect_key(old);
        }
        if in_reload {
            self.finish_reload_if_done()?;
        }
        Ok(())
    }

    /// A worker announced it is about to exit: fork its replacement now.
    pub(super) fn on_retiring(&mut self, key: u64) -> io::Result<()> {
        self.stop_dispatching_to(key);
        let w = self.workers.get_mut(&key).expect("retiring worker is known");
        w.asked_to_exit = true;
        let (id, pid) = (w.id, w.pid());
        self.events.push_back(Event::Retiring { id, pid });
        // A planned exit is not a crash: its replacement does not count toward the restart limit
        // (a worker that retires after every N requests, like gunicorn's `max_requests`, must not
        // make the primary give up).
        if !self.shutting_down && id < self.target && !self.slot_has_live_worker(id) {
            self.spawn(id)?;
        }
        Ok(())
    }

    /// Starts a rolling reload (SIGHUP): a new generation for every slot.
    pub fn reload(&mut self) -> io::Result<()> {
        if self.shutting_down || self.reload.is_some() {
            eprintln!(
                "herd: primary: reload ignored ({})",
                if self.shutting_down { "shutting down" } else { "a reload is already running" }
            );
            return Ok(());
        }
        self.generation += 1;
        let generation = self.generation;
        self.events.push_back(Event::Reload { generation, phase: ReloadPhase::Started });
        let mut waiting = BTreeMap::new();
        for slot in 0..self.target {
            waiting.insert(slot, self.spawn(slot)?);
        }
        self.reload = Some(Reload { generation, waiting, failures: Vec::new() });
        self.io().reload_timer.arm(self.config.reload_timeout)
    }

    /// The reload timer fired: every new worker still not listening failed its slot.
    pub(super) fn reload_timed_out(&mut self) -> io::Result<()> {
        let Some(reload) = &mut self.reload else { return Ok(()) };
        let waiting = std::mem::take(&mut reload.waiting);
        for (slot, key) in waiting {
            if let Some(w) = self.workers.get_mut(&key) {
                w.asked_to_exit = true;
                let _ = process::kill(w.pid, libc::SIGKILL);
                let reason = format!(
                    "worker {slot} (pid {}) not listening after {:.1}s",
                    w.pid(),
                    self.config.reload_timeout.as_secs_f64()
                );
                self.reload.as_mut().expect("checked").failures.push(reason);
            }
            self.reload_slot_failed(slot);
        }
        self.finish_reload_if_done()
    }

    /// The old workers of a failed slot keep serving: put them back in the handoff rotation.
    fn reload_slot_failed(&mut self, slot: usize) {
        let old: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.id == slot && w.listening && !w.asked_to_exit)
            .map(|(k, _)| *k)
            .collect();
        for key in old {
            self.dispatch_to(key);
        }
    }

    fn finish_reload_if_done(&mut self) -> io::Result<()> {
        let Some(reload) = &self.reload else { return Ok(()) };
        if !reload.waiting.is_empty() {
            return Ok(());
        }
        let reload = self.reload.take().expect("checked");
        self.io().reload_timer.disarm()?;
        let phase = if reload.failures.is_empty() {
            ReloadPhase::Finished
        } else {
            ReloadPhase::Failed { reason: reload.failures.join("; ") }
        };
        self.events.push_back(Event::Reload { generation: reload.generation, phase });
        Ok(())
    }

    /// Aims for `workers` worker slots: forks the missing ones, or drains the extra ones (the
    /// highest slots first).
    pub fn scale(&mut self, workers: usize) -> io::Result<()> {
        let workers = workers.clamp(1, MAX_WORKERS);
        if self.shutting_down || workers == self.target {
            return Ok(());
        }
        let old = self.target;
        self.target = workers;
        self.events.push_back(Event::Scale { workers });
        if workers < old && matches!(self.listeners, Some(Listeners::Reuseport(_))) && !tcp_migrate_req() {
            eprintln!(
                "herd: primary: net.ipv4.tcp_migrate_req is 0: connections still queued on the listeners of the \
                 removed slots will be reset when they close (set it to 1 to have the kernel move them)"
            );
        }
        for slot in workers..old {
            let keys: Vec<u64> = self.workers.iter().filter(|(_, w)| w.id == slot).map(|(k, _)| *k).collect();
            for key in keys {
                self.disconnect_key(key);
            }
        }
        for slot in old..workers {
            self.open_reuseport_listener(slot)?;
            self.spawn(slot)?;
        }
        Ok(())
    }

    fn open_reuseport_listener(&mut self, slot: usize) -> io::Result<()> {
        let Some(Listeners::Reuseport(listeners)) = &mut self.listeners else { return Ok(()) };
        if listeners.len() <= slot {
            listeners.resize_with(slot + 1, || None);
        }
        if listeners[slot].is_none() {
            listeners[slot] = Some(reuseport::bind_one(&self.local_addr, self.bind_options)?);
        }
        Ok(())
    }

    fn close_reuseport_listener(&mut self, slot: usize) {
        if let Some(Listeners::Reuseport(listeners)) = &mut self.listeners {
            if let Some(l) = listeners.get_mut(slot) {
                l.take();
            }
        }
    }

    /// The heartbeat timer fired: ping everyone, kill whoever has been silent too long.
    pub(super) fn heartbeat(&mut self) -> io::Result<()> {
        let Some(hb) = self.config.heartbeat else { return Ok(()) };
        let now = Instant::now();
        for w in self.workers.values_mut() {
            if !w.connected || w.hung {
                continue;
            }
            let silent_for = now.duration_since(w.last_seen);
            if silent_for > hb.timeout {
                w.hung = true;
                self.events.push_back(Event::Unresponsive { id: w.id, pid: w.pid(), silent_for });
                let _ = process::kill(w.pid, libc::SIGKILL);
            } else {
                let _ = w.channel.try_send(&Message::Ping, &[]);
            }
        }
        self.io().heartbeat.arm(hb.interval)
    }
}

/// Whether `net.ipv4.tcp_migrate_req` (Linux 5.14) is on in this network namespace: closing one
/// of a group of `SO_REUSEPORT` listeners then moves its queued connections to the others.
fn tcp_migrate_req() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
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
}

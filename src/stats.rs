//! Exact counters, kept in memory shared by the primary and every worker.
//!
//! The region (a `MAP_SHARED` mapping of a memfd) is mapped before the first `fork`, so all
//! processes see it; a worker that executes another program gets the memfd and maps it again.
//! Each worker slot owns one cache line of atomics and only that worker writes it (relaxed
//! increments, no system call, no false sharing); the primary owns one more line. Anyone may
//! read any line at any time without asking over the channel — that is how `herd serve` prints
//! every worker's counters on exit and how `herd bench` samples them.
//!
//! Counters are per slot and cumulative: a worker that replaces another in the same slot keeps
//! counting where its predecessor stopped.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::shm::{CacheLine, SharedRegion};

/// The counters of one worker slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// How often the worker woke up for its accept source: an `epoll_wait` that reported the
    /// listener (or the channel, in handoff) readable, or a blocking `accept` that returned.
    pub wakeups: u64,
    /// Connections the worker accepted itself (shared and reuseport modes).
    pub accepts: u64,
    /// `accept` calls that found nothing (`EAGAIN`): in shared/epoll, the losers of the herd.
    pub eagains: u64,
    /// Connections received from the primary over the channel (handoff mode).
    pub handoffs_received: u64,
    /// Handoffs acknowledged back to the primary (acknowledgements go every half window, so
    /// this trails `handoffs_received` by less than that).
    pub handoffs_acked: u64,
    /// Connections the worker finished with (its [`crate::Stream`] was dropped or released).
    pub closed: u64,
    /// System calls herd made in this slot's processes on its hot path: `accept4`,
    /// `epoll_wait`, `epoll_ctl`, `io_uring_enter`, `sendmsg`, `recvmsg`, and an eventfd's
    /// `read` and `write`. Exact: each wrapper counts its own call. The program's own calls
    /// (reading and writing its connections, closing them) are not herd's and not counted.
    pub syscalls: u64,
    /// Connections the slot's worker holds now: a gauge, up with each connection it gets, down
    /// with each it finishes; reset when a slot's last worker has exited (what it held died
    /// with it). The `epoll-balance` strategy steps a worker out of the accept queue while
    /// this is above the cluster's mean.
    pub live: u64,
    /// Microseconds the slot's workers spent busy — out of their blocking wait, serving — over
    /// their lives: with the run's duration, how loaded each worker was.
    pub busy_us: u64,
}

impl WorkerStats {
    /// Connections this worker got, by accepting or by handoff.
    pub fn connections(&self) -> u64 {
        self.accepts + self.handoffs_received
    }
}

/// The primary's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrimaryStats {
    /// Connections the primary accepted (handoff mode).
    pub accepted: u64,
    /// Handoffs sent to workers, requeued ones included.
    pub dispatched: u64,
    /// Connections that found no worker with room and waited in the primary's queue.
    pub queued: u64,
    /// Unacknowledged handoffs taken back from a worker that died or rejected them, and given
    /// to another.
    pub requeued: u64,
    /// System calls the primary made on its hot path: as [`WorkerStats::syscalls`] counts
    /// them, plus the `close` of each descriptor it handed on (on epoll; the io_uring backend
    /// closes them in its ring). Supervision's own calls (`fork`, `waitid`, reading signals
    /// and timers) are not counted.
    pub syscalls: u64,
}

/// Indexes into a worker's cache line.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub(crate) enum WorkerCounter {
    Wakeups = 0,
    Accepts,
    Eagains,
    HandoffsReceived,
    HandoffsAcked,
    Closed,
    Syscalls,
    Live,
}

/// Indexes into the primary's cache line.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub(crate) enum PrimaryCounter {
    Accepted = 0,
    Dispatched,
    Queued,
    Requeued,
    Syscalls,
}

/// Where the primary records how many slots are in use (its line's last cell).
const SLOTS_IN_USE: usize = 7;
/// Where the primary records which slots have a worker that takes connections now: bit `s` for
/// slot `s` (slots 0 to 63).
const SERVING_SLOTS: usize = 6;

/// The shared counter region: line 0 is the primary's, line `1 + slot` is worker slot `slot`'s,
/// and line `1 + capacity + slot` holds slot `slot`'s loop clock (when its worker last came back
/// to its event loop).
#[derive(Clone, Debug)]
pub struct Counters {
    region: Arc<SharedRegion>,
    /// The memfd behind the region, for programs the workers execute and for the primary's
    /// next image; closed with the last `Counters`.
    memfd: Arc<std::os::fd::OwnedFd>,
    capacity: usize,
    /// Which copy of the per-worker gauges this process writes (see `for_generation`).
    parity: usize,
}

impl Counters {
    /// Maps a region for the primary and up to `capacity` worker slots.
    pub(crate) fn new(capacity: usize) -> std::io::Result<Counters> {
        let (region, memfd) = SharedRegion::new(2 * capacity + 1)?;
        Ok(Counters { region: Arc::new(region), memfd: Arc::new(memfd), capacity, parity: 0 })
    }

    /// Maps the region of the cluster this process was started by (`herd run`), from the memfd
    /// it passed.
    pub(crate) fn from_fd(fd: std::os::fd::OwnedFd) -> std::io::Result<Counters> {
        let (region, memfd) = SharedRegion::from_fd(fd)?;
        let capacity = (region.lines().len() - 1) / 2;
        Ok(Counters { region: Arc::new(region), memfd: Arc::new(memfd), capacity, parity: 0 })
    }

    /// The memfd behind the region (see `sys::shm`).
    pub(crate) fn memfd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&*self.memfd)
    }

    /// How many worker slots have been used so far (the highest slot ever started, plus one).
    pub fn slots(&self) -> usize {
        self.line(0).0[SLOTS_IN_USE].load(Ordering::Relaxed) as usize
    }

    /// How many worker slots the region can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records that `slot` is in use.
    pub(crate) fn use_slot(&self, slot: usize) {
        assert!(slot < self.capacity, "worker slot {slot} beyond the counter region's {} slots", self.capacity);
        self.line(0).0[SLOTS_IN_USE].fetch_max(slot as u64 + 1, Ordering::Relaxed);
    }

    fn line(&self, index: usize) -> &CacheLine {
        &self.region.lines()[index]
    }

    pub(crate) fn bump_worker(&self, slot: usize, which: WorkerCounter, by: u64) {
        self.line(1 + slot).0[which as usize].fetch_add(by, Ordering::Relaxed);
    }

    // A slot holds two workers at once during a reload (the old generation finishing, the new
    // one starting), so the per-worker gauges come in two copies, by generation parity: the live
    // count in the worker line (even) and the clock line (odd), the loop clock twice in the
    // clock line. Reads add the copies up, or pick the worker's.

    fn live_cell(&self, slot: usize, parity: usize) -> &AtomicU64 {
        if parity == 0 {
            &self.line(1 + slot).0[WorkerCounter::Live as usize]
        } else {
            &self.line(1 + self.capacity + slot).0[3]
        }
    }

    fn clock_cell(&self, slot: usize, parity: usize) -> &AtomicU64 {
        &self.line(1 + self.capacity + slot).0[2 * parity]
    }

    /// These counters, for a worker of `generation`: its gauges are its own copies.
    pub(crate) fn for_generation(mut self, generation: u64) -> Counters {
        self.parity = (generation % 2) as usize;
        self
    }

    /// This process's worker is back in its loop (`now_us`, the monotonic clock in µs), or
    /// about to block in it with nothing to do (`0`). A worker whose clock is set and old is
    /// stuck in its own code — a slow handler — and takes no connection meanwhile: the primary
    /// then passes it over.
    pub(crate) fn looked_at(&self, slot: usize, now_us: u64) {
        self.clock_cell(slot, self.parity).store(now_us, Ordering::Relaxed);
    }

    /// When the worker of `slot` and `generation` last looked at its sources, in monotonic
    /// µs; 0 while it waits.
    pub(crate) fn last_look(&self, slot: usize, generation: u64) -> u64 {
        self.clock_cell(slot, (generation % 2) as usize).load(Ordering::Relaxed)
    }

    /// `slot`'s worker was busy (out of its blocking wait) for `us` more microseconds.
    pub(crate) fn add_busy(&self, slot: usize, us: u64) {
        self.line(1 + self.capacity + slot).0[1].fetch_add(us, Ordering::Relaxed);
    }

    /// One more live connection in `slot` (`more`), or one fewer, for this process's worker.
    pub(crate) fn live_changed(&self, slot: usize, more: bool) {
        let cell = self.live_cell(slot, self.parity);
        if more {
            cell.fetch_add(1, Ordering::Relaxed);
        } else {
            // Never below zero: a reset (its worker exited) may come between.
            let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        }
    }

    /// Handoffs `slot`'s workers have taken off their lanes, over the slot's life.
    pub(crate) fn handoffs_received(&self, slot: usize) -> u64 {
        self.line(1 + slot).0[WorkerCounter::HandoffsReceived as usize].load(Ordering::Relaxed)
    }

    /// The connections `slot`'s workers hold now.
    pub(crate) fn live(&self, slot: usize) -> u64 {
        self.live_cell(slot, 0).load(Ordering::Relaxed) + self.live_cell(slot, 1).load(Ordering::Relaxed)
    }

    /// The worker of `slot` and `generation` has exited: the connections it held went with it,
    /// and it looks at nothing any more.
    pub(crate) fn worker_gone(&self, slot: usize, generation: u64) {
        let parity = (generation % 2) as usize;
        self.live_cell(slot, parity).store(0, Ordering::Relaxed);
        self.clock_cell(slot, parity).store(0, Ordering::Relaxed);
    }

    /// Records which slots have a worker taking connections (bit `s` for slot `s`).
    pub(crate) fn set_serving_slots(&self, mask: u64) {
        self.line(0).0[SERVING_SLOTS].store(mask, Ordering::Relaxed);
    }

    /// Whether `slot`'s live connections are well above the mean of the slots that take
    /// connections: above it rounded up. `false` when the slot is the only one serving or the
    /// mask does not cover it (more than 64 slots), so that somebody always accepts.
    pub(crate) fn above_mean(&self, slot: usize) -> bool {
        let mask = self.line(0).0[SERVING_SLOTS].load(Ordering::Relaxed);
        if slot >= 64 || mask & (1 << slot) == 0 || mask.count_ones() < 2 {
            return false;
        }
        let total: u64 = (0..64.min(self.capacity)).filter(|s| mask & (1 << s) != 0).map(|s| self.live(s)).sum();
        let serving = u64::from(mask.count_ones());
        self.live(slot) > total.div_ceil(serving)
    }

    pub(crate) fn bump_primary(&self, which: PrimaryCounter, by: u64) {
        self.line(0).0[which as usize].fetch_add(by, Ordering::Relaxed);
    }

    /// From now on, this process counts its hot-path system calls in the primary's line.
    pub(crate) fn count_syscalls_as_primary(&self) {
        crate::sys::tally::count_into(&self.region, 0, PrimaryCounter::Syscalls as usize);
    }

    /// From now on, this process counts its hot-path system calls in worker slot `slot`'s line.
    pub(crate) fn count_syscalls_as_worker(&self, slot: usize) {
        crate::sys::tally::count_into(&self.region, 1 + slot, WorkerCounter::Syscalls as usize);
    }

    /// A snapshot of worker slot `slot`'s counters.
    ///
    /// # Panics
    /// If `slot` is not below [`slots`](Self::slots).
    pub fn worker(&self, slot: usize) -> WorkerStats {
        assert!(slot < self.capacity, "worker slot {slot} out of range (the region has {})", self.capacity);
        let c = &self.line(1 + slot).0;
        let get = |w: WorkerCounter| c[w as usize].load(Ordering::Relaxed);
        WorkerStats {
            wakeups: get(WorkerCounter::Wakeups),
            accepts: get(WorkerCounter::Accepts),
            eagains: get(WorkerCounter::Eagains),
            handoffs_received: get(WorkerCounter::HandoffsReceived),
            handoffs_acked: get(WorkerCounter::HandoffsAcked),
            closed: get(WorkerCounter::Closed),
            syscalls: get(WorkerCounter::Syscalls),
            live: self.live(slot),
            busy_us: self.line(1 + self.capacity + slot).0[1].load(Ordering::Relaxed),
        }
    }

    /// A snapshot of the primary's counters.
    pub fn primary(&self) -> PrimaryStats {
        let c = &self.line(0).0;
        let get = |p: PrimaryCounter| c[p as usize].load(Ordering::Relaxed);
        PrimaryStats {
            accepted: get(PrimaryCounter::Accepted),
            dispatched: get(PrimaryCounter::Dispatched),
            queued: get(PrimaryCounter::Queued),
            requeued: get(PrimaryCounter::Requeued),
            syscalls: get(PrimaryCounter::Syscalls),
        }
    }

    /// A snapshot of everything.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { primary: self.primary(), workers: (0..self.slots()).map(|s| self.worker(s)).collect() }
    }
}

/// All counters at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The primary's.
    pub primary: PrimaryStats,
    /// One entry per worker slot.
    pub workers: Vec<WorkerStats>,
}

impl Snapshot {
    /// The sum over all worker slots.
    pub fn total(&self) -> WorkerStats {
        self.workers.iter().fold(WorkerStats::default(), |a, w| WorkerStats {
            wakeups: a.wakeups + w.wakeups,
            accepts: a.accepts + w.accepts,
            eagains: a.eagains + w.eagains,
            handoffs_received: a.handoffs_received + w.handoffs_received,
            handoffs_acked: a.handoffs_acked + w.handoffs_acked,
            closed: a.closed + w.closed,
            syscalls: a.syscalls + w.syscalls,
            live: a.live + w.live,
            busy_us: a.busy_us + w.busy_us,
        })
    }
}

impl fmt::Display for Snapshot {
    /// A table: one row per worker slot, a total row, and the primary's counters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "worker", "wakeups", "accepts", "eagains", "handoffs", "acked", "closed", "syscalls"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, w: &WorkerStats| {
            writeln!(
                f,
                "{:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                name, w.wakeups, w.accepts, w.eagains, w.handoffs_received, w.handoffs_acked, w.closed, w.syscalls
            )
        };
        for (i, w) in self.workers.iter().enumerate() {
            row(f, &i.to_string(), w)?;
        }
        row(f, "total", &self.total())?;
        let p = &self.primary;
        write!(
            f,
            "primary: accepted {} dispatched {} queued {} requeued {} syscalls {}",
            p.accepted, p.dispatched, p.queued, p.requeued, p.syscalls
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_gauge_and_the_mean_of_the_serving_slots() {
        let c = Counters::new(4).unwrap();
        for (slot, n) in [(0, 6), (1, 2), (2, 1), (3, 40)] {
            for _ in 0..n {
                c.live_changed(slot, true);
            }
        }
        c.live_changed(2, false);
        c.live_changed(2, false);
        assert_eq!(c.worker(2).live, 0, "never below zero");
        // Slot 3 is not serving (its worker is gone or leaving): it is not in the mean.
        c.set_serving_slots(0b0111);
        assert!(c.above_mean(0), "6 against a mean of (6 + 2 + 0) / 3, rounded up: 3");
        assert!(!c.above_mean(1) && !c.above_mean(2));
        assert!(!c.above_mean(3), "a slot that does not serve never steps out");
        c.set_serving_slots(0b0001);
        assert!(!c.above_mean(0), "the only serving slot always accepts");
        c.worker_gone(0, 0);
        assert_eq!(c.worker(0).live, 0);
        // A worker of the next generation in the same slot counts apart, and they add up.
        let next = c.clone().for_generation(1);
        next.live_changed(1, true);
        assert_eq!(c.worker(1).live, 3);
        c.worker_gone(1, 0);
        assert_eq!(c.worker(1).live, 1, "the other generation's connection is still there");
    }
}

//! One line of the table: a row under a load, what was measured and what follows from it.
//!
//! Every figure is derived here, from raw counts, by small pure functions, so the table, the
//! JSON, the CSV and the SVG cannot disagree. The denominators are chosen to be exact:
//!
//! - **Connections** are the server's count (each worker's `accepts + handoffs_received`), and
//!   since every request is a new connection they must equal the requests the load generator
//!   saw answered; [`Figures::consistent`] checks that, and that the workers the response bodies
//!   name got exactly the connections the server counted for them.
//! - **Kernel wakeups per accept** are the workers' voluntary context switches during the load
//!   per connection (see [`super::procstat`] for why context switches, not `epoll_wait` returns).
//! - **User-space wakeups per accept** are the workers' own `wakeups` counter per connection:
//!   how often an `epoll_wait` (or a blocking `accept`) actually returned for the accept source.
//! - **CPU µs per request** is all the server's CPU (primary plus workers) per request: on a
//!   small machine the client saturates the cores first, so requests per second say more about
//!   the client than the server, while CPU per request is what each design costs.
//! - **System calls per connection** are the server's own exact counts of its hot-path calls
//!   (`accept4`, `epoll_wait`, `io_uring_enter`, `sendmsg`, ...) per connection. They cover the
//!   server's whole life, not just the load: start-up and shutdown add a few dozen calls, which
//!   thousands of connections make negligible.

use herd::Backend;
use herd::stats::Snapshot;

use super::plan::{Load, Row};
use super::procstat::Sample;
use crate::load;

/// One (row, backend, load) cell: what ran, and what came of it.
#[derive(Clone, Debug)]
pub struct Cell {
    pub row: Row,
    pub backend: Backend,
    pub load: Load,
    pub workers: usize,
    /// The figures, or why there are none (the server did not start, died, hung...).
    pub outcome: Result<Figures, String>,
}

impl Cell {
    /// Whether this cell should fail the run: no figures, failed requests or counts that do not
    /// add up.
    pub fn failed(&self) -> bool {
        match &self.outcome {
            Ok(f) => f.failures > 0 || !f.consistent(),
            Err(_) => true,
        }
    }
}

/// Raw measurements of one cell, all taken over the load and nothing else.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Successful requests (2xx responses).
    pub requests: u64,
    /// Failed requests, of every kind.
    pub failures: u64,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Connections per worker slot, by the server's counters.
    pub per_worker: Vec<u64>,
    /// Responses per worker id, by the response bodies.
    pub answered_by: Vec<u64>,
    /// Σ of the workers' voluntary context switches.
    pub worker_switches: u64,
    /// The primary's voluntary context switches.
    pub primary_switches: u64,
    /// Σ of the workers' `wakeups` counters.
    pub epoll_returns: u64,
    /// Σ of the workers' `eagains` counters.
    pub eagains: u64,
    pub cpu_primary_s: f64,
    pub cpu_workers_s: f64,
    /// The primary's hot-path system calls, over the server's life.
    pub syscalls_primary: u64,
    /// Σ of the workers' hot-path system calls, over the server's life.
    pub syscalls_workers: u64,
}

impl Figures {
    /// Combines the load report, the server's counters and the `/proc` deltas (primary first,
    /// then one per worker slot); `hz` is the clock tick rate of the CPU times.
    pub fn new(
        report: &load::LoadReport,
        counters: &Snapshot,
        primary: Sample,
        workers: &[Sample],
        hz: u64,
    ) -> Figures {
        let load::Percentiles { p50, p99, .. } = report.percentiles();
        let ticks = |t: u64| t as f64 / hz as f64;
        Figures {
            requests: report.requests,
            failures: report.errors.total(),
            rps: report.rps(),
            p50_us: p50,
            p99_us: p99,
            per_worker: counters.workers.iter().map(|w| w.connections()).collect(),
            answered_by: report.per_worker(),
            worker_switches: workers.iter().map(|s| s.voluntary_switches).sum(),
            primary_switches: primary.voluntary_switches,
            epoll_returns: counters.workers.iter().map(|w| w.wakeups).sum(),
            eagains: counters.workers.iter().map(|w| w.eagains).sum(),
            cpu_primary_s: ticks(primary.cpu_ticks),
            cpu_workers_s: ticks(workers.iter().map(|s| s.cpu_ticks).sum()),
            syscalls_primary: counters.primary.syscalls,
            syscalls_workers: counters.workers.iter().map(|w| w.syscalls).sum(),
        }
    }

    /// Connections the workers got, in all.
    pub fn connections(&self) -> u64 {
        self.per_worker.iter().sum()
    }

    /// Kernel wakeups per accept: worker context switches per connection.
    pub fn wakeups_per_accept(&self) -> Option<f64> {
        ratio(self.worker_switches, self.connections())
    }

    /// User-space wakeups per accept: `epoll_wait` (or `accept`) returns per connection.
    pub fn epoll_returns_per_accept(&self) -> Option<f64> {
        ratio(self.epoll_returns, self.connections())
    }

    /// Jain's index over the per-worker connection counts.
    pub fn jain(&self) -> Option<f64> {
        load::jain(&self.per_worker)
    }

    /// The busiest worker's count over the idlest's; infinite if one got nothing.
    pub fn max_min_share(&self) -> Option<f64> {
        max_min_share(&self.per_worker)
    }

    /// Each worker's share of the connections, in percent.
    pub fn shares(&self) -> Vec<f64> {
        shares(&self.per_worker)
    }

    /// Server CPU (primary plus workers) per successful request, in µs.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| (self.cpu_primary_s + self.cpu_workers_s) * 1e6 / self.requests as f64)
    }

    /// The server's hot-path system calls (primary and workers) per connection.
    pub fn syscalls_per_conn(&self) -> Option<f64> {
        ratio(self.syscalls_primary + self.syscalls_workers, self.connections())
    }

    /// The primary's hot-path system calls per connection: what handing connections on costs.
    pub fn primary_syscalls_per_conn(&self) -> Option<f64> {
        ratio(self.syscalls_primary, self.connections())
    }

    /// The counts add up: the server's connections equal the requests answered, the response
    /// bodies account for every request, and each worker answered exactly what it accepted.
    pub fn consistent(&self) -> bool {
        self.connections() == self.requests
            && self.answered_by.iter().sum::<u64>() == self.requests
            && self.answered_by == self.per_worker
    }
}

/// `n / d`, undefined for `d == 0`.
pub fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// Max count over min count: 1.0 is even, infinity means some worker got nothing; `None` with
/// no workers or no connections.
pub fn max_min_share(counts: &[u64]) -> Option<f64> {
    let max = *counts.iter().max()?;
    let min = *counts.iter().min()?;
    match (max, min) {
        (0, _) => None,
        (_, 0) => Some(f64::INFINITY),
        (max, min) => Some(max as f64 / min as f64),
    }
}

/// Each count as a percentage of the total (all zero if the total is).
pub fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts.iter().map(|&n| if total == 0 { 0.0 } else { 100.0 * n as f64 / total as f64 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(per_worker: &[u64]) -> Figures {
        let requests = per_worker.iter().sum();
        Figures {
            requests,
            per_worker: per_worker.to_vec(),
            answered_by: per_worker.to_vec(),
            worker_switches: 3 * requests,
            epoll_returns: requests + 2,
            cpu_primary_s: 0.5,
            cpu_workers_s: 1.5,
            syscalls_primary: requests / 2,
            syscalls_workers: 2 * requests,
            ..Figures::default()
        }
    }

    #[test]
    fn wakeups_are_per_connection() {
        let f = figures(&[250, 250, 250, 250]);
        assert_eq!(f.wakeups_per_accept(), Some(3.0));
        assert_eq!(f.epoll_returns_per_accept(), Some(1.002));
        assert_eq!(figures(&[0, 0]).wakeups_per_accept(), None);
    }

    #[test]
    fn fairness_reuses_jain() {
        assert_eq!(figures(&[5, 5, 5, 5]).jain(), Some(1.0));
        assert_eq!(figures(&[8, 0, 0, 0]).jain(), Some(0.25));
        assert_eq!(figures(&[1, 2, 3]).jain(), load::jain(&[1, 2, 3]));
    }

    #[test]
    fn max_min_share_shows_the_worst_pair() {
        assert_eq!(max_min_share(&[10, 20, 40]), Some(4.0));
        assert_eq!(max_min_share(&[3, 0]), Some(f64::INFINITY));
        assert_eq!(max_min_share(&[0, 0]), None);
        assert_eq!(max_min_share(&[]), None);
    }

    #[test]
    fn shares_are_percentages() {
        assert_eq!(shares(&[1, 3]), [25.0, 75.0]);
        assert_eq!(shares(&[0, 0]), [0.0, 0.0]);
    }

    #[test]
    fn cpu_per_request_counts_primary_and_workers() {
        let f = figures(&[1000, 1000]);
        assert_eq!(f.cpu_us_per_request(), Some(1000.0));
        assert_eq!(figures(&[]).cpu_us_per_request(), None);
    }

    #[test]
    fn syscalls_are_per_connection() {
        let f = figures(&[300, 100]);
        assert_eq!(f.syscalls_per_conn(), Some(2.5));
        assert_eq!(f.primary_syscalls_per_conn(), Some(0.5));
        let none = figures(&[0, 0]);
        assert_eq!((none.syscalls_per_conn(), none.primary_syscalls_per_conn()), (None, None));
    }

    #[test]
    fn consistency_needs_every_count_to_agree() {
        assert!(figures(&[3, 4]).consistent());
        let mut f = figures(&[3, 4]);
        f.requests = 8;
        assert!(!f.consistent(), "a request the server never counted");
        let mut f = figures(&[3, 4]);
        f.answered_by = vec![4, 3];
        assert!(!f.consistent(), "bodies name other workers than the counters");
    }
}

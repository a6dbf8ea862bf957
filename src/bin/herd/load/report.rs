//! The result of a run: [`LoadReport`], as a human table ([`fmt::Display`]) or one JSON object.
//!
//! Only 2xx responses count as requests: their latencies fill the histogram and their
//! `worker <id>` bodies fill the distribution. Everything else is an error, by kind. Requests
//! still in flight when the duration ends are neither.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use super::config::Mode;
use super::fairness::{busiest_and_idlest, jain};
use super::stats::Errors;
use crate::cli::json_number;

/// Everything a run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// The target URL, as given.
    pub url: String,
    pub mode: Mode,
    pub connections: usize,
    pub threads: usize,
    /// Successful (2xx) responses.
    pub requests: u64,
    pub errors: Errors,
    /// From the start of the run until the last thread stopped.
    pub elapsed: Duration,
    /// Latency of successful responses, in µs.
    pub latency_us: Histogram<u64>,
    /// Latency of the successful responses that were not slow on purpose, in µs.
    pub fast_latency_us: Histogram<u64>,
    /// Successful responses to slow requests (`--slow-fraction`).
    pub slow_requests: u64,
    /// Successful responses by the worker id their body named.
    pub workers: BTreeMap<usize, u64>,
    /// Connections by the worker that answered their first request.
    pub connections_per_worker: BTreeMap<usize, u64>,
    /// The server's worker count, if known; ids below it appear in reports even with no requests.
    pub expected_workers: Option<usize>,
    /// The stalled worker (`--stall-ms`), if one was asked for.
    pub stall: Option<StallReport>,
}

/// The stalled worker's request: whom it held, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallOutcome {
    /// The worker that answered it (and was blocked).
    pub worker: Option<usize>,
    /// How long it took.
    pub took: Duration,
}

/// What `--stall-ms` asked for and what happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallReport {
    /// How long the stall blocked its worker, in ms.
    pub ms: u64,
    /// `None` if the stall request failed or the run ended before it was due.
    pub outcome: Option<StallOutcome>,
}

/// Latency percentiles in µs; all zero when nothing was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// Reads the percentiles off a histogram.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles { p50: 0, p90: 0, p99: 0, p999: 0, max: 0 };
        }
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

impl LoadReport {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.requests as f64 / secs } else { 0.0 }
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.latency_us)
    }

    /// Requests per worker id, indexed by id, with zeros for ids that got none.
    pub fn per_worker(&self) -> Vec<u64> {
        let len = self.workers.keys().next_back().map_or(0, |&id| id + 1).max(self.expected_workers.unwrap_or(0));
        let mut counts = vec![0; len];
        for (&id, &n) in &self.workers {
            counts[id] = n;
        }
        counts
    }

    /// Jain's fairness index over [`LoadReport::per_worker`].
    pub fn jain(&self) -> Option<f64> {
        jain(&self.per_worker())
    }

    /// Connections per worker id (the worker that answered each one's first request).
    pub fn connections_per_worker(&self) -> Vec<u64> {
        let len = self.per_worker().len();
        let mut counts = vec![0; len.max(self.connections_per_worker.keys().next_back().map_or(0, |&id| id + 1))];
        for (&id, &n) in &self.connections_per_worker {
            counts[id] = n;
        }
        counts
    }

    /// The largest count over the smallest (infinite if a worker got none).
    pub fn max_over_min(counts: &[u64]) -> Option<f64> {
        let (max, min) = (counts.iter().max()?, counts.iter().min()?);
        (*max > 0).then(|| if *min == 0 { f64::INFINITY } else { *max as f64 / *min as f64 })
    }

    /// Fast requests (not slow on purpose) that took at least half the stall: those that
    /// waited behind the stalled worker.
    pub fn waited_behind_stall(&self) -> Option<u64> {
        let stall = self.stall?;
        let threshold = stall.ms * 1000 / 2;
        Some(self.fast_latency_us.count_between(threshold.max(1), u64::MAX))
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        let p = self.percentiles();
        let fast = Percentiles::of(&self.fast_latency_us);
        let errors: Map<String, Value> =
            self.errors.by_kind().into_iter().map(|(name, n)| (name.to_owned(), n.into())).collect();
        json!({
            "url": self.url,
            "mode": self.mode.to_string(),
            "connections": self.connections,
            "threads": self.threads,
            "requests": self.requests,
            "errors": errors,
            "elapsed_s": json_number(self.elapsed.as_secs_f64(), 6),
            "rps": json_number(self.rps(), 3),
            "p50_us": p.p50,
            "p90_us": p.p90,
            "p99_us": p.p99,
            "p999_us": p.p999,
            "max_us": p.max,
            "per_worker": self.per_worker(),
            "jain": self.jain().map(|j| json_number(j, 6)),
            "max_min": LoadReport::max_over_min(&self.per_worker()).map(|r| json_number(r, 3)),
            "per_worker_connections": self.connections_per_worker(),
            "connection_jain": jain(&self.connections_per_worker()).map(|j| json_number(j, 6)),
            "slow_requests": self.slow_requests,
            "fast_p50_us": fast.p50,
            "fast_p99_us": fast.p99,
            "fast_p999_us": fast.p999,
            "fast_max_us": fast.max,
            "stall": self.stall.map(|s| json!({
                "ms": s.ms,
                "worker": s.outcome.and_then(|o| o.worker),
                "took_ms": s.outcome.map(|o| json_number(o.took.as_secs_f64() * 1000.0, 1)),
                "waited": self.waited_behind_stall(),
            })),
        })
        .to_string()
    }
}

/// The width of the longest distribution bar.
const BAR: u64 = 40;

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "herd load {} ({}, {} connections, {} threads)",
            self.url, self.mode, self.connections, self.threads
        )?;
        writeln!(f)?;
        let secs = self.elapsed.as_secs_f64();
        writeln!(f, "  requests  {:>10}   in {secs:.2} s = {:.1} req/s", self.requests, self.rps())?;
        write!(f, "  errors    {:>10}  ", self.errors.total())?;
        for (name, n) in self.errors.by_kind() {
            write!(f, " {name} {n}")?;
        }
        writeln!(f)?;
        for (cause, n) in &self.errors.other_causes {
            writeln!(f, "  {:>22} other: {cause}", n)?;
        }
        let p = self.percentiles();
        writeln!(f)?;
        writeln!(f, "  latency µs {:>9} {:>9} {:>9} {:>9} {:>9}", "p50", "p90", "p99", "p99.9", "max")?;
        writeln!(f, "             {:>9} {:>9} {:>9} {:>9} {:>9}", p.p50, p.p90, p.p99, p.p999, p.max)?;
        if self.slow_requests > 0 || self.stall.is_some() {
            let q = Percentiles::of(&self.fast_latency_us);
            writeln!(f, "  fast only  {:>9} {:>9} {:>9} {:>9} {:>9}", q.p50, q.p90, q.p99, q.p999, q.max)?;
            writeln!(f, "  ({} slow requests on purpose left out)", self.slow_requests)?;
        }
        if let Some(s) = &self.stall {
            match s.outcome {
                Some(o) => writeln!(
                    f,
                    "  stall: worker {} blocked {} ms (took {:.0} ms); {} fast requests waited at least {} ms",
                    o.worker.map_or("?".to_owned(), |w| w.to_string()),
                    s.ms,
                    o.took.as_secs_f64() * 1000.0,
                    self.waited_behind_stall().unwrap_or(0),
                    s.ms / 2
                )?,
                None => writeln!(f, "  stall: the {} ms request failed or the run ended first", s.ms)?,
            }
        }
        writeln!(f)?;
        let counts = self.per_worker();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return writeln!(f, "  per worker: no response body named a worker (`worker <id>`)");
        }
        let top = counts.iter().copied().max().unwrap_or(0).max(1);
        writeln!(f, "  worker    requests    share")?;
        for (id, &n) in counts.iter().enumerate() {
            let bar = "#".repeat((n * BAR).div_ceil(top) as usize);
            writeln!(f, "  {id:>6} {n:>11} {:>7.2}%  {bar}", share(n, total))?;
        }
        if let Some((hi, lo)) = busiest_and_idlest(&counts) {
            let (max, min) = (counts[hi], counts[lo]);
            write!(f, "  jain {:.4}   max/min share ", self.jain().unwrap_or(0.0))?;
            if min == 0 {
                write!(f, "inf")?;
            } else {
                write!(f, "{:.3}", max as f64 / min as f64)?;
            }
            writeln!(f, " (worker {hi} {:.2}%, worker {lo} {:.2}%)", share(max, total), share(min, total))?;
        }
        if self.mode == Mode::KeepAlive {
            let conns = self.connections_per_worker();
            write!(f, "  connections per worker {conns:?}")?;
            if let Some(j) = jain(&conns) {
                write!(f, "  jain {j:.4}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn share(n: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { 100.0 * n as f64 / total as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::{ErrorKind, latency_histogram};

    fn report() -> LoadReport {
        let mut latency_us = latency_histogram();
        for v in 1..=1000u64 {
            latency_us.record(v * 10).unwrap();
        }
        let mut errors = Errors::default();
        errors.add(ErrorKind::Refused);
        errors.add(ErrorKind::Other(crate::load::stats::Cause::Errno(libc::EMFILE)));
        LoadReport {
            url: "http://127.0.0.1:8080/\"q\"".into(),
            mode: Mode::Churn,
            connections: 8,
            threads: 2,
            requests: 1000,
            errors,
            elapsed: Duration::from_millis(2500),
            fast_latency_us: latency_us.clone(),
            latency_us,
            slow_requests: 0,
            workers: BTreeMap::from([(0, 600), (2, 400)]),
            connections_per_worker: BTreeMap::from([(0, 600), (2, 400)]),
            expected_workers: Some(4),
            stall: None,
        }
    }

    #[test]
    fn reports_connections_the_fast_requests_and_the_stall() {
        let mut r = report();
        r.mode = Mode::KeepAlive;
        r.connections_per_worker = BTreeMap::from([(0, 3), (1, 3), (2, 2)]);
        r.slow_requests = 10;
        r.stall = Some(StallReport {
            ms: 8,
            outcome: Some(StallOutcome { worker: Some(1), took: Duration::from_millis(9) }),
        });
        assert_eq!(r.connections_per_worker(), [3, 3, 2, 0], "idle workers show as 0");
        // Latencies 10..=10000 µs: those of at least 4 ms (half the stall) waited behind it.
        assert_eq!(r.waited_behind_stall(), Some(601));
        let json = r.to_json();
        assert!(json.contains("\"per_worker_connections\":[3,3,2,0]"), "{json}");
        assert!(json.contains("\"stall\":{\"ms\":8,\"worker\":1,\"took_ms\":9.0,\"waited\":601}"), "{json}");
        let text = r.to_string();
        assert!(text.contains("stall: worker 1 blocked 8 ms"), "{text}");
        assert!(text.contains("connections per worker [3, 3, 2, 0]"), "{text}");
        assert_eq!(LoadReport::max_over_min(&[4, 2]), Some(2.0));
        assert_eq!(LoadReport::max_over_min(&[4, 0]), Some(f64::INFINITY));
    }

    #[test]
    fn extracts_percentiles() {
        let p = report().percentiles();
        // Values 10..=10000 in steps of 10; HDR precision is 3 significant digits.
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(near(p.p50, 5000), "{p:?}");
        assert!(near(p.p90, 9000), "{p:?}");
        assert!(near(p.p99, 9900), "{p:?}");
        assert!(near(p.p999, 9990), "{p:?}");
        assert!(near(p.max, 10000), "{p:?}");
        assert_eq!(Percentiles::of(&latency_histogram()), Percentiles { p50: 0, p90: 0, p99: 0, p999: 0, max: 0 });
    }

    #[test]
    fn fills_missing_workers_with_zeros() {
        let mut r = report();
        assert_eq!(r.per_worker(), [600, 0, 400, 0]);
        r.expected_workers = None;
        assert_eq!(r.per_worker(), [600, 0, 400]);
        r.workers.clear();
        assert_eq!(r.per_worker(), Vec::<u64>::new());
        assert_eq!(r.jain(), None);
    }

    #[test]
    fn serializes_json() {
        let json = report().to_json();
        assert!(json.starts_with("{\"url\":\"http://127.0.0.1:8080/\\\"q\\\"\",\"mode\":\"churn\""), "{json}");
        assert!(json.contains(
            "\"requests\":1000,\"errors\":{\"refused\":1,\"reset\":0,\"timeout\":0,\"bad_status\":0,\"no_port\":0,\"other\":1}"
        ));
        assert!(json.contains("\"elapsed_s\":2.5,\"rps\":400.0,\"p50_us\":"), "{json}");
        assert!(json.contains("\"per_worker\":[600,0,400,0],\"jain\":0.480769,"), "{json}");
        assert!(!json.contains('\n'));
    }

    #[test]
    fn displays_a_table() {
        let text = report().to_string();
        assert!(text.contains("400.0 req/s"), "{text}");
        assert!(text.contains("refused 1"));
        assert!(text.contains("Too many open files"));
        assert!(text.contains("max/min share inf (worker 0 60.00%, worker 1 0.00%)"), "{text}");
    }
}

//! `herd bench --fairness`: the loads under which spreading connections evenly is not enough —
//! long keep-alive connections, a skewed mix of fast and slow requests, a stalled worker — on
//! each strategy that claims fairness, side by side.
//!
//! | load | what runs | what it shows |
//! |---|---|---|
//! | keep-alive | 32 connections, many requests each | Jain over requests and over connections per worker |
//! | skewed | churn, 16 in flight, 2 % of requests `/block/20` | the fast requests' p50, p99, p99.9 |
//! | stall | churn, 8 in flight, one worker blocked 1 s half a second in | the fast requests' p99 against the same load without the stall, their max, and how many waited behind the stall |
//!
//! Each load runs against a fresh `herd serve` (so no load inherits another's connections).
//!
//! On a machine with two CPUs or more, the server runs on every CPU but the first and the
//! client on the first (`sched_setaffinity`, inherited by the server's workers): which worker
//! serves how many requests is then the server's doing, not the scheduler sharing the client's
//! CPU with some workers and not others.
//!
//! On a machine with two CPUs or more, the server runs on every CPU but the first and the
//! client on the first (`sched_setaffinity`, inherited by the server's workers): which worker
//! serves how many requests is then the server's doing, not the scheduler sharing the client's
//! CPU with some workers and not others.

use std::time::Duration;

use herd::Backend;
use serde_json::json;

use super::plan::Row;
use super::server::{self, Server};
use crate::cli::json_number;
use crate::load::{self, LoadConfig, LoadReport, Percentiles};

/// The rows measured: every strategy that claims to be fair, and the plain ones they improve on.
pub const ROWS: [Row; 5] = [
    Row { mode: "shared", accept: Some("epoll-rotate") },
    Row { mode: "shared", accept: Some("epoll-balance") },
    Row { mode: "reuseport", accept: None },
    Row { mode: "handoff", accept: None },
    Row { mode: "handoff", accept: Some("least-loaded") },
];

/// Keep-alive connections.
const KEEPALIVE_CONNECTIONS: usize = 32;
/// In flight in the skewed load, the share of slow requests and how slow.
const SKEWED_CONNECTIONS: usize = 16;
const SLOW_FRACTION: f64 = 0.02;
const SLOW_MS: u64 = 20;
/// In flight in the stall load, and the stall.
const STALL_CONNECTIONS: usize = 8;
const STALL: load::Stall = load::Stall { ms: 1000, after: Duration::from_millis(500) };

/// Time for the workers to settle into their waits after reporting `listening`.
const SETTLE: Duration = Duration::from_millis(200);

/// What one row measured.
pub struct Figures {
    pub row: Row,
    pub keepalive: LoadReport,
    pub skewed: LoadReport,
    pub baseline: LoadReport,
    pub stalled: LoadReport,
}

/// The CPUs for the server and for the client, when there are at least two.
fn cpu_split() -> Option<(nix::sched::CpuSet, nix::sched::CpuSet)> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        return None;
    }
    let (mut server, mut client) = (nix::sched::CpuSet::new(), nix::sched::CpuSet::new());
    client.set(0).ok()?;
    for cpu in 1..n.min(nix::sched::CpuSet::count()) {
        server.set(cpu).ok()?;
    }
    Some((server, client))
}

/// This thread (and the threads and processes it starts from now on) on `cpus`.
fn pin(cpus: &nix::sched::CpuSet) -> Result<(), String> {
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus).map_err(|e| format!("sched_setaffinity: {e}"))
}

/// Runs one load against a fresh server for `row`: the server pinned to the server's CPUs, the
/// client to the client's (see the module docs), this thread's affinity restored after.
fn run(row: &Row, options: &server::Options, config: impl Fn(&str) -> LoadConfig) -> Result<LoadReport, String> {
    let split = cpu_split();
    let before = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    if let Some((server_cpus, _)) = &split {
        pin(server_cpus)?;
    }
    let server = Server::start(row, Backend::Epoll, options);
    if let Some((_, client_cpus)) = &split {
        pin(client_cpus)?;
    }
    let server = server?;
    std::thread::sleep(SETTLE);
    let mut cfg = config(&format!("http://127.0.0.1:{}/", server.port));
    if split.is_some() {
        cfg.threads = 1;
    }
    let report = load::run(&cfg).map_err(|e| format!("herd load: {e}"));
    server.stop()?;
    if let Some(cpus) = &before {
        pin(cpus)?;
    }
    report
}

fn base(url: &str, workers: usize, seconds: f64) -> LoadConfig {
    let target = load::Target::parse(url).expect("a loopback URL");
    LoadConfig { duration: Some(Duration::from_secs_f64(seconds)), workers: Some(workers), ..LoadConfig::new(target) }
}

/// Every load on `row`.
pub fn measure(row: Row, options: &server::Options, seconds: f64) -> Result<Figures, String> {
    let w = options.workers;
    let keepalive = run(&row, options, |url| LoadConfig {
        mode: load::Mode::KeepAlive,
        connections: KEEPALIVE_CONNECTIONS,
        ..base(url, w, seconds)
    })?;
    let skewed = run(&row, options, |url| LoadConfig {
        connections: SKEWED_CONNECTIONS,
        slow_fraction: SLOW_FRACTION,
        slow_ms: SLOW_MS,
        ..base(url, w, seconds)
    })?;
    let baseline = run(&row, options, |url| LoadConfig { connections: STALL_CONNECTIONS, ..base(url, w, seconds) })?;
    let stalled = run(&row, options, |url| LoadConfig {
        connections: STALL_CONNECTIONS,
        stall: Some(STALL),
        ..base(url, w, seconds.max(1.0 + STALL.after.as_secs_f64() + STALL.ms as f64 / 1000.0))
    })?;
    Ok(Figures { row, keepalive, skewed, baseline, stalled })
}

fn fast(r: &LoadReport) -> Percentiles {
    Percentiles::of(&r.fast_latency_us)
}

impl Figures {
    /// The stalled load's fast p99 over the baseline's.
    pub fn stall_ratio(&self) -> f64 {
        fast(&self.stalled).p99 as f64 / fast(&self.baseline).p99.max(1) as f64
    }

    pub fn json(&self) -> String {
        let (k, s, b, t) = (&self.keepalive, fast(&self.skewed), fast(&self.baseline), fast(&self.stalled));
        json!({
            "row": self.row.to_string(),
            "keepalive": {
                "rps": json_number(k.rps(), 1),
                "jain_requests": k.jain().map(|j| json_number(j, 4)),
                "jain_connections": load::jain(&k.connections_per_worker()).map(|j| json_number(j, 4)),
                "per_worker_requests": k.per_worker(),
                "per_worker_connections": k.connections_per_worker(),
            },
            "skewed": {"rps": json_number(self.skewed.rps(), 1), "fast_p50_us": s.p50, "fast_p99_us": s.p99, "fast_p999_us": s.p999},
            "stall": {
                "baseline_p99_us": b.p99,
                "p99_us": t.p99,
                "p99_ratio": json_number(self.stall_ratio(), 2),
                "max_us": t.max,
                "waited": self.stalled.waited_behind_stall(),
                "worker": self.stalled.stall.and_then(|s| s.outcome).and_then(|o| o.worker),
            },
        })
        .to_string()
    }
}

/// The table.
pub fn render(workers: usize, seconds: f64, rows: &[Result<Figures, (Row, String)>]) -> String {
    let mut out = format!(
        "herd bench --fairness: {workers} workers, epoll, {seconds} s per load; {}\n\
         keep-alive: {KEEPALIVE_CONNECTIONS} connections; skewed: churn, {SKEWED_CONNECTIONS} in flight, {}% of requests /block/{SLOW_MS}; \
         stall: churn, {STALL_CONNECTIONS} in flight, one worker blocked {} ms\n\n",
        if cpu_split().is_some() {
            "the server on every CPU but the first, the client on the first"
        } else {
            "one CPU: client and server share it"
        },
        SLOW_FRACTION * 100.0,
        STALL.ms
    );
    out.push_str(&format!(
        "{:<22} {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>6} {:>9} {:>6}\n",
        "row",
        "ka req/s",
        "Jain req",
        "Jain conn",
        "sk p50",
        "sk p99",
        "sk p999",
        "p99 base",
        "p99 stl",
        "ratio",
        "max µs",
        "waited"
    ));
    for r in rows {
        match r {
            Ok(f) => {
                let k = &f.keepalive;
                let (s, b, t) = (fast(&f.skewed), fast(&f.baseline), fast(&f.stalled));
                out.push_str(&format!(
                    "{:<22} {:>9.0} {:>9.4} {:>9.4} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>6.2} {:>9} {:>6}\n",
                    f.row.to_string(),
                    k.rps(),
                    k.jain().unwrap_or(0.0),
                    load::jain(&k.connections_per_worker()).unwrap_or(0.0),
                    s.p50,
                    s.p99,
                    s.p999,
                    b.p99,
                    t.p99,
                    f.stall_ratio(),
                    t.max,
                    f.stalled.waited_behind_stall().unwrap_or(0),
                ));
            }
            Err((row, e)) => out.push_str(&format!("{:<22} failed: {e}\n", row.to_string())),
        }
    }
    out.push_str(
        "\nka req/s, Jain req, Jain conn  keep-alive: requests per second, Jain's index over requests and over\n\
         \x20                              connections per worker (1 = even)\n\
         sk p50/p99/p999                skewed: the fast requests' latency, µs (the slow ones left out)\n\
         p99 base, p99 stl, ratio       the fast requests' p99 without and with the stall, µs, and their ratio\n\
         max µs, waited                 with the stall: the slowest fast request, and how many waited ≥ half the stall\n",
    );
    out
}

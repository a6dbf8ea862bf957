//! Measuring one cell: a fresh server, `/proc` samples around an in-process load, the counters.
//!
//! Each cell starts its own server so no cell inherits another's counters, connections in
//! `TIME_WAIT` or warm caches in a skewed way; a fresh server also needs no warm-up beyond a
//! short settle after its workers report listening. The load is bounded by a request count, so
//! the number of accepts the server must report is known exactly.

use std::time::Duration;

use herd::Backend;

use super::plan::{Load, Row};
use super::procstat::{self, Sample};
use super::row::{Cell, Figures};
use super::server::{self, Server};
use crate::load;

/// Time for the workers to settle into their waits after reporting `listening`.
const SETTLE: Duration = Duration::from_millis(200);

/// A bound on any one load run, in case requests keep timing out: far beyond a normal run.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

/// Runs `load` against a fresh server configured as `row`, on `backend`.
pub fn cell(row: Row, backend: Backend, load: Load, options: &server::Options) -> Cell {
    Cell { row, backend, load, workers: options.workers, outcome: figures(&row, backend, &load, options) }
}

fn figures(row: &Row, backend: Backend, load: &Load, options: &server::Options) -> Result<Figures, String> {
    let server = Server::start(row, backend, options)?;
    std::thread::sleep(SETTLE);
    let pids: Vec<u32> = std::iter::once(server.pid).chain(server.workers.iter().copied()).collect();
    let before = sample(&pids)?;
    let report = load::run(&config(server.port, load, options.workers)).map_err(|e| format!("herd load: {e}"))?;
    let after = sample(&pids)?;
    let stdout = server.stop()?;
    let counters = crate::stats_json::decode(&stdout)?;
    if counters.workers.len() != options.workers {
        return Err(format!("herd serve reported {} workers, not {}", counters.workers.len(), options.workers));
    }
    if report.requests + report.errors.total() < load.requests {
        return Err(format!(
            "the load stopped at the {} s limit after {} of {} requests",
            LOAD_LIMIT.as_secs(),
            report.requests + report.errors.total(),
            load.requests
        ));
    }
    let deltas: Vec<Sample> = before.iter().zip(&after).map(|(b, a)| b.delta(a)).collect();
    Ok(Figures::new(&report, &counters, deltas[0], &deltas[1..], procstat::clock_ticks_per_second()))
}

/// The load: churn, `load.connections` in flight, exactly `load.requests` requests.
fn config(port: u16, load: &Load, workers: usize) -> load::LoadConfig {
    let target = load::Target::parse(&format!("http://127.0.0.1:{port}/")).expect("a loopback URL");
    load::LoadConfig {
        mode: load::Mode::Churn,
        connections: load.connections,
        requests: Some(load.requests),
        duration: Some(LOAD_LIMIT),
        workers: Some(workers),
        ..load::LoadConfig::new(target)
    }
}

/// Samples every pid, in order.
fn sample(pids: &[u32]) -> Result<Vec<Sample>, String> {
    pids.iter().map(|&pid| Sample::of(pid).map_err(|e| format!("sampling pid {pid}: {e}"))).collect()
}

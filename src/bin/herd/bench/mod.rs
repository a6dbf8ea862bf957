//! `herd bench`: every distribution mode and accept strategy, under a light and a saturating
//! load, in one run and one table.
//!
//! For each cell of the matrix it starts a fresh `herd serve` (this executable) in a process
//! group of its own, samples every server process in `/proc`, runs `herd load` in-process with
//! an exact request count, samples again, stops the server and reads its counters; then it
//! derives the figures. Why each figure is what it is:
//!
//! - **Kernel wakeups** are voluntary context switches, because the kernel hides most of the
//!   herd from `epoll_wait`'s return count ([`procstat`]).
//! - **Two loads**, because busy workers rarely sleep and the herd hides under saturation
//!   ([`plan`]).
//! - **CPU µs per request**, because on a small machine the client saturates first ([`row`]).
//! - **Both accept backends**, epoll and io_uring, side by side for every row that has both,
//!   with the server's own count of its hot-path system calls ([`plan`], [`row`]).
//!
//! | module      | concept                                                    |
//! |-------------|------------------------------------------------------------|
//! | this one    | the command line, and running the matrix                   |
//! | [`plan`]    | rows, backends and loads: what the matrix is               |
//! | [`server`]  | starting, watching and stopping one `herd serve`           |
//! | [`procstat`]| `/proc` samples: context switches and CPU time             |
//! | [`counters`]| reading the server's `--stats json` counters               |
//! | [`measure`] | one cell: server, samples, load, counters                  |
//! | [`row`]     | one cell's figures and the computations on them            |
//! | [`ratios`]  | the ratios the run answers, against their targets          |
//! | [`table`]   | the human table and distribution charts                    |
//! | [`json`]    | JSON lines and CSV                                         |
//! | [`svg`]     | the distribution charts as an SVG                          |

mod fairness;
mod json;
mod measure;
mod plan;
mod procstat;
mod ratios;
mod row;
mod server;
mod svg;
mod table;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use herd::Backend;
use plan::{Load, LoadKind, Row};
use row::Cell;

use crate::cli;

const HELP: &str = "\
herd bench — run every mode and accept strategy on each accept backend under a light and a
saturating load, and compare wakeups, fairness, latency, throughput, CPU and system calls in
one table

Each row (shared/epoll, shared/epoll-exclusive, shared/epoll-rotate, shared/blocking,
shared/epoll-balance, handoff, handoff/least-loaded,
reuseport) runs on each backend and under each load against a fresh `herd serve --backend B
--listen 127.0.0.1:0 --stats json` with an in-process `herd load` (churn: a new connection per
request). Backends: epoll (readiness, then accept4 per connection) and io-uring (a multishot
accept; in handoff mode the primary also sends and closes through its ring); shared/epoll and
shared/blocking have no io_uring form and run on epoll only. Where io_uring cannot run, its
cells are skipped and a line says why. Loads:
  light       1 request in flight: workers sleep between connections, so the thundering herd
              shows (every idle worker woken per connection)
  saturating  64 requests in flight: workers are busy, the herd hides; throughput, latency,
              CPU and fairness under load show instead
Each load is bounded by a request count, so the server's accepts must equal the requests.

Usage: herd bench [OPTIONS]

Options:
  -w, --workers N                worker processes per server [default: 4]
      --quick                    a tenth of the requests (about 15 s for the matrix instead of 100 s)
      --fairness                 instead of the matrix, the fairness loads (docs/fairness.md) on
                                 shared/epoll-rotate, shared/epoll-balance, reuseport, handoff and
                                 handoff/least-loaded: keep-alive (32 connections; Jain over
                                 requests and over connections), skewed (2% of requests block
                                 20 ms; the fast ones' p50/p99/p99.9) and a stalled worker (one
                                 blocked 1 s; the fast p99 against the same load without it, the
                                 max, how many waited behind it); with --json, a line per row.
                                 With two CPUs or more the server runs on all but the first
                                 and the client on the first
      --fairness-seconds SECS    how long each fairness load runs [default: 3; 1 with --quick]
      --rows LIST                comma-separated subset of rows, e.g. shared/epoll,handoff
      --backends LIST            epoll, io-uring or both [default: epoll,io-uring]
      --loads LIST               light, saturating or both [default: light,saturating]
  -n, --requests N               requests per row under the saturating load [default: 200000]
      --light-requests N         requests per row under the light load [default: 20000]
      --saturating-connections N requests in flight under the saturating load [default: 64]
      --no-defer-accept          do not pass --defer-accept to the server (see below)
      --json                     one JSON object per line and cell instead of the table
      --csv                      CSV with a header row instead of the table
      --svg FILE                 also write the per-worker distribution charts as an SVG
  -q, --quiet                    no progress lines on stderr
  -h, --help                     print this help

By default the server runs with --defer-accept (TCP_DEFER_ACCEPT): a connection is accepted
only once its request has arrived, so a worker wakes once per connection and the wakeups per
accept count accept wakeups only. Without it a worker also sleeps once more, waiting for the
request, and every figure includes that second wakeup.

Columns:
  req/s       successful requests per second, as the client saw them
  p50, p99    latency percentiles in µs (connect to response)
  kwake/acc   kernel wakeups per accept: the workers' voluntary context switches during the
              load (/proc/PID/task/*/status) per connection; the thundering herd shows here
  uwake/acc   user-space wakeups per accept: epoll_wait (or blocking accept) returns for the
              accept source per connection; the kernel re-polls and puts herd losers back to
              sleep, so this stays near 1 even when every worker woke
  EAGAIN      accept calls that found nothing
  Jain        Jain's fairness index over connections per worker, (Σx)²/(N·Σx²): 1 is even,
              1/N means one worker took everything
  max/min     the busiest worker's connections over the idlest's (inf: a worker got none)
  CPU pri s   CPU seconds (user + system) of the primary during the load
  CPU wrk s   CPU seconds of all workers during the load
  µs/req      server CPU (primary + workers) per request: the fair efficiency figure when
              the client, not the server, saturates the machine
  sys/conn    the server's hot-path system calls (accept4, epoll_wait, epoll_ctl,
              io_uring_enter, sendmsg, recvmsg, eventfd reads and writes, the primary's close
              of each handed-off descriptor on epoll) per connection, by its own exact counts.
              They cover the server's whole life: start-up and shutdown add a few dozen calls,
              negligible against the thousands of connections of a run
  pri sys/c   the same for the primary alone: what handing connections on costs it
  fail        failed requests of any kind (refused, reset, timeout, bad status, ...)
--json keys: mode, accept, backend, workers, load, connections, defer_accept, requests,
failures, rps, p50_us, p99_us, wakeups_per_accept, epoll_returns_per_accept, eagains, jain,
max_min_share, per_worker, cpu_primary_s, cpu_workers_s, cpu_us_per_request,
syscalls_per_conn, primary_syscalls_per_conn, worker_switches, primary_switches,
epoll_returns, syscalls_primary, syscalls_workers, consistent, error. --csv has the same
columns.

Under the table, ratios from the run's cells, each with its target (met or not met):
handoff ÷ reuseport µs/req per backend and load (≤ 1.2 saturating, ≤ 2 light), io-uring ÷
epoll reuseport µs/req per load (≤ 1), and handoff's primary system calls per connection per
backend and load (≤ 0.25 on io-uring, saturating). CPU time comes in 10 ms clock ticks: a
ratio resting on less than 0.2 s of CPU in a cell (light loads with --quick) says it is rough.

Exit status: 0 if every cell ran with no failed request and consistent counts (server
connections == requests answered, per worker), 1 otherwise (or if no cell could run), 2 on bad
usage.
";

/// Requests per row by default; `--quick` divides them by [`QUICK_DIVISOR`].
const LIGHT_REQUESTS: u64 = 20_000;
const SATURATING_REQUESTS: u64 = 200_000;
const QUICK_DIVISOR: u64 = 10;

/// What the table, JSON and SVG say about the run as a whole.
#[derive(Clone, Debug)]
pub struct Run {
    pub workers: usize,
    pub defer_accept: bool,
    pub loads: Vec<Load>,
    /// What the run could not measure as asked, one line each (shown under the header).
    pub notes: Vec<String>,
    pub nproc: usize,
    pub kernel: String,
    pub date: String,
}

impl Run {
    /// `herd bench: 4 workers, TCP_DEFER_ACCEPT on; 2 CPUs, Linux 6.18; 2026-11-21`.
    pub fn header(&self) -> String {
        format!(
            "herd bench: {} workers, TCP_DEFER_ACCEPT {}; machine: {} CPUs, Linux {}; {}",
            self.workers,
            if self.defer_accept { "on" } else { "off" },
            self.nproc,
            self.kernel,
            self.date
        )
    }

    /// What each load is: `churn; light: 1 in flight × 4000 requests; ...`.
    pub fn loads_line(&self) -> String {
        let loads: Vec<String> = self
            .loads
            .iter()
            .map(|l| format!("{}: {} in flight × {} requests", l.kind.as_str(), l.connections, l.requests))
            .collect();
        format!("churn (a new connection per request); {}", loads.join("; "))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
    Csv,
}

struct Args {
    /// `--fairness`: the fairness loads instead of the matrix, this many seconds each.
    fairness: Option<f64>,
    workers: usize,
    rows: Vec<Row>,
    backends: Vec<Backend>,
    loads: Vec<Load>,
    defer_accept: bool,
    output: Output,
    svg: Option<PathBuf>,
    quiet: bool,
}

fn parse_args(mut parser: lexopt::Parser) -> Result<Option<Args>, String> {
    use lexopt::Arg::{Long, Short};
    let mut workers = 4;
    let mut quick = false;
    let mut rows = plan::ROWS.to_vec();
    let mut backends = Backend::ALL.to_vec();
    let mut kinds = vec![LoadKind::Light, LoadKind::Saturating];
    let mut light = None;
    let mut saturating = None;
    let mut connections = 64;
    let mut defer_accept = true;
    let mut output = Output::Table;
    let mut svg = None;
    let mut quiet = false;
    let mut fairness = false;
    let mut fairness_seconds = None;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("fairness") => fairness = true,
            Long("fairness-seconds") => {
                fairness_seconds = Some(ranged(&mut parser, "--fairness-seconds", 1, 3600)? as f64)
            }
            Short('w') | Long("workers") => workers = ranged(&mut parser, "--workers", 1, 1024)?,
            Long("quick") => quick = true,
            Long("rows") => rows = plan::parse_rows(&cli::parse::<String>(&mut parser, "--rows")?)?,
            Long("backends") => backends = plan::parse_backends(&cli::parse::<String>(&mut parser, "--backends")?)?,
            Long("loads") => kinds = plan::parse_loads(&cli::parse::<String>(&mut parser, "--loads")?)?,
            Short('n') | Long("requests") => saturating = Some(ranged(&mut parser, "--requests", 1, 100_000_000)?),
            Long("light-requests") => light = Some(ranged(&mut parser, "--light-requests", 1, 100_000_000)?),
            Long("saturating-connections") => {
                connections = ranged(&mut parser, "--saturating-connections", 1, 100_000)? as usize
            }
            Long("no-defer-accept") => defer_accept = false,
            Long("json") => output = exclusive(output, Output::Json)?,
            Long("csv") => output = exclusive(output, Output::Csv)?,
            Long("svg") => svg = Some(cli::parse::<PathBuf>(&mut parser, "--svg")?),
            Short('q') | Long("quiet") => quiet = true,
            Short('h') | Long("help") => return Ok(None),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let scaled = |n: u64| if quick { n.div_ceil(QUICK_DIVISOR) } else { n };
    let loads = kinds
        .into_iter()
        .map(|kind| match kind {
            LoadKind::Light => Load { kind, connections: 1, requests: light.unwrap_or(scaled(LIGHT_REQUESTS)) },
            LoadKind::Saturating => {
                Load { kind, connections, requests: saturating.unwrap_or(scaled(SATURATING_REQUESTS)) }
            }
        })
        .collect();
    let fairness = fairness.then(|| fairness_seconds.unwrap_or(if quick { 1.0 } else { 3.0 }));
    Ok(Some(Args { fairness, workers: workers as usize, rows, backends, loads, defer_accept, output, svg, quiet }))
}

/// An integer option in `min..=max`.
fn ranged(parser: &mut lexopt::Parser, option: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = cli::parse(parser, option)?;
    if (min..=max).contains(&n) { Ok(n) } else { Err(format!("{option} {n}: expected {min} to {max}")) }
}

/// `--json` and `--csv` exclude each other.
fn exclusive(current: Output, wanted: Output) -> Result<Output, String> {
    if current == Output::Table || current == wanted {
        Ok(wanted)
    } else {
        Err("--json and --csv exclude each other".into())
    }
}

/// Entry point of `herd bench`; `parser` is positioned just after the `bench` word.
pub fn main(parser: lexopt::Parser) -> ExitCode {
    let mut args = match cli::arguments("bench", HELP, parse_args(parser)) {
        Ok(args) => args,
        Err(code) => return code,
    };
    if let Some(seconds) = args.fairness {
        return run_fairness(&args, seconds);
    }
    let probe = if args.backends.contains(&Backend::IoUring) { Backend::IoUring.available() } else { Ok(()) };
    let (backends, unavailable) = plan::usable_backends(&args.backends, probe);
    let mut notes: Vec<String> = plan::epoll_only_note(&args.rows, &args.backends).into_iter().collect();
    if let Some(line) = unavailable {
        // Even with --quiet: it changes what was measured.
        eprintln!("{line}");
        notes.push(line);
    }
    args.backends = backends;
    let run = Run {
        workers: args.workers,
        defer_accept: args.defer_accept,
        loads: args.loads.clone(),
        notes,
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |k| k.trim().into()),
        date: crate::timestamp::now()[..10].to_owned(),
    };
    let cells = run_matrix(&args, &run);
    if args.output == Output::Table {
        print_or_fail(&table::render(&run, &cells));
    }
    if let Some(path) = &args.svg {
        if let Err(e) = std::fs::write(path, svg::render(&run, &cells)) {
            eprintln!("herd bench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if cells.is_empty() {
        // Every row asked for lacks a form on every backend left (the lines above say why).
        eprintln!("herd bench: nothing was measured: no row asked for runs on the backends left");
        return ExitCode::FAILURE;
    }
    if cells.iter().any(Cell::failed) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Measures every (row, backend, load), in table order, printing progress and streaming
/// JSON/CSV lines.
fn run_matrix(args: &Args, run: &Run) -> Vec<Cell> {
    let options = server::Options { workers: args.workers, defer_accept: args.defer_accept };
    if args.output == Output::Csv {
        print_or_fail(&format!("{}\n", json::csv_header()));
    }
    let plan = plan::cells(&args.rows, &args.backends, &args.loads);
    let mut cells = Vec::with_capacity(plan.len());
    for (i, &(row, backend, load)) in plan.iter().enumerate() {
        if !args.quiet {
            eprint!("[{}/{}] {row} · {backend}, {load} ... ", i + 1, plan.len());
        }
        let cell = measure::cell(row, backend, load, &options);
        if !args.quiet {
            eprintln!("{}", progress(&cell));
        }
        match args.output {
            Output::Json => print_or_fail(&format!("{}\n", json::json_line(&cell, run.defer_accept))),
            Output::Csv => print_or_fail(&format!("{}\n", json::csv_line(&cell, run.defer_accept))),
            Output::Table => {}
        }
        cells.push(cell);
    }
    cells
}

/// `--fairness`: every fairness row under every fairness load.
fn run_fairness(args: &Args, seconds: f64) -> ExitCode {
    let options = server::Options { workers: args.workers, defer_accept: args.defer_accept };
    let mut rows = Vec::new();
    for row in fairness::ROWS {
        if !args.quiet {
            eprint!("{row}: keep-alive, skewed, stall ... ");
        }
        let measured = fairness::measure(row, &options, seconds);
        if !args.quiet {
            match &measured {
                Ok(f) => eprintln!(
                    "Jain {:.4} / {:.4}, stall p99 ×{:.2}",
                    f.keepalive.jain().unwrap_or(0.0),
                    crate::load::jain(&f.keepalive.connections_per_worker()).unwrap_or(0.0),
                    f.stall_ratio()
                ),
                Err(e) => eprintln!("failed: {e}"),
            }
        }
        if let (Output::Json, Ok(f)) = (args.output, &measured) {
            print_or_fail(&format!("{}\n", f.json()));
        }
        rows.push(measured.map_err(|e| (row, e)));
    }
    if args.output == Output::Table {
        print_or_fail(&fairness::render(args.workers, seconds, &rows));
    }
    if rows.iter().any(Result::is_err) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The end of a progress line: the headline figures, or why the cell failed.
fn progress(cell: &Cell) -> String {
    match &cell.outcome {
        Ok(f) => format!(
            "{:.0} req/s, {:.2} wakeups/accept, Jain {:.4}, {:.2} syscalls/conn{}{}",
            f.rps,
            f.wakeups_per_accept().unwrap_or(0.0),
            f.jain().unwrap_or(0.0),
            f.syscalls_per_conn().unwrap_or(0.0),
            if f.failures > 0 { format!(", {} FAILED requests", f.failures) } else { String::new() },
            if f.consistent() { "" } else { ", INCONSISTENT counts" }
        ),
        Err(e) => format!("FAILED: {e}"),
    }
}

/// Writes to stdout; a closed stdout (`| head`) ends the run quietly rather than panicking.
fn print_or_fail(text: &str) {
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(lexopt::Parser::from_args(args.iter().copied()))
    }

    #[test]
    fn defaults_run_the_whole_matrix() {
        let a = parse(&[]).unwrap().unwrap();
        assert_eq!((a.workers, a.rows.len(), a.defer_accept, a.output), (4, 8, true, Output::Table));
        assert_eq!(a.backends, Backend::ALL);
        assert_eq!(
            a.loads,
            [
                Load { kind: LoadKind::Light, connections: 1, requests: LIGHT_REQUESTS },
                Load { kind: LoadKind::Saturating, connections: 64, requests: SATURATING_REQUESTS },
            ]
        );
    }

    #[test]
    fn parses_every_flag() {
        let a = parse(&[
            "-w",
            "8",
            "--quick",
            "--rows",
            "handoff,shared/epoll",
            "--backends",
            "io-uring",
            "--loads",
            "saturating",
            "--saturating-connections",
            "16",
            "--no-defer-accept",
            "--csv",
            "--svg",
            "out.svg",
            "-q",
        ])
        .unwrap()
        .unwrap();
        assert_eq!((a.workers, a.defer_accept, a.output, a.quiet), (8, false, Output::Csv, true));
        assert_eq!(a.rows, [plan::ROWS[0], plan::ROWS[4]]);
        assert_eq!(a.backends, [Backend::IoUring]);
        let want =
            Load { kind: LoadKind::Saturating, connections: 16, requests: SATURATING_REQUESTS.div_ceil(QUICK_DIVISOR) };
        assert_eq!(a.loads, [want]);
        assert_eq!(a.svg, Some(PathBuf::from("out.svg")));
        let a = parse(&["--quick", "-n", "10", "--light-requests", "3"]).unwrap().unwrap();
        assert_eq!(a.loads.iter().map(|l| l.requests).collect::<Vec<_>>(), [3, 10]);
    }

    #[test]
    fn bad_arguments_are_one_line() {
        assert!(parse(&["--help"]).unwrap().is_none());
        for bad in [
            &["--workers", "0"][..],
            &["--workers", "x"],
            &["--rows", "shared"],
            &["--loads", "heavy"],
            &["--backends", "uring"],
            &["--backends", ","],
            &["--json", "--csv"],
            &["--requests", "0"],
            &["--bogus"],
            &["extra"],
        ] {
            let err = parse(bad).err().unwrap_or_else(|| panic!("{bad:?} should fail"));
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn help_explains_every_flag_and_column() {
        for word in [
            "--workers",
            "--quick",
            "--rows",
            "--backends",
            "--loads",
            "--requests",
            "--light-requests",
            "--saturating-connections",
            "--no-defer-accept",
            "--json",
            "--csv",
            "--svg",
            "kwake/acc",
            "uwake/acc",
            "EAGAIN",
            "Jain",
            "max/min",
            "µs/req",
            "sys/conn",
            "pri sys/c",
            "whole life",
        ] {
            assert!(HELP.contains(word), "help mentions {word}");
        }
        let keys = HELP.split("--json keys:").nth(1).unwrap().split(". --csv").next().unwrap().replace('\n', " ");
        let listed: Vec<&str> = keys.split(',').map(str::trim).collect();
        assert_eq!(listed.join(","), json::csv_header(), "--json keys lists every key, in order");
    }
}

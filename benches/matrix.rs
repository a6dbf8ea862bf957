//! The whole `herd bench` matrix, repeated: the median of R runs and how far they spread.
//!
//! One `herd bench` run measures every mode and accept strategy under a light and a saturating
//! load, once. On a small shared machine one run is noisy — a neighbour's compile, a timer tick
//! landing on the wrong core — so a difference of 10 % between two rows can be luck. This bench
//! runs `herd bench --json` R times (3 by default), groups the result lines by
//! `(mode, accept, backend, load)` and prints, per group, the median of each figure and the spread of
//! requests/s, `(max - min) / median`: a difference between rows smaller than their spread is
//! not a finding. Medians rather than means, because one disturbed run should not move the
//! figure.
//!
//! The columns: requests/s (median, min–max, spread), p50 and p99 latency in µs, kernel wakeups
//! (`kwake/acc`: the workers' voluntary context switches) and user-space wakeups (`uwake/acc`:
//! `epoll_wait` returns) per accepted connection — the herd shows in the first, not the second —
//! Jain's fairness index over the workers, server CPU µs per request, the server's hot-path
//! system calls per connection (`sys/conn`), and the failed requests summed over all runs.
//! Every figure but `fail` is the median over the runs.
//!
//! ```text
//! cargo bench --bench matrix                          # 3 full runs
//! cargo bench --bench matrix -- --quick --repeat 5    # 5 quick runs
//! cargo bench --bench matrix -- --workers 8 --rows handoff,reuseport --loads light
//! cargo bench --bench matrix -- --backends io-uring --rows reuseport
//! cargo bench --bench matrix -- --self-test           # check the statistics and the table
//! ```
//!
//! `--quick` (or `HERD_BENCH_QUICK=1`), `--workers N`, `--rows LIST`, `--backends LIST`,
//! `--loads LIST`, `--requests N`, `--light-requests N`, `--saturating-connections N` and
//! `--no-defer-accept` are passed to `herd bench`. `--timeout SECS` bounds each run (default
//! 600, or 300 with `--quick`; a run of the 12 epoll cells took 14 s, or 5 s quick, on the
//! project's 2-core machine with 4 workers, and io-uring adds 8 cells): past it the run's whole
//! process tree is stopped (SIGTERM, then SIGKILL) and the run counts as failed. Other arguments
//! (cargo passes `--bench`) are ignored.
//!
//! With `harness = false`, `#[test]` functions are never compiled, so the checks are ordinary
//! functions in [`self_test`], run by `--self-test` and whenever the bench runs without
//! `--bench` — which is how `cargo test --all-targets` runs it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use serde_json::{Map, Value};

/// One result line of `herd bench --json`.
type Object = Map<String, Value>;

/// A value as a table cell: strings bare, null as `-`.
fn label(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The median: the middle value, or the mean of the two middle ones; `None` for no values.
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().min_by(f64::total_cmp)?;
    let max = values.iter().copied().max_by(f64::total_cmp)?;
    Some((min, max))
}

/// The relative spread `(max - min) / median`; `None` without values or with a zero median.
fn spread(values: &[f64]) -> Option<f64> {
    let (min, max) = min_max(values)?;
    let m = median(values)?;
    (m != 0.0).then(|| (max - min) / m)
}

/// The keys every result line must have.
const KEYS: [&str; 13] = [
    "mode",
    "accept",
    "backend",
    "load",
    "rps",
    "p50_us",
    "p99_us",
    "wakeups_per_accept",
    "epoll_returns_per_accept",
    "jain",
    "cpu_us_per_request",
    "syscalls_per_conn",
    "failures",
];

/// A group: mode, accept strategy, backend and load, as the table shows them.
type Key = (String, String, String, String);

/// The result lines of all runs, grouped by `(mode, accept, backend, load)` in order of first
/// appearance.
#[derive(Debug, Default)]
struct Groups {
    keys: Vec<Key>,
    runs: HashMap<Key, Vec<Object>>,
}

impl Groups {
    /// Adds one result line; returns the expected keys it lacks (it is added anyway, if it has
    /// a mode and a load).
    fn add(&mut self, object: Object) -> Result<Vec<&'static str>, String> {
        let missing: Vec<&str> = KEYS.into_iter().filter(|k| !object.contains_key(*k)).collect();
        let label = |k| object.get(k).map(label);
        let (Some(mode), Some(load)) = (label("mode"), label("load")) else {
            return Err("a line without \"mode\" or \"load\"".to_owned());
        };
        let or_dash = |k| label(k).unwrap_or_else(|| "-".to_owned());
        let key = (mode, or_dash("accept"), or_dash("backend"), load);
        if !self.runs.contains_key(&key) {
            self.keys.push(key.clone());
        }
        self.runs.entry(key).or_default().push(object);
        Ok(missing)
    }

    /// The numbers one key takes over a group's runs (nulls and missing keys left out).
    fn column(runs: &[Object], key: &str) -> Vec<f64> {
        runs.iter().filter_map(|o| o.get(key).and_then(Value::as_f64)).collect()
    }

    fn table(&self) -> String {
        let mut out = row(COLUMNS.map(|(name, _)| name.to_owned()));
        for key in &self.keys {
            let runs = &self.runs[key];
            let col = |k: &str| Groups::column(runs, k);
            let med = |k: &str, decimals: usize| cell(median(&col(k)), decimals);
            let rps = col("rps");
            let failures = col("failures");
            out += &row([
                key.0.clone(),
                key.1.clone(),
                key.2.clone(),
                key.3.clone(),
                runs.len().to_string(),
                med("rps", 0),
                min_max(&rps).map_or("-".to_owned(), |(lo, hi)| format!("{lo:.0}-{hi:.0}")),
                spread(&rps).map_or("-".to_owned(), |s| format!("{:.1}%", s * 100.0)),
                med("p50_us", 0),
                med("p99_us", 0),
                med("wakeups_per_accept", 2),
                med("epoll_returns_per_accept", 2),
                med("jain", 3),
                med("cpu_us_per_request", 1),
                med("syscalls_per_conn", 2),
                if failures.is_empty() { "-".to_owned() } else { failures.iter().sum::<f64>().to_string() },
            ]);
        }
        out
    }
}

/// The table's columns and their widths (negative: left-aligned). `kwake` are kernel wakeups
/// (voluntary context switches), `uwake` user-space ones (`epoll_wait` returns), `sys/conn`
/// the server's hot-path system calls per connection, as in herd bench's own table.
const COLUMNS: [(&str, isize); 16] = [
    ("mode", -9),
    ("accept", -15),
    ("backend", -8),
    ("load", -10),
    ("runs", 4),
    ("req/s", 7),
    ("min-max", 13),
    ("spread", 6),
    ("p50 us", 7),
    ("p99 us", 7),
    ("kwake/acc", 9),
    ("uwake/acc", 9),
    ("Jain", 6),
    ("us/req", 6),
    ("sys/conn", 8),
    ("fail", 5),
];

fn row(cells: [String; 16]) -> String {
    let mut line = String::new();
    for ((_, width), text) in COLUMNS.iter().zip(cells) {
        let w = width.unsigned_abs();
        if *width < 0 {
            line += &format!("{text:<w$} ");
        } else {
            line += &format!("{text:>w$} ");
        }
    }
    line.truncate(line.trim_end().len());
    line + "\n"
}

fn cell(x: Option<f64>, decimals: usize) -> String {
    x.map_or("-".to_owned(), |x| format!("{x:.decimals$}"))
}

/// What went wrong in one cell, as herd bench reports it: its `error`, or counts that disagree
/// (`"consistent": false`).
fn problem(object: &Object) -> Option<String> {
    let cell = ["mode", "accept", "backend", "load"].map(|k| object.get(k).map_or("-".to_owned(), label)).join(" ");
    match (object.get("error"), object.get("consistent")) {
        (Some(Value::String(e)), _) => Some(format!("{cell}: {e}")),
        (_, Some(Value::Bool(false))) => Some(format!("{cell}: inconsistent counts (server accepts != requests)")),
        _ => None,
    }
}

/// What one `herd bench` run printed on stdout, and how it ended.
struct RunOutput {
    objects: Vec<Object>,
    /// Why the run failed (exit status, timeout), if it did; its lines are kept all the same.
    failure: Option<String>,
}

/// Runs `herd bench --json ARGS` once, reading its stdout as it comes; past `timeout`, stops the
/// run and every process under it.
fn run_bench(args: &[String], timeout: Duration) -> Result<RunOutput, String> {
    let exe = env!("CARGO_BIN_EXE_herd");
    let mut child = Command::new(exe)
        .arg("bench")
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning {exe} bench: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut objects = Vec::new();
    let mut stdout_open = true;
    let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
    loop {
        if stdout_open {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(line)) if line.trim_start().starts_with('{') => match serde_json::from_str(&line) {
                    Ok(object) => objects.push(object),
                    Err(e) => eprintln!("matrix: skipping a line of herd bench: {e}: {line}"),
                },
                // Anything that is not a JSON object is herd bench talking to a person: pass it on.
                Ok(Ok(line)) => eprintln!("{line}"),
                Ok(Err(e)) => eprintln!("matrix: reading herd bench's stdout: {e}"),
                Err(RecvTimeoutError::Disconnected) => stdout_open = false,
                Err(RecvTimeoutError::Timeout) => {}
            }
        } else {
            thread::sleep(Duration::from_millis(100));
        }
        if exited.is_none() {
            let status = child.try_wait().map_err(|e| format!("waitpid(herd bench): {e}"))?;
            exited = status.map(|s| (s, Instant::now()));
        }
        match exited {
            // Done once stdout is closed too; a process left over from the run may hold it
            // open after herd bench has exited, so that wait is short.
            Some((status, at)) if !stdout_open || at.elapsed() > Duration::from_secs(5) => {
                let failure = (!status.success()).then(|| format!("herd bench exited with {status}"));
                return Ok(RunOutput { objects, failure });
            }
            Some(_) => {}
            None if Instant::now() > deadline => {
                stop_tree(&mut child);
                let failure = Some(format!("timed out after {} s; stopped", timeout.as_secs()));
                return Ok(RunOutput { objects, failure });
            }
            None => {}
        }
    }
}

/// Stops a run that overstayed: SIGTERM to herd bench, SIGKILL if it is still there after five
/// seconds, and SIGKILL to every process that was under it and is still alive. herd bench starts
/// each server in a process group of its own, so killing herd bench's group would not reach
/// them; the tree is taken from `/proc` before anything is killed, and each process is checked
/// by its start time before the kill, so a recycled pid is never hit.
fn stop_tree(child: &mut std::process::Child) {
    let tree = descendants(child.id());
    let pid = |raw: u32| Pid::from_raw(raw as i32).expect("a child's pid is positive");
    let _ = rustix::process::kill_process(pid(child.id()), Signal::TERM);
    let grace = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < grace {
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    for (raw, started) in tree {
        if proc_stat(raw).is_some_and(|(_, s)| s == started) {
            let _ = rustix::process::kill_process(pid(raw), Signal::KILL);
        }
    }
}

/// Every process under `root`, with its start time: `(pid, starttime)`.
fn descendants(root: u32) -> Vec<(u32, u64)> {
    let mut children: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(raw) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some((parent, started)) = proc_stat(raw) {
            children.entry(parent).or_default().push((raw, started));
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &(c, started) in children.get(&p).into_iter().flatten() {
            out.push((c, started));
            todo.push(c);
        }
    }
    out
}

/// A process's parent pid and start time, from `/proc/PID/stat` (fields 4 and 22; the command
/// name, field 2, is in parentheses and may hold spaces, so fields are counted from the last `)`).
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

struct Options {
    repeat: usize,
    quick: bool,
    /// Arguments passed to `herd bench`.
    pass: Vec<String>,
    timeout: Option<Duration>,
    self_test: bool,
}

fn options() -> Result<Options, String> {
    // Without `--bench` this runs under `cargo test`: the self-test only.
    let mut o = Options { repeat: 3, quick: false, pass: Vec::new(), timeout: None, self_test: true };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => o.self_test = false,
            "--self-test" => return Ok(Options { self_test: true, ..o }),
            "--quick" => {
                o.quick = true;
                o.pass.push(arg);
            }
            "--repeat" => {
                o.repeat = value("--repeat")?.parse().map_err(|e| format!("--repeat: {e}"))?;
                if o.repeat == 0 {
                    return Err("--repeat: at least 1".to_owned());
                }
            }
            "--timeout" => {
                let secs: u64 = value("--timeout")?.parse().map_err(|e| format!("--timeout: {e}"))?;
                o.timeout = Some(Duration::from_secs(secs));
            }
            "--no-defer-accept" => o.pass.push(arg),
            "--workers"
            | "-w"
            | "--rows"
            | "--backends"
            | "--loads"
            | "--requests"
            | "-n"
            | "--light-requests"
            | "--saturating-connections" => {
                let v = value(&arg)?;
                o.pass.extend([arg, v]);
            }
            _ => {}
        }
    }
    if !o.quick && std::env::var("HERD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0") {
        o.quick = true;
        o.pass.push("--quick".to_owned());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("matrix: {e}");
            return ExitCode::from(2);
        }
    };
    if o.self_test {
        print!("{}", self_test::run());
        println!("matrix: self-test passed (run with `cargo bench --bench matrix` for the real matrix)");
        return ExitCode::SUCCESS;
    }
    let timeout = o.timeout.unwrap_or(Duration::from_secs(if o.quick { 300 } else { 600 }));
    println!("herd bench --json {} : {} run(s), each bounded to {} s", o.pass.join(" "), o.repeat, timeout.as_secs());
    let mut groups = Groups::default();
    let mut failures = 0;
    let mut warned = Vec::new();
    let mut problems = Vec::new();
    for i in 1..=o.repeat {
        let start = Instant::now();
        let run = match run_bench(&o.pass, timeout) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("matrix: run {i}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let lines = run.objects.len();
        for object in run.objects {
            if let Some(problem) = problem(&object) {
                problems.push(format!("run {i}: {problem}"));
            }
            match groups.add(object) {
                Ok(missing) => {
                    for key in missing {
                        if !warned.contains(&key) {
                            eprintln!("matrix: herd bench's lines lack {key:?}; its column shows '-'");
                            warned.push(key);
                        }
                    }
                }
                Err(e) => eprintln!("matrix: run {i}: skipping {e}"),
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        match run.failure {
            Some(why) => {
                failures += 1;
                eprintln!("matrix: run {i}/{}: {why} ({lines} result lines kept, {elapsed:.0} s)", o.repeat);
            }
            None => eprintln!("matrix: run {i}/{}: {lines} result lines in {elapsed:.0} s", o.repeat),
        }
    }
    println!();
    print!("{}", groups.table());
    println!();
    println!(
        "median of the runs per (mode, accept, backend, load); spread = (max - min) / median of rps; failures summed"
    );
    for p in &problems {
        println!("  {p}");
    }
    if failures > 0 || groups.keys.is_empty() {
        eprintln!("matrix: {failures} of {} runs failed", o.repeat);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The bench's unit tests: plain functions (see the file's documentation for why), run by
/// `--self-test` and under `cargo test`.
mod self_test {
    use super::*;

    /// Runs every check; returns the table made from the fake sample, to look at.
    pub fn run() -> String {
        computes_median_and_spread();
        groups_runs_and_prints_a_table()
    }

    fn computes_median_and_spread() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(min_max(&[2.0, -1.0, 7.0]), Some((-1.0, 7.0)));
        assert_eq!(spread(&[90.0, 100.0, 110.0]), Some(0.2));
        assert_eq!(spread(&[100.0]), Some(0.0));
        assert_eq!(spread(&[0.0, 0.0]), None);
        assert_eq!(spread(&[]), None);
    }

    fn object(json: &str) -> Object {
        serde_json::from_str(json).unwrap()
    }

    fn groups_runs_and_prints_a_table() -> String {
        let line = |mode: &str, accept: &str, backend: &str, load: &str, rps: f64, jain: &str| {
            format!(
                r#"{{"mode":"{mode}","accept":{accept},"backend":"{backend}","load":"{load}","rps":{rps},"p50_us":50,"p99_us":{p99},"wakeups_per_accept":8.6,"epoll_returns_per_accept":1.08,"jain":{jain},"cpu_us_per_request":12.5,"syscalls_per_conn":{sys},"failures":1,"per_worker":[1,2]}}"#,
                p99 = rps / 10.0,
                sys = rps / 400.0
            )
        };
        let mut groups = Groups::default();
        for (i, rps) in [1000.0, 1200.0, 900.0].into_iter().enumerate() {
            assert_eq!(groups.add(object(&line("shared", "\"epoll\"", "epoll", "light", rps, "0.5"))), Ok(vec![]));
            let jain = if i == 0 { "null" } else { "1" };
            groups.add(object(&line("handoff", "null", "epoll", "light", rps * 2.0, jain))).unwrap();
            groups.add(object(&line("handoff", "null", "io-uring", "light", rps * 3.0, jain))).unwrap();
        }
        groups.add(object(r#"{"mode":"reuseport","load":"saturating","rps":5}"#)).unwrap();
        assert!(groups.add(object(r#"{"rps":5}"#)).is_err());
        let cell = |json: &str| problem(&object(json));
        assert_eq!(cell(r#"{"mode":"handoff","accept":null,"load":"light","error":null,"consistent":true}"#), None);
        assert_eq!(
            cell(r#"{"mode":"handoff","accept":null,"backend":"io-uring","load":"light","error":"server died","consistent":true}"#)
                .unwrap(),
            "handoff - io-uring light: server died"
        );
        assert!(cell(r#"{"mode":"reuseport","load":"light","consistent":false}"#).unwrap().contains("inconsistent"));
        assert_eq!(groups.keys.len(), 4, "a row's backends are groups of their own");
        let table = groups.table();
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 5, "{table}");
        let cells = |row: &str| row.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            cells(rows[1]),
            [
                "shared", "epoll", "epoll", "light", "3", "1000", "900-1200", "30.0%", "50", "100", "8.60", "1.08",
                "0.500", "12.5", "2.50", "3"
            ]
        );
        assert_eq!(cells(rows[2])[..8], ["handoff", "-", "epoll", "light", "3", "2000", "1800-2400", "30.0%"]);
        assert_eq!(cells(rows[2])[12], "1.000", "a null Jain is left out of the median");
        assert_eq!(cells(rows[3])[..6], ["handoff", "-", "io-uring", "light", "3", "3000"]);
        assert_eq!(
            cells(rows[4]),
            ["reuseport", "-", "-", "saturating", "1", "5", "5-5", "0.0%", "-", "-", "-", "-", "-", "-", "-", "-"],
            "a line from before backends were measured groups under '-'"
        );
        table
    }
}

//! `herd bench --quick --json` runs the whole matrix and every count adds up; a row runs on
//! both accept backends side by side.
//!
//! This runs on a shared two-core CI machine, so it asserts behaviour and counts, never speed:
//! every row under every load is present, ran without a failed request, and the server's own
//! per-worker accept counts account for exactly the requests the client saw answered. The whole
//! matrix runs on epoll alone, to keep it short; one row checks the backends next to each other.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far beyond the ~10 s a quick run takes, for a slow, busy machine.
const TIMEOUT: Duration = Duration::from_secs(120);

const ROWS: [(&str, Option<&str>); 8] = [
    ("shared", Some("epoll")),
    ("shared", Some("epoll-exclusive")),
    ("shared", Some("epoll-rotate")),
    ("shared", Some("blocking")),
    ("handoff", None),
    ("reuseport", None),
    ("shared", Some("epoll-balance")),
    ("handoff", Some("least-loaded")),
];

/// Runs `herd bench ARGS`, killing it if it outlives [`TIMEOUT`]; returns (exit code, stdout).
fn bench(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn herd bench");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // Killed outright, herd bench cannot stop its server, which runs in a process group
            // of its own: kill that group first.
            for server in children_of(child.id()) {
                if let Some(pid) = rustix::process::Pid::from_raw(server as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("herd bench did not finish within {} s", TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code().unwrap_or(-1), reader.join().unwrap())
}

/// The pids whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 4 (ppid) is the second after the parenthesised command name.
        let ppid: u32 = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
    .collect()
}

/// The raw text of `key`'s value in a flat JSON line (up to the next `,"` or `}`).
fn raw<'a>(line: &'a str, key: &str) -> &'a str {
    let needle = format!("\"{key}\":");
    let start = line.find(&needle).unwrap_or_else(|| panic!("no {key} in {line}")) + needle.len();
    let rest = &line[start..];
    let end = if rest.starts_with('[') { rest.find(']').unwrap() + 1 } else { rest.find([',', '}']).unwrap() };
    &rest[..end]
}

fn number(line: &str, key: &str) -> u64 {
    raw(line, key).parse().unwrap_or_else(|_| panic!("{key} is not a count in {line}"))
}

#[test]
fn quick_bench_covers_the_matrix_with_consistent_counts() {
    let (code, stdout) = bench(&["--quick", "--json", "--quiet", "--backends", "epoll"]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), ROWS.len() * 2, "one line per row and load:\n{stdout}");
    let mut i = 0;
    for (mode, accept) in ROWS {
        for load in ["light", "saturating"] {
            let line = lines[i];
            i += 1;
            assert_eq!(raw(line, "mode"), format!("\"{mode}\""), "{line}");
            let want_accept = accept.map_or("null".to_owned(), |a| format!("\"{a}\""));
            assert_eq!(raw(line, "accept"), want_accept, "{line}");
            assert_eq!(raw(line, "backend"), "\"epoll\"", "{line}");
            assert_eq!(raw(line, "load"), format!("\"{load}\""), "{line}");
            assert_eq!(raw(line, "error"), "null", "the cell ran: {line}");
            assert_eq!(raw(line, "failures"), "0", "no failed request: {line}");
            assert_eq!(raw(line, "consistent"), "true", "{line}");

            let workers = number(line, "workers") as usize;
            let requests = number(line, "requests");
            let per_worker: Vec<u64> =
                raw(line, "per_worker").trim_matches(['[', ']']).split(',').map(|n| n.parse().unwrap()).collect();
            assert_eq!(per_worker.len(), workers, "one count per worker: {line}");
            assert_eq!(per_worker.iter().sum::<u64>(), requests, "accepts == requests served: {line}");
            assert!(requests > 0, "{line}");
            assert_eq!(number(line, "connections"), if load == "light" { 1 } else { 64 }, "{line}");
            // Every worker at least waits and accepts (or receives), and says so in its count.
            assert!(number(line, "syscalls_workers") >= requests, "{line}");
            let per_conn: f64 = raw(line, "syscalls_per_conn").parse().unwrap();
            let all = number(line, "syscalls_workers") + number(line, "syscalls_primary");
            assert!((per_conn - all as f64 / requests as f64).abs() < 0.001, "{line}");
        }
    }
    assert_eq!(code, 0, "every cell passed, so the exit status is 0");
}

#[test]
fn a_row_runs_on_both_backends_side_by_side() {
    let args = ["--backends", "epoll,io-uring", "--rows", "handoff", "--loads", "light", "--light-requests", "50"];
    let (code, stdout) = bench(&args);
    // Table lines name the backend second; chart titles say `handoff · BACKEND, ...`.
    let is_row =
        |l: &&str| matches!(l.split_whitespace().take(2).collect::<Vec<_>>()[..], ["handoff", "epoll" | "io-uring"]);
    let table: Vec<&str> = stdout.lines().filter(is_row).collect();
    if let Err(why) = herd::Backend::IoUring.available() {
        eprintln!("SKIPPED: io_uring is unavailable here ({why}): checking that herd bench says so");
        assert!(stdout.contains(&format!("io-uring: unavailable here ({why}); epoll only")), "{stdout}");
        assert_eq!(table.len(), 1, "epoll only:\n{stdout}");
        assert_eq!(code, 0, "{stdout}");
        return;
    }
    assert_eq!(table.len(), 2, "one line per backend:\n{stdout}");
    for (line, backend) in table.iter().zip(["epoll", "io-uring"]) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[..3], ["handoff", backend, "light"], "{line}");
        assert!(!line.contains("FAILED") && !line.contains("INCONSISTENT"), "{line}");
    }
    let lines: Vec<&str> = stdout.lines().collect();
    let first = lines.iter().position(is_row).unwrap();
    assert_eq!(lines[first + 1], table[1], "the backends sit next to each other:\n{stdout}");
    assert!(stdout.contains("handoff · io-uring, light (1 in flight)"), "the chart names the backend:\n{stdout}");
    assert!(stdout.contains("handoff primary syscalls/conn, light, io-uring: "), "{stdout}");
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    for (args, says) in [(["--rows", "shared"], "unknown row"), (["--backends", "uring"], "unknown backend")] {
        let out = Command::new(env!("CARGO_BIN_EXE_herd")).arg("bench").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn a_row_with_no_io_uring_form_does_not_run_on_io_uring_alone() {
    let (code, stdout) = bench(&["--rows", "shared/blocking", "--backends", "io-uring", "--quiet"]);
    assert!(stdout.contains("shared/blocking has no io_uring form: epoll only; not run"), "{stdout}");
    assert_eq!(code, 1, "nothing was measured:\n{stdout}");
}

//! `herd bench --quick --json` runs the whole matrix and every count adds up.
//!
//! This runs on a shared two-core CI machine, so it asserts behaviour and counts, never speed:
//! every row under every load is present, ran without a failed request, and the server's own
//! per-worker accept counts account for exactly the requests the client saw answered.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far beyond the ~10 s a quick run takes, for a slow, busy machine.
const TIMEOUT: Duration = Duration::from_secs(120);

const ROWS: [(&str, Option<&str>); 6] = [
    ("shared", Some("epoll")),
    ("shared", Some("epoll-exclusive")),
    ("shared", Some("epoll-rotate")),
    ("shared", Some("blocking")),
    ("handoff", None),
    ("reuseport", None),
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
    let (code, stdout) = bench(&["--quick", "--json", "--quiet"]);
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
        }
    }
    assert_eq!(code, 0, "every cell passed, so the exit status is 0");
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_herd")).args(["bench", "--rows", "shared"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown row"), "{stderr}");
}

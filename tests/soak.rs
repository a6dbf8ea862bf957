//! Descriptor and memory soak: many churned connections through each mode leave every process
//! of the cluster with the descriptors it had and about the memory it had.
//!
//! `make test` runs 5 000 connections per mode; `make soak` runs 200 000
//! (`HERD_SOAK_CONNECTIONS`). The figures go to stdout (`--nocapture`).

mod util;

use std::process::Command;

use util::{Serve, Target};

const MODES: [&[&str]; 4] = [
    &["--mode", "shared"],
    &["--mode", "shared", "--accept", "blocking"],
    &["--mode", "handoff"],
    &["--mode", "reuseport"],
];

/// The resident set of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `herd load` with `n` churned connections; returns the requests that succeeded.
fn churn(url: &str, n: u64) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["load", url, "--connections", "32", "--requests", &n.to_string(), "--duration", "600", "--json"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    let requests = json.split("\"requests\":").nth(1).unwrap_or_else(|| panic!("herd load: {json}"));
    requests.trim_start().split([',', '}']).next().unwrap().trim().parse().unwrap()
}

#[test]
fn churned_connections_leak_no_descriptor_and_little_memory() {
    let n: u64 = std::env::var("HERD_SOAK_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    for mode in MODES {
        let mut args = vec!["--workers", "2", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(mode);
        let serve = Serve::start(&args, 2);
        let Target::Tcp(addr) = serve.target else { panic!("tcp") };
        let url = format!("http://{addr}/");
        // Warm up: buffers and tables grow to their working size first.
        assert_eq!(churn(&url, 1_000), 1_000);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut pids = vec![serve.pid()];
        pids.extend(serve.worker_pids().values());
        let fds_before: Vec<usize> = pids.iter().map(|&p| util::fd_count(p)).collect();
        let rss_before: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
        assert_eq!(churn(&url, n), n, "{mode:?}: every request succeeded");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let fds_after: Vec<usize> = pids.iter().map(|&p| util::fd_count(p)).collect();
        let rss_after: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
        println!(
            "{mode:?}: {n} connections; descriptors {fds_before:?} -> {fds_after:?}; RSS KiB {rss_before:?} -> {rss_after:?}"
        );
        assert_eq!(fds_before, fds_after, "{mode:?}: descriptors of the primary and each worker");
        for (before, after) in rss_before.iter().zip(&rss_after) {
            assert!(after.saturating_sub(*before) < 10 * 1024, "{mode:?}: RSS grew from {before} to {after} KiB");
        }
        assert!(serve.stop().status.success(), "{mode:?}");
    }
}

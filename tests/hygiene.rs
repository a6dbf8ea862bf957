//! Descriptor hygiene of a running cluster: every descriptor herd creates is close-on-exec, and
//! serving connections leaks none.

mod util;

use std::time::Duration;

use util::Serve;

/// The descriptors of `pid` above stderr that lack `O_CLOEXEC`, as `fd -> target`.
fn without_cloexec(pid: u32) -> Vec<String> {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd: u32 = entry.unwrap().file_name().to_str().unwrap().parse().unwrap();
        if fd <= 2 {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { continue };
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
        let flags = u32::from_str_radix(flags, 8).unwrap();
        if flags & libc::O_CLOEXEC as u32 == 0 {
            let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default();
            missing.push(format!("fd {fd} -> {}", target.display()));
        }
    }
    missing
}

#[test]
fn every_descriptor_in_primary_and_workers_is_cloexec() {
    for mode in ["shared", "handoff", "reuseport"] {
        let serve = Serve::start(&["--workers", "2", "--listen", "127.0.0.1:0", "--mode", mode], 2);
        let mut pids = vec![serve.pid()];
        pids.extend(serve.worker_pids().values());
        // Descriptors this test process holds without O_CLOEXEC (cargo's jobserver pipe, say)
        // were inherited by `herd serve` through exec; herd did not create them.
        let inherited = without_cloexec(std::process::id());
        for pid in pids {
            let missing: Vec<String> = without_cloexec(pid).into_iter().filter(|fd| !inherited.contains(fd)).collect();
            assert!(missing.is_empty(), "{mode}: descriptors without O_CLOEXEC: {missing:?}");
        }
        assert!(serve.stop().status.success());
    }
}

#[test]
fn serving_connections_leaks_no_descriptor() {
    for mode in ["shared", "handoff", "reuseport"] {
        let serve = Serve::start(&["--workers", "2", "--listen", "127.0.0.1:0", "--mode", mode], 2);
        let mut pids = vec![serve.pid()];
        pids.extend(serve.worker_pids().values());
        let before: Vec<usize> = pids.iter().map(|&p| util::fd_count(p)).collect();
        let (_, failures) = util::load(&serve.target, 500, 4);
        assert!(failures.is_empty(), "{failures:?}");
        // The server closes first; give the last close a moment.
        std::thread::sleep(Duration::from_millis(100));
        let after: Vec<usize> = pids.iter().map(|&p| util::fd_count(p)).collect();
        assert_eq!(before, after, "{mode}: descriptors open in primary and workers before and after 500 connections");
        assert!(serve.stop().status.success());
    }
}

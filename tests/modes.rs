//! Every distribution mode, run as a real `herd serve` cluster of 4 workers in its own process,
//! loaded with 2 000 connections from the test.

mod util;

use std::time::Duration;

use util::{Serve, Target};

const WORKERS: usize = 4;
const CONNECTIONS: usize = 2000;
/// Fewer connections in flight than the handoff window, so round-robin never skips a worker.
const CONCURRENCY: usize = 4;

/// Serves `CONNECTIONS` connections in `mode`; checks that all were answered, that the counters
/// add up, and that nothing is left running. Returns the per-worker shares and counters.
fn serve_and_count(mode_args: &[&str]) -> (Vec<usize>, std::collections::BTreeMap<usize, util::Row>, [u64; 4]) {
    let mut args = vec!["--workers", "4", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(mode_args);
    let serve = Serve::start(&args, WORKERS);
    let (seen, failures) = util::load(&serve.target, CONNECTIONS, CONCURRENCY);
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(seen.values().sum::<usize>(), CONNECTIONS);
    let stopped = serve.stop();
    assert!(stopped.status.success(), "herd serve exited with {:?}; log:\n{}", stopped.status, stopped.log.join("\n"));
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));

    let (rows, primary) = util::counters(&stopped.stdout);
    assert_eq!(rows.len(), WORKERS, "counter table:\n{}", stopped.stdout);
    let served: u64 = rows.values().map(|r| r.accepts + r.handoffs).sum();
    assert_eq!(served, CONNECTIONS as u64, "accepts + handoffs must equal connections served:\n{}", stopped.stdout);
    assert_eq!(
        rows.values().map(|r| r.closed).sum::<u64>(),
        CONNECTIONS as u64,
        "every connection closed:\n{}",
        stopped.stdout
    );
    for (id, row) in &rows {
        assert_eq!(
            (row.accepts + row.handoffs) as usize,
            seen.get(id).copied().unwrap_or(0),
            "worker {id}'s counters vs answers"
        );
    }
    let shares = (0..WORKERS).map(|w| seen.get(&w).copied().unwrap_or(0)).collect();
    (shares, rows, primary)
}

#[test]
fn shared_epoll_serves_every_connection_and_counts_the_herd() {
    let (_, rows, primary) = serve_and_count(&["--mode", "shared", "--accept", "epoll"]);
    assert_eq!(primary, [0, 0, 0, 0], "the primary accepts nothing in shared mode");
    for row in rows.values() {
        assert_eq!(row.handoffs, 0);
        assert!(row.wakeups >= row.accepts, "a worker wakes at least once per accept: {row:?}");
        assert_eq!(row.wakeups, row.accepts + row.eagains, "one accept attempt per wakeup: {row:?}");
    }
}

#[test]
fn shared_epoll_exclusive_serves_every_connection() {
    let (_, rows, _) = serve_and_count(&["--mode", "shared", "--accept", "epoll-exclusive"]);
    for row in rows.values() {
        assert_eq!(row.wakeups, row.accepts + row.eagains, "{row:?}");
    }
}

#[test]
fn shared_epoll_rotate_reaches_every_worker() {
    let (shares, _, _) = serve_and_count(&["--mode", "shared", "--accept", "epoll-rotate"]);
    assert!(shares.iter().all(|&s| s > 0), "every worker served: {shares:?}");
}

#[test]
fn shared_blocking_accept_reaches_every_worker() {
    let (shares, rows, _) = serve_and_count(&["--mode", "shared", "--accept", "blocking"]);
    assert!(shares.iter().all(|&s| s > 0), "every worker served: {shares:?}");
    for row in rows.values() {
        assert_eq!(row.eagains, 0, "a blocking accept never finds the queue empty");
    }
}

#[test]
fn handoff_gives_each_worker_exactly_its_round_robin_share() {
    let (shares, rows, primary) = serve_and_count(&["--mode", "handoff"]);
    assert_eq!(shares, vec![CONNECTIONS / WORKERS; WORKERS], "exact round-robin shares");
    let [accepted, dispatched, _queued, requeued] = primary;
    assert_eq!(accepted, CONNECTIONS as u64);
    assert_eq!(dispatched, CONNECTIONS as u64);
    assert_eq!(requeued, 0);
    for row in rows.values() {
        assert_eq!(row.accepts, 0, "workers accept nothing in handoff mode");
        assert_eq!(row.handoffs, row.acked, "every handoff acknowledged: {row:?}");
    }
}

#[test]
fn reuseport_reaches_every_worker() {
    let (shares, rows, primary) = serve_and_count(&["--mode", "reuseport"]);
    assert!(shares.iter().all(|&s| s > 0), "the kernel's hash reached every worker: {shares:?}");
    assert_eq!(primary[0], 0);
    for row in rows.values() {
        assert_eq!(row.handoffs, 0);
    }
}

#[test]
fn ipv6_listener_serves() {
    let serve = Serve::start(&["--workers", "2", "--listen", "[::1]:0", "--mode", "reuseport"], 2);
    assert!(matches!(serve.target, Target::Tcp(a) if a.is_ipv6() && a.port() != 0));
    let (seen, failures) = util::load(&serve.target, 50, 2);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(seen.values().sum::<usize>(), 50);
    assert!(serve.stop().status.success());
}

#[test]
fn unix_socket_listener_serves_and_removes_its_path() {
    let dir = std::env::temp_dir().join(format!("herd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serve.sock");
    let listen = path.to_str().unwrap();
    for mode in ["shared", "handoff"] {
        let serve = Serve::start(&["--workers", "2", "--listen", listen, "--mode", mode], 2);
        assert!(matches!(&serve.target, Target::Unix(p) if *p == path));
        let (seen, failures) = util::load(&serve.target, 50, 2);
        assert!(failures.is_empty(), "{mode}: {failures:?}");
        assert_eq!(seen.values().sum::<usize>(), 50);
        let stopped = serve.stop();
        assert!(stopped.status.success());
        assert!(!path.exists(), "{mode}: the socket file is removed on exit");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn port_zero_gives_every_worker_the_same_port() {
    let serve = Serve::start(&["--workers", "3", "--listen", "127.0.0.1:0", "--mode", "reuseport"], 3);
    let Target::Tcp(addr) = serve.target else { panic!("tcp") };
    assert_ne!(addr.port(), 0, "the primary learned the port");
    let (seen, failures) = util::load(&serve.target, 300, 3);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(seen.len(), 3, "all three workers serve the one port: {seen:?}");
    assert!(serve.stop().status.success());
}

#[test]
fn every_worker_api_serves_in_every_mode() {
    for api in ["nested", "incoming"] {
        for mode in ["shared", "handoff", "reuseport"] {
            let serve =
                Serve::start(&["--workers", "2", "--listen", "127.0.0.1:0", "--mode", mode, "--worker-api", api], 2);
            let (seen, failures) = util::load(&serve.target, 200, 2);
            assert!(failures.is_empty(), "{api} {mode}: {failures:?}");
            assert_eq!(seen.values().sum::<usize>(), 200, "{api} {mode}");
            let stopped = serve.stop();
            assert!(stopped.status.success(), "{api} {mode}: {:?}", stopped.status);
            let (rows, _) = util::counters(&stopped.stdout);
            assert_eq!(rows.values().map(|r| r.closed).sum::<u64>(), 200, "{api} {mode}: every stream closed");
        }
    }
}

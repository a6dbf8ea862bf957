//! Every distribution mode, run as a real `herd serve` cluster of 4 workers in its own process,
//! loaded with 2 000 connections from the test — on each accept backend: epoll, and io_uring
//! where the kernel allows it (skipped loudly where it does not).

mod util;

use std::time::Duration;

use util::{Serve, Target};

const WORKERS: usize = 4;
const CONNECTIONS: usize = 2000;
/// Fewer connections in flight than the handoff window, so round-robin never skips a worker.
const CONCURRENCY: usize = 4;

/// The backends every mode with an io_uring form is tested on.
fn backends() -> Vec<&'static str> {
    match herd::Backend::IoUring.available() {
        Ok(()) => vec!["epoll", "io-uring"],
        Err(why) => {
            eprintln!("SKIPPED on io-uring: {why}");
            vec!["epoll"]
        }
    }
}

/// What one run in a mode came to: per-worker shares (by the response bodies), the counter rows,
/// the primary's `accepted dispatched queued requeued`, and its system calls.
struct Counted {
    shares: Vec<usize>,
    rows: std::collections::BTreeMap<usize, util::Row>,
    primary: [u64; 4],
    primary_syscalls: u64,
    log: Vec<String>,
}

/// Serves `CONNECTIONS` connections in `mode` on `backend`; checks that all were answered, that
/// the counters add up, and that nothing is left running.
fn serve_and_count(mode_args: &[&str], backend: &str) -> Counted {
    let mut args = vec!["--workers", "4", "--listen", "127.0.0.1:0", "--backend", backend];
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
    let primary_syscalls = util::primary_syscalls(&stopped.stdout);
    Counted { shares, rows, primary, primary_syscalls, log: stopped.log }
}

#[test]
fn shared_epoll_serves_every_connection_and_counts_the_herd() {
    let c = serve_and_count(&["--mode", "shared", "--accept", "epoll"], "epoll");
    assert_eq!(c.primary, [0, 0, 0, 0], "the primary accepts nothing in shared mode");
    for row in c.rows.values() {
        assert_eq!(row.handoffs, 0);
        assert!(row.wakeups >= row.accepts, "a worker wakes at least once per accept: {row:?}");
        assert_eq!(row.wakeups, row.accepts + row.eagains, "one accept attempt per wakeup: {row:?}");
    }
}

#[test]
fn shared_epoll_on_io_uring_runs_on_epoll_and_says_so() {
    if !backends().contains(&"io-uring") {
        return;
    }
    // The level-triggered herd has no io_uring form: it serves on epoll, with a warning.
    let c = serve_and_count(&["--mode", "shared", "--accept", "epoll"], "io-uring");
    assert!(c.log.iter().any(|l| l.contains("has no io_uring form")), "log:\n{}", c.log.join("\n"));
    for row in c.rows.values() {
        assert_eq!(row.wakeups, row.accepts + row.eagains, "epoll's one accept attempt per wakeup: {row:?}");
    }
}

#[test]
fn shared_epoll_exclusive_serves_every_connection() {
    for backend in backends() {
        let c = serve_and_count(&["--mode", "shared", "--accept", "epoll-exclusive"], backend);
        for row in c.rows.values() {
            if backend == "epoll" {
                assert_eq!(row.wakeups, row.accepts + row.eagains, "{row:?}");
            } else {
                assert_eq!(row.eagains, 0, "an io_uring accept waits instead of failing with EAGAIN: {row:?}");
            }
        }
    }
}

#[test]
fn shared_epoll_rotate_reaches_every_worker() {
    for backend in backends() {
        let c = serve_and_count(&["--mode", "shared", "--accept", "epoll-rotate"], backend);
        assert!(c.shares.iter().all(|&s| s > 0), "{backend}: every worker served: {:?}", c.shares);
    }
}

#[test]
fn shared_blocking_accept_reaches_every_worker() {
    let c = serve_and_count(&["--mode", "shared", "--accept", "blocking"], "epoll");
    assert!(c.shares.iter().all(|&s| s > 0), "every worker served: {:?}", c.shares);
    for row in c.rows.values() {
        assert_eq!(row.eagains, 0, "a blocking accept never finds the queue empty");
    }
}

#[test]
fn handoff_gives_each_worker_exactly_its_round_robin_share() {
    for backend in backends() {
        let c = serve_and_count(&["--mode", "handoff"], backend);
        assert_eq!(c.shares, vec![CONNECTIONS / WORKERS; WORKERS], "{backend}: exact round-robin shares");
        let [accepted, dispatched, _queued, requeued] = c.primary;
        assert_eq!(accepted, CONNECTIONS as u64);
        assert_eq!(dispatched, CONNECTIONS as u64);
        assert_eq!(requeued, 0);
        for row in c.rows.values() {
            assert_eq!(row.accepts, 0, "workers accept nothing in handoff mode");
            assert_eq!(row.handoffs, row.acked, "{backend}: every handoff acknowledged: {row:?}");
        }
        let per_connection = c.primary_syscalls as f64 / CONNECTIONS as f64;
        if backend == "epoll" {
            // An accept4 and a close for each connection, whatever the batching.
            assert!(per_connection >= 2.0, "epoll: {} primary system calls", c.primary_syscalls);
        } else {
            // Accepts, sends, closes and acks all go through the ring: what is left is one
            // io_uring_enter per turn of the primary, and a turn moves one connection or more.
            assert!(per_connection < 2.0, "io-uring: {} primary system calls", c.primary_syscalls);
        }
    }
}

#[test]
fn reuseport_reaches_every_worker() {
    for backend in backends() {
        let c = serve_and_count(&["--mode", "reuseport"], backend);
        assert!(c.shares.iter().all(|&s| s > 0), "{backend}: the kernel's hash reached every worker: {:?}", c.shares);
        assert_eq!(c.primary[0], 0);
        for row in c.rows.values() {
            assert_eq!(row.handoffs, 0);
            if backend == "io-uring" {
                assert_eq!(row.eagains, 0, "a multishot accept never reports EAGAIN: {row:?}");
            }
        }
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
    for (api, mode, backend) in ["nested", "incoming"]
        .into_iter()
        .flat_map(|api| ["shared", "handoff", "reuseport"].map(|mode| (api, mode)))
        .flat_map(|(api, mode)| backends().into_iter().map(move |b| (api, mode, b)))
    {
        {
            let serve = Serve::start(
                &[
                    "--workers",
                    "2",
                    "--listen",
                    "127.0.0.1:0",
                    "--mode",
                    mode,
                    "--worker-api",
                    api,
                    "--backend",
                    backend,
                ],
                2,
            );
            let (seen, failures) = util::load(&serve.target, 200, 2);
            assert!(failures.is_empty(), "{api} {mode} {backend}: {failures:?}");
            assert_eq!(seen.values().sum::<usize>(), 200, "{api} {mode} {backend}");
            let stopped = serve.stop();
            assert!(stopped.status.success(), "{api} {mode} {backend}: {:?}", stopped.status);
            let (rows, _) = util::counters(&stopped.stdout);
            assert_eq!(
                rows.values().map(|r| r.closed).sum::<u64>(),
                200,
                "{api} {mode} {backend}: every stream closed"
            );
        }
    }
}

#[test]
fn shared_epoll_balance_serves_every_connection() {
    for backend in backends() {
        let c = serve_and_count(&["--mode", "shared", "--accept", "epoll-balance"], backend);
        assert!(c.shares.iter().all(|&s| s > 0), "{backend}: every worker served: {:?}", c.shares);
    }
}

/// Long keep-alive connections opened all at once: `epoll-balance` spreads them, whoever the
/// kernel wakes first, because a worker above the mean leaves the accept queue. (How evenly
/// the *requests* then spread is the scheduler's: benchmarks measure it, see docs/fairness.md.)
#[test]
fn shared_epoll_balance_spreads_long_connections() {
    use std::io::{BufReader, Write};
    let workers = 4;
    let serve =
        util::Serve::start(&["--mode", "shared", "--accept", "epoll-balance", "-w", "4", "-l", "127.0.0.1:0", "-q"], 0);
    std::thread::sleep(Duration::from_millis(300));
    let util::Target::Tcp(addr) = serve.target.clone() else { unreachable!() };
    // 32 connections at once, each asking one request and staying open.
    let connections: Vec<std::net::TcpStream> = (0..32).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let mut per_worker = vec![0usize; workers];
    for mut c in &connections {
        c.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: herd\r\n\r\n").unwrap();
    }
    for c in &connections {
        per_worker[util::worker_of(&util::read_response(&mut BufReader::new(c)))] += 1;
    }
    // Within the rule's reach: at most one above the mean (8) before a worker steps out, and
    // what was already queued for it when it did.
    assert!(per_worker.iter().all(|&n| (4..=12).contains(&n)), "connections per worker: {per_worker:?}");
    drop(connections);
    assert!(serve.stop().status.success());
}

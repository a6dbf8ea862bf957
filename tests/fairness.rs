//! Fair under uneven load: a stalled worker's connections are taken by the others, in every
//! mode and handoff policy; long connections spread evenly with `shared/epoll-balance`
//! (`tests/modes.rs`). Behaviour only: how long anything waits is for the benchmarks
//! (`herd load --stall-ms`, docs/fairness.md).

mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use util::{Serve, counters, get, get_path, summary, worker_of};

/// One worker is held in a slow handler (`/block/MS`) while 40 requests follow, one at a
/// time, once the stall is under way: none of them may go to the stalled worker.
fn stalled_worker_is_passed_over(args: &[&str]) -> (usize, BTreeMap<usize, usize>, util::Stopped) {
    let mut all = vec!["-w", "4", "-l", "127.0.0.1:0", "-q"];
    all.extend_from_slice(args);
    let serve = Serve::start(&all, 0);
    std::thread::sleep(Duration::from_millis(300));
    let target = serve.target.clone();
    let stall = std::thread::spawn(move || get_path(&target, "/block/1500"));
    // Well past the primary's stall check (50 ms).
    std::thread::sleep(Duration::from_millis(200));
    let mut seen = BTreeMap::new();
    let mut failures = Vec::new();
    for _ in 0..40 {
        match get(&serve.target) {
            Ok(body) => *seen.entry(worker_of(&body)).or_insert(0) += 1,
            Err(e) => failures.push(e.to_string()),
        }
    }
    let stalled = worker_of(&stall.join().unwrap().expect("the slow request is answered"));
    assert!(failures.is_empty(), "{args:?}: {}", summary(&failures));
    let stopped = serve.stop();
    assert!(stopped.status.success());
    (stalled, seen, stopped)
}

#[test]
fn a_stalled_workers_connections_go_to_the_others_in_every_mode() {
    for args in [
        &["--mode", "shared"][..],
        &["--mode", "shared", "--accept", "epoll-balance"],
        &["--mode", "handoff"],
        &["--mode", "handoff", "--handoff-policy", "least-loaded"],
        &["--mode", "reuseport"],
    ] {
        let (stalled, seen, _) = stalled_worker_is_passed_over(args);
        assert_eq!(seen.get(&stalled), None, "{args:?}: worker {stalled} was stalled, yet answered: {seen:?}");
        assert_eq!(seen.values().sum::<usize>(), 40, "{args:?}: {seen:?}");
    }
}

/// In reuseport mode the kernel keeps hashing connections to the stalled worker's listener:
/// the primary takes them and hands them on (its `accepted` count says so).
#[test]
fn the_primary_drains_a_stalled_workers_reuseport_queue() {
    let (_, _, stopped) = stalled_worker_is_passed_over(&["--mode", "reuseport"]);
    let (_, [accepted, dispatched, ..]) = counters(&stopped.stdout);
    assert!(accepted > 0, "the primary accepted on the stalled slot's listener:\n{}", stopped.stdout);
    assert_eq!(accepted, dispatched, "and handed every one on:\n{}", stopped.stdout);
}

/// A worker in a foreign event loop (`--worker-api nested`: the worker's descriptor in an epoll
/// of its own) waits outside herd's wait when idle; `try_event` saying nothing is ready marks it
/// idle, so the primary does not take idle workers for stalled ones — here while one worker
/// stays busy with a keep-alive client and the others idle.
#[test]
fn idle_workers_in_a_foreign_loop_are_not_stalled() {
    use std::io::{BufReader, Write};
    let serve = Serve::start(&["--mode", "handoff", "-w", "4", "-l", "127.0.0.1:0", "-q", "--worker-api", "nested"], 0);
    std::thread::sleep(Duration::from_millis(300));
    let util::Target::Tcp(addr) = serve.target.clone() else { unreachable!() };
    // One keep-alive client keeps its worker coming back to its loop every 10 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                (&stream).write_all(b"GET / HTTP/1.1\r\nHost: herd\r\n\r\n").unwrap();
                util::read_response(&mut reader);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Long enough for the primary to look at the workers several times.
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        *seen.entry(worker_of(&get(&serve.target).unwrap())).or_insert(0) += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.join().unwrap();
    assert_eq!(seen.len(), 4, "every idle worker keeps its turn: {seen:?}");
    assert!(serve.stop().status.success());
}

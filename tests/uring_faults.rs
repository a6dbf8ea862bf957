//! Faults of the io_uring backend (and one of the primary's, on both backends) found by review:
//! each test failed before its fix.
mod util;

use std::time::{Duration, Instant};

use rustix::process::Signal;
use util::{Serve, Target};

fn uring() -> bool {
    match herd::Backend::IoUring.available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            false
        }
    }
}

fn port(t: &Target) -> u16 {
    match t {
        Target::Tcp(a) => a.port(),
        _ => unreachable!(),
    }
}

/// Listening TCP sockets on `port`, system-wide (/proc/net/tcp, state 0A).
fn listeners_on(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f[1].ends_with(&hex) && f[3] == "0A"
        })
        .count()
}

/// Inodes of established/close-wait TCP sockets (not listeners) held by `pid`.
fn tcp_connections_held(pid: u32) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let conns: std::collections::HashSet<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[3] != "0A").then(|| f[9].to_owned())
        })
        .collect();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .filter(|ino| conns.contains(ino))
        .count()
}

#[test]
fn reuseport_scale_down_closes_the_removed_listeners_on_io_uring() {
    if !uring() {
        return;
    }
    let serve =
        Serve::start(&["--mode", "reuseport", "--backend", "io-uring", "--workers", "4", "--listen", "127.0.0.1:0"], 4);
    let p = port(&serve.target);
    assert_eq!(listeners_on(p), 4);
    serve.signal(Signal::TTOU);
    serve.wait_for_log(|l| l.contains("herd: exit worker=3"), 1);
    serve.signal(Signal::TTOU);
    serve.wait_for_log(|l| l.contains("herd: exit worker=2"), 1);
    std::thread::sleep(Duration::from_millis(200));
    let left = listeners_on(p);
    // Half the load now goes through the primary's handoff, through the listeners it "closed".
    let (_, failures) = util::load(&serve.target, 200, 4);
    assert!(failures.is_empty());
    let stopped = serve.stop();
    let (_, primary) = util::counters(&stopped.stdout);
    assert_eq!(
        left, 2,
        "slots 2 and 3 were scaled away; their listeners must be closed (primary accepted {})",
        primary[0]
    );
}

#[test]
fn a_replacement_worker_inherits_no_client_connection_on_io_uring() {
    if !uring() {
        return;
    }
    let serve = Serve::start(
        &[
            "--mode",
            "handoff",
            "--backend",
            "io-uring",
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat",
            "0",
            "--restart-limit",
            "100",
        ],
        2,
    );
    let url = format!("http://127.0.0.1:{}/", port(&serve.target));
    let load = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["load", "-c", "32", "-d", "3.5", "--timeout", "1000", &url])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut kills = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if let Some((_, &pid)) = serve.worker_pids().iter().next() {
            let _ = rustix::process::kill_process(util::pid(pid), Signal::KILL);
            kills += 1;
        }
    }
    let _ = {
        let mut load = load;
        load.wait()
    };
    std::thread::sleep(Duration::from_millis(500)); // every request answered, every client gone
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", serve.pid())).unwrap();
    let held: Vec<(u32, usize)> = children
        .split_whitespace()
        .map(|p| p.parse::<u32>().unwrap())
        .map(|pid| (pid, tcp_connections_held(pid)))
        .collect();
    eprintln!("held: {held:?} kills {kills} log: {}", serve.log().len());
    serve.stop();
    assert!(held.iter().all(|&(_, n)| n == 0), "after {kills} kills, idle workers hold client connections: {held:?}");
}

#[test]
fn the_primary_is_idle_after_a_worker_was_replaced() {
    // Not io_uring-specific: fails on epoll too.
    for backend in ["epoll", "io-uring"] {
        let serve = Serve::start(
            &[
                "--mode",
                "handoff",
                "--backend",
                backend,
                "--workers",
                "2",
                "--listen",
                "127.0.0.1:0",
                "--heartbeat",
                "0",
            ],
            2,
        );
        let (_, &w) = serve.worker_pids().iter().next().unwrap();
        rustix::process::kill_process(util::pid(w), Signal::KILL).unwrap();
        serve.wait_for_log(|l| l.contains("herd: listening "), 3);
        std::thread::sleep(Duration::from_millis(200));
        let ticks = |pid: u32| -> u64 {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        };
        let before = ticks(serve.pid());
        std::thread::sleep(Duration::from_secs(1));
        let used = ticks(serve.pid()) - before;
        serve.stop();
        assert!(used < 10, "{backend}: the idle primary used {used} of 100 clock ticks in 1 s after a restart");
    }
}

#[test]
fn a_shared_listener_on_io_uring_passes_a_connection_to_an_idle_worker_not_a_busy_one() {
    // io_uring's accept claims a wakeup whether or not its worker is waiting: a rearmed accept
    // must not sit in the listener's queue while its worker is busy.
    for backend in ["epoll", "io-uring"] {
        if backend == "io-uring" && !uring() {
            continue;
        }
        let serve = Serve::start(
            &[
                "--mode",
                "shared",
                "--accept",
                "epoll-rotate",
                "--backend",
                backend,
                "--workers",
                "2",
                "--listen",
                "127.0.0.1:0",
                "--worker-api",
                "incoming",
            ],
            2,
        );
        let target = serve.target.clone();
        let slow = std::thread::spawn(move || util::get_path(&target, "/block/1500").is_ok());
        std::thread::sleep(Duration::from_millis(200)); // one worker is blocked now
        let mut answered_first = 0;
        for _ in 0..10 {
            assert!(util::get(&serve.target).is_ok());
            if !slow.is_finished() {
                answered_first += 1;
            }
        }
        assert!(slow.join().unwrap());
        serve.stop();
        assert_eq!(answered_first, 10, "{backend}: quick requests waited behind the blocked worker");
    }
}

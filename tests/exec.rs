//! `herd run`: workers that are programs of their own (fork + execve), in every mode — with
//! `herd worker`, with Python programs that know only `LISTEN_FDS` or the channel protocol,
//! across a reload that runs a replaced program file, with sd_notify both ways, and with
//! nothing of the primary's leaking into the program.
//!
//! Each cluster runs in its own process group, started by the `herd` binary.

mod util;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use util::{Serve, assert_all_gone, counters, fd_count, load, load_bodies, summary};

const HERD: &str = env!("CARGO_BIN_EXE_herd");

const MODES: [&str; 7] = [
    "shared",
    "shared/epoll",
    "shared/epoll-exclusive",
    "shared/blocking",
    "shared/epoll-balance",
    "handoff",
    "reuseport",
];

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name).display().to_string()
}

/// `python3`, or `None` (and a loud line) where there is none.
fn python() -> Option<&'static str> {
    let found = std::process::Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: python3 is not installed; the Python worker tests need it");
    }
    found.then_some("python3")
}

/// A directory of this test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("herd-exec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes an executable shell script at `path`, replacing what is there in one `rename`, as a
/// deploy would.
fn write_script(path: &Path, body: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn stop_cleanly(serve: Serve, what: &str) -> util::Stopped {
    let stopped = serve.stop();
    assert!(
        stopped.status.success(),
        "{what}: herd run exited with {:?}; log:\n{}",
        stopped.status,
        stopped.log.join("\n")
    );
    assert_all_gone(&stopped.worker_pids, Duration::from_secs(5));
    stopped
}

#[test]
fn herd_worker_under_herd_run_serves_and_counts_in_every_mode() {
    for mode in MODES {
        let serve = Serve::start_run(&["--mode", mode, "-w", "3", "-l", "127.0.0.1:0", "--", HERD, "worker"], 3);
        let (seen, failures) = load(&serve.target, 300, 6);
        assert!(failures.is_empty(), "{mode}: {}", summary(&failures));
        assert!(seen.len() >= 2, "{mode}: only {seen:?} answered");
        let stopped = stop_cleanly(serve, mode);
        // The workers count in the primary's memfd: the table the primary prints has them.
        let (rows, _) = counters(&stopped.stdout);
        let served: u64 = rows.values().map(|r| r.accepts + r.handoffs).sum();
        assert_eq!(served, 300, "{mode}: counters {rows:?}");
        // Workers that read their channel are stopped with `Stop`, and exit 0.
        let exits: Vec<&String> = stopped.log.iter().filter(|l| l.contains("herd: exit ")).collect();
        assert_eq!(exits.len(), 3, "{mode}: {exits:?}");
        assert!(exits.iter().all(|l| l.contains("code 0") && l.contains("expected=true")), "{mode}: {exits:?}");
    }
}

#[test]
fn herd_worker_on_io_uring_serves_where_the_kernel_allows() {
    for mode in ["shared/epoll-rotate", "handoff", "reuseport"] {
        let serve = Serve::start_run(
            &["--mode", mode, "--backend", "io-uring", "-w", "2", "-l", "127.0.0.1:0", "--", HERD, "worker"],
            2,
        );
        if serve.log().iter().any(|l| l.contains("io-uring is unavailable")) {
            eprintln!("SKIPPED: {mode} on io_uring: {}", serve.log().join(" | "));
            continue;
        }
        let (_, failures) = load(&serve.target, 200, 4);
        assert!(failures.is_empty(), "{mode}: {}", summary(&failures));
        stop_cleanly(serve, mode);
    }
}

#[test]
fn a_program_that_knows_only_listen_fds_serves_in_shared_and_reuseport_modes() {
    let Some(python) = python() else { return };
    let script = example("listen_fds_worker.py");
    for mode in ["shared", "reuseport"] {
        let serve = Serve::start_run(
            &["--mode", mode, "-w", "2", "-l", "127.0.0.1:0", "--ready-delay", "0.3", "--", python, &script],
            2,
        );
        let (bodies, failures) = load_bodies(&serve.target, 200, 4);
        assert!(failures.is_empty(), "{mode}: {}", summary(&failures));
        assert!(bodies.iter().all(|b| b.contains("listen-fds")), "{mode}: {:?}", &bodies[..3]);
        let workers: BTreeSet<&str> = bodies.iter().filter_map(|b| b.split_whitespace().nth(1)).collect();
        assert_eq!(workers.len(), 2, "{mode}: both workers answer: {workers:?}");
        // It never spoke on its channel: SIGTERM stops it.
        let stopped = stop_cleanly(serve, mode);
        assert!(stopped.log.iter().filter(|l| l.contains("herd: exit ")).all(|l| l.contains("expected=true")));
    }
}

#[test]
fn the_python_handoff_worker_serves_in_every_mode() {
    let Some(python) = python() else { return };
    let script = example("handoff_worker.py");
    for mode in ["handoff", "shared", "reuseport"] {
        let serve = Serve::start_run(&["--mode", mode, "-w", "2", "-l", "127.0.0.1:0", "--", python, &script], 2);
        let (bodies, failures) = load_bodies(&serve.target, 300, 4);
        assert!(failures.is_empty(), "{mode}: {}", summary(&failures));
        assert!(bodies.iter().all(|b| b.contains("python")), "{mode}: {:?}", &bodies[..3]);
        let stopped = stop_cleanly(serve, mode);
        if mode == "handoff" {
            let (_, primary) = counters(&stopped.stdout);
            assert_eq!(primary[0], 300, "the primary accepted every connection and handed it on");
        }
        let exits: Vec<&String> = stopped.log.iter().filter(|l| l.contains("herd: exit ")).collect();
        assert!(
            exits.iter().all(|l| l.contains("code 0")),
            "{mode}: it reads its channel and stops on Stop: {exits:?}"
        );
    }
}

/// Every mode: a reload under continuous load runs the program file as it is now.
#[test]
fn sighup_runs_the_replaced_program_and_loses_no_request() {
    let dir = TempDir::new("reload");
    for mode in ["shared", "handoff", "reuseport"] {
        let program = dir.0.join(format!("worker-{}", mode.replace('/', "-")));
        write_script(&program, &format!("exec {HERD} worker --tag v1"));
        let serve =
            Serve::start_run(&["--mode", mode, "-w", "2", "-l", "127.0.0.1:0", "--", program.to_str().unwrap()], 0);
        serve.wait_for_log(|l| l.contains("herd: fork "), 2);
        std::thread::sleep(Duration::from_millis(300));
        let fds_before = fd_count(serve.pid());
        let client = util::Continuous::start(&serve.target, 4);
        std::thread::sleep(Duration::from_millis(300));
        write_script(&program, &format!("exec {HERD} worker --tag v2"));
        serve.signal(Signal::HUP);
        serve.wait_for_log(|l| l.contains("reload generation=1 finished"), 1);
        std::thread::sleep(Duration::from_millis(300));
        let (bodies, failures) = client.finish();
        assert!(failures.is_empty(), "{mode}: {}", summary(&failures));
        assert!(bodies.iter().any(|b| b.ends_with("v1\n")), "{mode}: the old code answered before");
        let after = util::load_bodies(&serve.target, 40, 4).0;
        assert!(after.iter().all(|b| b.ends_with("v2\n")), "{mode}: the new code answers after: {after:?}");
        // The old generation's notify sockets, channels and pidfds are closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fd_count(serve.pid()) > fds_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(fd_count(serve.pid()), fds_before, "{mode}: the primary's descriptors after a reload");
        stop_cleanly(serve, mode);
    }
}

/// What the program finds when it starts: default signal dispositions, an empty mask, and
/// descriptors 0-2 plus only what herd passed (never one the primary's own program left open
/// without close-on-exec).
#[test]
fn a_workers_program_gets_default_signals_and_only_herds_descriptors() {
    // (mode, descriptors passed, where the counters memfd is)
    for (mode, passed, counters_fd) in
        [("shared/epoll-rotate", 3, 5), ("shared/epoll-balance", 4, 5), ("handoff", 3, 5), ("reuseport", 4, 6)]
    {
        // The shell opens descriptor 7 without close-on-exec and becomes herd: herd's primary
        // has it open, and must not pass it on.
        let serve_args = format!(
            "exec 7</dev/null; exec {HERD} run --mode {mode} -w 1 -l 127.0.0.1:0 --ready-delay 0.1 -- sleep 30"
        );
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&serve_args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let serve = Serve::attach(&mut child, 1);
        assert!(std::fs::read_link(format!("/proc/{}/fd/7", serve.pid())).is_ok(), "the primary holds fd 7");
        let worker = serve.worker_pids()[&0];
        let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
        for field in ["SigBlk", "SigIgn", "SigCgt"] {
            let line = status.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(line.ends_with("0000000000000000"), "{mode}: {line}");
        }
        let fds: BTreeSet<i32> = std::fs::read_dir(format!("/proc/{worker}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        let expected: BTreeSet<i32> = (0..3 + passed).collect();
        assert_eq!(fds, expected, "{mode}: the program's descriptors");
        let link = |fd: i32| std::fs::read_link(format!("/proc/{worker}/fd/{fd}")).unwrap().display().to_string();
        assert!(link(counters_fd).contains("memfd:herd-counters"), "{mode}: the counters memfd");
        if mode == "shared/epoll-balance" {
            assert!(link(6).contains("eventfd"), "{mode}: then the hand-on eventfd: {}", link(6));
        }
        let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        let var = |k: &str| environ.split('\0').find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_owned));
        if mode == "handoff" {
            assert_eq!(var("LISTEN_FDS"), None, "no listener in handoff mode");
            assert_eq!(var("HERD_LANE_FD").as_deref(), Some("4"));
        } else {
            assert_eq!(var("LISTEN_FDS").as_deref(), Some("1"));
            assert_eq!(var("LISTEN_PID"), Some(worker.to_string()));
            assert!(link(3).starts_with("socket:"), "{mode}: fd 3 is the listener");
        }
        assert_eq!(var("HERD_CHANNEL_FD").as_deref(), Some(if mode == "handoff" { "3" } else { "4" }));
        assert_eq!(var("HERD_WORKER_ID").as_deref(), Some("0"));
        assert!(var("NOTIFY_SOCKET").is_some_and(|s| s.starts_with('@')), "{mode}");
        // `sleep` never reads its channel: SIGTERM stops it.
        let stopped = serve.stop();
        let _ = child.wait();
        assert!(stopped.log.iter().any(|l| l.contains("herd: exit ") && l.contains("signal 15")), "{:?}", stopped.log);
    }
}

#[test]
fn a_worker_that_sends_ready_on_its_notify_socket_is_listening() {
    let Some(python) = python() else { return };
    // Says READY=1 after 200 ms, then sleeps; herd must count it listening without a delay.
    let code = "import os, socket, time\n\
                time.sleep(0.2)\n\
                a = os.environ['NOTIFY_SOCKET']\n\
                a = '\\0' + a[1:] if a.startswith('@') else a\n\
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                s.sendto(b'READY=1', a)\n\
                time.sleep(30)\n";
    let serve = Serve::start_run(&["--mode", "shared", "-w", "2", "-l", "127.0.0.1:0", "--", python, "-c", code], 2);
    let listening = serve.log().iter().filter(|l| l.contains("herd: listening ")).count();
    assert_eq!(listening, 2);
    stop_cleanly(serve, "notify");
}

#[test]
fn the_primary_tells_its_service_manager_ready_reloading_and_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.0.join("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    manager.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = manager.recv(&mut buf).expect("a datagram from the primary within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Datagrams until one has `line`; returns every datagram read.
    let until = |line: &str| {
        let mut seen = Vec::new();
        loop {
            let d = next();
            let done = d.lines().any(|l| l == line);
            seen.push(d);
            if done {
                return seen;
            }
        }
    };
    let serve = Serve::start_with_env(
        "serve",
        &["-w", "2", "-l", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
        2,
    );
    let ready = until("READY=1");
    let last = ready.last().unwrap();
    assert!(last.contains(&format!("MAINPID={}", serve.pid())), "{ready:?}");
    assert!(last.contains("STATUS=2 of 2 workers listening, generation 0"), "{ready:?}");
    serve.signal(Signal::HUP);
    let reloading = until("RELOADING=1");
    let stamp: u64 = reloading
        .last()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    assert!(stamp <= now_usec && now_usec - stamp < 10_000_000, "MONOTONIC_USEC {stamp} is now ({now_usec})");
    let again = until("READY=1");
    assert!(
        reloading.iter().chain(&again).any(|d| d.contains("generation 1")),
        "STATUS names the new generation: {reloading:?} {again:?}"
    );
    serve.signal(Signal::TERM);
    until("STOPPING=1");
    // Asked already: a second SIGTERM could land after the primary unblocked its signals on
    // the way out, and end it with that signal.
    let mut serve = serve;
    let stopped = serve.wait();
    assert!(stopped.status.success(), "{:?}\n{}\n{}", stopped.status, stopped.stdout, stopped.log.join("\n"));
}

#[test]
fn herd_run_refuses_a_missing_program_and_no_program() {
    let out =
        std::process::Command::new(HERD).args(["run", "-l", "127.0.0.1:0", "--", "/no/such/program"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/program") && err.contains("no such file"), "{err}");
    let out = std::process::Command::new(HERD).args(["run", "-l", "127.0.0.1:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no program to run"));
}

#[test]
fn herd_worker_outside_herd_says_why_it_cannot_start() {
    let out = std::process::Command::new(HERD).arg("worker").env_remove("HERD_CHANNEL_FD").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HERD_CHANNEL_FD is not set"), "{err}");
    let out = std::process::Command::new(HERD).arg("worker").env("HERD_CHANNEL_FD", "9").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HERD_CHANNEL_FD=9") && err.contains("not open"), "{err}");
}

/// A program may make its listener blocking (Python's `setblocking(True)`): the flag belongs to
/// the open file, which the primary shares in reuseport mode. The primary must still never
/// sleep in `accept4` — here when it drains the listener of a slot scaled away.
#[test]
fn a_program_that_makes_its_listener_blocking_never_blocks_the_primary() {
    let Some(python) = python() else { return };
    let code = "import os, socket, signal, sys\n\
                s = socket.socket(fileno=3)\n\
                s.setblocking(True)\n\
                signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n\
                body = ('worker %s pid %d\\n' % (os.environ['HERD_WORKER_ID'], os.getpid())).encode()\n\
                head = b'HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n' % len(body)\n\
                while True:\n\
                \x20   c, _ = s.accept()\n\
                \x20   c.recv(65536)\n\
                \x20   c.sendall(head + body)\n\
                \x20   c.close()\n";
    let serve = Serve::start_run(
        &["--mode", "reuseport", "-w", "2", "-l", "127.0.0.1:0", "--ready-delay", "0.2", "--", python, "-c", code],
        2,
    );
    let (_, failures) = load(&serve.target, 50, 2);
    assert!(failures.is_empty(), "{}", summary(&failures));
    // Slot 1 goes: its program gets SIGTERM and exits, then the primary drains its listener.
    serve.signal(Signal::TTOU);
    serve.wait_for_log(|l| l.contains("herd: exit worker=1"), 1);
    std::thread::sleep(Duration::from_millis(300));
    let (_, failures) = load(&serve.target, 50, 2);
    assert!(failures.is_empty(), "after scaling down: {}", summary(&failures));
    // A primary asleep in accept4 would never read this SIGTERM.
    let stopped = serve.stop();
    assert!(stopped.status.success(), "{:?}\n{}", stopped.status, stopped.log.join("\n"));
}

//! Regression tests for defects that only faults reach: each one failed before its fix. The
//! clusters run in separate processes (`herd serve`, or the `probe` example) in their own
//! process groups; every client is bounded in time.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use util::{Continuous, Serve};

/// The `probe` example, built by `cargo build --examples` (which `make test` runs first).
fn probe_path() -> PathBuf {
    let herd = PathBuf::from(env!("CARGO_BIN_EXE_herd"));
    let path = herd.parent().unwrap().join("examples").join("probe");
    assert!(path.exists(), "{} is missing: run `cargo build --examples` first (make test does)", path.display());
    path
}

/// Runs a probe scenario to the end (at most 30 s) and returns its stdout.
fn probe(scenario: &str) -> String {
    let mut child = Command::new(probe_path())
        .arg(scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = rustix::process::kill_process_group(util::pid(child.id()), Signal::KILL);
            let _ = child.wait();
            let mut out = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            panic!("probe {scenario} did not finish within 30 s; it printed:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "probe {scenario} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// A probe scenario that serves until SIGTERM: started, and read until its `ready` line.
struct LiveProbe {
    child: Child,
    addr: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LiveProbe {
    fn start(scenario: &str) -> LiveProbe {
        let mut child = Command::new(probe_path())
            .arg(scenario)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = rustix::process::kill_process_group(util::pid(child.id()), Signal::KILL);
                let _ = child.wait();
                panic!("probe {scenario} never became ready");
            };
            if line.starts_with("FAIL") {
                let _ = rustix::process::kill_process_group(util::pid(child.id()), Signal::KILL);
                let _ = child.wait();
                panic!("probe {scenario}: {line}");
            }
            if let Some(rest) = line.strip_prefix("ready addr=") {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                return LiveProbe { child, addr, lines };
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the rest of its output; asserts it finished cleanly.
    fn stop(mut self) -> Vec<String> {
        rustix::process::kill_process(util::pid(self.pid()), Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "probe did not stop within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let rest: Vec<String> = self.lines.try_iter().collect();
        assert!(rest.iter().any(|l| l == "ok: finished"), "probe did not finish cleanly: {rest:?}");
        rest
    }
}

impl Drop for LiveProbe {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process_group(util::pid(self.child.id()), Signal::KILL);
        let _ = self.child.wait();
    }
}

/// One connection: read everything the server sends, within `timeout`.
fn read_all(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn reuseport_disconnected_slot_leaves_no_listener_unattended() {
    let probe = LiveProbe::start("reuseport-disconnect");
    let answered =
        (0..30).filter(|_| read_all(probe.addr, Duration::from_secs(2)).is_ok_and(|s| !s.is_empty())).count();
    probe.stop();
    assert_eq!(answered, 30, "connections hashed to the disconnected worker's listener hung");
}

#[test]
fn primary_sends_to_a_stalled_worker_never_block_the_primary() {
    let out = probe("stalled-channel");
    assert!(out.contains("ok: sends returned"), "{out}");
    assert!(out.contains("unresponsive worker=1") || out.contains("exit worker=1"), "{out}");
}

#[test]
fn handed_off_stream_converted_to_std_closes_when_dropped() {
    let probe = LiveProbe::start("handoff-into-std");
    // The first connection keeps the worker busy for a second; the second is handed off
    // meanwhile and waits, unread, in the worker's channel.
    let busy = TcpStream::connect(probe.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut second = TcpStream::connect(probe.addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Stop the primary: it can no longer do anything about the second connection.
    rustix::process::kill_process(util::pid(probe.pid()), Signal::STOP).unwrap();
    second.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    second.write_all(b"x").unwrap();
    let mut out = String::new();
    let started = Instant::now();
    let result = second.read_to_string(&mut out);
    let took = started.elapsed();
    rustix::process::kill_process(util::pid(probe.pid()), Signal::CONT).unwrap();
    drop(busy);
    probe.stop();
    assert!(result.is_ok(), "no end of file while the primary was stopped ({result:?} after {took:?})");
    assert_eq!(out, "bye");
}

#[test]
fn output_buffered_before_fork_is_printed_once() {
    let out = probe("buffered-output");
    assert_eq!(out.matches("before-fork").count(), 1, "{out}");
}

#[test]
fn a_workers_children_start_with_default_signal_dispositions() {
    let out = probe("worker-child-signals");
    let child = out.lines().find(|l| l.starts_with("SigQ")).unwrap_or_else(|| panic!("{out}"));
    let mask = |line: &str, name: &str| {
        let hex = line.split(name).nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
        u64::from_str_radix(hex, 16).unwrap()
    };
    // The signals herd's workers leave to the primary; glibc's spawn may ignore its own
    // internal real-time signals (32, 33) in the child, which is none of herd's doing.
    let herds: u64 = [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTTIN, libc::SIGTTOU, libc::SIGPIPE]
        .iter()
        .map(|s| 1u64 << (s - 1))
        .sum();
    assert_eq!(mask(child, "SigIgn:") & herds, 0, "the worker's child ignores signals herd set: {child}");
    assert_eq!(mask(child, "SigBlk:"), 0, "the worker's child blocks signals: {child}");
    let worker = out.lines().find(|l| l.starts_with("worker ")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(mask(worker, "SigBlk:"), 0, "the worker blocks signals: {worker}");
}

#[test]
fn a_thread_in_the_primary_delays_a_restart_instead_of_ending_the_cluster() {
    let out = probe("thread-during-restart");
    assert!(out.contains("ok: slot 0 refilled"), "{out}");
    assert!(out.contains("spawn failed worker=0"), "the refused fork was reported: {out}");
}

#[test]
fn a_child_reaped_by_someone_else_is_replaced() {
    // bash passes an ignored SIGCHLD on through exec: the kernel then reaps the workers itself,
    // and waiting for them fails with ECHILD.
    let script = format!("trap '' CHLD; exec '{}' serve --workers 2 --listen 127.0.0.1:0", env!("CARGO_BIN_EXE_herd"));
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let serve = Serve::attach(&mut child, 2);
    let victim = serve.worker_pids()[&1];
    rustix::process::kill_process(util::pid(victim), Signal::KILL).unwrap();
    serve.wait_for_log(|l| l.contains(&format!("exit worker=1 pid={victim}")), 1);
    serve.wait_for_log(|l| l.contains("herd: listening worker=1 "), 2);
    let (seen, failures) = util::load(&serve.target, 20, 2);
    assert!(failures.is_empty(), "{}", util::summary(&failures));
    assert_eq!(seen.values().sum::<usize>(), 20);
    let stopped = serve.stop();
    let _ = child.wait();
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
}

#[test]
fn a_reload_racing_a_crash_refills_the_slot() {
    // The new generation takes 500 ms to fail; the old worker 0 dies meanwhile.
    let args = ["--workers", "2", "--listen", "127.0.0.1:0", "--broken-generation", "1", "--startup-delay", "500"];
    let serve = Serve::start(&args, 2);
    let old = serve.worker_pids();
    serve.signal(Signal::HUP);
    serve.wait_for_log(|l| l.contains("reload generation=1 started"), 1);
    rustix::process::kill_process(util::pid(old[&0]), Signal::KILL).unwrap();
    serve.wait_for_log(|l| l.contains("reload generation=1 failed"), 1);
    // Slot 0 is filled again, with a worker of the generation that works.
    serve.wait_for_log(|l| l.contains("herd: listening worker=0 "), 2);
    let (seen, failures) = util::load(&serve.target, 40, 4);
    assert!(failures.is_empty(), "{}", util::summary(&failures));
    assert!(seen.contains_key(&0) && seen.contains_key(&1), "both slots serve: {seen:?}");
    let stopped = serve.stop();
    assert!(stopped.status.success());
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
}

/// How many processes run as `uid` now.
fn processes_of(uid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())))
        .count()
}

/// `herd serve ARGS` as user `nobody` under `RLIMIT_NPROC` = (nobody's processes now) + `nproc`,
/// or `None` (skipped, loudly) where this test cannot drop privileges.
fn serve_as_nobody_with_nproc(nproc: usize, args: &[&str], workers: usize) -> Option<(Serve, Child)> {
    if !rustix::process::geteuid().is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: needs root and setpriv(1) to run herd serve as an unprivileged user under RLIMIT_NPROC");
        return None;
    }
    let limit = processes_of(65534) + nproc;
    // The soft limit only: raising it again later needs no privilege (the hard one would).
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "prlimit", &format!("--nproc={limit}:"), "--"])
        .arg(env!("CARGO_BIN_EXE_herd"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let serve = Serve::attach(&mut child, workers);
    Some((serve, child))
}

/// Raises `pid`'s soft `RLIMIT_NPROC` to its hard limit, as the same unprivileged user (the
/// only one allowed to, without `CAP_SYS_RESOURCE`).
fn lift_nproc(pid: u32) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let hard = limits.lines().find(|l| l.starts_with("Max processes")).unwrap().split_whitespace().nth(3).unwrap();
    let ok = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "prlimit", "--pid", &pid.to_string()])
        .arg(format!("--nproc={hard}:"))
        .status()
        .unwrap();
    assert!(ok.success(), "prlimit --pid {pid} --nproc={hard}:");
}

#[test]
fn a_fork_that_fails_keeps_the_primary_serving_and_fills_the_slot_later() {
    // The primary and two workers fit; the third fork fails with EAGAIN.
    let Some((serve, mut child)) = serve_as_nobody_with_nproc(3, &["--workers", "3", "--listen", "127.0.0.1:0"], 2)
    else {
        return;
    };
    let failed = serve.wait_for_log(|l| l.contains("spawn failed worker=2"), 1);
    assert!(failed.contains("fork"), "the log names the call that failed: {failed}");
    let (seen, failures) = util::load(&serve.target, 20, 2);
    assert!(failures.is_empty(), "the workers it has serve: {}", util::summary(&failures));
    assert!(!seen.contains_key(&2));
    lift_nproc(serve.pid());
    serve.wait_for_log(|l| l.contains("herd: listening worker=2 "), 1);
    let stopped = serve.stop();
    let _ = child.wait();
    assert!(!stopped.log.iter().any(|l| l.contains("giving up")), "{}", stopped.log.join("\n"));
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
}

#[test]
fn a_reload_whose_fork_fails_halfway_keeps_every_worker_supervised() {
    // Room for the primary, two workers and one more: the reload's second fork fails.
    let Some((serve, mut child)) =
        serve_as_nobody_with_nproc(4, &["--workers", "2", "--listen", "127.0.0.1:0", "--mode", "reuseport"], 2)
    else {
        return;
    };
    let load = Continuous::start(&serve.target, 2);
    serve.signal(Signal::HUP);
    let failed = serve.wait_for_log(|l| l.contains("reload generation=1 failed"), 1);
    assert!(failed.contains("fork"), "{failed}");
    std::thread::sleep(Duration::from_millis(300));
    let (bodies, failures) = load.finish();
    assert!(failures.is_empty(), "{}", util::summary(&failures));
    assert!(bodies.len() > 20);
    let stopped = serve.stop();
    let _ = child.wait();
    assert!(stopped.status.success(), "{}", stopped.log.join("\n"));
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
}

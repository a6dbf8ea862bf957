//! herd under faults and bad input, in every mode: out of descriptors with hundreds of idle
//! clients, slow and idle clients, malformed HTTP, a worker stopped under load. Every cluster
//! is a `herd serve` process in its own process group; every client is bounded in time.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use util::{Serve, Target};

const MODES: [&str; 4] = ["shared", "shared/blocking", "handoff", "reuseport"];

/// `--mode M` (and `--accept S` for `shared/S`).
fn mode_args(mode: &str) -> Vec<String> {
    match mode.split_once('/') {
        Some((m, accept)) => vec!["--mode".into(), m.into(), "--accept".into(), accept.into()],
        None => vec!["--mode".into(), mode.into()],
    }
}

fn addr(serve: &Serve) -> SocketAddr {
    match serve.target {
        Target::Tcp(a) => a,
        Target::Unix(_) => panic!("tcp"),
    }
}

/// CPU seconds (user + system) `pids` have used so far.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|stat| {
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
            (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) as f64 / ticks
        })
        .sum()
}

/// The primary and its current workers.
fn server_pids(serve: &Serve) -> Vec<u32> {
    let mut pids = vec![serve.pid()];
    pids.extend(serve.worker_pids().values());
    pids
}

fn lines_with(serve: &Serve, needle: &str) -> usize {
    serve.log().iter().filter(|l| l.contains(needle)).count()
}

#[test]
fn out_of_descriptors_with_hundreds_of_idle_clients_the_server_does_not_spin_and_recovers() {
    for mode in MODES {
        let script = format!(
            "ulimit -n 64 && exec '{}' serve --workers 2 --listen 127.0.0.1:0 {}",
            env!("CARGO_BIN_EXE_herd"),
            mode_args(mode).join(" ")
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let serve = Serve::attach(&mut child, 2);
        let forks = lines_with(&serve, "herd: fork ");
        // Far more idle connections than the server has descriptors for: the rest wait in the
        // kernel's backlog.
        let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(addr(&serve)).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(500));
        let pids = server_pids(&serve);
        let before = cpu_seconds(&pids);
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_seconds(&pids) - before;
        println!("{mode}: {:.1} ms of CPU in the second out of descriptors with 300 idle clients", used * 1000.0);
        assert!(used < 0.05, "{mode}: {used:.3} s of CPU in 1 s while out of descriptors: a spin");
        drop(idle);
        let (seen, failures) = util::load(&serve.target, 20, 2);
        assert!(failures.is_empty(), "{mode}: after the idle clients left: {}", util::summary(&failures));
        assert_eq!(seen.values().sum::<usize>(), 20);
        assert!(serve.log().join("\n").contains("Too many open files"), "{mode}: the limit was reached");
        assert_eq!(lines_with(&serve, "herd: fork "), forks, "{mode}: nothing was restarted");
        assert_eq!(lines_with(&serve, "herd: exit "), 0, "{mode}: nothing died");
        let stopped = serve.stop();
        let _ = child.wait();
        util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
    }
}

/// Reads until the server closes the connection (or `within` passes); returns what it sent.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(within))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn idle_and_slow_clients_do_not_stop_new_ones_and_are_closed_after_the_request_timeout() {
    for mode in MODES {
        let mut args = vec!["--workers".to_owned(), "2".into(), "--listen".into(), "127.0.0.1:0".into()];
        args.extend(mode_args(mode));
        args.extend(["--request-timeout".into(), "1".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let serve = Serve::start(&args, 2);
        // The blocking strategy serves one connection at a time per worker; the others serve
        // many at once.
        let n = if mode == "shared/blocking" { 2 } else { 200 };
        let mut idle: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr(&serve)).unwrap()).collect();
        let mut slow = TcpStream::connect(addr(&serve)).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: sl").unwrap();
        let started = Instant::now();
        if mode != "shared/blocking" {
            let (seen, failures) = util::load(&serve.target, 20, 2);
            assert!(failures.is_empty(), "{mode}: new clients are served: {}", util::summary(&failures));
            assert_eq!(seen.values().sum::<usize>(), 20);
        }
        let answer = read_until_closed(&mut slow, Duration::from_secs(5)).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 408 "), "{mode}: {:?}", String::from_utf8_lossy(&answer));
        for s in &mut idle {
            let answer = read_until_closed(s, Duration::from_secs(5)).unwrap();
            assert!(answer.is_empty(), "{mode}: an idle connection is closed without a word");
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900), "{mode}: closed after the timeout, not before ({took:?})");
        let stopped = serve.stop();
        assert!(stopped.status.success(), "{mode}");
    }
}

/// Sends `request` on a new connection and returns everything the server answered before it
/// closed.
fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(util::IO_TIMEOUT)).unwrap();
    // A peer that closes with unread input resets the connection; the answer may then be cut.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    s.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn malformed_requests_get_400_431_or_a_close_and_the_server_stays_up() {
    for mode in MODES {
        let mut args = vec!["--workers".to_owned(), "2".into(), "--listen".into(), "127.0.0.1:0".into()];
        args.extend(mode_args(mode));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let serve = Serve::start(&args, 2);
        let a = addr(&serve);
        let status = |bytes: &[u8]| String::from_utf8_lossy(&bytes[..bytes.len().min(12)]).into_owned();

        let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let answer = exchange(a, &garbage);
        assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 400 "), "{mode}: garbage: {}", status(&answer));
        let answer = exchange(a, b"GET /\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with(b"HTTP/1.1 400 "), "{mode}: no version: {}", status(&answer));
        let answer = exchange(a, b"GET / HTTP/1.1\r\nX-Bad: a\0b\r\n\r\n");
        assert!(answer.starts_with(b"HTTP/1.1 400 "), "{mode}: NUL: {}", status(&answer));
        let mut huge = b"GET / HTTP/1.1\r\nX-Huge: ".to_vec();
        huge.resize(1 << 20, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(a, &huge);
        assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 431 "), "{mode}: 1 MB header: {}", status(&answer));
        let mut burst = Vec::new();
        for _ in 0..999 {
            burst.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        burst.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = exchange(a, &burst);
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 1000, "{mode}: a pipelined burst of 1000");

        let (seen, failures) = util::load(&serve.target, 20, 2);
        assert!(failures.is_empty(), "{mode}: {}", util::summary(&failures));
        assert_eq!(seen.values().sum::<usize>(), 20);
        assert_eq!(lines_with(&serve, "herd: exit "), 0, "{mode}: no worker died");
        assert!(serve.stop().status.success(), "{mode}");
    }
}

/// The figures `herd load --json` prints that these tests read.
fn json_number(json: &str, key: &str) -> f64 {
    let rest = json.split(&format!("\"{key}\":")).nth(1).unwrap_or_else(|| panic!("no {key} in {json}"));
    rest.trim_start().split([',', '}']).next().unwrap().trim().parse().unwrap()
}

#[test]
fn a_worker_stopped_for_two_seconds_under_load_fails_no_request() {
    for mode in MODES {
        let mut args = vec!["--workers".to_owned(), "4".into(), "--listen".into(), "127.0.0.1:0".into()];
        args.extend(mode_args(mode));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let serve = Serve::start(&args, 4);
        let url = format!("http://{}/", addr(&serve));
        let load = Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(["load", &url, "--connections", "16", "--duration", "4", "--timeout", "10000", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let stopped_pid = serve.worker_pids()[&1];
        rustix::process::kill_process(util::pid(stopped_pid), Signal::STOP).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        rustix::process::kill_process(util::pid(stopped_pid), Signal::CONT).unwrap();
        let out = load.wait_with_output().unwrap();
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        let requests = json_number(&json, "requests");
        let errors: f64 = ["refused", "reset", "timeout", "bad_status", "no_port", "other"]
            .iter()
            .map(|k| json_number(&json, k))
            .sum();
        println!(
            "{mode}: {requests} requests, p99 {} us, max {} us while worker 1 was stopped for 2 s",
            json_number(&json, "p99_us"),
            json_number(&json, "max_us")
        );
        assert!(requests > 100.0, "{mode}: the load ran: {json}");
        assert_eq!(errors, 0.0, "{mode}: requests failed: {json}");
        assert_eq!(lines_with(&serve, "herd: exit "), 0, "{mode}: the stopped worker was not killed");
        assert!(serve.stop().status.success(), "{mode}");
    }
}

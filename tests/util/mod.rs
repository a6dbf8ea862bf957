//! Shared helpers for the integration tests: run `herd serve` in its own process group, load it
//! with a bounded client on loopback, read its log and counters, and check nothing is left.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// How long any one client operation may take before the test fails it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a server listens.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A `herd serve` process (the primary), in its own process group.
pub struct Serve {
    child: Option<Child>,
    pid: u32,
    pub target: Target,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

/// What a stopped server left.
#[derive(Debug)]
pub struct Stopped {
    /// The primary's exit status (success for an attached process: its parent reaps it).
    pub status: ExitStatus,
    pub stdout: String,
    pub log: Vec<String>,
    pub worker_pids: Vec<u32>,
}

impl Serve {
    /// Starts `herd serve ARGS` and waits until `workers` workers report `listening`.
    pub fn start(args: &[&str], workers: usize) -> Serve {
        Serve::from_child(spawn_serve(args), workers)
    }

    /// Starts `herd run ARGS` (options, `--`, the command) and waits until `workers` workers
    /// report `listening`.
    pub fn start_run(args: &[&str], workers: usize) -> Serve {
        Serve::from_child(spawn_herd("run", args, &[]), workers)
    }

    /// The `herd` binary at `exe` (a copy), `ARGS`, waiting for `workers` listening.
    pub fn start_exe(exe: &std::path::Path, args: &[&str], workers: usize) -> Serve {
        // A file just written may be "busy" for a moment: another test thread's child, between
        // its fork and its exec, can still hold the descriptor the copy wrote through.
        let mut tries = 0;
        let child = loop {
            match Command::new(exe)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
            {
                Ok(child) => break child,
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("spawn the herd copy: {e}"),
            }
        };
        Serve::from_child(child, workers)
    }

    /// `herd COMMAND ARGS` with extra environment variables, waiting for `workers` listening.
    pub fn start_with_env(command: &str, args: &[&str], env: &[(&str, &str)], workers: usize) -> Serve {
        Serve::from_child(spawn_herd(command, args, env), workers)
    }

    /// Takes over a `herd serve` started some other way (through a shell that `exec`s it, say),
    /// in its own process group, with piped stdout and stderr; the caller reaps it.
    pub fn attach(child: &mut Child, workers: usize) -> Serve {
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        Serve::from_parts(None, Some(pid), stdout, stderr, workers)
    }

    /// Starts `herd serve ARGS` and returns once it is bound, without waiting for workers (for
    /// clusters whose workers never become ready).
    pub fn start_unready(args: &[&str]) -> Serve {
        Serve::from_child(spawn_serve(args), 0)
    }

    fn from_child(mut child: Child, workers: usize) -> Serve {
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        Serve::from_parts(Some(child), None, stdout, stderr, workers)
    }

    fn from_parts(
        child: Option<Child>,
        pid: Option<u32>,
        mut stdout: std::process::ChildStdout,
        stderr: std::process::ChildStderr,
        workers: usize,
    ) -> Serve {
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (lines, cv) = &*sink;
                lines.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let pid = pid.or(child.as_ref().map(Child::id)).unwrap();
        let mut serve =
            Serve { child, pid, target: Target::Tcp("0.0.0.0:0".parse().unwrap()), log, stdout: Some(stdout) };
        let line = serve.wait_for_log(|l| l.contains("herd: serving on "), 1);
        let addr = line.split("serving on ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
        serve.target = match addr.strip_prefix("unix:") {
            Some(path) => Target::Unix(PathBuf::from(path)),
            None => Target::Tcp(addr.parse().expect("a socket address in the serving line")),
        };
        if workers > 0 {
            serve.wait_for_log(|l| l.contains("herd: listening "), workers);
        }
        serve
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits (at most 10 s) until `count` log lines match; returns the last matching one.
    pub fn wait_for_log(&self, matches: impl Fn(&str) -> bool, count: usize) -> String {
        let (lines, cv) = &*self.log;
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut guard = lines.lock().unwrap();
        loop {
            let found: Vec<&String> = guard.iter().filter(|l| matches(l)).collect();
            if found.len() >= count {
                return found[count - 1].clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {count} matching log lines; log so far:\n{}",
                guard.join("\n")
            );
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    /// The pid of the current worker in each slot, from the `fork` log lines.
    pub fn worker_pids(&self) -> BTreeMap<usize, u32> {
        worker_pids_in(&self.log())
    }

    /// Sends `signal` to the primary.
    pub fn signal(&self, signal: Signal) {
        rustix::process::kill_process(pid(self.pid()), signal).expect("signal the primary");
    }

    /// SIGTERM, then waits (at most 15 s) for the primary to exit.
    pub fn stop(mut self) -> Stopped {
        self.signal(Signal::TERM);
        self.wait()
    }

    /// Waits (at most 15 s) for the primary to exit on its own.
    pub fn wait(&mut self) -> Stopped {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = match self.child.take() {
            Some(mut child) => loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    let _ = rustix::process::kill_process_group(pid(child.id()), Signal::KILL);
                    let _ = child.wait();
                    panic!("herd serve did not exit within 15 s; log:\n{}", self.log().join("\n"));
                }
                std::thread::sleep(Duration::from_millis(10));
            },
            // Attached: not our child, so wait for its stdout to close instead.
            None => None,
        };
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let status = status.unwrap_or_else(|| {
            while alive(self.pid) {
                assert!(Instant::now() < deadline, "herd serve did not exit within 15 s");
                std::thread::sleep(Duration::from_millis(10));
            }
            ExitStatus::default()
        });
        // The stderr reader ends with the pipe; give it a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let log = self.log();
        let worker_pids = all_worker_pids(&log);
        Stopped { status, stdout, log, worker_pids }
    }
}

impl Drop for Serve {
    /// A test that failed half-way must not leave the cluster behind: kill its process group.
    fn drop(&mut self) {
        if self.stdout.is_some() {
            let _ = rustix::process::kill_process_group(pid(self.pid), Signal::KILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// `herd serve ARGS` in its own process group, with piped output.
fn spawn_serve(args: &[&str]) -> Child {
    spawn_herd("serve", args, &[])
}

/// `herd COMMAND ARGS` in its own process group, with piped output and `env` added.
fn spawn_herd(command: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg(command)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn herd serve")
}

pub fn pid(raw: u32) -> Pid {
    Pid::from_raw(raw as i32).expect("a positive pid")
}

fn field(line: &str, name: &str) -> Option<u32> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

fn worker_pids_in(log: &[String]) -> BTreeMap<usize, u32> {
    let mut pids = BTreeMap::new();
    for line in log.iter().filter(|l| l.contains("herd: fork ")) {
        pids.insert(field(line, "worker").unwrap() as usize, field(line, "pid").unwrap());
    }
    pids
}

fn all_worker_pids(log: &[String]) -> Vec<u32> {
    log.iter().filter(|l| l.contains("herd: fork ")).map(|l| field(l, "pid").unwrap()).collect()
}

/// Whether a process with this pid exists (and is not a zombie we could still see).
pub fn alive(raw: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{raw}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Asserts that none of `pids` is running, waiting up to `within` for them to go.
pub fn assert_all_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes still running: {left:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One `GET` with `Connection: close`; returns the body.
pub fn get(target: &Target) -> std::io::Result<String> {
    get_path(target, "/")
}

/// Like [`get`], for `path`.
pub fn get_path(target: &Target, path: &str) -> std::io::Result<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n");
    let request = request.as_bytes();
    let mut response = Vec::new();
    match target {
        Target::Tcp(addr) => {
            let mut s = TcpStream::connect_timeout(addr, IO_TIMEOUT)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.write_all(request)?;
            s.read_to_end(&mut response)?;
        }
        Target::Unix(path) => {
            let mut s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.write_all(request)?;
            s.read_to_end(&mut response)?;
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    if !text.starts_with("HTTP/1.1 200 OK\r\n") {
        return Err(std::io::Error::other(format!("bad response: {text:?}")));
    }
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

/// The worker id in a body `worker <id> pid <pid>`.
pub fn worker_of(body: &str) -> usize {
    body.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no worker id in {body:?}"))
}

/// `n` requests, each on a new connection, from `concurrency` threads. Returns how many each
/// worker answered, and every failure.
pub fn load(target: &Target, n: usize, concurrency: usize) -> (BTreeMap<usize, usize>, Vec<String>) {
    let (bodies, failures) = load_bodies(target, n, concurrency);
    let mut seen = BTreeMap::new();
    for body in &bodies {
        *seen.entry(worker_of(body)).or_insert(0) += 1;
    }
    (seen, failures)
}

/// The pid in a body `worker <id> pid <pid>`.
pub fn pid_of(body: &str) -> u32 {
    body.split_whitespace().nth(3).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no pid in {body:?}"))
}

/// Like [`load`], returning every response body.
pub fn load_bodies(target: &Target, n: usize, concurrency: usize) -> (Vec<String>, Vec<String>) {
    let per_thread = n / concurrency;
    let threads: Vec<_> = (0..concurrency)
        .map(|t| {
            let target = target.clone();
            let count = if t == 0 { n - per_thread * (concurrency - 1) } else { per_thread };
            std::thread::spawn(move || {
                let mut bodies = Vec::new();
                let mut failures = Vec::new();
                for _ in 0..count {
                    match get(&target) {
                        Ok(body) => bodies.push(body),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (bodies, failures)
            })
        })
        .collect();
    let mut bodies = Vec::new();
    let mut failures = Vec::new();
    for t in threads {
        let (b, f) = t.join().unwrap();
        bodies.extend(b);
        failures.extend(f);
    }
    (bodies, failures)
}

/// One worker row of the counter table `herd serve` prints on exit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub wakeups: u64,
    pub accepts: u64,
    pub eagains: u64,
    pub handoffs: u64,
    pub acked: u64,
    pub closed: u64,
    /// Hot-path system calls herd made in the worker.
    pub syscalls: u64,
}

/// The per-worker rows (by id) and the primary's `accepted dispatched queued requeued`.
pub fn counters(stdout: &str) -> (BTreeMap<usize, Row>, [u64; 4]) {
    let mut rows = BTreeMap::new();
    let mut primary = [0; 4];
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(rest) = line.strip_prefix("primary: ") {
            let nums: Vec<u64> = rest.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            primary.copy_from_slice(&nums[..4]);
        } else if words.len() == 8 {
            if let Ok(id) = words[0].parse::<usize>() {
                let n: Vec<u64> = words[1..].iter().map(|w| w.parse().unwrap()).collect();
                rows.insert(
                    id,
                    Row {
                        wakeups: n[0],
                        accepts: n[1],
                        eagains: n[2],
                        handoffs: n[3],
                        acked: n[4],
                        closed: n[5],
                        syscalls: n[6],
                    },
                );
            }
        }
    }
    (rows, primary)
}

/// The primary's system-call count from the counter table's `primary:` line.
pub fn primary_syscalls(stdout: &str) -> u64 {
    let line = stdout.lines().find_map(|l| l.strip_prefix("primary: ")).expect("a primary line");
    line.split("syscalls ").nth(1).and_then(|n| n.trim().parse().ok()).expect("a syscalls count")
}

/// How many descriptors process `raw` has open.
pub fn fd_count(raw: u32) -> usize {
    std::fs::read_dir(format!("/proc/{raw}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A client that keeps making requests (each on a new connection) from `concurrency` threads
/// until stopped, and counts what it saw.
pub struct Continuous {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Vec<String>, Vec<String>)>>,
}

impl Continuous {
    pub fn start(target: &Target, concurrency: usize) -> Continuous {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..concurrency)
            .map(|_| {
                let (target, stop) = (target.clone(), stop.clone());
                std::thread::spawn(move || {
                    let (mut bodies, mut failures) = (Vec::new(), Vec::new());
                    // Bounded: at most 60 s, whatever happens.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                        match get(&target) {
                            Ok(body) => bodies.push(body),
                            Err(e) => {
                                failures.push(e.to_string());
                                // Do not hammer a server that is down.
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    (bodies, failures)
                })
            })
            .collect();
        Continuous { stop, threads }
    }

    /// Stops the clients; returns every body and every failure.
    pub fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut bodies, mut failures) = (Vec::new(), Vec::new());
        for t in self.threads {
            let (b, f) = t.join().unwrap();
            bodies.extend(b);
            failures.extend(f);
        }
        (bodies, failures)
    }
}

/// The time stamp at the start of a log line, in milliseconds of the day.
pub fn log_millis(line: &str) -> u64 {
    let time = line.split('T').nth(1).expect("a timestamped line");
    let h: u64 = time[0..2].parse().unwrap();
    let m: u64 = time[3..5].parse().unwrap();
    let s: u64 = time[6..8].parse().unwrap();
    let ms: u64 = time[9..12].parse().unwrap();
    ((h * 60 + m) * 60 + s) * 1000 + ms
}

/// How many failures, and the first few of each kind: a readable assertion message.
pub fn summary(failures: &[String]) -> String {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in failures {
        *kinds.entry(f.as_str()).or_insert(0) += 1;
    }
    let shown: Vec<String> = kinds.iter().take(5).map(|(k, n)| format!("{n} x {k}")).collect();
    format!("{} failures: {}", failures.len(), shown.join("; "))
}

/// The `pid=` field of a log line.
pub fn pid_of_log(line: &str) -> u32 {
    field(line, "pid").unwrap_or_else(|| panic!("no pid= in {line:?}"))
}

/// Reads one response with a `Content-Length` off a keep-alive connection; returns its body.
pub fn read_response(reader: &mut impl BufRead) -> String {
    let (mut line, mut length) = (String::new(), 0);
    loop {
        line.clear();
        reader.read_line(&mut line).expect("a response line within the read timeout");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("a Content-Length");
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the body");
    String::from_utf8_lossy(&body).into_owned()
}

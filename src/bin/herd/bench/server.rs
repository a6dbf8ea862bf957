//! One `herd serve` child process per measurement: started, watched, stopped, never left behind.
//!
//! The server is this same executable (`current_exe() serve ...`), started in a process group of
//! its own so that, whatever goes wrong, one `kill(-pgid, SIGKILL)` takes the primary and every
//! worker with it. Its stderr is read by a thread and handed over line by line: the `serving on`
//! line gives the port, `fork worker=ID pid=PID` the worker pids (for `/proc` sampling), and
//! `listening` lines say when every worker is ready. That is why the server is *not* started
//! with `--quiet`: those lifecycle lines are the only signal that it is ready. Its stdout is the
//! counters object (`--stats json`), read whole at exit by a second thread.
//!
//! A server asked for io_uring that logs its fallback to epoll (`io-uring is unavailable: ...;
//! using epoll`) fails the start: its figures would be epoll's under io-uring's name.
//!
//! Every wait is bounded. Failures come back as one-line messages, with the process group
//! already killed and reaped, so a failed row never hangs the run.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use herd::Backend;
use rustix::process::{Pid, Signal};

use super::plan::Row;

/// How long the server may take from spawn to every worker listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful stop (SIGTERM) may take before the group is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server is configured, besides its row.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub workers: usize,
    /// Pass `--defer-accept` (`TCP_DEFER_ACCEPT`).
    pub defer_accept: bool,
}

/// A running `herd serve` whose workers are all listening.
pub struct Server {
    child: Option<Child>,
    /// The primary's pid, which is also the process group id.
    pub pid: u32,
    pub port: u16,
    /// Worker pids by slot.
    pub workers: Vec<u32>,
    stderr: Receiver<String>,
    stdout: Option<JoinHandle<String>>,
}

/// The arguments of `herd serve` for `row` on `backend`.
pub fn arguments(row: &Row, backend: Backend, options: &Options) -> Vec<String> {
    let mut args = vec!["serve".to_owned(), "--mode".to_owned(), row.mode.to_owned()];
    match (row.mode, row.accept) {
        ("handoff", Some(policy)) => args.extend(["--handoff-policy".to_owned(), policy.to_owned()]),
        (_, Some(accept)) => args.extend(["--accept".to_owned(), accept.to_owned()]),
        _ => {}
    }
    args.extend(["--backend".to_owned(), backend.name().to_owned()]);
    args.extend(["--workers".to_owned(), options.workers.to_string()]);
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    if options.defer_accept {
        args.push("--defer-accept".to_owned());
    }
    args.extend(["--stats".to_owned(), "json".to_owned()]);
    args
}

impl Server {
    /// Starts the server for `row` on `backend` and waits until every worker listens.
    pub fn start(row: &Row, backend: Backend, options: &Options) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
        let mut child = Command::new(&exe)
            .args(arguments(row, backend, options))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawning {} serve: {e}", exe.display()))?;
        let pid = child.id();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let stdout = stdout.map(|mut out| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = out.read_to_string(&mut text);
                text
            })
        });
        let (lines, stderr_rx) = mpsc::channel();
        if let Some(err) = stderr {
            thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut server = Server { child: Some(child), pid, port: 0, workers: Vec::new(), stderr: stderr_rx, stdout };
        match server.wait_until_listening(options.workers, backend) {
            Ok(()) => Ok(server),
            Err(e) => {
                server.kill();
                Err(e)
            }
        }
    }

    /// Reads stderr until the port is known and `workers` workers are listening; fails if a
    /// server asked for io_uring says it fell back to epoll.
    fn wait_until_listening(&mut self, workers: usize, backend: Backend) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pids = vec![None; workers];
        let mut listening = 0;
        let mut last = String::new();
        while self.port == 0 || listening < workers {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.stderr.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "herd serve not ready within {} s ({listening} of {workers} workers listening)",
                        START_TIMEOUT.as_secs()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("herd serve exited before it was ready: {}", last.trim()));
                }
            };
            if let Some(warning) = fallback_in(&line).filter(|_| backend == Backend::IoUring) {
                return Err(format!("herd serve --backend io-uring fell back to epoll: {warning}"));
            }
            if let Some(port) = port_in(&line) {
                self.port = port;
            } else if let Some((id, pid)) = fork_in(&line) {
                if let Some(slot) = pids.get_mut(id) {
                    *slot = Some(pid);
                }
            } else if line.contains("herd: listening ") {
                listening += 1;
            }
            last = line;
        }
        self.workers = pids
            .into_iter()
            .enumerate()
            .map(|(id, pid)| pid.ok_or_else(|| format!("herd serve logged no fork line for worker {id}")))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// SIGTERM to the primary, then waits for it (killing the group after [`STOP_TIMEOUT`]) and
    /// returns what it printed on stdout: the counters.
    pub fn stop(mut self) -> Result<String, String> {
        let Some(mut child) = self.child.take() else { return Err("herd serve was already stopped".into()) };
        if let Err(e) = rustix::process::kill_process(pid(self.pid), Signal::TERM) {
            self.child = Some(child);
            self.kill();
            return Err(format!("kill(SIGTERM) herd serve: {e}"));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    self.child = Some(child);
                    self.kill();
                    return Err(format!("herd serve did not stop within {} s of SIGTERM", STOP_TIMEOUT.as_secs()));
                }
                Err(e) => {
                    self.child = Some(child);
                    self.kill();
                    return Err(format!("waitpid(herd serve): {e}"));
                }
            }
        };
        // Workers inherited stdout: it closes when the last of them is gone, which a clean exit of
        // the primary implies. Should one linger anyway, its group is still alive (so the group
        // id is still its own) and is killed.
        while self.stdout.as_ref().is_some_and(|h| !h.is_finished()) {
            if Instant::now() >= deadline {
                let _ = rustix::process::kill_process_group(pid(self.pid), Signal::KILL);
                return Err("herd serve exited but a worker kept its stdout open; killed its group".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
        let stdout = self.stdout.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        if !status.success() {
            let log: Vec<String> = self.stderr.try_iter().collect();
            let last = log.last().map_or("", |l| l.trim());
            return Err(format!("herd serve exited with {status}: {last}"));
        }
        Ok(stdout)
    }

    /// Kills the whole process group and reaps the primary. The primary is reaped only after
    /// the kill, so its pid (the group id) cannot have been reused by then.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::kill_process_group(pid(self.pid), Signal::KILL);
            let _ = child.wait();
        }
        if let Some(out) = self.stdout.take() {
            let _ = out.join();
        }
    }
}

impl Drop for Server {
    /// A measurement that failed half-way (or panicked) must not leave a cluster behind.
    fn drop(&mut self) {
        self.kill();
    }
}

fn pid(raw: u32) -> Pid {
    Pid::from_raw(raw as i32).expect("a child's pid is positive")
}

/// The port of a `... herd: serving on 127.0.0.1:PORT mode=...` line.
fn port_in(line: &str) -> Option<u16> {
    let addr = line.split("serving on ").nth(1)?.split_whitespace().next()?;
    addr.rsplit_once(':')?.1.parse().ok().filter(|&p| p != 0)
}

/// The warning of a `... herd: warning primary: io-uring is unavailable: WHY; using epoll`
/// line, from `io-uring` on.
fn fallback_in(line: &str) -> Option<&str> {
    let start = line.find("io-uring is unavailable: ")?;
    line.contains("; using epoll").then(|| &line[start..])
}

/// The worker slot and pid of a `... herd: fork worker=ID pid=PID` line.
fn fork_in(line: &str) -> Option<(usize, u32)> {
    let rest = line.split("herd: fork ").nth(1)?;
    let mut id = None;
    let mut pid = None;
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("worker", v)) => id = v.parse().ok(),
            Some(("pid", v)) => pid = v.parse().ok(),
            _ => {}
        }
    }
    Some((id?, pid?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_serve_arguments() {
        let opts = Options { workers: 4, defer_accept: true };
        let args = arguments(&Row { mode: "shared", accept: Some("epoll") }, Backend::Epoll, &opts).join(" ");
        assert_eq!(
            args,
            "serve --mode shared --accept epoll --backend epoll --workers 4 --listen 127.0.0.1:0 --defer-accept --stats json"
        );
        let opts = Options { workers: 8, defer_accept: false };
        let args = arguments(&Row { mode: "handoff", accept: None }, Backend::IoUring, &opts).join(" ");
        assert_eq!(args, "serve --mode handoff --backend io-uring --workers 8 --listen 127.0.0.1:0 --stats json");
    }

    #[test]
    fn parses_lifecycle_lines() {
        let serving = "2026-11-21T08:01:02.123Z herd: serving on 127.0.0.1:40123 mode=shared/epoll workers=4 pid=9";
        assert_eq!(port_in(serving), Some(40123));
        assert_eq!(port_in("herd: serving on 127.0.0.1:0 mode=x"), None);
        assert_eq!(port_in("2026-11-21T08:01:02.123Z herd: listening worker=0 pid=10"), None);
        assert_eq!(fork_in("2026-11-21T08:01:02.123Z herd: fork worker=3 pid=4242"), Some((3, 4242)));
        assert_eq!(fork_in("2026-11-21T08:01:02.123Z herd: online worker=3 pid=4242"), None);
    }

    #[test]
    fn spots_the_fallback_to_epoll() {
        let line = "2026-11-29T22:03:23.173Z herd: warning primary: io-uring is unavailable: \
                    io_uring_setup: Operation not permitted (os error 1); using epoll";
        assert_eq!(
            fallback_in(line),
            Some("io-uring is unavailable: io_uring_setup: Operation not permitted (os error 1); using epoll")
        );
        let other = "2026-11-29T22:03:23.173Z herd: warning primary: shared/epoll has no io_uring form: \
                     workers wait with it on epoll";
        assert_eq!(fallback_in(other), None);
        assert_eq!(fallback_in("2026-11-21T08:01:02.123Z herd: listening worker=0 pid=10"), None);
    }
}

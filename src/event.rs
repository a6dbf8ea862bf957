//! What the primary sees happen to its workers, as Node's `cluster` reports it, plus what the
//! primary itself decides (reloads, scaling, giving up).

use std::fmt;
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::sys::process::ExitStatus;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerExit {
    /// It called `exit(code)` (or returned from its function: 0 for `Ok`, 1 for `Err`, 101 for
    /// a panic).
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Someone else reaped it before the primary could (`ECHILD`): it ended, how is unknown.
    Unknown,
}

impl From<ExitStatus> for WorkerExit {
    fn from(s: ExitStatus) -> WorkerExit {
        match s {
            ExitStatus::Code(c) => WorkerExit::Code(c),
            ExitStatus::Signal(s) => WorkerExit::Signal(s),
            ExitStatus::Unknown => WorkerExit::Unknown,
        }
    }
}

/// A lifecycle event, from [`crate::Primary::next_event`].
///
/// `id` is the worker's slot (0 to N-1, kept by replacements); `pid` tells generations apart.
/// Not `Clone`: a message's descriptors belong to whoever takes the event.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A worker process was forked.
    Fork {
        /// The worker's slot.
        id: usize,
        /// Its pid.
        pid: u32,
    },
    /// The worker process is running (its first message arrived).
    Online {
        /// The worker's slot.
        id: usize,
        /// Its pid.
        pid: u32,
    },
    /// The worker is ready to serve: it started taking connections.
    Listening {
        /// The worker's slot.
        id: usize,
        /// Its pid.
        pid: u32,
    },
    /// The worker sent a message ([`crate::Worker::send`]), with descriptors if it attached any
    /// ([`crate::Worker::send_with_fds`]: Node's `process.send(message, handle)`).
    Message {
        /// The worker's slot.
        id: usize,
        /// Its pid.
        pid: u32,
        /// The bytes it sent.
        data: Vec<u8>,
        /// The descriptors it sent: the primary's own copies, close-on-exec.
        fds: Vec<OwnedFd>,
    },
    /// The worker's channel closed (Node's `'disconnect'`): it exited, or closed its end.
    Disconnect {
        /// The worker's slot.
        id: usize,
        /// Its pid.
        pid: u32,
    },
    /// The worker process ended.
    Exit {
        /// The worker's slot.
        id: usize,
        /// Its pid.
        pid: u32,
        /// Its exit code or the signal that killed it.
        status: WorkerExit,
        /// Whether its exit was expected: the program disconnected or killed it, the primary
        /// stopped it (shutdown, reload, scale-down), or it announced it would go (Node's
        /// `exitedAfterDisconnect`). An exit nobody expected is a crash: it counts toward the
        /// restart limit, and the slot is refilled.
        expected: bool,
    },
    /// The worker announced it is about to exit on its own; its replacement is being forked.
    Retiring {
        /// The worker's slot.
        id: usize,
        /// Its pid.
        pid: u32,
    },
    /// The worker stopped answering heartbeats; the primary killed it (it will be replaced).
    Unresponsive {
        /// The worker's slot.
        id: usize,
        /// Its pid.
        pid: u32,
        /// How long it had been silent.
        silent_for: Duration,
    },
    /// A rolling reload changed phase.
    Reload {
        /// The generation the reload brings in (the first workers are generation 0).
        generation: u64,
        /// What happened.
        phase: ReloadPhase,
    },
    /// The number of worker slots changed (SIGTTIN, SIGTTOU, [`crate::Primary::scale`]).
    Scale {
        /// How many workers the cluster now aims for.
        workers: usize,
    },
    /// Too many restarts: the primary gave up and is stopping every worker.
    GaveUp {
        /// Restarts counted in the window.
        restarts: usize,
        /// The window.
        within: Duration,
    },
    /// A worker could not be forked (`socketpair`, `fork` or `pidfd_open` failed, or the primary
    /// had other threads). The primary goes on with the workers it has and tries the slot again
    /// after `retry_in`, doubling the wait while the failure lasts (up to 2 s); `None` when it
    /// does not retry (a reload's new worker: the old one keeps the slot). Failed forks do not
    /// count toward the restart limit: only workers that ran and died do.
    SpawnFailed {
        /// The slot.
        id: usize,
        /// What failed, naming the call.
        error: String,
        /// When the slot is tried again.
        retry_in: Option<Duration>,
    },
    /// Something went wrong that the program should know of, without stopping anything: a
    /// worker's accept loop backing off, a bad frame, a setting that weakens a guarantee. The
    /// library never prints; this is where it speaks.
    Warning {
        /// The worker it concerns (`None`: the primary itself).
        id: Option<usize>,
        /// That worker's pid.
        pid: Option<u32>,
        /// What happened.
        message: String,
    },
    /// The primary upgraded in place (SIGUSR2, [`crate::Primary::upgrade`]): this is the new
    /// image, same pid, supervising the workers the old one left it.
    Upgraded {
        /// The primary's pid (unchanged).
        pid: u32,
        /// How many workers it took over.
        workers: usize,
    },
    /// The primary began shutting down, on this signal (or 0 if asked by the program).
    Shutdown {
        /// The signal number.
        signal: i32,
        /// `true` for a graceful shutdown, `false` for an immediate one (SIGKILL to workers).
        graceful: bool,
    },
}

/// The phases of a rolling reload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadPhase {
    /// New workers were forked; old ones keep serving until their replacements listen.
    Started,
    /// Every new worker is listening and every old one was asked to drain and exit.
    Finished,
    /// Some new workers never became ready; the old workers of those slots keep serving.
    Failed {
        /// Why, slot by slot.
        reason: String,
    },
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerExit::Code(c) => write!(f, "code {c}"),
            WorkerExit::Signal(s) => write!(f, "signal {s}"),
            WorkerExit::Unknown => write!(f, "status unknown (reaped elsewhere)"),
        }
    }
}

impl fmt::Display for Event {
    /// One line, as `herd serve` logs it: `listening worker=2 pid=4242`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Fork { id, pid } => write!(f, "fork worker={id} pid={pid}"),
            Event::Online { id, pid } => write!(f, "online worker={id} pid={pid}"),
            Event::Listening { id, pid } => write!(f, "listening worker={id} pid={pid}"),
            Event::Message { id, pid, data, fds } if fds.is_empty() => {
                write!(f, "message worker={id} pid={pid} bytes={}", data.len())
            }
            Event::Message { id, pid, data, fds } => {
                write!(f, "message worker={id} pid={pid} bytes={} fds={}", data.len(), fds.len())
            }
            Event::Disconnect { id, pid } => write!(f, "disconnect worker={id} pid={pid}"),
            Event::Exit { id, pid, status, expected } => {
                write!(f, "exit worker={id} pid={pid} {status} expected={expected}")
            }
            Event::Retiring { id, pid } => write!(f, "retiring worker={id} pid={pid}"),
            Event::Unresponsive { id, pid, silent_for } => {
                write!(f, "unresponsive worker={id} pid={pid} silent_for={:.1}s; killing it", silent_for.as_secs_f64())
            }
            Event::Reload { generation, phase: ReloadPhase::Started } => {
                write!(f, "reload generation={generation} started")
            }
            Event::Reload { generation, phase: ReloadPhase::Finished } => {
                write!(f, "reload generation={generation} finished")
            }
            Event::Reload { generation, phase: ReloadPhase::Failed { reason } } => {
                write!(f, "reload generation={generation} failed: {reason}; old workers keep serving")
            }
            Event::Scale { workers } => write!(f, "scale workers={workers}"),
            Event::GaveUp { restarts, within } => write!(
                f,
                "giving up: {restarts} restarts within {}s exceeds the restart limit; stopping every worker",
                within.as_secs()
            ),
            Event::SpawnFailed { id, error, retry_in: Some(delay) } => {
                write!(f, "spawn failed worker={id}: {error}; retrying in {:.2}s", delay.as_secs_f64())
            }
            Event::SpawnFailed { id, error, retry_in: None } => write!(f, "spawn failed worker={id}: {error}"),
            Event::Warning { id: Some(id), pid: Some(pid), message } => {
                write!(f, "warning worker={id} pid={pid}: {message}")
            }
            Event::Warning { message, .. } => write!(f, "warning primary: {message}"),
            Event::Upgraded { pid, workers } => write!(f, "upgraded pid={pid} workers={workers}"),
            Event::Shutdown { signal, graceful } => {
                write!(f, "shutdown signal={signal} {}", if *graceful { "graceful" } else { "immediate" })
            }
        }
    }
}

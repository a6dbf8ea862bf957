//! What the primary sees happen to its workers, as Node's `cluster` reports it.

use std::fmt;

use crate::sys::process::ExitStatus;

/// A lifecycle event, from [`crate::Primary::next_event`].
///
/// `id` is the worker's slot (0 to N-1, kept by replacements); `pid` tells generations apart.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The worker sent a message.
    Message {
        /// The worker's slot.
        id: usize,
        /// Its pid.
        pid: u32,
        /// The bytes it sent.
        data: Vec<u8>,
    },
    /// The worker's channel closed: it exited, or closed its end.
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
        status: ExitStatus,
        /// Whether the primary had asked it to go (Node's `exitedAfterDisconnect`).
        exited_after_disconnect: bool,
    },
    /// The primary began shutting down, on this signal (or 0 if asked by the program).
    Shutdown {
        /// The signal number.
        signal: i32,
        /// `true` for a graceful shutdown, `false` for an immediate one (SIGKILL to workers).
        graceful: bool,
    },
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
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
            Event::Message { id, pid, data } => write!(f, "message worker={id} pid={pid} bytes={}", data.len()),
            Event::Disconnect { id, pid } => write!(f, "disconnect worker={id} pid={pid}"),
            Event::Exit { id, pid, status, exited_after_disconnect } => {
                write!(f, "exit worker={id} pid={pid} {status} exited_after_disconnect={exited_after_disconnect}")
            }
            Event::Shutdown { signal, graceful } => {
                write!(f, "shutdown signal={signal} {}", if *graceful { "graceful" } else { "immediate" })
            }
        }
    }
}

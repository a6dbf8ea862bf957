//! A cluster's settings and their defaults.

use std::time::Duration;

use crate::ListenAddr;
use crate::accept::Backend;
use crate::mode::{Mode, handoff};

/// The default `listen(2)` backlog.
pub const DEFAULT_BACKLOG: i32 = 1024;
/// The default time workers get to finish their connections on a graceful shutdown before
/// they are killed.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The default restart limit: more than 10 restarts within 60 s and the primary gives up (the
/// figures of the restart-limit pattern in the documents herd grew from).
pub const DEFAULT_RESTART_LIMIT: usize = 10;
/// The default window for [`DEFAULT_RESTART_LIMIT`].
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The default time a reload waits for a new worker to report `listening`.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How many worker slots the counter region holds (the most workers a cluster can ever have).
pub const MAX_WORKERS: usize = 1024;

/// A cluster's settings. Build one with [`crate::Cluster::builder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Where to listen.
    pub listen: ListenAddr,
    /// How connections reach workers.
    pub mode: Mode,
    /// How connections are taken off listeners (default epoll).
    pub backend: Backend,
    /// How many workers (default: the number of CPUs).
    pub workers: usize,
    /// The `listen(2)` backlog.
    pub backlog: i32,
    /// Handoff mode: unacknowledged handoffs allowed per worker.
    pub handoff_window: usize,
    /// Handoff mode: how the primary chooses the worker for each connection.
    pub handoff_policy: handoff::HandoffPolicy,
    /// Handoff mode: connections the primary may queue before it stops accepting.
    pub handoff_queue_limit: usize,
    /// How long a graceful shutdown waits before killing workers.
    pub shutdown_timeout: Duration,
    /// TCP: set `TCP_DEFER_ACCEPT`, so connections are accepted once their first data arrived.
    pub defer_accept: bool,
    /// Give up after more than this many restarts within [`restart_window`](Self::restart_window).
    pub restart_limit: usize,
    /// The window restarts are counted in.
    pub restart_window: Duration,
    /// Ping each worker this often, and kill one silent for longer than the timeout; `None`: off.
    pub heartbeat: Option<Heartbeat>,
    /// How long a reload waits for each new worker to report `listening`.
    pub reload_timeout: Duration,
    /// Whether the primary takes the signals that drive it (SIGINT, SIGTERM, SIGQUIT, SIGHUP,
    /// SIGTTIN, SIGTTOU); see [`crate::Builder::handle_signals`].
    pub handle_signals: bool,
    /// Whether the primary forks even while it has other threads; see
    /// [`crate::Builder::allow_threads`].
    pub allow_threads: bool,
    /// Whether the primary tells its service manager how the cluster is doing (sd_notify); see
    /// [`crate::Builder::sd_notify`].
    pub sd_notify: bool,
    /// Whether SIGUSR2 upgrades the primary in place; see [`crate::Builder::upgrade_on_sigusr2`].
    pub upgrade_on_sigusr2: bool,
}

/// Heartbeat settings: the primary pings every `interval`; a worker silent for `timeout` is
/// hung, and is killed and replaced.
///
/// A worker answers pings from inside herd's calls ([`crate::Worker::poll`],
/// [`crate::Worker::try_event`], [`crate::Worker::incoming`]...), so `timeout` must exceed the
/// longest time the worker's code spends away from them — with the blocking iterator, the time it
/// takes to serve one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often to ping.
    pub interval: Duration,
    /// How long a worker may stay silent.
    pub timeout: Duration,
}

impl Config {
    pub(crate) fn new(listen: ListenAddr) -> Config {
        Config {
            listen,
            mode: Mode::default(),
            backend: Backend::default(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backlog: DEFAULT_BACKLOG,
            handoff_window: handoff::DEFAULT_WINDOW,
            handoff_queue_limit: handoff::DEFAULT_QUEUE_LIMIT,
            handoff_policy: handoff::HandoffPolicy::RoundRobin,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            defer_accept: false,
            restart_limit: DEFAULT_RESTART_LIMIT,
            restart_window: DEFAULT_RESTART_WINDOW,
            heartbeat: None,
            reload_timeout: DEFAULT_RELOAD_TIMEOUT,
            handle_signals: true,
            allow_threads: false,
            sd_notify: false,
            upgrade_on_sigusr2: false,
        }
    }
}

//! Configuring and binding a cluster, before any worker is forked.

use std::io;
use std::time::Duration;

use crate::accept::Backend;
use crate::config::{Config, Heartbeat, MAX_WORKERS};
use crate::listener::{BindOptions, Listener, UnixPath};
use crate::mode::{self, Distribution, InheritedListener, Mode};
use crate::primary::{Bound, Primary, WorkerProgram};
use crate::program::Program;
use crate::stats::{Counters, Snapshot};
use crate::worker::Worker;
use crate::{Event, ListenAddr};

/// With [`Builder::defer_accept`]: how long the kernel holds a silent connection back.
const DEFER_ACCEPT_SECONDS: i32 = 1;

/// Builds a [`Cluster`].
#[derive(Clone, Debug)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// How connections reach workers (default: shared, `epoll-balance`).
    pub fn mode(mut self, mode: Mode) -> Builder {
        self.config.mode = mode;
        self
    }

    /// How connections are taken off listeners (default [`Backend::Epoll`]). With
    /// [`Backend::IoUring`], herd checks at start that io_uring can run here, and falls back to
    /// epoll with an [`Event::Warning`] saying why if it cannot; [`Primary::backend`] tells
    /// which one runs.
    pub fn backend(mut self, backend: Backend) -> Builder {
        self.config.backend = backend;
        self
    }

    /// How many workers (default: the number of CPUs).
    pub fn workers(mut self, n: usize) -> Builder {
        self.config.workers = n;
        self
    }

    /// The `listen(2)` backlog (default [`crate::DEFAULT_BACKLOG`]).
    pub fn backlog(mut self, backlog: i32) -> Builder {
        self.config.backlog = backlog;
        self
    }

    /// Handoff mode: the window of handoffs in flight per worker (default
    /// [`crate::mode::handoff::DEFAULT_WINDOW`]).
    pub fn handoff_window(mut self, window: usize) -> Builder {
        self.config.handoff_window = window;
        self
    }

    /// Handoff mode (and reuseport's slots without a worker): how the primary chooses the
    /// worker for each connection — in turn (the default), or the less loaded of two
    /// ([`crate::mode::handoff::HandoffPolicy`]).
    pub fn handoff_policy(mut self, policy: crate::mode::handoff::HandoffPolicy) -> Builder {
        self.config.handoff_policy = policy;
        self
    }

    /// How long a graceful shutdown waits for workers before killing them (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Builder {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Give up (stop every worker, and make [`Primary::run`] fail) after more than `limit`
    /// restarts within `window` (default: 10 within 60 s). A crash loop stops instead of
    /// forking forever.
    pub fn restart_limit(mut self, limit: usize, window: Duration) -> Builder {
        self.config.restart_limit = limit;
        self.config.restart_window = window;
        self
    }

    /// Ping every worker every `interval` and kill (then replace) one that stays silent for
    /// `timeout`. Off by default; see [`Heartbeat`].
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Builder {
        self.config.heartbeat = Some(Heartbeat { interval, timeout });
        self
    }

    /// How long a reload waits for each new worker to report `listening` before it gives up on
    /// that slot and keeps the old worker (default 10 s).
    pub fn reload_timeout(mut self, timeout: Duration) -> Builder {
        self.config.reload_timeout = timeout;
        self
    }

    /// Handoff mode: how many connections may wait in the primary's queue before it stops
    /// accepting, leaving the rest in the kernel's backlog (default
    /// [`crate::mode::handoff::DEFAULT_QUEUE_LIMIT`]).
    pub fn handoff_queue_limit(mut self, limit: usize) -> Builder {
        self.config.handoff_queue_limit = limit;
        self
    }

    /// Whether the primary takes the signals that drive it (default `true`): SIGINT and SIGTERM
    /// (graceful shutdown), SIGQUIT (immediate), SIGHUP (reload), SIGTTIN / SIGTTOU (one worker
    /// more or fewer). It blocks them and reads them from a signalfd in its own loop.
    ///
    /// With `false` the primary leaves every signal to the host program, which then calls
    /// [`Primary::shutdown`], [`Primary::reload`] and [`Primary::scale`] itself — the way to
    /// embed the primary in a program that has its own signal handling (a tokio runtime, say).
    pub fn handle_signals(mut self, on: bool) -> Builder {
        self.config.handle_signals = on;
        self
    }

    /// Whether the primary may fork while other threads exist (default `false`).
    ///
    /// herd forks without exec, so a worker starts as a copy of the primary — including a copy
    /// of every lock another thread held at that instant, with no thread left to release it.
    /// By default herd refuses to fork while `/proc/self/task` lists a user thread besides the
    /// caller, and treats the refusal like any failed fork: reported as
    /// [`Event::SpawnFailed`], retried with back-off. Threads the kernel owns (io_uring's
    /// `iou-wrk-*`) do not count.
    ///
    /// Pass `true` if you know that no other thread of the primary holds a lock the workers will
    /// take (a thread that only sleeps in a system call, say, or one that touches no lock the
    /// worker code uses).
    pub fn allow_threads(mut self, allow: bool) -> Builder {
        self.config.allow_threads = allow;
        self
    }

    /// Whether the primary tells the service manager that started it how the cluster is doing,
    /// by the sd_notify protocol, when `NOTIFY_SOCKET` is set (default `false`): `READY=1` once
    /// every worker listens, `RELOADING=1` and `READY=1` around a reload (systemd's
    /// `Type=notify-reload`), `STOPPING=1` on shutdown, and `STATUS=` lines with the number of
    /// workers listening. `herd serve` and `herd run` turn it on.
    pub fn sd_notify(mut self, on: bool) -> Builder {
        self.config.sd_notify = on;
        self
    }

    /// Whether SIGUSR2 upgrades the primary in place (default `false`): it executes the binary
    /// now at its path, keeping its pid, listeners, workers and counters — nginx's and
    /// unicorn's USR2 without a new pid. The program must cooperate: call
    /// [`crate::upgrade::answer_check`] first thing in `main`, and [`Primary::resume`] before
    /// binding. See [`crate::upgrade`]. Needs [`handle_signals`](Self::handle_signals); without
    /// it, call [`Primary::upgrade`].
    pub fn upgrade_on_sigusr2(mut self, on: bool) -> Builder {
        self.config.upgrade_on_sigusr2 = on;
        self
    }

    /// TCP only: accept connections only once the client has sent data (`TCP_DEFER_ACCEPT`, as
    /// nginx's `deferred`), so a worker wakes once per connection, with the request there.
    /// Default off.
    pub fn defer_accept(mut self, on: bool) -> Builder {
        self.config.defer_accept = on;
        self
    }

    /// Checks the settings and binds the listener(s). Nothing is forked yet.
    ///
    /// # Errors
    /// `InvalidInput` for a worker count of 0 or above [`MAX_WORKERS`] or a zero window;
    /// `Unsupported` for reuseport on a Unix socket; the `bind`/`listen` error otherwise
    /// (`AddrInUse` for a port in use), naming the address.
    pub fn bind(self) -> io::Result<Cluster> {
        self.bind_from(Vec::new())
    }

    /// Checks the settings and takes `listeners` — listening sockets this program was given,
    /// by systemd's socket activation ([`crate::activation::listen_fds`]) or any launcher —
    /// instead of binding the builder's address. Shared and handoff modes take exactly one.
    /// Reuseport mode takes one per worker, or a single one with `SO_REUSEPORT` (systemd's
    /// `ReusePort=yes`), to whose address it binds one more listener per worker. Their
    /// `O_NONBLOCK` is set as the mode needs; a Unix socket's path is left in place on exit
    /// (it is the service manager's).
    ///
    /// # Errors
    /// `InvalidInput` naming what is wrong: no listener, one that is not a listening stream
    /// socket, more than one for shared or handoff mode, too few for reuseport without
    /// `SO_REUSEPORT`; then as [`bind`](Self::bind).
    pub fn bind_inherited(mut self, listeners: Vec<std::os::fd::OwnedFd>) -> io::Result<Cluster> {
        if listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no listener was passed (LISTEN_FDS is unset or 0, or LISTEN_PID names another process)",
            ));
        }
        let mut inherited = Vec::with_capacity(listeners.len());
        for (i, fd) in listeners.into_iter().enumerate() {
            let (listener, kind, reuseport) = Listener::inherited(fd, &format!("inherited listener {i}"))?;
            if i == 0 {
                self.config.listen = listener.local_addr(kind)?;
            }
            inherited.push(InheritedListener { listener, reuseport });
        }
        self.bind_from(inherited)
    }

    fn bind_from(self, inherited: Vec<InheritedListener>) -> io::Result<Cluster> {
        let adopted = !inherited.is_empty();
        let config = self.config;
        if config.workers == 0 || config.workers > MAX_WORKERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("worker count {} out of range 1..={MAX_WORKERS}", config.workers),
            ));
        }
        if config.heartbeat.is_some_and(|h| h.interval.is_zero() || h.timeout < h.interval) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "heartbeat: the interval must be > 0 and the timeout at least the interval",
            ));
        }
        if config.handoff_window == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "handoff window must be at least 1"));
        }
        let mut unix_path = match &config.listen {
            ListenAddr::Unix(path) if config.mode != Mode::Reuseport && !adopted => Some(UnixPath::claim(path)?),
            _ => None,
        };
        let options = BindOptions {
            reuseport: false,
            backlog: config.backlog,
            nonblocking: true,
            defer_accept: config.defer_accept.then_some(DEFER_ACCEPT_SECONDS),
        };
        let (mode, local_addr) = mode::bind(config.mode, &config.listen, config.workers, options, inherited)?;
        if let Some(path) = &mut unix_path {
            path.bound();
        }
        let counters = Counters::new(MAX_WORKERS)?;
        Ok(Cluster { config, local_addr, mode, unix_path, counters })
    }
}

/// A configured cluster with its listener(s) bound, ready to [`start`](Cluster::start).
#[derive(Debug)]
pub struct Cluster {
    config: Config,
    local_addr: ListenAddr,
    mode: Box<dyn Distribution>,
    unix_path: Option<UnixPath>,
    counters: Counters,
}

impl Cluster {
    /// Starts configuring a cluster that listens on `listen`.
    ///
    /// # Examples
    /// ```no_run
    /// use herd::{Cluster, Mode};
    /// let cluster = Cluster::builder("127.0.0.1:0".parse()?).mode(Mode::Handoff).workers(4).bind()?;
    /// println!("listening on {}", cluster.local_addr());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(listen: ListenAddr) -> Builder {
        Builder { config: Config::new(listen) }
    }

    /// The address actually bound: with port 0, the port the kernel chose, which every worker
    /// shares.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local_addr
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The shared counters (readable from any process of the cluster at any time).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Forks the workers, each running `worker_main` in its own process, and returns the
    /// primary's handle. Drive it with [`Primary::next_event`].
    ///
    /// The calling process must be single-threaded (see [`Builder::allow_threads`]): herd
    /// forks with a raw `fork`.
    ///
    /// # Errors
    /// The set-up of the primary's descriptors failing, or no worker at all could be forked —
    /// the first fork's error then. Forks that fail after the first are reported as
    /// [`Event::SpawnFailed`] and retried.
    pub fn start<F>(self, worker_main: F) -> io::Result<Primary>
    where
        F: FnMut(&mut Worker) -> io::Result<()> + 'static,
    {
        let Cluster { config, local_addr, mode, unix_path, counters } = self;
        Primary::start(
            Bound { config, local_addr, mode, unix_path, counters },
            WorkerProgram::Function(Box::new(worker_main)),
        )
    }

    /// Starts every worker as `program`: `fork`, then `execve` (see [`crate::program`] for
    /// what the program receives). A reload runs the program file anew, so a new binary or
    /// script at its path is what the new generation runs.
    ///
    /// # Errors
    /// As [`start`](Self::start); `InvalidInput` for an argument with a NUL byte.
    pub fn start_program(self, program: Program) -> io::Result<Primary> {
        let Cluster { config, local_addr, mode, unix_path, counters } = self;
        Primary::start(Bound { config, local_addr, mode, unix_path, counters }, WorkerProgram::exec(program)?)
    }

    /// [`start`](Self::start), then run the primary until it shuts down (on SIGINT, SIGTERM or
    /// SIGQUIT), passing each event to `on_event`. Returns the final counters.
    pub fn run<F>(self, worker_main: F, on_event: impl FnMut(&Event)) -> io::Result<Snapshot>
    where
        F: FnMut(&mut Worker) -> io::Result<()> + 'static,
    {
        self.start(worker_main)?.run(on_event)
    }
}

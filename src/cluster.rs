//! Configuring and binding a cluster, before any worker is forked.

use std::io;
use std::time::Duration;

use crate::listener::{BindOptions, Listener, UnixPath};
use crate::mode::{Mode, handoff, reuseport, shared};
use crate::primary::Primary;
use crate::stats::{Counters, Snapshot};
use crate::worker::Worker;
use crate::{Event, ListenAddr};

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
/// With [`Builder::defer_accept`]: how long the kernel holds a silent connection back.
const DEFER_ACCEPT_SECONDS: i32 = 1;
/// How many worker slots the counter region holds (the most workers a cluster can ever have).
pub const MAX_WORKERS: usize = 1024;

/// A cluster's settings. Build one with [`Cluster::builder`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen.
    pub listen: ListenAddr,
    /// How connections reach workers.
    pub mode: Mode,
    /// How many workers (default: the number of CPUs).
    pub workers: usize,
    /// The `listen(2)` backlog.
    pub backlog: i32,
    /// Handoff mode: unacknowledged handoffs allowed per worker.
    pub handoff_window: usize,
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
    fn new(listen: ListenAddr) -> Config {
        Config {
            listen,
            mode: Mode::default(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backlog: DEFAULT_BACKLOG,
            handoff_window: handoff::DEFAULT_WINDOW,
            handoff_queue_limit: handoff::DEFAULT_QUEUE_LIMIT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            defer_accept: false,
            restart_limit: DEFAULT_RESTART_LIMIT,
            restart_window: DEFAULT_RESTART_WINDOW,
            heartbeat: None,
            reload_timeout: DEFAULT_RELOAD_TIMEOUT,
        }
    }
}

/// Builds a [`Cluster`].
#[derive(Clone, Debug)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// How connections reach workers (default: shared, `epoll-rotate`).
    pub fn mode(mut self, mode: Mode) -> Builder {
        self.config.mode = mode;
        self
    }

    /// How many workers (default: the number of CPUs).
    pub fn workers(mut self, n: usize) -> Builder {
        self.config.workers = n;
        self
    }

    /// The `listen(2)` backlog (default [`DEFAULT_BACKLOG`]).
    pub fn backlog(mut self, backlog: i32) -> Builder {
        self.config.backlog = backlog;
        self
    }

    /// Handoff mode: the window of unacknowledged handoffs per worker (default
    /// [`handoff::DEFAULT_WINDOW`]).
    pub fn handoff_window(mut self, window: usize) -> Builder {
        self.config.handoff_window = window;
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
        let unix_path = match &config.listen {
            ListenAddr::Unix(path) if config.mode != Mode::Reuseport => Some(UnixPath::claim(path)?),
            _ => None,
        };
        let base = BindOptions {
            reuseport: false,
            backlog: config.backlog,
            nonblocking: true,
            defer_accept: config.defer_accept.then_some(DEFER_ACCEPT_SECONDS),
        };
        let (listeners, local_addr) = match config.mode {
            Mode::Shared(strategy) => {
                let l = shared::bind(&config.listen, strategy, base)?;
                let addr = local_addr(&config.listen, &l)?;
                (Listeners::Shared(l), addr)
            }
            Mode::Handoff => {
                let l = handoff::bind(&config.listen, base)?;
                let addr = local_addr(&config.listen, &l)?;
                (Listeners::Handoff(l), addr)
            }
            Mode::Reuseport => {
                let (ls, addr) = reuseport::bind(&config.listen, config.workers, base)?;
                (Listeners::Reuseport(ls.into_iter().map(Some).collect()), addr)
            }
        };
        let counters = Counters::new(MAX_WORKERS)?;
        Ok(Cluster { config, local_addr, listeners, unix_path, counters, bind_options: base })
    }
}

fn local_addr(requested: &ListenAddr, listener: &Listener) -> io::Result<ListenAddr> {
    match requested {
        ListenAddr::Tcp(_) => Ok(ListenAddr::Tcp(listener.tcp_addr()?)),
        unix => Ok(unix.clone()),
    }
}

/// The listening sockets, owned by the primary.
#[derive(Debug)]
pub(crate) enum Listeners {
    Shared(Listener),
    Handoff(Listener),
    /// Slot `i`'s listener at index `i`.
    Reuseport(Vec<Option<Listener>>),
}

/// A configured cluster with its listener(s) bound, ready to [`start`](Cluster::start).
#[derive(Debug)]
pub struct Cluster {
    pub(crate) config: Config,
    pub(crate) local_addr: ListenAddr,
    pub(crate) listeners: Listeners,
    pub(crate) unix_path: Option<UnixPath>,
    pub(crate) counters: Counters,
    /// How the listeners were made, to make more (reuseport scaling up).
    pub(crate) bind_options: BindOptions,
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
    /// The calling process must be single-threaded: herd forks with a raw `fork`, and refuses
    /// (`Unsupported`) when other threads exist.
    pub fn start<F>(self, worker_main: F) -> io::Result<Primary>
    where
        F: FnMut(&mut Worker) -> io::Result<()> + 'static,
    {
        Primary::start(self, Box::new(worker_main))
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

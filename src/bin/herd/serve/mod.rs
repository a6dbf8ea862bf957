//! `herd serve`: the demo HTTP/1.1 server on a herd cluster.

pub(crate) mod http;
mod nested;
mod server;

use std::process::ExitCode;
use std::time::Duration;

use herd::{Backend, Cluster, ListenAddr, Mode, SharedAccept};

use crate::cli;

const HELP: &str = "\
herd serve — run the demo HTTP/1.1 server on a primary + forked workers

Every request gets `200` with the body `worker <id> pid <pid>\\n`; `GET /block/MS` gets it
after blocking the worker for MS milliseconds (a slow handler). What cannot be parsed gets
`400`, a head over 16 KiB or 64 lines `431`, a chunked body `501`, and the connection closes.
Keep-alive (the HTTP/1.1 default) and `Connection: close` are both honoured. SIGINT or
SIGTERM shut down gracefully (workers finish their open connections; a second SIGINT or
SIGQUIT kills them at once); the per-worker counters are printed on exit.

Usage: herd serve [OPTIONS]

Options:
  --mode MODE              how connections reach workers [default: shared]
                             shared     one listener, every worker accepts on it
                             handoff    the primary accepts and passes each connection
                                        round-robin over the channel (SCM_RIGHTS)
                             reuseport  one SO_REUSEPORT listener per worker
  --accept STRATEGY        shared mode: how workers wait on the listener [default: epoll-balance]
                             epoll            level-triggered, every worker woken (the herd)
                             epoll-exclusive  EPOLLEXCLUSIVE: one woken, but unfair
                             epoll-rotate     EPOLLEXCLUSIVE re-armed at the tail: fair
                             blocking         a thread per worker in blocking accept: fair
                             epoll-balance    epoll-rotate, and a worker holding more live
                                              connections than the mean steps out of the
                                              accept queue until it is back at the mean:
                                              fair under long keep-alive connections too
  --backend BACKEND        how connections are taken off listeners [default: epoll]
                             epoll     readiness, then accept4 per connection
                             io-uring  a multishot accept in an io_uring; in handoff mode
                                       the primary also sends, closes and reads acks
                                       through its ring (built with --features io-uring;
                                       falls back to epoll, saying why, where the kernel
                                       refuses). shared/epoll and shared/blocking have no
                                       io_uring form and run on epoll
  -w, --workers N          worker processes [default: number of CPUs]
  -l, --listen ADDR        127.0.0.1:8080, [::1]:8080, port 0 for any free port, a Unix
                           socket path (/tmp/herd.sock, unix:herd.sock), or `systemd` (every
                           socket passed by socket activation, LISTEN_FDS) or `sd:NAME` (the
                           one named NAME in LISTEN_FDNAMES); reuseport mode binds one more per
                           worker to a passed socket that has SO_REUSEPORT (ReusePort=yes)
                           [default: 127.0.0.1:8080]
  --backlog N              listen(2) backlog [default: 1024]
  --window N               handoff mode: unacknowledged handoffs per worker [default: 32]
  --handoff-policy POLICY  handoff mode: which worker gets each connection
                           [default: round-robin]
                             round-robin   in turn (Node's SCHED_RR)
                             least-loaded  the less loaded of two picked at random
                                           (handoffs in flight + live connections)
  --shutdown-timeout SECS  graceful shutdown: kill workers still busy after this [default: 30]
  --defer-accept           TCP_DEFER_ACCEPT: accept a connection once its request arrived
                           (one wakeup per connection instead of two)
  --request-timeout SECS   close a connection that has not sent a complete request this long
                           after it opened or after its last response (408 if part of one
                           came); 0 turns it off [default: 10]
  --stats FORMAT           how to print the counters on exit: table or json [default: table]
  --restart-limit N        give up after more than N restarts within the window [default: 10]
  --restart-window SECS    the window restarts are counted in [default: 60]
  --heartbeat SECS         ping workers this often; 0 turns heartbeats off [default: 1]
  --heartbeat-timeout SECS kill (and replace) a worker silent this long [default: 10]
  --reload-timeout SECS    a reload gives up on a new worker not listening by then [default: 10]
  --crash-after N          demo: each worker aborts after answering N requests (0: at start)
  --retire-after N         demo: each worker announces its exit after N requests (Node's
                           suicide message); its replacement is forked before it goes
  --delay MS               demo: hold every response MS milliseconds
  --startup-delay MS       demo: each worker sleeps MS milliseconds before taking connections
  --broken-generation G    demo: workers of reload generation G or later abort at start-up
                           (a bad deploy: the reload fails and the old workers keep serving)
  --worker-api API          how each worker takes connections [default: event-loop]
                             event-loop  an epoll loop on the worker's own epoll
                             nested      an epoll loop of its own with the worker's
                                         descriptor nested in it (as tokio or mio would)
                             incoming    the blocking iterator, one connection at a time
  --tag TEXT               demo: append TEXT to every response body (which code answered)
  -q, --quiet              do not log lifecycle events (warnings still show)
  -h, --help               print this help

Exit status: 0 after a clean shutdown, 1 on a runtime error, 2 on bad usage (unknown mode, bad
address, port in use).
";

/// An option as parsed, owned, so that helpers can look at it while reading its value.
pub(crate) enum Opt {
    Long(String),
    Short(char),
}

impl Opt {
    /// `arg` as an [`Opt`], or the usual error for what is not an option.
    pub(crate) fn of(arg: lexopt::Arg<'_>) -> Result<Opt, String> {
        match arg {
            lexopt::Arg::Long(l) => Ok(Opt::Long(l.to_owned())),
            lexopt::Arg::Short(c) => Ok(Opt::Short(c)),
            other => Err(other.unexpected().to_string()),
        }
    }

    fn is(&self, long: &str, short: Option<char>) -> bool {
        match self {
            Opt::Long(l) => l == long,
            Opt::Short(c) => Some(*c) == short,
        }
    }

    /// The option as it would be written, for errors.
    pub(crate) fn unexpected(&self) -> String {
        match self {
            Opt::Long(l) => format!("invalid option '--{l}'"),
            Opt::Short(c) => format!("invalid option '-{c}'"),
        }
    }
}

/// The options of `herd serve` and `herd run` that shape the cluster.
pub(crate) struct ClusterArgs {
    mode: String,
    accept: Option<SharedAccept>,
    pub(crate) backend: Backend,
    workers: Option<usize>,
    listen: ListenAddr,
    /// `--listen systemd` (`Some(None)`) or `--listen sd:NAME` (`Some(Some(NAME))`): the
    /// listeners come from socket activation.
    activated: Option<Option<String>>,
    backlog: i32,
    window: usize,
    handoff_policy: herd::mode::handoff::HandoffPolicy,
    shutdown_timeout: f64,
    defer_accept: bool,
    pub(crate) stats_json: bool,
    restart_limit: usize,
    restart_window: f64,
    heartbeat: f64,
    heartbeat_timeout: f64,
    reload_timeout: f64,
    pub(crate) quiet: bool,
}

impl Default for ClusterArgs {
    fn default() -> ClusterArgs {
        ClusterArgs {
            mode: "shared".into(),
            accept: None,
            backend: Backend::Epoll,
            workers: None,
            listen: "127.0.0.1:8080".parse().expect("a valid default"),
            activated: None,
            backlog: herd::DEFAULT_BACKLOG,
            window: herd::mode::handoff::DEFAULT_WINDOW,
            handoff_policy: Default::default(),
            shutdown_timeout: 30.0,
            defer_accept: false,
            stats_json: false,
            restart_limit: herd::DEFAULT_RESTART_LIMIT,
            restart_window: herd::DEFAULT_RESTART_WINDOW.as_secs_f64(),
            heartbeat: 1.0,
            heartbeat_timeout: 10.0,
            reload_timeout: herd::DEFAULT_RELOAD_TIMEOUT.as_secs_f64(),
            quiet: false,
        }
    }
}

impl ClusterArgs {
    /// Takes `opt` (and its value) if it is a cluster option; returns whether it was.
    pub(crate) fn take(&mut self, opt: &Opt, parser: &mut lexopt::Parser) -> Result<bool, String> {
        let p = parser;
        match opt {
            o if o.is("mode", None) => self.mode = cli::parse(p, "--mode")?,
            o if o.is("accept", None) => self.accept = Some(cli::parse(p, "--accept")?),
            o if o.is("backend", None) => self.backend = cli::parse(p, "--backend")?,
            o if o.is("workers", Some('w')) => self.workers = Some(cli::parse(p, "--workers")?),
            o if o.is("listen", Some('l')) => {
                let text: String = cli::parse(p, "--listen")?;
                if text == "systemd" {
                    self.activated = Some(None);
                } else if let Some(name) = text.strip_prefix("sd:") {
                    self.activated = Some(Some(name.to_owned()));
                } else {
                    self.listen = text.parse().map_err(|e| format!("--listen {text}: {e}"))?;
                    self.activated = None;
                }
            }
            o if o.is("backlog", None) => self.backlog = cli::parse(p, "--backlog")?,
            o if o.is("window", None) => self.window = cli::parse(p, "--window")?,
            o if o.is("handoff-policy", None) => self.handoff_policy = cli::parse(p, "--handoff-policy")?,
            o if o.is("shutdown-timeout", None) => self.shutdown_timeout = seconds(p, "--shutdown-timeout")?,
            o if o.is("defer-accept", None) => self.defer_accept = true,
            o if o.is("restart-limit", None) => self.restart_limit = cli::parse(p, "--restart-limit")?,
            o if o.is("restart-window", None) => self.restart_window = seconds(p, "--restart-window")?,
            o if o.is("heartbeat", None) => self.heartbeat = seconds(p, "--heartbeat")?,
            o if o.is("heartbeat-timeout", None) => self.heartbeat_timeout = seconds(p, "--heartbeat-timeout")?,
            o if o.is("reload-timeout", None) => self.reload_timeout = seconds(p, "--reload-timeout")?,
            o if o.is("stats", None) => {
                self.stats_json = match cli::parse::<String>(p, "--stats")?.as_str() {
                    "table" => false,
                    "json" => true,
                    other => return Err(format!("--stats {other}: expected table or json")),
                }
            }
            o if o.is("quiet", Some('q')) => self.quiet = true,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// What is wrong with the options together.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.heartbeat > 0.0 && self.heartbeat_timeout < self.heartbeat {
            return Err(format!(
                "--heartbeat-timeout {} must be at least --heartbeat {}",
                self.heartbeat_timeout, self.heartbeat
            ));
        }
        mode_of(self).map(|_| ())
    }

    /// The cluster these options describe, bound; a failure is the user's input (exit 2).
    pub(crate) fn bind(&self, command: &str) -> Result<Cluster, ExitCode> {
        let mode = mode_of(self).map_err(|e| cli::command_error(command, e))?;
        let mut builder = Cluster::builder(self.listen.clone())
            .mode(mode)
            .backend(self.backend)
            .backlog(self.backlog)
            .handoff_window(self.window)
            .handoff_policy(self.handoff_policy)
            .shutdown_timeout(Duration::from_secs_f64(self.shutdown_timeout))
            .defer_accept(self.defer_accept)
            .restart_limit(self.restart_limit, Duration::from_secs_f64(self.restart_window))
            .reload_timeout(Duration::from_secs_f64(self.reload_timeout))
            .sd_notify(true)
            .upgrade_on_sigusr2(true);
        if self.heartbeat > 0.0 {
            builder = builder
                .heartbeat(Duration::from_secs_f64(self.heartbeat), Duration::from_secs_f64(self.heartbeat_timeout));
        }
        if let Some(n) = self.workers {
            builder = builder.workers(n);
        }
        let bound = match &self.activated {
            None => builder.bind(),
            Some(name) => activated_listeners(name.as_deref()).and_then(|fds| builder.bind_inherited(fds)),
        };
        bound.map_err(|e| cli::command_error(command, e))
    }

    /// The line every cluster command starts with.
    pub(crate) fn announce(&self, cluster: &Cluster) {
        eprintln!(
            "{} herd: serving on {} mode={} backend={} workers={} pid={}",
            crate::timestamp::now(),
            cluster.local_addr(),
            cluster.config().mode,
            self.backend,
            cluster.config().workers,
            std::process::id()
        );
    }

    /// What to do with each event: log it (warnings even with `--quiet`).
    pub(crate) fn logger(&self) -> impl FnMut(&herd::Event) + use<> {
        let quiet = self.quiet;
        move |event| {
            if !quiet || matches!(event, herd::Event::Warning { .. }) {
                eprintln!("{} herd: {event}", crate::timestamp::now());
            }
        }
    }

    /// The exit code for how the primary ended, with the counters printed.
    pub(crate) fn finish(&self, result: std::io::Result<herd::stats::Snapshot>) -> ExitCode {
        match result {
            Ok(snapshot) if self.stats_json => {
                println!("{}", crate::stats_json::encode(&snapshot));
                ExitCode::SUCCESS
            }
            Ok(snapshot) => {
                println!("{snapshot}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("herd: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The options of `herd serve` and `herd worker` that shape what each worker does.
#[derive(Clone)]
pub(crate) struct WorkerArgs {
    worker_api: server::WorkerApi,
    request_timeout: f64,
    behaviour: server::Behaviour,
}

impl Default for WorkerArgs {
    fn default() -> WorkerArgs {
        WorkerArgs { worker_api: server::WorkerApi::EventLoop, request_timeout: 10.0, behaviour: Default::default() }
    }
}

impl WorkerArgs {
    /// Takes `opt` (and its value) if it is a worker option; returns whether it was.
    pub(crate) fn take(&mut self, opt: &Opt, parser: &mut lexopt::Parser) -> Result<bool, String> {
        let p = parser;
        let b = &mut self.behaviour;
        match opt {
            o if o.is("worker-api", None) => self.worker_api = cli::parse(p, "--worker-api")?,
            o if o.is("request-timeout", None) => self.request_timeout = seconds(p, "--request-timeout")?,
            o if o.is("crash-after", None) => b.crash_after = Some(cli::parse(p, "--crash-after")?),
            o if o.is("retire-after", None) => b.retire_after = Some(cli::parse(p, "--retire-after")?),
            o if o.is("startup-delay", None) => {
                b.startup_delay = Duration::from_millis(cli::parse(p, "--startup-delay")?)
            }
            o if o.is("broken-generation", None) => b.broken_generation = Some(cli::parse(p, "--broken-generation")?),
            o if o.is("delay", None) => b.delay = Duration::from_millis(cli::parse(p, "--delay")?),
            o if o.is("tag", None) => b.tag = Some(cli::parse(p, "--tag")?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Serves as the worker until the primary says stop.
    pub(crate) fn serve(&self, worker: &mut herd::Worker) -> std::io::Result<()> {
        let request_timeout = (self.request_timeout > 0.0).then(|| Duration::from_secs_f64(self.request_timeout));
        server::run(worker, self.worker_api, self.behaviour.clone(), request_timeout)
    }
}

struct Args {
    cluster: ClusterArgs,
    worker: WorkerArgs,
}

fn parse_args(mut parser: lexopt::Parser) -> Result<Option<Args>, String> {
    let mut args = Args { cluster: ClusterArgs::default(), worker: WorkerArgs::default() };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        if matches!(arg, lexopt::Arg::Short('h') | lexopt::Arg::Long("help")) {
            return Ok(None);
        }
        let opt = Opt::of(arg)?;
        if !args.cluster.take(&opt, &mut parser)? && !args.worker.take(&opt, &mut parser)? {
            return Err(opt.unexpected());
        }
    }
    args.cluster.check()?;
    Ok(Some(args))
}

/// The listeners socket activation passed: all of them, or those named `name`.
fn activated_listeners(name: Option<&str>) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
    let passed = herd::activation::listen_fds()?;
    let names: Vec<String> = passed.iter().map(|a| a.name.clone()).collect();
    let chosen: Vec<_> = passed.into_iter().filter(|a| name.is_none_or(|n| a.name == n)).map(|a| a.fd).collect();
    match (name, chosen.is_empty()) {
        (Some(n), true) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("--listen sd:{n}: no socket of that name was passed (LISTEN_FDNAMES: {names:?})"),
        )),
        (None, true) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--listen systemd: no socket was passed (LISTEN_FDS is unset or 0, or LISTEN_PID names another process)",
        )),
        _ => Ok(chosen),
    }
}

/// Parses a number of seconds (fractions allowed, >= 0).
pub(crate) fn seconds(parser: &mut lexopt::Parser, option: &str) -> Result<f64, String> {
    let value: f64 = cli::parse(parser, option)?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{option} {value}: must be a number of seconds >= 0"));
    }
    Ok(value)
}

fn mode_of(args: &ClusterArgs) -> Result<Mode, String> {
    let mode: Mode = args.mode.parse().map_err(|e| format!("--mode: {e}"))?;
    match (mode, args.accept) {
        (Mode::Shared(_), Some(strategy)) => Ok(Mode::Shared(strategy)),
        (other, Some(_)) => Err(format!("--accept applies to shared mode only, not {}", other.name())),
        (mode, None) => Ok(mode),
    }
}

pub fn main(parser: lexopt::Parser) -> ExitCode {
    let args = match cli::arguments("serve", HELP, parse_args(parser)) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let worker = args.worker.clone();
    // The new image of an in-place upgrade (SIGUSR2) takes over; otherwise, bind and start.
    let primary = match herd::Primary::resume(move |w| worker.serve(w)) {
        Ok(Some(primary)) => Ok(primary),
        Ok(None) => {
            let cluster = match args.cluster.bind("serve") {
                Ok(c) => c,
                Err(code) => return code,
            };
            args.cluster.announce(&cluster);
            let worker = args.worker.clone();
            cluster.start(move |w| worker.serve(w))
        }
        Err(e) => Err(e),
    };
    args.cluster.finish(primary.and_then(|p| p.run(args.cluster.logger())))
}

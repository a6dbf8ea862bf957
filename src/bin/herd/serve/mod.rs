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
  --accept STRATEGY        shared mode: how workers wait on the listener [default: epoll-rotate]
                             epoll            level-triggered, every worker woken (the herd)
                             epoll-exclusive  EPOLLEXCLUSIVE: one woken, but unfair
                             epoll-rotate     EPOLLEXCLUSIVE re-armed at the tail: fair
                             blocking         a thread per worker in blocking accept: fair
  --backend BACKEND        how connections are taken off listeners [default: epoll]
                             epoll     readiness, then accept4 per connection
                             io-uring  a multishot accept in an io_uring; in handoff mode
                                       the primary also sends, closes and reads acks
                                       through its ring (built with --features io-uring;
                                       falls back to epoll, saying why, where the kernel
                                       refuses). shared/epoll and shared/blocking have no
                                       io_uring form and run on epoll
  -w, --workers N          worker processes [default: number of CPUs]
  -l, --listen ADDR        127.0.0.1:8080, [::1]:8080, port 0 for any free port, or a Unix
                           socket path (/tmp/herd.sock, unix:herd.sock) [default: 127.0.0.1:8080]
  --backlog N              listen(2) backlog [default: 1024]
  --window N               handoff mode: unacknowledged handoffs per worker [default: 32]
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
  -q, --quiet              do not log lifecycle events (warnings still show)
  -h, --help               print this help

Exit status: 0 after a clean shutdown, 1 on a runtime error, 2 on bad usage (unknown mode, bad
address, port in use).
";

struct Args {
    mode: String,
    accept: Option<SharedAccept>,
    backend: Backend,
    workers: Option<usize>,
    listen: ListenAddr,
    backlog: i32,
    window: usize,
    shutdown_timeout: f64,
    worker_api: server::WorkerApi,
    defer_accept: bool,
    stats_json: bool,
    restart_limit: usize,
    restart_window: f64,
    heartbeat: f64,
    heartbeat_timeout: f64,
    reload_timeout: f64,
    request_timeout: f64,
    behaviour: server::Behaviour,
    quiet: bool,
}

fn parse_args(mut parser: lexopt::Parser) -> Result<Option<Args>, String> {
    use lexopt::Arg::{Long, Short};
    let mut args = Args {
        mode: "shared".into(),
        accept: None,
        backend: Backend::Epoll,
        workers: None,
        listen: "127.0.0.1:8080".parse().expect("a valid default"),
        backlog: herd::DEFAULT_BACKLOG,
        window: herd::mode::handoff::DEFAULT_WINDOW,
        shutdown_timeout: 30.0,
        worker_api: server::WorkerApi::EventLoop,
        defer_accept: false,
        stats_json: false,
        restart_limit: herd::DEFAULT_RESTART_LIMIT,
        restart_window: herd::DEFAULT_RESTART_WINDOW.as_secs_f64(),
        heartbeat: 1.0,
        heartbeat_timeout: 10.0,
        reload_timeout: herd::DEFAULT_RELOAD_TIMEOUT.as_secs_f64(),
        request_timeout: 10.0,
        behaviour: server::Behaviour::default(),
        quiet: false,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("mode") => args.mode = cli::parse(&mut parser, "--mode")?,
            Long("accept") => args.accept = Some(cli::parse(&mut parser, "--accept")?),
            Long("backend") => args.backend = cli::parse(&mut parser, "--backend")?,
            Short('w') | Long("workers") => args.workers = Some(cli::parse(&mut parser, "--workers")?),
            Short('l') | Long("listen") => args.listen = cli::parse(&mut parser, "--listen")?,
            Long("backlog") => args.backlog = cli::parse(&mut parser, "--backlog")?,
            Long("window") => args.window = cli::parse(&mut parser, "--window")?,
            Long("shutdown-timeout") => args.shutdown_timeout = seconds(&mut parser, "--shutdown-timeout")?,
            Long("worker-api") => args.worker_api = cli::parse(&mut parser, "--worker-api")?,
            Long("defer-accept") => args.defer_accept = true,
            Long("restart-limit") => args.restart_limit = cli::parse(&mut parser, "--restart-limit")?,
            Long("restart-window") => args.restart_window = seconds(&mut parser, "--restart-window")?,
            Long("heartbeat") => args.heartbeat = seconds(&mut parser, "--heartbeat")?,
            Long("heartbeat-timeout") => args.heartbeat_timeout = seconds(&mut parser, "--heartbeat-timeout")?,
            Long("reload-timeout") => args.reload_timeout = seconds(&mut parser, "--reload-timeout")?,
            Long("request-timeout") => args.request_timeout = seconds(&mut parser, "--request-timeout")?,
            Long("crash-after") => args.behaviour.crash_after = Some(cli::parse(&mut parser, "--crash-after")?),
            Long("retire-after") => args.behaviour.retire_after = Some(cli::parse(&mut parser, "--retire-after")?),
            Long("startup-delay") => {
                args.behaviour.startup_delay = Duration::from_millis(cli::parse(&mut parser, "--startup-delay")?)
            }
            Long("broken-generation") => {
                args.behaviour.broken_generation = Some(cli::parse(&mut parser, "--broken-generation")?)
            }
            Long("delay") => args.behaviour.delay = Duration::from_millis(cli::parse(&mut parser, "--delay")?),
            Long("stats") => {
                args.stats_json = match cli::parse::<String>(&mut parser, "--stats")?.as_str() {
                    "table" => false,
                    "json" => true,
                    other => return Err(format!("--stats {other}: expected table or json")),
                }
            }
            Short('q') | Long("quiet") => args.quiet = true,
            Short('h') | Long("help") => return Ok(None),
            other => return Err(other.unexpected().to_string()),
        }
    }
    if args.heartbeat > 0.0 && args.heartbeat_timeout < args.heartbeat {
        return Err(format!(
            "--heartbeat-timeout {} must be at least --heartbeat {}",
            args.heartbeat_timeout, args.heartbeat
        ));
    }
    Ok(Some(args))
}

/// Parses a number of seconds (fractions allowed, >= 0).
fn seconds(parser: &mut lexopt::Parser, option: &str) -> Result<f64, String> {
    let value: f64 = cli::parse(parser, option)?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{option} {value}: must be a number of seconds >= 0"));
    }
    Ok(value)
}

fn mode_of(args: &Args) -> Result<Mode, String> {
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
    let mode = match mode_of(&args) {
        Ok(m) => m,
        Err(e) => return cli::command_error("serve", e),
    };
    let mut builder = Cluster::builder(args.listen.clone())
        .mode(mode)
        .backend(args.backend)
        .backlog(args.backlog)
        .handoff_window(args.window)
        .shutdown_timeout(Duration::from_secs_f64(args.shutdown_timeout))
        .defer_accept(args.defer_accept)
        .restart_limit(args.restart_limit, Duration::from_secs_f64(args.restart_window))
        .reload_timeout(Duration::from_secs_f64(args.reload_timeout));
    if args.heartbeat > 0.0 {
        builder =
            builder.heartbeat(Duration::from_secs_f64(args.heartbeat), Duration::from_secs_f64(args.heartbeat_timeout));
    }
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    // Everything up to here is the user's input: a failure is bad usage (exit 2).
    let cluster = match builder.bind() {
        Ok(c) => c,
        Err(e) => return cli::command_error("serve", e),
    };
    let workers = cluster.config().workers;
    eprintln!(
        "{} herd: serving on {} mode={mode} backend={} workers={workers} pid={}",
        crate::timestamp::now(),
        cluster.local_addr(),
        args.backend,
        std::process::id()
    );
    let (quiet, api, behaviour) = (args.quiet, args.worker_api, args.behaviour);
    let request_timeout = (args.request_timeout > 0.0).then(|| Duration::from_secs_f64(args.request_timeout));
    let result = cluster.run(
        move |worker| server::run(worker, api, behaviour, request_timeout),
        |event| {
            // Warnings (io_uring unavailable, say) show even with --quiet.
            if !quiet || matches!(event, herd::Event::Warning { .. }) {
                eprintln!("{} herd: {event}", crate::timestamp::now());
            }
        },
    );
    match result {
        Ok(snapshot) if args.stats_json => {
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

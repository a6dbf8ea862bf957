//! `herd run`: any program as the workers — `fork` + `execve` of a command per worker.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli;
use crate::serve::{ClusterArgs, Opt, seconds};

const HELP: &str = "\
herd run — run any program as the workers of a herd cluster

Each worker is `fork` + `execve` of CMD. It gets, by the conventions servers already know:
  shared, reuseport  its listener at descriptor 3, with LISTEN_FDS=1, LISTEN_PID and
                     LISTEN_FDNAMES=herd, as systemd passes it (sd_listen_fds(3)); shared mode
                     passes the one listener, reuseport the slot's own, which the primary keeps
                     across restarts
  every mode         its control channel in HERD_CHANNEL_FD, its slot in HERD_WORKER_ID, the
                     reload generation in HERD_GENERATION, the counters in HERD_COUNTERS_FD,
                     and NOTIFY_SOCKET for sd_notify's READY=1
  handoff            its connections over the lane in HERD_LANE_FD (docs/channel-protocol.md;
                     `herd::Worker::from_env()` in Rust)
Everything else is closed at exec, and signals are at their defaults.

A worker counts as listening once it says so on its channel, sends READY=1 to its
NOTIFY_SOCKET, or --ready-delay has passed. A reload (SIGHUP) executes CMD again: a new
binary or script at that path is what the new generation runs. Workers that read their channel
are stopped with a Stop message; others with SIGTERM; both with SIGKILL after the shutdown
timeout.

Usage: herd run [OPTIONS] -- CMD [ARGS...]

Options:
  --ready-delay SECS       count a worker as listening this long after it started, if it has
                           not said so itself (for programs that neither speak the channel nor
                           sd_notify) [default: never]
  and the cluster options of `herd serve`: --mode, --accept, --backend, -w/--workers,
  -l/--listen, --backlog, --window, --shutdown-timeout, --defer-accept, --stats,
  --restart-limit, --restart-window, --heartbeat, --heartbeat-timeout (heartbeats reach only
  workers that read their channel), --reload-timeout, -q/--quiet
  -h, --help               print this help

Examples:
  herd run --mode reuseport -w 4 -- herd worker
  herd run --mode handoff -- python3 examples/handoff_worker.py
  herd run --mode shared --ready-delay 0.5 -- python3 examples/listen_fds_worker.py

Exit status: 0 after a clean shutdown, 1 on a runtime error (the workers kept crashing: see the
restart limit), 2 on bad usage (no CMD, a CMD that is not an executable file, a port in use).
";

struct Args {
    cluster: ClusterArgs,
    ready_delay: Option<f64>,
    command: Vec<OsString>,
}

fn parse_args(mut parser: lexopt::Parser) -> Result<Option<Args>, String> {
    let mut args = Args { cluster: ClusterArgs::default(), ready_delay: None, command: Vec::new() };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => return Ok(None),
            // CMD, and everything after it, is the program's.
            lexopt::Arg::Value(program) => {
                args.command.push(program);
                args.command.extend(parser.raw_args().map_err(|e| e.to_string())?);
                break;
            }
            lexopt::Arg::Long("ready-delay") => args.ready_delay = Some(seconds(&mut parser, "--ready-delay")?),
            other => {
                let opt = Opt::of(other)?;
                if !args.cluster.take(&opt, &mut parser)? {
                    return Err(opt.unexpected());
                }
            }
        }
    }
    if args.command.is_empty() {
        return Err("no program to run: herd run [OPTIONS] -- CMD [ARGS...]".into());
    }
    args.cluster.check()?;
    Ok(Some(args))
}

pub fn main(parser: lexopt::Parser) -> ExitCode {
    let args = match cli::arguments("run", HELP, parse_args(parser)) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let mut program = match herd::Program::new(&args.command[0]) {
        Ok(p) => p.args(&args.command[1..]),
        Err(e) => return cli::command_error("run", e),
    };
    if let Some(delay) = args.ready_delay {
        program = program.ready_delay(Duration::from_secs_f64(delay));
    }
    // The new image of an in-place upgrade (SIGUSR2) takes over; otherwise, bind and start.
    let primary = match herd::Primary::resume_program(program.clone()) {
        Ok(Some(primary)) => Ok(primary),
        Ok(None) => {
            let cluster = match args.cluster.bind("run") {
                Ok(c) => c,
                Err(code) => return code,
            };
            args.cluster.announce(&cluster);
            eprintln!("{} herd: each worker runs {:?}", crate::timestamp::now(), args.command);
            cluster.start_program(program)
        }
        Err(e) => Err(e),
    };
    args.cluster.finish(primary.and_then(|p| p.run(args.cluster.logger())))
}

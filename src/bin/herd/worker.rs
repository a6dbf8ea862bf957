//! `herd worker`: the demo HTTP worker of `herd serve` as a program of its own, for
//! `herd run -- herd worker`.

use std::process::ExitCode;

use crate::cli;
use crate::serve::{Opt, WorkerArgs};

const HELP: &str = "\
herd worker — the demo HTTP/1.1 worker of `herd serve`, as a program `herd run` starts

It takes what `herd run` passed it (the listener at descriptor 3 in shared and reuseport modes,
the lane in handoff mode, the channel, the counters: see docs/exec.md) and answers every
request as `herd serve` does, with `200` and `worker <id> pid <pid>`. So

    herd run --mode M -- herd worker

behaves like `herd serve --mode M`, with each worker a program of its own.

Usage: herd worker [OPTIONS]

Options:
  --worker-api API          event-loop, nested or incoming [default: event-loop]
  --request-timeout SECS    close a connection silent this long; 0 turns it off [default: 10]
  --tag TEXT                append TEXT to every response body (which code answered)
  --delay MS                demo: hold every response MS milliseconds
  --crash-after N           demo: abort after answering N requests (0: at start)
  --retire-after N          demo: announce the exit after N requests
  --startup-delay MS        demo: sleep MS milliseconds before taking connections
  --broken-generation G     demo: workers of reload generation G or later abort at start-up
  -h, --help                print this help

Exit status: 0 once the primary asked it to stop and its connections are done; 1 if it was not
started by herd (or cannot take what it was given), with the reason on stderr.
";

fn parse_args(mut parser: lexopt::Parser) -> Result<Option<WorkerArgs>, String> {
    let mut args = WorkerArgs::default();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        if matches!(arg, lexopt::Arg::Short('h') | lexopt::Arg::Long("help")) {
            return Ok(None);
        }
        let opt = Opt::of(arg)?;
        if !args.take(&opt, &mut parser)? {
            return Err(opt.unexpected());
        }
    }
    Ok(Some(args))
}

pub fn main(parser: lexopt::Parser) -> ExitCode {
    let args = match cli::arguments("worker", HELP, parse_args(parser)) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let mut worker = match herd::Worker::from_env() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("herd worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.serve(&mut worker) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd worker {}: {e}", worker.id());
            ExitCode::FAILURE
        }
    }
}

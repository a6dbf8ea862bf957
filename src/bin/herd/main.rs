//! `herd`: serve, load and benchmark a prefork TCP server on loopback.
//!
//! ```text
//! herd serve [--mode shared|handoff|reuseport] [--accept STRATEGY] [--workers N] [--listen ADDR]
//! herd run [CLUSTER OPTIONS] [--ready-delay SECS] -- CMD [ARGS...]
//! herd worker [--tag TEXT]
//! herd load URL [--connections N] [--mode churn|keepalive] [--duration SECS | --requests N]
//! herd bench [--workers N] [--quick] [--json | --csv] [--svg FILE]
//! ```
//!
//! Each subcommand lives in its own module and prints its own `--help`.

mod bench;
mod cli;
#[cfg(test)]
mod fuzz_replay;
mod load;
mod run;
mod serve;
mod stats_json;
mod timestamp;
mod worker;

use std::process::ExitCode;

const USAGE: &str = "\
herd — a prefork TCP server (primary + forked workers) and a lab for measuring how connections
are spread over workers: shared listener, primary handoff, or SO_REUSEPORT.

Usage: herd <COMMAND> [OPTIONS]

Commands:
  serve    run the demo HTTP/1.1 server on a cluster of workers
  run      run any program as the workers (fork + exec; LISTEN_FDS, sd_notify, SIGHUP loads
           new code)
  worker   the demo HTTP/1.1 worker of `serve` as a program, for `herd run -- herd worker`
  load     an HTTP/1.1 load generator for any server on loopback (like wrk)
  bench    every mode and accept strategy under a light and a saturating load, in one table
  help     print this message

Run `herd <COMMAND> --help` for a command's options.
";

fn main() -> ExitCode {
    // A primary upgrading in place (SIGUSR2) first runs this binary to check it can take over.
    herd::upgrade::answer_check();
    let mut args = lexopt::Parser::from_env();
    let command = match args.next() {
        Ok(Some(lexopt::Arg::Value(v))) => v.to_string_lossy().into_owned(),
        Ok(Some(lexopt::Arg::Long("help") | lexopt::Arg::Short('h'))) | Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Some(lexopt::Arg::Long("version") | lexopt::Arg::Short('V'))) => {
            println!("herd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Some(other)) => return cli::usage_error(other.unexpected()),
        Err(e) => return cli::usage_error(e),
    };
    match command.as_str() {
        "serve" => serve::main(args),
        "run" => run::main(args),
        "worker" => worker::main(args),
        "load" => load::main(args),
        "bench" => bench::main(args),
        "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => cli::usage_error(format!("unknown command {other:?}; try `herd --help`")),
    }
}

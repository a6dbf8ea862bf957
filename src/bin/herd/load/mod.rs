//! `herd load URL`: an HTTP/1.1 load generator for servers on this machine, in the spirit of wrk.
//!
//! It exists to measure how a prefork server spreads work over its workers, so besides
//! throughput and latency it reads which worker answered (the herd server's body is
//! `worker <id> pid <pid>\n`) and reports the distribution with Jain's fairness index.
//!
//! It must never be the bottleneck. A handful of threads (one per core by default) each run
//! their own edge-triggered epoll loop over non-blocking sockets; the request is built once; the
//! response is parsed in place from one read buffer per thread; the clock is read once per batch
//! of events. Churn mode (a new connection per request, the default) takes care not to exhaust
//! ephemeral ports; see [`socket`] for how. Only loopback targets are accepted; see [`url`].
//!
//! | module       | concept                                                        |
//! |--------------|----------------------------------------------------------------|
//! | this one     | the command line and its entry point                           |
//! | [`config`]   | [`LoadConfig`], what a run does                                |
//! | [`url`]      | parsing the target, and the loopback-only rule                 |
//! | [`socket`]   | opening connections without running out of ports               |
//! | [`http`]     | the request, and the incremental response parser               |
//! | [`chunked`]  | the chunked transfer-coding decoder                            |
//! | [`conn`]     | one connection's state machine                                 |
//! | [`engine`]   | threads and their epoll loops: [`run`]                         |
//! | [`stats`]    | per-thread counters, error kinds                               |
//! | [`fairness`] | Jain's index                                                   |
//! | [`report`]   | [`LoadReport`]: the human table and the JSON                   |
//!
//! In-process use (as `herd bench` does):
//!
//! ```ignore
//! let target = load::Target::parse("http://127.0.0.1:8080/")?;
//! let cfg = load::LoadConfig { connections: 64, ..load::LoadConfig::new(target) };
//! let report = load::run(&cfg)?;
//! println!("{report}");
//! ```

mod chunked;
mod config;
mod conn;
mod engine;
mod fairness;
mod http;
mod report;
mod socket;
mod stats;
mod url;

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

pub use config::{LoadConfig, MAX_CONNECTIONS, MAX_SOURCES, Mode, Stall};
pub use engine::run;
pub use url::Target;
// The rest of the in-process API (for `herd bench`); the command line itself does not name them.
pub use fairness::jain;
pub use report::{LoadReport, Percentiles};
#[allow(unused_imports)]
pub use stats::{Cause, Errors};
#[allow(unused_imports)]
pub use url::{Endpoint, UrlError};

const HELP: &str = "\
herd load: send HTTP/1.1 GET requests to a server on this machine and measure it

usage: herd load [OPTIONS] URL

URL is http://HOST[:PORT][/PATH] with HOST one of 127.0.0.0/8, [::1] or localhost,
or unix:PATH for a Unix-domain stream socket. Any other host is refused.

options:
  -c, --connections N   requests in flight, one per connection (default 8)
  -t, --threads N       event-loop threads, capped at the connection count (default: one per core)
  -d, --duration SECS   stop after SECS seconds, fractions allowed (default 5, unless -n is given)
  -n, --requests N      stop after N request attempts; with -d, whichever comes first
      --mode MODE       churn: a new connection per request, sending `Connection: close`,
                        waiting for the server to close first (default);
                        keepalive: reuse each connection for many requests
      --timeout MS      abandon a request after MS milliseconds: a timeout error (default 2000)
      --sources N       spread IPv4 connections over N source addresses 127.0.0.2.. so
                        churn does not run out of ports; 0 lets the kernel choose (default 8)
      --workers N       the server's worker count, so idle workers show as 0 (optional)
      --slow-fraction F a skewed load: this share of requests (every round(1/F)-th of each
                        thread) asks for /block/MS instead of URL's path: a slow handler that
                        blocks its worker (herd serve and herd worker answer it) (default 0)
      --slow-ms MS      how long a slow request blocks its worker (default 100)
      --stall-ms MS     a stalled worker: once, on a connection of its own, GET /block/MS
                        blocks whichever worker takes it; reported: that worker, and how many
                        fast requests waited at least MS/2 behind it
      --stall-after SECS  when the stall starts, from the start of the run (default 0.5)
      --json            print one JSON object instead of the table
  -h, --help            print this help

Only 2xx responses count as requests; the rest are errors by kind: refused, reset (also a
close before the response was complete), timeout, bad_status, no_port (EADDRNOTAVAIL), other.
The distribution counts responses whose body contains `worker <id>`; jain is Jain's fairness
index (sum x)^2 / (n * sum x^2) over them: 1.0 is perfectly even.

JSON keys: url, mode, connections, threads, requests, errors{refused,reset,timeout,
bad_status,no_port,other}, elapsed_s, rps, p50_us, p90_us, p99_us, p999_us, max_us,
per_worker (counts indexed by worker id), jain (null without worker data), max_min,
per_worker_connections (connections by the worker that answered their first request),
connection_jain, slow_requests, fast_p50_us, fast_p99_us, fast_p999_us, fast_max_us (the
requests that were not slow on purpose), stall{ms,worker,took_ms,waited} (null without
--stall-ms).

exit status: 0 if any request succeeded, 1 if none did or the run could not start,
2 for bad arguments or a refused URL.
";

/// What the command line asked for.
struct Cli {
    config: LoadConfig,
    json: bool,
}

/// Entry point of `herd load`; `args` is positioned just after the `load` word.
pub fn main(args: lexopt::Parser) -> ExitCode {
    let cli = match crate::cli::arguments("load", HELP, parse_args(args)) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(&cli.config) {
        Ok(report) => {
            let text = if cli.json { format!("{}\n", report.to_json()) } else { report.to_string() };
            // A closed stdout (`| head`) is not worth a panic.
            if std::io::stdout().lock().write_all(text.as_bytes()).is_err() {
                return ExitCode::from(1);
            }
            if report.requests > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("herd load: {e}");
            ExitCode::from(1)
        }
    }
}

/// Parses the arguments; `Ok(None)` means help was asked for.
fn parse_args(mut args: lexopt::Parser) -> Result<Option<Cli>, String> {
    use lexopt::prelude::*;

    let mut url: Option<String> = None;
    let mut mode = Mode::Churn;
    let mut connections = 8;
    let mut threads = None;
    let mut duration = None;
    let mut requests = None;
    let mut timeout_ms = 2000;
    let mut sources = 8;
    let mut workers = None;
    let mut json = false;
    let mut slow_fraction = 0.0;
    let mut slow_ms = 100;
    let mut stall_ms = None;
    let mut stall_after = Duration::from_millis(500);
    while let Some(arg) = args.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Short('c') | Long("connections") => {
                connections = number(&mut args, "--connections", 1, MAX_CONNECTIONS as u64)?
            }
            Short('t') | Long("threads") => threads = Some(number(&mut args, "--threads", 1, 1024)?),
            Short('d') | Long("duration") => duration = Some(seconds(&mut args)?),
            Short('n') | Long("requests") => requests = Some(number(&mut args, "--requests", 1, u64::MAX)?),
            Long("mode") => {
                let v = text(&mut args, "--mode")?;
                mode = Mode::parse(&v).ok_or_else(|| format!("invalid --mode {v:?}: expected churn or keepalive"))?;
            }
            Long("timeout") => timeout_ms = number(&mut args, "--timeout", 1, 3_600_000)?,
            Long("sources") => sources = number(&mut args, "--sources", 0, MAX_SOURCES as u64)? as usize,
            Long("workers") => workers = Some(number(&mut args, "--workers", 1, 65_536)? as usize),
            Long("json") => json = true,
            Long("slow-fraction") => {
                let v = text(&mut args, "--slow-fraction")?;
                slow_fraction = match v.parse::<f64>() {
                    Ok(x) if (0.0..=1.0).contains(&x) => x,
                    _ => return Err(format!("invalid --slow-fraction {v:?}: expected a number from 0 to 1")),
                };
            }
            Long("slow-ms") => slow_ms = number(&mut args, "--slow-ms", 1, 600_000)?,
            Long("stall-ms") => stall_ms = Some(number(&mut args, "--stall-ms", 1, 600_000)?),
            Long("stall-after") => {
                let v = text(&mut args, "--stall-after")?;
                stall_after = match v.parse::<f64>() {
                    Ok(s) if (0.0..=86_400.0).contains(&s) => Duration::from_secs_f64(s),
                    _ => return Err(format!("invalid --stall-after {v:?}: expected seconds from 0 to 86400")),
                };
            }
            Value(v) if url.is_none() => url = Some(v.into_string().map_err(|v| format!("URL is not UTF-8: {v:?}"))?),
            Value(v) => return Err(format!("unexpected argument {v:?}: only one URL is allowed")),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    let url = url.ok_or("missing URL, e.g. http://127.0.0.1:8080/")?;
    let target = Target::parse(&url).map_err(|e| e.to_string())?;
    let mut config = LoadConfig::new(target);
    config.mode = mode;
    config.connections = connections as usize;
    config.threads = threads.map_or_else(config::default_threads, |t| t as usize);
    config.duration = match (duration, requests) {
        (None, Some(_)) => None,
        (d, _) => Some(d.unwrap_or(Duration::from_secs(5))),
    };
    config.requests = requests;
    config.timeout = Duration::from_millis(timeout_ms);
    config.sources = sources;
    config.workers = workers;
    config.slow_fraction = slow_fraction;
    config.slow_ms = slow_ms;
    config.stall = stall_ms.map(|ms| config::Stall { ms, after: stall_after });
    config.validate()?;
    Ok(Some(Cli { config, json }))
}

fn text(args: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    let v: OsString = args.value().map_err(|e| e.to_string())?;
    v.into_string().map_err(|v| format!("invalid {flag} {v:?}: not UTF-8"))
}

/// Reads an integer option value in `min..=max`.
fn number(args: &mut lexopt::Parser, flag: &str, min: u64, max: u64) -> Result<u64, String> {
    let v = text(args, flag)?;
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("invalid {flag} {v:?}: expected an integer from {min} to {max}")),
    }
}

/// Reads `--duration` in seconds, fractions allowed, up to a day.
fn seconds(args: &mut lexopt::Parser) -> Result<Duration, String> {
    let v = text(args, "--duration")?;
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("invalid --duration {v:?}: expected seconds, more than 0 and at most 86400")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Cli>, String> {
        parse_args(lexopt::Parser::from_args(args.iter().copied()))
    }

    #[test]
    fn parses_defaults() {
        let cli = parse(&["http://127.0.0.1:8080/"]).unwrap().unwrap();
        assert_eq!(cli.config.mode, Mode::Churn);
        assert_eq!(cli.config.connections, 8);
        assert_eq!(cli.config.duration, Some(Duration::from_secs(5)));
        assert_eq!(cli.config.requests, None);
        assert_eq!(cli.config.timeout, Duration::from_secs(2));
        assert!(!cli.json);
    }

    #[test]
    fn parses_every_flag() {
        let cli = parse(&[
            "-c",
            "64",
            "-t",
            "3",
            "-d",
            "1.5",
            "-n",
            "1000",
            "--mode",
            "keepalive",
            "--timeout",
            "250",
            "--sources",
            "0",
            "--workers",
            "4",
            "--json",
            "http://[::1]:9/x",
        ])
        .unwrap()
        .unwrap();
        let c = &cli.config;
        assert_eq!((c.connections, c.threads, c.mode), (64, 3, Mode::KeepAlive));
        assert_eq!((c.duration, c.requests), (Some(Duration::from_millis(1500)), Some(1000)));
        assert_eq!((c.timeout, c.sources, c.workers), (Duration::from_millis(250), 0, Some(4)));
        assert!(cli.json);
        assert_eq!(c.target.path, "/x");
    }

    #[test]
    fn requests_alone_lift_the_default_duration() {
        let cli = parse(&["-n", "10", "unix:/tmp/s"]).unwrap().unwrap();
        assert_eq!((cli.config.duration, cli.config.requests), (None, Some(10)));
    }

    #[test]
    fn help_and_errors() {
        assert!(parse(&["--help"]).unwrap().is_none());
        for bad in [
            &[][..],
            &["http://10.1.2.3/"],
            &["-c", "0", "http://127.0.0.1/"],
            &["-d", "0", "http://127.0.0.1/"],
            &["-d", "x", "http://127.0.0.1/"],
            &["--mode", "fast", "http://127.0.0.1/"],
            &["--sources", "300", "http://127.0.0.1/"],
            &["--bogus", "http://127.0.0.1/"],
            &["http://127.0.0.1/", "http://127.0.0.2/"],
        ] {
            let err = parse(bad).err().unwrap_or_else(|| panic!("{bad:?} should fail"));
            assert!(!err.contains('\n'), "{err}");
        }
    }
}

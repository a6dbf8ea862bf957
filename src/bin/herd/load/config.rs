//! What a load run does: [`LoadConfig`] and its defaults, shared by the CLI and `herd bench`.

use std::fmt;
use std::time::Duration;

use super::url::Target;

/// How connections are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A new TCP connection per request, with `Connection: close`: measures accept distribution.
    Churn,
    /// Connections are reused for many requests: measures request handling.
    KeepAlive,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Churn => "churn",
            Mode::KeepAlive => "keepalive",
        }
    }

    /// Parses `churn` or `keepalive` (also `keep-alive`).
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "churn" => Some(Mode::Churn),
            "keepalive" | "keep-alive" => Some(Mode::KeepAlive),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most connections a run may hold open at once.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// The most source addresses `--sources` can spread over: 127.0.0.2 ..= 127.0.0.254.
pub const MAX_SOURCES: usize = 253;

/// One load run. Build it with [`LoadConfig::new`] and adjust the public fields.
///
/// The run stops at `duration` or after `requests` attempts, whichever comes first; at least one
/// of them must be set.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Where to send requests.
    pub target: Target,
    /// Churn or keep-alive.
    pub mode: Mode,
    /// Requests in flight at once, one per connection.
    pub connections: usize,
    /// Event-loop threads; never more than `connections` are used.
    pub threads: usize,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many request attempts (successes plus errors).
    pub requests: Option<u64>,
    /// A request not answered within this is abandoned and counted as a timeout.
    pub timeout: Duration,
    /// IPv4 source addresses to spread connections over (127.0.0.2 onwards); 0 lets the kernel
    /// choose. Ignored for IPv6 and Unix sockets.
    pub sources: usize,
    /// How many workers the server has, if known, so a worker that got nothing shows as zero.
    pub workers: Option<usize>,
    /// The share of requests that ask for `GET /block/{slow_ms}` (a slow handler) instead of
    /// the URL: every `round(1 / slow_fraction)`-th request of each thread. 0: none.
    pub slow_fraction: f64,
    /// How long a slow request blocks its worker, in ms.
    pub slow_ms: u64,
    /// A stalled worker: once, `stall_after` into the run, one more connection asks for
    /// `GET /block/{ms}` and holds whichever worker takes it that long.
    pub stall: Option<Stall>,
}

/// One worker blocked for a long time while the load runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stall {
    /// How long the worker is blocked.
    pub ms: u64,
    /// When, from the start of the run.
    pub after: Duration,
}

impl LoadConfig {
    /// The defaults: churn, 8 connections, one thread per core, 5 s, 2 s timeout, 8 sources.
    pub fn new(target: Target) -> LoadConfig {
        LoadConfig {
            target,
            mode: Mode::Churn,
            connections: 8,
            threads: default_threads(),
            duration: Some(Duration::from_secs(5)),
            requests: None,
            timeout: Duration::from_secs(2),
            sources: 8,
            workers: None,
            slow_fraction: 0.0,
            slow_ms: 100,
            stall: None,
        }
    }

    /// Every how many requests one is slow (0: none).
    pub fn slow_every(&self) -> u64 {
        if self.slow_fraction > 0.0 { (1.0 / self.slow_fraction).round().max(1.0) as u64 } else { 0 }
    }

    /// Checks the limits; the message is one line.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(format!("connections must be from 1 to {MAX_CONNECTIONS}"));
        }
        if self.threads == 0 {
            return Err("threads must be at least 1".into());
        }
        match (self.duration, self.requests) {
            (None, None) => return Err("set a duration or a request count to bound the run".into()),
            (Some(d), _) if d.is_zero() => return Err("duration must be positive".into()),
            (_, Some(0)) => return Err("requests must be at least 1".into()),
            _ => {}
        }
        if self.timeout.is_zero() {
            return Err("timeout must be positive".into());
        }
        if self.sources > MAX_SOURCES {
            return Err(format!("sources must be at most {MAX_SOURCES}"));
        }
        if !(0.0..=1.0).contains(&self.slow_fraction) {
            return Err("the slow fraction must be from 0 to 1".into());
        }
        Ok(())
    }

    /// The number of threads actually started.
    pub fn effective_threads(&self) -> usize {
        self.threads.clamp(1, self.connections.max(1))
    }
}

/// One thread per available core, as the event loops are CPU-bound when the server is fast.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_bounds() {
        let mut cfg = LoadConfig::new(Target::parse("http://127.0.0.1/").unwrap());
        assert_eq!(cfg.validate(), Ok(()));
        cfg.duration = None;
        assert!(cfg.validate().is_err());
        cfg.requests = Some(10);
        assert_eq!(cfg.validate(), Ok(()));
        cfg.sources = MAX_SOURCES + 1;
        assert!(cfg.validate().is_err());
        cfg.sources = 0;
        cfg.connections = 3;
        cfg.threads = 8;
        assert_eq!(cfg.effective_threads(), 3);
        assert_eq!(Mode::parse("keep-alive"), Some(Mode::KeepAlive));
        assert_eq!(Mode::parse("close"), None);
    }
}

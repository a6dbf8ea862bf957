//! What each event-loop thread counts, and how the counts merge.
//!
//! Every thread owns a [`Tally`] and touches nothing shared while the run lasts; the tallies are
//! merged once the threads end. Latencies go into an HDR histogram (1 µs to 60 s, three
//! significant digits: about 30 KiB, with every percentile within 0.1 %).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use rustix::io::Errno;

/// The largest latency the histogram holds, in µs; slower requests are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What went wrong with an "other" error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// A system call failed with this errno.
    Errno(i32),
    /// The server's bytes were not a well-formed HTTP response.
    Protocol(&'static str),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cause::Errno(e) => write!(f, "{}", std::io::Error::from_raw_os_error(e)),
            Cause::Protocol(what) => f.write_str(what),
        }
    }
}

/// Why one request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection was refused (`ECONNREFUSED`): nothing listening, or the backlog overflowed.
    Refused,
    /// The connection broke (`ECONNRESET`, `EPIPE`) or closed before the response was complete.
    Reset,
    /// No complete response within the timeout.
    Timeout,
    /// A complete response whose status was not 2xx.
    BadStatus,
    /// No local port was free for the connection (`EADDRNOTAVAIL`).
    NoPort,
    /// Anything else.
    Other(Cause),
}

impl ErrorKind {
    /// Sorts a failed system call into a kind.
    pub fn from_errno(e: Errno) -> ErrorKind {
        match e {
            Errno::CONNREFUSED => ErrorKind::Refused,
            Errno::CONNRESET | Errno::PIPE => ErrorKind::Reset,
            Errno::TIMEDOUT => ErrorKind::Timeout,
            Errno::ADDRNOTAVAIL => ErrorKind::NoPort,
            e => ErrorKind::Other(Cause::Errno(e.raw_os_error())),
        }
    }
}

/// Failed requests, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub bad_status: u64,
    pub no_port: u64,
    pub other: u64,
    /// The `other` errors broken down by cause, for display.
    pub other_causes: BTreeMap<Cause, u64>,
}

impl Errors {
    /// Counts one failure.
    pub fn add(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Refused => self.refused += 1,
            ErrorKind::Reset => self.reset += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::BadStatus => self.bad_status += 1,
            ErrorKind::NoPort => self.no_port += 1,
            ErrorKind::Other(cause) => {
                self.other += 1;
                *self.other_causes.entry(cause).or_insert(0) += 1;
            }
        }
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.by_kind().iter().map(|&(_, n)| n).sum()
    }

    /// The counts with their report names, in report order.
    pub fn by_kind(&self) -> [(&'static str, u64); 6] {
        [
            ("refused", self.refused),
            ("reset", self.reset),
            ("timeout", self.timeout),
            ("bad_status", self.bad_status),
            ("no_port", self.no_port),
            ("other", self.other),
        ]
    }

    /// Adds another thread's counts.
    pub fn merge(&mut self, other: &Errors) {
        self.refused += other.refused;
        self.reset += other.reset;
        self.timeout += other.timeout;
        self.bad_status += other.bad_status;
        self.no_port += other.no_port;
        self.other += other.other;
        for (&cause, &n) in &other.other_causes {
            *self.other_causes.entry(cause).or_insert(0) += n;
        }
    }
}

/// An empty latency histogram in µs, 1 µs .. 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// One thread's counts.
#[derive(Debug)]
pub struct Tally {
    /// Successful (2xx) responses.
    pub requests: u64,
    pub errors: Errors,
    /// Latency of successful responses, µs.
    pub latency: Histogram<u64>,
    /// Successful responses per worker id found in the body.
    pub workers: BTreeMap<usize, u64>,
    /// Connections per worker id: the worker that answered each connection's first request
    /// (in churn, every request's connection).
    pub connections: BTreeMap<usize, u64>,
    /// Latency of the successful requests that were not slow on purpose, µs.
    pub fast_latency: Histogram<u64>,
    /// Successful requests that were slow on purpose (`/block/MS`).
    pub slow: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests: 0,
            errors: Errors::default(),
            latency: latency_histogram(),
            workers: BTreeMap::new(),
            connections: BTreeMap::new(),
            fast_latency: latency_histogram(),
            slow: 0,
        }
    }
}

/// What kind of request a response answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kind {
    /// It asked for `/block/MS`.
    pub slow: bool,
    /// It was the first request on its connection.
    pub first: bool,
}

impl Tally {
    /// Counts a successful response.
    pub fn success(&mut self, latency: Duration, worker: Option<usize>, kind: Kind) {
        self.requests += 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us);
        if kind.slow {
            self.slow += 1;
        } else {
            self.fast_latency.saturating_record(us);
        }
        if let Some(id) = worker {
            *self.workers.entry(id).or_insert(0) += 1;
            if kind.first {
                *self.connections.entry(id).or_insert(0) += 1;
            }
        }
    }

    /// Adds another thread's tally.
    pub fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.errors.merge(&other.errors);
        // Both histograms have the same bounds, so adding cannot fail.
        self.latency.add(&other.latency).expect("histograms with equal bounds add");
        for (&id, &n) in &other.workers {
            *self.workers.entry(id).or_insert(0) += n;
        }
        for (&id, &n) in &other.connections {
            *self.connections.entry(id).or_insert(0) += n;
        }
        self.fast_latency.add(&other.fast_latency).expect("histograms with equal bounds add");
        self.slow += other.slow;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_errnos_into_kinds() {
        assert_eq!(ErrorKind::from_errno(Errno::CONNREFUSED), ErrorKind::Refused);
        assert_eq!(ErrorKind::from_errno(Errno::PIPE), ErrorKind::Reset);
        assert_eq!(ErrorKind::from_errno(Errno::ADDRNOTAVAIL), ErrorKind::NoPort);
        assert_eq!(ErrorKind::from_errno(Errno::MFILE), ErrorKind::Other(Cause::Errno(libc::EMFILE)));
    }

    #[test]
    fn merges_tallies() {
        let mut a = Tally::default();
        a.success(Duration::from_micros(100), Some(0), Kind { slow: false, first: true });
        a.errors.add(ErrorKind::Other(Cause::Protocol("bad")));
        let mut b = Tally::default();
        b.success(Duration::from_micros(300), Some(0), Kind::default());
        b.success(Duration::from_secs(120), Some(2), Kind { slow: true, first: true });
        b.errors.add(ErrorKind::Other(Cause::Protocol("bad")));
        b.errors.add(ErrorKind::Timeout);
        a.merge(&b);
        assert_eq!(a.requests, 3);
        assert_eq!(a.errors.total(), 3);
        assert_eq!(a.errors.other_causes[&Cause::Protocol("bad")], 2);
        assert_eq!(a.workers, BTreeMap::from([(0, 2), (2, 1)]));
        assert_eq!(a.latency.len(), 3);
        assert!(a.latency.max() >= MAX_LATENCY_US, "overlong latencies saturate");
        assert_eq!(a.connections, BTreeMap::from([(0, 1), (2, 1)]), "first requests count connections");
        assert_eq!((a.slow, a.fast_latency.len()), (1, 2), "slow requests stay out of the fast histogram");
    }
}

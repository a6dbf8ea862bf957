//! The three ways herd spreads connections over workers. One file per mode:
//!
//! | mode | who calls `accept` | cost per connection | how it fails |
//! |---|---|---|---|
//! | [`shared`] | every worker, on one listener | one `accept`; plus, with `epoll`, a wakeup of every idle worker (the herd) | `epoll`: wasted wakeups; `epoll-exclusive`: one worker takes most connections |
//! | [`handoff`] | the primary only | `accept` + `sendmsg(SCM_RIGHTS)` in the primary, `recvmsg` + an ack in the worker | the primary is a single-threaded bottleneck |
//! | [`reuseport`] | each worker, on its own listener | one `accept`, no herd | the kernel hashes the 4-tuple: no notion of load, and a stalled worker's queue waits for it |
//!
//! `docs/modes.md` explains each with diagrams and measured figures.

pub mod handoff;
pub mod reuseport;
pub mod shared;

use std::fmt;
use std::str::FromStr;

pub use shared::SharedAccept;

/// How connections reach workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One listener, created by the primary before `fork`; every worker accepts on it.
    Shared(SharedAccept),
    /// Only the primary accepts; it hands each connection to the next worker in round-robin
    /// order over the channel (`SCM_RIGHTS`), like Node's `cluster` by default.
    Handoff,
    /// One `SO_REUSEPORT` listener per worker slot, owned by the primary; the kernel shards.
    Reuseport,
}

impl Default for Mode {
    fn default() -> Self {
        Mode::Shared(SharedAccept::default())
    }
}

impl Mode {
    /// The mode's name: `shared`, `handoff` or `reuseport`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Shared(_) => "shared",
            Mode::Handoff => "handoff",
            Mode::Reuseport => "reuseport",
        }
    }
}

/// Why a string is not a [`Mode`] or a [`SharedAccept`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseModeError {
    what: &'static str,
    input: String,
    expected: &'static str,
}

impl fmt::Display for ParseModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}: expected one of {}", self.what, self.input, self.expected)
    }
}

impl std::error::Error for ParseModeError {}

impl FromStr for Mode {
    type Err = ParseModeError;

    /// `shared` (with the default strategy), `shared/STRATEGY` (`shared/epoll-exclusive`...),
    /// `handoff` or `reuseport`.
    fn from_str(s: &str) -> Result<Mode, ParseModeError> {
        let err = || ParseModeError { what: "mode", input: s.to_owned(), expected: "shared, handoff, reuseport" };
        match s.split_once('/') {
            Some(("shared", strategy)) => Ok(Mode::Shared(strategy.parse()?)),
            Some(_) => Err(err()),
            None => match s {
                "shared" => Ok(Mode::Shared(SharedAccept::default())),
                "handoff" => Ok(Mode::Handoff),
                "reuseport" => Ok(Mode::Reuseport),
                _ => Err(err()),
            },
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Shared(s) => write!(f, "shared/{s}"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_back() {
        for s in
            ["shared/epoll", "shared/epoll-exclusive", "shared/epoll-rotate", "shared/blocking", "handoff", "reuseport"]
        {
            assert_eq!(s.parse::<Mode>().unwrap().to_string(), s);
        }
        assert_eq!("shared".parse::<Mode>().unwrap(), Mode::Shared(SharedAccept::default()));
    }

    #[test]
    fn unknown_modes_are_named_in_the_error() {
        let e = "roundrobin".parse::<Mode>().unwrap_err().to_string();
        assert!(e.contains("\"roundrobin\"") && e.contains("handoff"), "{e}");
        let e = "shared/spin".parse::<Mode>().unwrap_err().to_string();
        assert!(e.contains("\"spin\"") && e.contains("epoll-exclusive"), "{e}");
    }
}

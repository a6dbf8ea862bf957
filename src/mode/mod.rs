//! The three ways herd spreads connections over workers. One file per mode:
//!
//! | mode | who calls `accept` | cost per connection | how it fails |
//! |---|---|---|---|
//! | [`shared`] | every worker, on one listener | one `accept`; plus, with `epoll`, a wakeup of every idle worker (the herd) | `epoll`: wasted wakeups; `epoll-exclusive`: one worker takes most connections |
//! | [`handoff`] | the primary only | `accept` + `sendmsg(SCM_RIGHTS)` in the primary, `recvmsg` in the worker | the primary is a single-threaded bottleneck |
//! | [`reuseport`] | each worker, on its own listener | one `accept`, no herd | the kernel hashes the 4-tuple: no notion of load, and a stalled worker's queue waits for it |
//!
//! `docs/modes.md` explains each with diagrams and measured figures.
//!
//! # One abstraction
//!
//! Everything that differs between the modes is behind one internal trait, `Distribution`:
//! which listeners exist, who accepts on each of them at any moment (every worker, one worker,
//! or the primary), what a worker takes its connections from, and what happens to a slot's
//! listener when the slot is added, left empty or scaled away. The primary and the worker are
//! written once against it. A new mode is one more file here that implements it, and one line
//! in `mode::bind`.
//!
//! When the primary accepts, it hands connections to workers over their **lanes** with the
//! handoff dispatcher: always in handoff mode, and in reuseport mode for a slot that has no
//! worker at the moment, so that connections the kernel hashed to that slot's listener are
//! served by the others instead of waiting.

pub mod handoff;
pub mod reuseport;
pub mod shared;

use std::fmt;
use std::io;
use std::str::FromStr;

pub use shared::SharedAccept;

use crate::ListenAddr;
use crate::accept::WorkerAccept;
use crate::listener::{BindOptions, Listener};
use crate::upgrade::{Line, Writer};

/// How connections reach workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

/// What the primary knows of its slots, for a mode deciding who accepts.
pub(crate) trait Slots {
    /// Whether `slot` has a worker that is, or will shortly be, taking connections (forked and
    /// not asked to exit).
    fn live(&self, slot: usize) -> bool;
}

/// One distribution mode, seen from the primary (before and after `fork`).
pub(crate) trait Distribution: fmt::Debug {
    /// Whether each worker gets a lane: whether the primary may ever hand it connections.
    fn uses_lanes(&self) -> bool;

    /// How many listener ids there are (`0..count`); some may be closed (`None`).
    fn listener_count(&self) -> usize;

    /// The listener with this id, if it is open.
    fn listener(&self, id: usize) -> Option<&Listener>;

    /// Whether the primary itself should accept on listener `id` now.
    fn primary_accepts(&self, id: usize, slots: &dyn Slots) -> bool;

    /// A worker is about to be forked into `slot`: make sure what it will take connections from
    /// exists (reuseport binds the slot's listener if it has none).
    fn prepare_slot(&mut self, slot: usize) -> io::Result<()>;

    /// `slot` was scaled away and its last worker is gone: take its listener out, for the
    /// primary to drain (accept what is still queued and hand it on) and close.
    fn release_slot(&mut self, slot: usize) -> Option<Listener>;

    /// The listener [`release_slot`](Self::release_slot) gave for `slot` is closed now, with the
    /// cluster aiming for `target` slots. Returns a warning if something the mode would do
    /// cannot be done.
    fn slot_closed(&mut self, _slot: usize, _target: usize) -> Option<String> {
        None
    }

    /// The cluster now aims for `target` slots (or a scaled-away slot's listener was just
    /// closed): adjust how new connections are spread. Returns a warning if something the mode
    /// would do cannot be done.
    fn target_changed(&mut self, _target: usize) -> Option<String> {
        None
    }

    /// In the forked child that becomes the worker of `slot`: the listener it accepts on and
    /// how, if it accepts at all. Every other listener is closed when `self` is dropped.
    fn worker_accept(&mut self, slot: usize) -> Option<WorkerAccept>;

    /// Writes what the mode holds — its listeners, by descriptor number — for the primary's
    /// next image (an in-place upgrade: see [`crate::upgrade`]); [`import`] reads it back.
    fn export(&self, w: &mut Writer);
}

/// The mode `mode` as the primary's previous image left it (its `mode_*` lines).
pub(crate) fn import(mode: Mode, lines: &[Line]) -> io::Result<Box<dyn Distribution>> {
    match mode {
        Mode::Shared(strategy) => shared::Shared::import(strategy, lines).map(|d| Box::new(d) as Box<dyn Distribution>),
        Mode::Handoff => handoff::Handoff::import(lines).map(|d| Box::new(d) as Box<dyn Distribution>),
        Mode::Reuseport => reuseport::Reuseport::import(lines).map(|d| Box::new(d) as Box<dyn Distribution>),
    }
}

/// The first line of `kind`, or an error naming it.
fn line<'a>(lines: &'a [Line], kind: &str) -> io::Result<&'a Line> {
    lines
        .iter()
        .find(|l| l.kind == kind)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("hand-over state: no {kind} line")))
}

/// Binds the listener(s) of `mode` for `slots` worker slots on `addr`. Returns the mode and the
/// address actually bound (with the port the kernel chose for port 0).
///
/// With `inherited` listeners (socket activation: see [`crate::Builder::bind_inherited`]),
/// those are used instead of binding: shared and handoff modes take exactly one; reuseport
/// mode takes one per slot, or binds the missing ones to the address of the first if it has
/// `SO_REUSEPORT`.
pub(crate) fn bind(
    mode: Mode,
    addr: &ListenAddr,
    slots: usize,
    options: BindOptions,
    inherited: Vec<InheritedListener>,
) -> io::Result<(Box<dyn Distribution>, ListenAddr)> {
    match mode {
        Mode::Shared(strategy) => shared::Shared::bind(addr, strategy, options, one(mode, inherited)?).map(boxed),
        Mode::Handoff => handoff::Handoff::bind(addr, options, one(mode, inherited)?).map(boxed),
        Mode::Reuseport => reuseport::Reuseport::bind(addr, slots, options, inherited).map(boxed),
    }
}

/// A listening socket the program was given, checked (see `Listener::inherited`).
#[derive(Debug)]
pub(crate) struct InheritedListener {
    pub(crate) listener: Listener,
    /// It has `SO_REUSEPORT`: more listeners can join its address.
    pub(crate) reuseport: bool,
}

/// The one inherited listener shared and handoff modes take, if any.
fn one(mode: Mode, mut inherited: Vec<InheritedListener>) -> io::Result<Option<Listener>> {
    if inherited.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{mode} mode serves one listener, and {} were passed: choose one by name (sd:NAME)",
                inherited.len()
            ),
        ));
    }
    Ok(inherited.pop().map(|i| i.listener))
}

fn boxed<D: Distribution + 'static>((d, addr): (D, ListenAddr)) -> (Box<dyn Distribution>, ListenAddr) {
    (Box::new(d), addr)
}

/// The address a listener bound to `requested` actually has.
fn bound_addr(requested: &ListenAddr, listener: &Listener) -> io::Result<ListenAddr> {
    match requested {
        ListenAddr::Tcp(_) => Ok(ListenAddr::Tcp(listener.tcp_addr()?)),
        unix => Ok(unix.clone()),
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
        for s in [
            "shared/epoll",
            "shared/epoll-exclusive",
            "shared/epoll-rotate",
            "shared/blocking",
            "shared/epoll-balance",
            "handoff",
            "reuseport",
        ] {
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

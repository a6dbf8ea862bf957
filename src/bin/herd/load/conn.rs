//! One connection slot: the state machine that carries a request from connect to counted result.
//!
//! ```text
//!            start                 request written          response complete
//!   Idle ─────────────▶ Sending ─────────────────▶ Receiving ─────────────────▶ Idle (keep-alive)
//!    ▲   (connect if                                    │
//!    │    not open)                                     │ response complete, and churn
//!    │                                                  ▼ or the server said close
//!    └──────────────────── end of file ─────────── Draining
//! ```
//!
//! Every path out of a busy state ends the request exactly once, as a success or an error, and
//! reports [`Step::Done`] so the engine can start the next one in this slot. Any failure closes the
//! socket: after a timeout or a protocol error the connection's state is unknown.
//!
//! Latency runs from the start of the connect (churn, and a keep-alive connection's first
//! request) or from the write of the request (reused keep-alive connections) to the arrival of the
//! response's last byte. In churn the result is only counted once the server's end of file
//! arrives, because the server closing first is part of the contract (see the `socket` module):
//! a server that never closes ends in a timeout.
//!
//! Sockets are registered edge-triggered. The request is written before the socket is registered
//! — on loopback the handshake has usually finished by then — so a socket is registered for
//! `EPOLLIN | EPOLLRDHUP` alone in the common case and for `EPOLLOUT` only while a write waits.
//! `EPOLLRDHUP` tells us the server's FIN is already in, which saves the `read` that would only
//! return end of file after a churn response.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::io::Errno;
use rustix::net::{self, SendFlags};

use super::config::Mode;
use super::http::{Progress, Response, ResponseParser};
use super::socket::Dialer;
use super::stats::{Cause, ErrorKind, Kind, Tally};

/// What the engine should do with the slot after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The request is still in flight.
    Wait,
    /// The request ended (counted); the slot is free for the next one.
    Done,
}

/// Where the slot's current request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request in flight (a keep-alive connection may still be open).
    Idle,
    /// Connecting and/or writing the request.
    Sending,
    /// Reading the response.
    Receiving,
    /// The response is complete; waiting for the server to close.
    Draining,
}

/// The per-thread state every connection's handlers share.
pub struct Ctx<'a> {
    pub epoll: BorrowedFd<'a>,
    pub request: &'a [u8],
    /// The thread's read buffer; responses are parsed straight out of it.
    pub buf: &'a mut [u8],
    pub tally: &'a mut Tally,
    pub mode: Mode,
    pub timeout: Duration,
    /// The slow request (`GET /block/MS`), sent every `slow_every`-th time; 0: never.
    pub slow_request: &'a [u8],
    pub slow_every: u64,
    /// Requests this thread has started.
    pub started: u64,
}

/// One connection slot.
pub struct Conn {
    slot: u32,
    /// Bumped whenever the socket closes, so the epoll token of a closed socket never matches.
    generation: u32,
    fd: Option<OwnedFd>,
    phase: Phase,
    registered: bool,
    wants_out: bool,
    written: usize,
    started: Instant,
    deadline: Instant,
    parser: ResponseParser,
    /// A complete churn response waiting for the server's end of file, with its latency.
    pending: Option<(Response, Duration)>,
    /// What the current request is.
    kind: Kind,
}

impl Conn {
    pub fn new(slot: usize, now: Instant) -> Conn {
        Conn {
            slot: u32::try_from(slot).expect("fewer than 2^32 connections"),
            generation: 0,
            fd: None,
            phase: Phase::Idle,
            registered: false,
            wants_out: false,
            written: 0,
            started: now,
            deadline: now,
            parser: ResponseParser::new(),
            pending: None,
            kind: Kind::default(),
        }
    }

    /// The epoll token for this slot's current socket: generation above, slot below.
    pub fn token(&self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.slot)
    }

    /// Splits a token into (slot, generation).
    pub fn split_token(token: u64) -> (usize, u32) {
        ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// When the request in flight times out, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        (self.phase != Phase::Idle).then_some(self.deadline)
    }

    /// Starts a request at `now`: reuses the open keep-alive connection or dials a new one.
    pub fn start(&mut self, ctx: &mut Ctx<'_>, dialer: &mut Dialer, now: Instant) -> Step {
        debug_assert_eq!(self.phase, Phase::Idle);
        if ctx.mode == Mode::Churn {
            self.close();
        }
        let first = self.fd.is_none();
        if self.fd.is_none() {
            match dialer.dial() {
                Ok(fd) => self.fd = Some(fd),
                Err(e) => {
                    ctx.tally.errors.add(ErrorKind::from_errno(e));
                    return Step::Done;
                }
            }
        }
        ctx.started += 1;
        self.kind = Kind { slow: ctx.slow_every > 0 && ctx.started % ctx.slow_every == 0, first };
        self.started = now;
        self.deadline = now + ctx.timeout;
        self.written = 0;
        self.phase = Phase::Sending;
        self.send(ctx)
    }

    /// Handles readiness reported by epoll.
    pub fn on_event(&mut self, flags: EventFlags, ctx: &mut Ctx<'_>, now: Instant) -> Step {
        let broken = flags.intersects(EventFlags::ERR | EventFlags::HUP);
        match self.phase {
            // The server closed an idle keep-alive connection: reconnect for the next request.
            Phase::Idle if broken || flags.contains(EventFlags::IN) => {
                self.close();
                Step::Wait
            }
            Phase::Idle => Step::Wait,
            // A failed connect shows up as ERR/HUP; the send reports its errno.
            Phase::Sending if broken || flags.contains(EventFlags::OUT) => self.send(ctx),
            Phase::Receiving | Phase::Draining if broken || flags.contains(EventFlags::IN) => {
                self.recv(ctx, now, flags.contains(EventFlags::RDHUP))
            }
            _ => Step::Wait,
        }
    }

    /// Ends the request in flight as a timeout if its deadline has passed.
    pub fn expire(&mut self, ctx: &mut Ctx<'_>, now: Instant) -> Step {
        match self.deadline() {
            Some(deadline) if deadline <= now => self.fail(ctx, ErrorKind::Timeout),
            _ => Step::Wait,
        }
    }

    /// Closes the socket (which also removes it from epoll) and forgets the request.
    pub fn close(&mut self) {
        if self.fd.take().is_some() {
            self.generation = self.generation.wrapping_add(1);
        }
        self.registered = false;
        self.wants_out = false;
        self.phase = Phase::Idle;
        self.parser.reset();
        self.pending = None;
    }

    fn send(&mut self, ctx: &mut Ctx<'_>) -> Step {
        let Some(fd) = &self.fd else { return Step::Wait };
        let request = if self.kind.slow { ctx.slow_request } else { ctx.request };
        loop {
            match net::send(fd, &request[self.written..], SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.written += n;
                    if self.written == request.len() {
                        self.phase = Phase::Receiving;
                        return self.watch(ctx, false);
                    }
                }
                Err(Errno::INTR) => {}
                // Still connecting, or the socket buffer is full.
                Err(Errno::AGAIN) => return self.watch(ctx, true),
                Err(e) => return self.fail(ctx, ErrorKind::from_errno(e)),
            }
        }
    }

    /// Registers the socket for `EPOLLIN`, plus `EPOLLOUT` if `out`, changing only what differs.
    fn watch(&mut self, ctx: &mut Ctx<'_>, out: bool) -> Step {
        if self.registered && self.wants_out == out {
            return Step::Wait;
        }
        let Some(fd) = &self.fd else { return Step::Wait };
        let mut flags = EventFlags::IN | EventFlags::RDHUP | EventFlags::ET;
        if out {
            flags |= EventFlags::OUT;
        }
        let data = EventData::new_u64(self.token());
        let result = if self.registered {
            epoll::modify(ctx.epoll, fd.as_fd(), data, flags)
        } else {
            epoll::add(ctx.epoll, fd.as_fd(), data, flags)
        };
        match result {
            Ok(()) => {
                self.registered = true;
                self.wants_out = out;
                Step::Wait
            }
            Err(e) => self.fail(ctx, ErrorKind::from_errno(e)),
        }
    }

    /// Reads until the request ends or the socket is drained. `peer_closed` says epoll saw the
    /// server's FIN (`EPOLLRDHUP`) before this call.
    fn recv(&mut self, ctx: &mut Ctx<'_>, now: Instant, peer_closed: bool) -> Step {
        loop {
            let Some(fd) = &self.fd else { return Step::Wait };
            match rustix::io::read(fd, &mut *ctx.buf) {
                Ok(0) => return self.on_eof(ctx, now),
                Ok(n) => {
                    if let Some(step) = self.on_data(ctx, n, now) {
                        // A keep-alive server that closed without saying so: reconnect next time
                        // rather than write into a dead connection.
                        if peer_closed && self.phase == Phase::Idle {
                            self.close();
                        }
                        return step;
                    }
                    // A short read emptied the receive queue, and the FIN was already in when
                    // epoll reported: the next read could only return end of file, so skip it.
                    if peer_closed && self.phase == Phase::Draining && n < ctx.buf.len() {
                        return self.on_eof(ctx, now);
                    }
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return Step::Wait,
                Err(e) => return self.fail(ctx, ErrorKind::from_errno(e)),
            }
        }
    }

    /// Feeds `n` freshly read bytes to the parser; `Some` once the request has ended.
    fn on_data(&mut self, ctx: &mut Ctx<'_>, n: usize, now: Instant) -> Option<Step> {
        const EXTRA: ErrorKind = ErrorKind::Other(Cause::Protocol("data after the response"));
        if self.phase == Phase::Draining {
            return Some(self.fail(ctx, EXTRA));
        }
        match self.parser.feed(&ctx.buf[..n]) {
            Ok(Progress::Partial) => None,
            Ok(Progress::Complete { consumed, .. }) if consumed < n => Some(self.fail(ctx, EXTRA)),
            Ok(Progress::Complete { response, .. }) => {
                let latency = now.saturating_duration_since(self.started);
                if ctx.mode == Mode::KeepAlive && response.reusable {
                    self.phase = Phase::Idle;
                    record(ctx.tally, response, latency, self.kind);
                    Some(Step::Done)
                } else {
                    // Keep reading: the server's end of file completes the exchange.
                    self.pending = Some((response, latency));
                    self.phase = Phase::Draining;
                    None
                }
            }
            Err(e) => Some(self.fail(ctx, ErrorKind::Other(Cause::Protocol(e.as_str())))),
        }
    }

    fn on_eof(&mut self, ctx: &mut Ctx<'_>, now: Instant) -> Step {
        let done = match (self.phase, self.pending.take()) {
            (Phase::Draining, Some(done)) => Some(done),
            // A body delimited by the close ends here.
            (Phase::Receiving, _) => {
                self.parser.finish().ok().map(|r| (r, now.saturating_duration_since(self.started)))
            }
            _ => None,
        };
        match done {
            Some((response, latency)) => {
                record(ctx.tally, response, latency, self.kind);
                self.close();
                Step::Done
            }
            None => self.fail(ctx, ErrorKind::Reset),
        }
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, kind: ErrorKind) -> Step {
        ctx.tally.errors.add(kind);
        self.close();
        Step::Done
    }
}

/// Counts a complete response: 2xx is a success, anything else a `bad_status` error.
fn record(tally: &mut Tally, response: Response, latency: Duration, kind: Kind) {
    if (200..300).contains(&response.status) {
        tally.success(latency, response.worker, kind);
    } else {
        tally.errors.add(ErrorKind::BadStatus);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let mut conn = Conn::new(7, Instant::now());
        assert_eq!(Conn::split_token(conn.token()), (7, 0));
        conn.generation = u32::MAX;
        assert_eq!(Conn::split_token(conn.token()), (7, u32::MAX));
    }
}

//! The worker side of `herd serve`, written three ways — one per way the library hands out
//! connections (`--worker-api`):
//!
//! - `event-loop` (default): one epoll loop per worker serving many connections at once, on the
//!   worker's own epoll ([`Worker::register`] / [`Worker::poll`]), so that `EPOLLEXCLUSIVE` and
//!   the rotate strategy see the worker blocked directly on the instance that watches the
//!   listener.
//! - `nested`: the same loop on an epoll of its own, with the worker's descriptor registered in
//!   it like any other source — what a foreign event loop (tokio, mio) does. Measure it against
//!   `event-loop` to see nesting undo `EPOLLEXCLUSIVE`.
//! - `incoming`: the blocking iterator, one connection at a time.
//!
//! Every way answers `GET /block/MS` after blocking the worker for MS milliseconds (a stand-in
//! for a handler that computes or waits), refuses what it cannot parse with `400`, `431` or
//! `501`, and closes a connection that has not sent a complete request within the request
//! timeout (nginx's `client_header_timeout`, and the keep-alive idle timeout), with a `408` if
//! part of a request had arrived.
//!
//! For demonstrations and tests, a worker can also misbehave on purpose ([`Behaviour`]): crash
//! after N requests, retire (announce its exit, Node's "suicide") after N requests, or hold each
//! response for a while so that requests are in flight when a signal arrives.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use herd::{Interest, Stream, Worker, WorkerEvent};

use super::http;
use super::nested::Nested;

/// The ways a worker can take its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerApi {
    EventLoop,
    Nested,
    Incoming,
}

impl std::str::FromStr for WorkerApi {
    type Err = String;

    fn from_str(s: &str) -> Result<WorkerApi, String> {
        match s {
            "event-loop" => Ok(WorkerApi::EventLoop),
            "nested" => Ok(WorkerApi::Nested),
            "incoming" => Ok(WorkerApi::Incoming),
            _ => Err(format!("unknown worker API {s:?}: expected event-loop, nested, incoming")),
        }
    }
}

/// Misbehaviour on purpose, for demonstrations and tests.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Words appended to every response body (`herd worker --tag v2`): which code answered.
    pub tag: Option<String>,
    /// Abort (SIGABRT) after answering this many requests; 0: at start-up, before listening.
    pub crash_after: Option<u64>,
    /// Announce the exit ([`Worker::retire`]) after answering this many requests.
    pub retire_after: Option<u64>,
    /// Hold every response this long.
    pub delay: Duration,
    /// Workers of this generation or later abort at start-up: a bad deploy, for reload demos.
    pub broken_generation: Option<u64>,
    /// Sleep this long before taking connections: a slow start-up.
    pub startup_delay: Duration,
}

/// A worker's state shared by every connection.
struct App {
    body: Vec<u8>,
    behaviour: Behaviour,
    /// How long a connection may take to send a complete request; `None`: for ever.
    request_timeout: Option<Duration>,
    served: u64,
    /// `retire_after` was reached; the loop calls [`Worker::retire`] once.
    retire_due: bool,
    retired: bool,
}

impl App {
    /// Counts an answered request; crashes on purpose if told to.
    fn answered(&mut self) {
        self.served += 1;
        if self.behaviour.crash_after.is_some_and(|n| self.served >= n) {
            std::process::abort();
        }
        if self.behaviour.retire_after.is_some_and(|n| self.served >= n) {
            self.retire_due = true;
        }
    }

    fn retire_if_due(&mut self, worker: &mut Worker) -> io::Result<()> {
        if self.retire_due && !self.retired {
            self.retired = true;
            worker.retire()?;
        }
        Ok(())
    }
}

/// Where connections are registered for readiness: the worker's epoll or one of our own.
trait Registry {
    fn add(&self, stream: &Stream, token: usize, interest: Interest) -> io::Result<()>;
    fn update(&self, stream: &Stream, token: usize, interest: Interest) -> io::Result<()>;
}

impl Registry for Worker {
    fn add(&self, stream: &Stream, token: usize, interest: Interest) -> io::Result<()> {
        self.register(stream, token as u64, interest)
    }

    fn update(&self, stream: &Stream, token: usize, interest: Interest) -> io::Result<()> {
        self.reregister(stream, token as u64, interest)
    }
}

impl Registry for Nested {
    fn add(&self, stream: &Stream, token: usize, interest: Interest) -> io::Result<()> {
        Nested::add(self, stream, token as u64, interest)
    }

    fn update(&self, stream: &Stream, token: usize, interest: Interest) -> io::Result<()> {
        self.modify(stream, token as u64, interest)
    }
}

/// One client connection.
struct Conn {
    stream: Stream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// A response with `Connection: close` is queued: close once `output` is written.
    closing: bool,
    /// The worker is stopping: answer at most the request in progress, with `Connection: close`.
    draining: bool,
    /// Responses queued but not yet counted as answered (held or not yet written).
    unreported: u64,
    /// Requests answered on this connection: a connection with none yet is not idle, its first
    /// request is on its way.
    answered: u64,
    /// How the connection is registered for readiness: `None` not yet (a connection answered
    /// and closed on arrival never is), `Some(true)` for writability too (a response did not fit
    /// the socket buffer).
    watched: Option<bool>,
    /// With a delay: `output` is held until then.
    hold_until: Option<Instant>,
    /// Which of the timeouts queued for this connection is current (see [`Conns::deadlines`]).
    deadline: u64,
}

/// Connections by token (their index), with a free list.
#[derive(Default)]
struct Conns {
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    /// Request timeouts, (when, token, which), in the order they fall due: every timeout is the
    /// same length, so arming one appends it at the back. A connection that re-arms leaves its
    /// old entry behind, recognised as stale by `which` when it comes up.
    deadlines: VecDeque<(Instant, usize, u64)>,
    armed: u64,
}

impl Conns {
    fn insert(&mut self, conn: Conn) -> usize {
        self.open += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(conn);
                i
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        }
    }

    /// (Re)starts connection `token`'s request timeout.
    fn arm(&mut self, token: usize, timeout: Option<Duration>) {
        let Some(timeout) = timeout else { return };
        let Some(conn) = self.slots.get_mut(token).and_then(Option::as_mut) else { return };
        self.armed += 1;
        conn.deadline = self.armed;
        self.deadlines.push_back((Instant::now() + timeout, token, self.armed));
    }

    /// The next request timeout to fall due.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(at, token, which)) = self.deadlines.front() {
            if self.slots.get(token).and_then(Option::as_ref).is_some_and(|c| c.deadline == which) {
                return Some(at);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// Closes the connections whose request timeout has passed: with `408` if part of a request
    /// had arrived, silently if none had (an idle keep-alive connection).
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, token, which)) = self.deadlines.front() {
            if at > now {
                return;
            }
            self.deadlines.pop_front();
            let Some(conn) = self.slots.get_mut(token).and_then(Option::as_mut) else { continue };
            if conn.deadline != which {
                continue;
            }
            if !conn.input.is_empty() {
                let _ = conn.stream.write(http::REQUEST_TIMEOUT);
            }
            self.remove(token);
        }
    }

    fn remove(&mut self, token: usize) {
        if self.slots.get_mut(token).and_then(Option::take).is_some() {
            self.open -= 1;
            self.free.push(token);
        }
    }

    /// The earliest held response, if any.
    fn next_release(&self) -> Option<Instant> {
        self.slots.iter().flatten().filter_map(|c| c.hold_until).min()
    }
}

/// What to do with a connection after serving it.
enum Next {
    Keep,
    Close,
}

/// The worker function: serve until the primary says stop and every connection is done.
pub fn run(
    worker: &mut Worker,
    api: WorkerApi,
    behaviour: Behaviour,
    request_timeout: Option<Duration>,
) -> io::Result<()> {
    // A slow start-up, then (for a broken generation) a crash: a bad deploy that takes a while to fail.
    std::thread::sleep(behaviour.startup_delay);
    if behaviour.crash_after == Some(0) || behaviour.broken_generation.is_some_and(|g| worker.generation() >= g) {
        std::process::abort();
    }
    let body = match &behaviour.tag {
        Some(tag) => format!("worker {} pid {} {tag}\n", worker.id(), worker.pid()),
        None => format!("worker {} pid {}\n", worker.id(), worker.pid()),
    }
    .into_bytes();
    let mut app = App { body, behaviour, request_timeout, served: 0, retire_due: false, retired: false };
    match api {
        WorkerApi::EventLoop => run_event_loop(worker, &mut app),
        WorkerApi::Nested => run_nested(worker, &mut app),
        WorkerApi::Incoming => run_incoming(worker, &mut app),
    }
}

/// How long to wait in `epoll_wait`: until the next held response or request timeout is due,
/// or forever.
fn wait_time(conns: &mut Conns, app: &App) -> Option<Duration> {
    let release = if app.behaviour.delay.is_zero() { None } else { conns.next_release() };
    let next = [release, conns.next_deadline()].into_iter().flatten().min();
    next.map(|t| t.saturating_duration_since(Instant::now()))
}

fn run_event_loop(worker: &mut Worker, app: &mut App) -> io::Result<()> {
    let mut conns = Conns::default();
    let mut ready = Vec::with_capacity(256);
    let mut stopping = false;
    loop {
        worker.poll(&mut ready, wait_time(&mut conns, app))?;
        while let Some(event) = worker.try_event()? {
            on_event(event, &*worker, &mut conns, &mut stopping, app)?;
        }
        for r in &ready {
            on_ready(&*worker, &mut conns, r.token as usize, stopping, app)?;
        }
        release_held(&*worker, &mut conns, app)?;
        conns.expire(Instant::now());
        app.retire_if_due(worker)?;
        if stopping && conns.open == 0 {
            return Ok(());
        }
    }
}

fn run_nested(worker: &mut Worker, app: &mut App) -> io::Result<()> {
    /// The worker's own token in our epoll; connections use their index.
    const WORKER: u64 = u64::MAX;
    let mut epoll = Nested::new()?;
    epoll.add(&*worker, WORKER, Interest::READABLE)?;
    worker.ready();
    let mut conns = Conns::default();
    let mut ready = Vec::with_capacity(256);
    let mut stopping = false;
    loop {
        epoll.wait(&mut ready, wait_time(&mut conns, app))?;
        for r in &ready {
            if r.token == WORKER {
                while let Some(event) = worker.try_event()? {
                    on_event(event, &epoll, &mut conns, &mut stopping, app)?;
                }
            } else {
                on_ready(&epoll, &mut conns, r.token as usize, stopping, app)?;
            }
        }
        release_held(&epoll, &mut conns, app)?;
        conns.expire(Instant::now());
        app.retire_if_due(worker)?;
        if stopping && conns.open == 0 {
            return Ok(());
        }
    }
}

fn run_incoming(worker: &mut Worker, app: &mut App) -> io::Result<()> {
    loop {
        let Some(stream) = worker.incoming().next() else { return Ok(()) };
        serve_blocking(stream?, app)?;
        app.retire_if_due(worker)?;
    }
}

/// Serves one connection to the end, blocking.
fn serve_blocking(mut stream: Stream, app: &mut App) -> io::Result<()> {
    stream.set_read_timeout(app.request_timeout)?;
    let mut input = Vec::new();
    let mut output = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let request = loop {
            match http::parse(&input) {
                Ok(Some(request)) => break request,
                Ok(None) => {}
                Err(invalid) => {
                    let _ = stream.write_all(invalid.response());
                    return Ok(());
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => input.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if !input.is_empty() {
                        let _ = stream.write_all(http::REQUEST_TIMEOUT);
                    }
                    return Ok(());
                }
                Err(_) => return Ok(()),
            }
        };
        input.drain(..request.len);
        if let Some(block) = request.block {
            std::thread::sleep(block);
        }
        output.clear();
        http::response(&app.body, request.keep_alive, &mut output);
        std::thread::sleep(app.behaviour.delay);
        if stream.write_all(&output).is_err() {
            return Ok(());
        }
        app.answered();
        if !request.keep_alive {
            return Ok(());
        }
    }
}

fn on_event(
    event: WorkerEvent,
    registry: &impl Registry,
    conns: &mut Conns,
    stopping: &mut bool,
    app: &mut App,
) -> io::Result<()> {
    match event {
        WorkerEvent::Connection(stream) => {
            let conn = Conn {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                closing: false,
                draining: *stopping,
                unreported: 0,
                answered: 0,
                watched: None,
                hold_until: None,
                deadline: 0,
            };
            let token = conns.insert(conn);
            conns.arm(token, app.request_timeout);
            // The request usually arrives with the connection (always, with TCP_DEFER_ACCEPT):
            // serve it now, and register the connection only if it stays open — saving a wakeup
            // and, for a `Connection: close` request, both `epoll_ctl` calls.
            serve_and_settle(registry, conns, token, app)?;
        }
        WorkerEvent::Stop => {
            *stopping = true;
            close_idle(conns);
        }
        // Messages from the primary, and whatever later versions add: nothing to do.
        _ => {}
    }
    Ok(())
}

fn on_ready(
    registry: &impl Registry,
    conns: &mut Conns,
    token: usize,
    stopping: bool,
    app: &mut App,
) -> io::Result<()> {
    let Some(conn) = conns.slots.get_mut(token).and_then(Option::as_mut) else { return Ok(()) };
    conn.draining |= stopping;
    serve_and_settle(registry, conns, token, app)
}

/// Serves connection `token`, then closes it or, if it answered a request, restarts its request
/// timeout.
fn serve_and_settle(registry: &impl Registry, conns: &mut Conns, token: usize, app: &mut App) -> io::Result<()> {
    let Some(conn) = conns.slots.get_mut(token).and_then(Option::as_mut) else { return Ok(()) };
    let answered = conn.answered;
    match serve(registry, conn, token, app)? {
        Next::Close => conns.remove(token),
        Next::Keep if conn.answered != answered => conns.arm(token, app.request_timeout),
        Next::Keep => {}
    }
    Ok(())
}

/// Writes the held responses that are due.
fn release_held(registry: &impl Registry, conns: &mut Conns, app: &mut App) -> io::Result<()> {
    if app.behaviour.delay.is_zero() {
        return Ok(());
    }
    let now = Instant::now();
    for token in 0..conns.slots.len() {
        let Some(conn) = conns.slots[token].as_mut() else { continue };
        if conn.hold_until.is_some_and(|t| t <= now) {
            conn.hold_until = None;
            serve_and_settle(registry, conns, token, app)?;
        }
    }
    Ok(())
}

/// Closes keep-alive connections that sit idle between requests, so a graceful stop does not
/// wait on them; the others close after their next response (a new connection's first request
/// is on its way, and is answered).
fn close_idle(conns: &mut Conns) {
    for token in 0..conns.slots.len() {
        if let Some(conn) = conns.slots[token].as_mut() {
            conn.draining = true;
            if conn.answered > 0 && conn.input.is_empty() && conn.output.is_empty() && conn.hold_until.is_none() {
                conns.remove(token);
            }
        }
    }
}

/// Reads what the client sent, answers every complete request, writes what it can.
fn serve(registry: &impl Registry, conn: &mut Conn, token: usize, app: &mut App) -> io::Result<Next> {
    let mut peer_closed = false;
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                peer_closed = true;
                break;
            }
            Ok(n) => {
                conn.input.extend_from_slice(&chunk[..n]);
                // A short read emptied the socket: skip the read that would only say EAGAIN.
                // (Level-triggered epoll reports anything that arrives later.)
                if n < chunk.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(Next::Close),
        }
    }
    let mut consumed = 0;
    while !conn.closing {
        match http::parse(&conn.input[consumed..]) {
            Ok(Some(request)) => {
                consumed += request.len;
                conn.unreported += 1;
                if let Some(block) = request.block {
                    std::thread::sleep(block);
                }
                let keep_alive = request.keep_alive && !peer_closed && !conn.draining;
                if !keep_alive {
                    conn.closing = true;
                }
                http::response(&app.body, keep_alive, &mut conn.output);
                if !app.behaviour.delay.is_zero() && conn.hold_until.is_none() {
                    conn.hold_until = Some(Instant::now() + app.behaviour.delay);
                }
            }
            Ok(None) => break,
            Err(invalid) => {
                conn.output.extend_from_slice(invalid.response());
                conn.closing = true;
                break;
            }
        }
    }
    conn.input.drain(..consumed);
    if conn.hold_until.is_some() {
        watch(registry, conn, token)?;
        return Ok(Next::Keep);
    }
    flush(conn);
    for _ in 0..std::mem::take(&mut conn.unreported) {
        conn.answered += 1;
        app.answered();
    }
    let idle = conn.answered > 0 && conn.input.is_empty();
    if conn.output.is_empty() && (conn.closing || peer_closed || conn.draining && idle) {
        return Ok(Next::Close);
    }
    watch(registry, conn, token)?;
    Ok(Next::Keep)
}

/// Writes as much of the pending output as the socket takes.
fn flush(conn: &mut Conn) {
    let mut written = 0;
    while written < conn.output.len() {
        match conn.stream.write(&conn.output[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.output.clear();
                conn.closing = true;
                return;
            }
        }
    }
    conn.output.drain(..written);
}

/// Registers a connection that stays open for readability, and for writability while output
/// is pending; changes the registration only when that changes.
fn watch(registry: &impl Registry, conn: &mut Conn, token: usize) -> io::Result<()> {
    let want_write = !conn.output.is_empty();
    let interest = if want_write {
        Interest { readable: true, writable: true, ..Interest::default() }
    } else {
        Interest::READABLE
    };
    match conn.watched {
        None => registry.add(&conn.stream, token, interest)?,
        Some(watching) if watching != want_write => registry.update(&conn.stream, token, interest)?,
        Some(_) => return Ok(()),
    }
    conn.watched = Some(want_write);
    Ok(())
}

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

use std::io::{self, Read, Write};
use std::time::Duration;

use herd::sys::epoll::Epoll;
use herd::{Interest, Stream, Worker, WorkerEvent};

use super::http;

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

impl Registry for Epoll {
    fn add(&self, stream: &Stream, token: usize, interest: Interest) -> io::Result<()> {
        Epoll::add(self, stream, token as u64, interest)
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
    /// Close once `output` is written.
    closing: bool,
    /// Registered for writability (a response did not fit the socket buffer).
    want_write: bool,
}

/// Connections by token (their index), with a free list.
#[derive(Default)]
struct Conns {
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
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

    fn remove(&mut self, token: usize) {
        if self.slots.get_mut(token).and_then(Option::take).is_some() {
            self.open -= 1;
            self.free.push(token);
        }
    }
}

/// What to do with a connection after serving it.
enum Next {
    Keep,
    Close,
}

/// The worker function: serve until the primary says stop and every connection is done.
pub fn run(worker: &mut Worker, api: WorkerApi) -> io::Result<()> {
    let body = format!("worker {} pid {}\n", worker.id(), worker.pid()).into_bytes();
    match api {
        WorkerApi::EventLoop => run_event_loop(worker, &body),
        WorkerApi::Nested => run_nested(worker, &body),
        WorkerApi::Incoming => run_incoming(worker, &body),
    }
}

fn run_event_loop(worker: &mut Worker, body: &[u8]) -> io::Result<()> {
    let mut conns = Conns::default();
    let mut ready = Vec::with_capacity(256);
    let mut stopping = false;
    loop {
        worker.poll(&mut ready, None)?;
        while let Some(event) = worker.try_event()? {
            on_event(event, &*worker, &mut conns, &mut stopping, body)?;
        }
        for r in &ready {
            on_ready(&*worker, &mut conns, r.token as usize, stopping, body)?;
        }
        if stopping && conns.open == 0 {
            return Ok(());
        }
    }
}

fn run_nested(worker: &mut Worker, body: &[u8]) -> io::Result<()> {
    /// The worker's own token in our epoll; connections use their index.
    const WORKER: u64 = u64::MAX;
    let epoll = Epoll::new()?;
    epoll.add(&*worker, WORKER, Interest::READABLE)?;
    let mut conns = Conns::default();
    let mut ready = Vec::with_capacity(256);
    let mut stopping = false;
    loop {
        epoll.wait(&mut ready, None)?;
        for r in &ready {
            if r.token == WORKER {
                while let Some(event) = worker.try_event()? {
                    on_event(event, &epoll, &mut conns, &mut stopping, body)?;
                }
            } else {
                on_ready(&epoll, &mut conns, r.token as usize, stopping, body)?;
            }
        }
        if stopping && conns.open == 0 {
            return Ok(());
        }
    }
}

/// How long the blocking server waits for a client to send its request.
const BLOCKING_READ_TIMEOUT: Duration = Duration::from_secs(5);

fn run_incoming(worker: &mut Worker, body: &[u8]) -> io::Result<()> {
    for stream in worker.incoming() {
        let mut stream = stream?;
        stream.set_read_timeout(Some(BLOCKING_READ_TIMEOUT))?;
        let mut input = Vec::new();
        let mut output = Vec::new();
        let mut chunk = [0u8; 4096];
        'connection: loop {
            let request = loop {
                match http::parse(&input) {
                    Ok(Some(request)) => break request,
                    Ok(None) => {}
                    Err(_) => {
                        let _ = stream.write_all(http::BAD_REQUEST);
                        break 'connection;
                    }
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break 'connection,
                    Ok(n) => input.extend_from_slice(&chunk[..n]),
                }
            };
            input.drain(..request.len);
            output.clear();
            http::response(body, request.keep_alive, &mut output);
            if stream.write_all(&output).is_err() || !request.keep_alive {
                break;
            }
        }
    }
    Ok(())
}

fn on_event(
    event: WorkerEvent,
    registry: &impl Registry,
    conns: &mut Conns,
    stopping: &mut bool,
    body: &[u8],
) -> io::Result<()> {
    match event {
        WorkerEvent::Connection(stream) => {
            let conn = Conn { stream, input: Vec::new(), output: Vec::new(), closing: *stopping, want_write: false };
            let token = conns.insert(conn);
            let conn = conns.slots[token].as_mut().expect("just inserted");
            registry.add(&conn.stream, token, Interest::READABLE)?;
            // The request usually arrives with the connection: try it now, saving a wakeup.
            if let Next::Close = serve(registry, conn, token, body)? {
                conns.remove(token);
            }
        }
        WorkerEvent::Message(_) => {}
        WorkerEvent::Disconnect => {
            *stopping = true;
            close_idle(conns);
        }
    }
    Ok(())
}

fn on_ready(registry: &impl Registry, conns: &mut Conns, token: usize, stopping: bool, body: &[u8]) -> io::Result<()> {
    let Some(conn) = conns.slots.get_mut(token).and_then(Option::as_mut) else { return Ok(()) };
    if stopping {
        conn.closing = true;
    }
    if let Next::Close = serve(registry, conn, token, body)? {
        conns.remove(token);
    }
    Ok(())
}

/// Closes connections that sit idle between requests, so a graceful stop does not wait on
/// keep-alive clients; the busy ones close after their current response.
fn close_idle(conns: &mut Conns) {
    for token in 0..conns.slots.len() {
        if let Some(conn) = conns.slots[token].as_mut() {
            conn.closing = true;
            if conn.input.is_empty() && conn.output.is_empty() {
                conns.remove(token);
            }
        }
    }
}

/// Reads what the client sent, answers every complete request, writes what it can.
fn serve(registry: &impl Registry, conn: &mut Conn, token: usize, body: &[u8]) -> io::Result<Next> {
    let mut peer_closed = false;
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                peer_closed = true;
                break;
            }
            Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
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
                let keep_alive = request.keep_alive && !peer_closed;
                if !keep_alive {
                    conn.closing = true;
                }
                http::response(body, keep_alive, &mut conn.output);
            }
            Ok(None) => break,
            Err(_) => {
                conn.output.extend_from_slice(http::BAD_REQUEST);
                conn.closing = true;
            }
        }
    }
    conn.input.drain(..consumed);
    flush(registry, conn, token)?;
    let done_writing = conn.output.is_empty();
    if done_writing && (conn.closing || peer_closed) {
        return Ok(Next::Close);
    }
    Ok(Next::Keep)
}

/// Writes as much of the pending output as the socket takes; watches for writability if some
/// is left.
fn flush(registry: &impl Registry, conn: &mut Conn, token: usize) -> io::Result<()> {
    let mut written = 0;
    while written < conn.output.len() {
        match conn.stream.write(&conn.output[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.output.clear();
                conn.closing = true;
                return Ok(());
            }
        }
    }
    conn.output.drain(..written);
    let want_write = !conn.output.is_empty();
    if want_write != conn.want_write {
        let interest = if want_write {
            Interest { readable: true, writable: true, ..Interest::default() }
        } else {
            Interest::READABLE
        };
        registry.update(&conn.stream, token, interest)?;
        conn.want_write = want_write;
    }
    Ok(())
}

//! The worker side of `herd serve`: one epoll loop per worker serving many connections at once.
//!
//! It uses the worker's own epoll ([`Worker::register`] / [`Worker::poll`]) rather than a
//! second one, so that `EPOLLEXCLUSIVE` and the rotate strategy see the worker blocked directly
//! on the instance that watches the listener.

use std::io::{self, Read, Write};

use herd::{Interest, Stream, Worker, WorkerEvent};

use crate::http;

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
pub fn run(worker: &mut Worker) -> io::Result<()> {
    let body = format!("worker {} pid {}\n", worker.id(), worker.pid()).into_bytes();
    let mut conns = Conns::default();
    let mut ready = Vec::with_capacity(256);
    let mut stopping = false;
    loop {
        worker.poll(&mut ready, None)?;
        while let Some(event) = worker.try_event()? {
            match event {
                WorkerEvent::Connection(stream) => {
                    let conn =
                        Conn { stream, input: Vec::new(), output: Vec::new(), closing: stopping, want_write: false };
                    let token = conns.insert(conn);
                    let conn = conns.slots[token].as_mut().expect("just inserted");
                    worker.register(&conn.stream, token as u64, Interest::READABLE)?;
                    // The request usually arrives with the connection: try it now, saving a wakeup.
                    if let Next::Close = serve(worker, conn, token, &body)? {
                        conns.remove(token);
                    }
                }
                WorkerEvent::Message(_) => {}
                WorkerEvent::Disconnect => {
                    stopping = true;
                    close_idle(&mut conns);
                }
            }
        }
        for r in &ready {
            let token = r.token as usize;
            let Some(conn) = conns.slots.get_mut(token).and_then(Option::as_mut) else { continue };
            if stopping {
                conn.closing = true;
            }
            if let Next::Close = serve(worker, conn, token, &body)? {
                conns.remove(token);
            }
        }
        if stopping && conns.open == 0 {
            return Ok(());
        }
    }
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
fn serve(worker: &Worker, conn: &mut Conn, token: usize, body: &[u8]) -> io::Result<Next> {
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
    flush(worker, conn, token)?;
    let done_writing = conn.output.is_empty();
    if done_writing && (conn.closing || peer_closed) {
        return Ok(Next::Close);
    }
    Ok(Next::Keep)
}

/// Writes as much of the pending output as the socket takes; watches for writability if some
/// is left.
fn flush(worker: &Worker, conn: &mut Conn, token: usize) -> io::Result<()> {
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
        worker.reregister(&conn.stream, token as u64, interest)?;
        conn.want_write = want_write;
    }
    Ok(())
}

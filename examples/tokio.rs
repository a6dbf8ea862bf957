//! An HTTP hello server with a tokio runtime in each worker, in every mode.
//!
//! ```sh
//! cargo run --example tokio -- --mode reuseport --workers 4 --listen 127.0.0.1:8080
//! curl http://127.0.0.1:8080/      # worker 2 pid 4242
//! ```
//!
//! Every request gets `200` and `worker <id> pid <pid>`; keep-alive is honoured. SIGTERM (or
//! Ctrl-C) stops it gracefully. What herd gives a tokio program:
//!
//! - In **shared** and **reuseport** mode, [`Worker::into_listener`] takes the listener out of
//!   herd's loop; the worker wraps it in `AsyncFd` and accepts with
//!   [`herd::WorkerListener::accept`], so herd's counters go on counting.
//! - In **handoff** mode, connections arrive over the worker's lane: the worker's own
//!   descriptor goes in `AsyncFd`, and [`Worker::try_event`] is drained to `Ok(None)` on every
//!   wakeup (tokio's registrations are edge-triggered). That same descriptor brings, in every
//!   mode, the primary's stop request — and in reuseport mode the connections the primary hands
//!   over for a slot without a worker.
//!
//! Each connection becomes a tokio stream with [`herd::Stream::into_tcp`] (or `into_unix`).

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::time::Duration;

use herd::{Cluster, ListenAddr, Mode, Worker, WorkerEvent, WorkerListener};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Registers `inner` with tokio's reactor.
///
/// tokio 1.54 deprecated the safe `AsyncFd::new` for the `unsafe` `AsyncFd::register`, because
/// an `AsRawFd` value need not keep its descriptor open while tokio watches it. Every value
/// given here owns its descriptor (a [`WorkerListener`], or a duplicate of the worker's), which
/// is what `register` asks of its caller — and this project keeps `unsafe` to its system-call
/// layer.
#[allow(deprecated)]
fn watch<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    AsyncFd::new(inner)
}

fn main() -> io::Result<()> {
    let (mode, workers, listen) = arguments()?;
    let cluster =
        Cluster::builder(listen).mode(mode).workers(workers).shutdown_timeout(Duration::from_secs(5)).bind()?;
    println!("listening on {}", cluster.local_addr());
    cluster.run(
        |worker| {
            // A runtime of the worker's own, made after the fork: one thread, like the worker.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, serve(worker))
        },
        |event| eprintln!("{event}"),
    )?;
    Ok(())
}

/// `--mode MODE --workers N --listen ADDR`.
fn arguments() -> io::Result<(Mode, usize, ListenAddr)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let (mut mode, mut workers, mut listen) = (Mode::default(), 2, "127.0.0.1:8080".parse().unwrap());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| bad(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--mode" => mode = value.parse().map_err(|e| bad(format!("{e}")))?,
            "--workers" => workers = value.parse().map_err(|e| bad(format!("--workers {value}: {e}")))?,
            "--listen" => listen = value.parse().map_err(|e| bad(format!("{e}")))?,
            other => return Err(bad(format!("unknown option {other}"))),
        }
    }
    Ok((mode, workers, listen))
}

/// The worker: accept (or receive) connections until the primary says stop, then let the open
/// ones finish.
async fn serve(worker: &mut Worker) -> io::Result<()> {
    let body: Rc<[u8]> = format!("worker {} pid {}\n", worker.id(), worker.pid()).into_bytes().into();
    // Tells every connection the worker is stopping; one that starts later sees it too.
    let (stop_tx, stop) = watch::channel(false);
    let listener = match worker.into_listener() {
        Ok(listener) => Some(watch(listener)?),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => None,
        Err(e) => return Err(e),
    };
    // A duplicate of the worker's descriptor: the same epoll instance, owned by the AsyncFd.
    let events = watch(worker.as_fd().try_clone_to_owned()?)?;
    let mut connections = tokio::task::JoinSet::new();
    worker.ready();
    'serving: loop {
        tokio::select! {
            guard = events.readable() => {
                let mut guard = guard?;
                // Edge-triggered: take everything, until herd says nothing is ready.
                while let Some(event) = worker.try_event()? {
                    match event {
                        WorkerEvent::Connection(stream) => {
                            connections.spawn_local(connection(stream, body.clone(), stop.clone()));
                        }
                        WorkerEvent::Stop => break 'serving,
                        _ => {}
                    }
                }
                guard.clear_ready();
            }
            stream = accept(listener.as_ref()) => {
                connections.spawn_local(connection(stream?, body.clone(), stop.clone()));
            }
        }
    }
    // Stop: close the listener, tell idle keep-alive connections to close, let the others finish.
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The next connection from the listener; never, without one (handoff mode).
async fn accept(listener: Option<&AsyncFd<WorkerListener>>) -> io::Result<herd::Stream> {
    let Some(listener) = listener else { return std::future::pending().await };
    loop {
        let mut guard = listener.readable().await?;
        match guard.try_io(|l| l.get_ref().accept()) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// One connection, TCP or Unix-domain, as a tokio stream.
async fn connection(stream: herd::Stream, body: Rc<[u8]>, stop: watch::Receiver<bool>) {
    let result = match stream.into_tcp() {
        Ok(tcp) => match tcp.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(tcp)) {
            Ok(tcp) => http(tcp, &body, stop).await,
            Err(e) => Err(e),
        },
        Err(stream) => match stream.into_unix() {
            Ok(unix) => match unix.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(unix)) {
                Ok(unix) => http(unix, &body, stop).await,
                Err(e) => Err(e),
            },
            Err(_) => Ok(()),
        },
    };
    // A client that goes away mid-request is its own business.
    let _ = result;
}

/// Answers every request on the connection with `200` and `body`, keep-alive or not, until the
/// client closes, asks to close, or the worker stops while the connection is idle.
async fn http(
    mut conn: impl AsyncRead + AsyncWrite + Unpin,
    body: &[u8],
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut input = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let stopping = *stop.borrow_and_update();
        // Answer every complete request already read.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            let len = match request.parse(&input) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => break,
                Err(_) => {
                    conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await?;
                    return Ok(());
                }
            };
            let close_asked = request.version == Some(0)
                || request
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close"));
            let keep_alive = !close_asked && !stopping;
            input.drain(..len);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
                body.len(),
                if keep_alive { "" } else { "Connection: close\r\n" }
            );
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(body).await?;
            if !keep_alive {
                return Ok(());
            }
        }
        if stopping && input.is_empty() {
            return Ok(());
        }
        let n = tokio::select! {
            n = conn.read(&mut chunk) => n?,
            _ = stop.changed(), if !stopping => continue,
        };
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&chunk[..n]);
    }
}

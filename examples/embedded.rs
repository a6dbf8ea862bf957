//! The primary embedded in a program with its own event loop: a tokio current-thread runtime
//! polls the primary's descriptor, and the program — not signals — drives reloads, scaling and
//! the shutdown.
//!
//! ```sh
//! cargo run --example embedded [-- --backend io-uring]
//! ```
//!
//! The cluster runs in handoff mode, so nothing is served unless the runtime keeps the primary
//! turning. The program sends requests from a task of the same runtime, reloads the workers,
//! adds one, serves again, and stops, printing one `ok:` line per step and exiting 0 when all
//! of them held.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use herd::{Backend, Cluster, Event, Mode, Primary, ReloadPhase};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Registers `inner` with tokio's reactor (see `examples/tokio.rs` for why the safe, deprecated
/// constructor: `inner` owns its descriptor).
#[allow(deprecated)]
fn watch<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    AsyncFd::new(inner)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = match args.as_slice() {
        [] => Backend::Epoll,
        [flag, name] if flag == "--backend" => name.parse().map_err(io::Error::other)?,
        _ => return Err(io::Error::other("usage: embedded [--backend epoll|io-uring]")),
    };
    let cluster = Cluster::builder("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Handoff)
        .backend(backend)
        .workers(2)
        // The program keeps its signals; it calls reload, scale and shutdown itself.
        .handle_signals(false)
        .shutdown_timeout(Duration::from_secs(5))
        .bind()?;
    let addr = cluster.local_addr().to_string();
    let mut primary = cluster.start(|worker| {
        let (id, generation) = (worker.id(), worker.generation());
        for stream in worker.incoming() {
            let mut stream = stream?;
            let mut request = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut request)?;
            let body = format!("worker {id} generation {generation}");
            let _ = std::io::Write::write_all(
                &mut stream,
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    .as_bytes(),
            );
        }
        Ok(())
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, drive(&mut primary, addr))?;
    println!("ok: all checks passed");
    Ok(())
}

/// What the program waits for next.
#[derive(Debug, PartialEq)]
enum Step {
    Listening(usize),
    Served,
    Reloaded,
    Scaled,
    ServedAgain,
    Stopped,
}

async fn drive(primary: &mut Primary, addr: String) -> io::Result<()> {
    // A duplicate of the primary's descriptor (its epoll instance, or on io_uring its ring's
    // eventfd), owned by the AsyncFd.
    let events = watch(primary.as_fd().try_clone_to_owned()?)?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut step = Step::Listening(0);
    loop {
        tokio::select! {
            guard = events.readable() => {
                let mut guard = guard?;
                // Drain to Ok(None): tokio's registration is edge-triggered.
                while let Some(event) = primary.try_event()? {
                    println!("event: {event}");
                    step = match (step, event) {
                        (Step::Listening(n), Event::Listening { .. }) if n + 1 == 2 => {
                            tokio::task::spawn_local(requests(addr.clone(), 20, done_tx.clone()));
                            Step::Served
                        }
                        (Step::Listening(n), Event::Listening { .. }) => Step::Listening(n + 1),
                        (Step::Reloaded, Event::Reload { phase: ReloadPhase::Finished, .. }) => {
                            check(true, "reload() from code: every worker replaced")?;
                            primary.scale(3)?;
                            Step::Scaled
                        }
                        (Step::Scaled, Event::Listening { id: 2, .. }) => {
                            let serving = primary.workers().iter().filter(|w| w.listening && !w.exiting).count();
                            check(serving == 3, "scale(3) from code: a third worker listens")?;
                            tokio::task::spawn_local(requests(addr.clone(), 30, done_tx.clone()));
                            Step::ServedAgain
                        }
                        (step, _) => step,
                    };
                }
                if primary.is_finished() {
                    check(step == Step::Stopped, "shutdown(true) from code: every worker exited")?;
                    return Ok(());
                }
                guard.clear_ready();
            }
            Some(served) = done_rx.recv() => {
                step = match (step, served) {
                    (Step::Served, Ok(n)) => {
                        check(n == 20, "20 requests served while tokio drives the primary")?;
                        primary.reload()?;
                        Step::Reloaded
                    }
                    (Step::ServedAgain, Ok(n)) => {
                        check(n == 30, "30 more served by the scaled cluster")?;
                        primary.shutdown(true)?;
                        Step::Stopped
                    }
                    (_, Err(e)) => return Err(e),
                    (step, Ok(_)) => step,
                };
            }
        }
    }
}

/// `n` requests, one connection each, from the same runtime; sends how many were answered.
async fn requests(addr: String, n: usize, done: tokio::sync::mpsc::UnboundedSender<io::Result<usize>>) {
    let mut answered = 0;
    for _ in 0..n {
        let result: io::Result<bool> = async {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n").await?;
            let mut response = String::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut response)).await??;
            Ok(response.starts_with("HTTP/1.1 200 OK"))
        }
        .await;
        match result {
            Ok(true) => answered += 1,
            Ok(false) => {}
            Err(e) => {
                let _ = done.send(Err(e));
                return;
            }
        }
    }
    let _ = done.send(Ok(answered));
}

fn check(ok: bool, what: &str) -> io::Result<()> {
    if !ok {
        return Err(io::Error::other(format!("failed: {what}")));
    }
    println!("ok: {what}");
    Ok(())
}

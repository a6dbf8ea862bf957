//! Messages both ways between the primary and its workers, as in Node's `cluster`:
//! `worker.send`, `primary.send(pid, ..)` and a broadcast, and the size limit on both sides.
//!
//! ```sh
//! cargo run --example messages
//! ```
//!
//! Each worker answers `ping` with `pong <id>` and reports, when asked with `oversize`, that
//! it cannot send a message over the limit. The primary prints one `ok:` line per check and
//! exits 0 when all of them held.

use std::io;
use std::time::Duration;

use herd::channel::MAX_MESSAGE;
use herd::{Cluster, Event, Mode, WorkerEvent};

const WORKERS: usize = 2;

fn main() -> io::Result<()> {
    let cluster = Cluster::builder("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Handoff)
        .workers(WORKERS)
        .shutdown_timeout(Duration::from_secs(5))
        .bind()?;
    let mut primary = cluster.start(|worker| {
        loop {
            match worker.next_event()? {
                WorkerEvent::Message(m) if m == b"ping" => worker.send(format!("pong {}", worker.id()).as_bytes())?,
                WorkerEvent::Message(m) if m == b"oversize" => {
                    let err = worker.send(&vec![0; MAX_MESSAGE + 1]).expect_err("an over-size message is refused");
                    worker.send(format!("refused {err}").as_bytes())?;
                }
                WorkerEvent::Message(other) => worker.send(&other)?,
                WorkerEvent::Connection(_) => {}
                WorkerEvent::Disconnect => return Ok(()),
            }
        }
    })?;

    let mut listening = Vec::new();
    while listening.len() < WORKERS {
        if let Some(Event::Listening { id, pid }) = primary.next_event()? {
            listening.push((id, pid));
        }
    }

    // Primary to one worker, and back.
    let (id, pid) = listening[0];
    primary.send(pid, b"ping")?;
    let reply = next_message(&mut primary)?;
    check(reply.0 == pid && reply.1 == format!("pong {id}").as_bytes(), "round trip primary -> worker -> primary")?;

    // Primary to all workers.
    let reached = primary.broadcast(b"ping")?;
    check(reached == WORKERS, "broadcast reached every worker")?;
    let mut pongs: Vec<Vec<u8>> =
        (0..WORKERS).map(|_| next_message(&mut primary).map(|m| m.1)).collect::<io::Result<_>>()?;
    pongs.sort();
    check(pongs == [b"pong 0".to_vec(), b"pong 1".to_vec()], "every worker answered the broadcast")?;

    // Messages up to the limit pass; one byte more is refused, on either side.
    let largest = vec![7u8; MAX_MESSAGE];
    primary.send(listening[1].1, &largest)?;
    check(next_message(&mut primary)?.1 == largest, "a message of exactly MAX_MESSAGE bytes round-trips")?;
    let err = primary.send(listening[1].1, &vec![0; MAX_MESSAGE + 1]).expect_err("refused");
    check(
        err.kind() == io::ErrorKind::InvalidInput && err.to_string().contains("exceeds"),
        "primary refuses an over-size message",
    )?;
    primary.send(listening[1].1, b"oversize")?;
    let refusal = next_message(&mut primary)?.1;
    check(String::from_utf8_lossy(&refusal).contains("exceeds"), "worker refuses an over-size message")?;

    primary.shutdown(true)?;
    while primary.next_event()?.is_some() {}
    println!("ok: all checks passed");
    Ok(())
}

/// Turns the primary's loop until a worker message arrives: (pid, bytes).
fn next_message(primary: &mut herd::Primary) -> io::Result<(u32, Vec<u8>)> {
    loop {
        match primary.next_event()? {
            Some(Event::Message { pid, data, .. }) => return Ok((pid, data)),
            Some(_) => {}
            None => return Err(io::Error::other("the cluster ended before a message arrived")),
        }
    }
}

fn check(ok: bool, what: &str) -> io::Result<()> {
    if !ok {
        return Err(io::Error::other(format!("failed: {what}")));
    }
    println!("ok: {what}");
    Ok(())
}

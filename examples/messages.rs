//! Messages both ways between the primary and its workers, as in Node's `cluster`:
//! `worker.send`, `primary.send(pid, ..)` and a broadcast, the size limit on both sides, and
//! descriptors sent with a message both ways (Node's `send(message, handle)`).
//!
//! ```sh
//! cargo run --example messages
//! ```
//!
//! Each worker answers `ping` with `pong <id>`, reports when asked with `oversize` that it
//! cannot send a message over the limit, writes into a socket the primary sends it with
//! `write`, and sends back one end of a socket pair of its own with `give`. The primary prints
//! one `ok:` line per check and exits 0 when all of them held.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
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
                WorkerEvent::Message { data, .. } if data == b"ping" => {
                    worker.send(format!("pong {}", worker.id()).as_bytes())?
                }
                WorkerEvent::Message { data, .. } if data == b"oversize" => {
                    let err = worker.send(&vec![0; MAX_MESSAGE + 1]).expect_err("an over-size message is refused");
                    worker.send(format!("refused {err}").as_bytes())?;
                }
                WorkerEvent::Message { data, mut fds } if data == b"write" && fds.len() == 1 => {
                    let mut socket = UnixStream::from(fds.remove(0));
                    write!(socket, "written by worker {}", worker.id())?;
                }
                WorkerEvent::Message { data, .. } if data == b"give" => {
                    let (mine, theirs) = UnixStream::pair()?;
                    worker.send_with_fds(b"given", &[theirs.as_fd()])?;
                    drop(theirs);
                    (&mine).write_all(b"through the worker's socket")?;
                }
                WorkerEvent::Message { data, .. } => worker.send(&data)?,
                WorkerEvent::Stop => return Ok(()),
                _ => {}
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

    // A descriptor from the primary to a worker: the worker writes into it.
    let (mut ours, theirs) = UnixStream::pair()?;
    primary.send_with_fds(pid, b"write", &[theirs.as_fd()])?;
    drop(theirs);
    let mut written = String::new();
    ours.read_to_string(&mut written)?;
    check(written == format!("written by worker {id}"), "a socket sent to a worker reached it")?;

    // And from a worker to the primary.
    primary.send(pid, b"give")?;
    let given = loop {
        match primary.next_event()? {
            Some(Event::Message { data, mut fds, .. }) if data == b"given" && fds.len() == 1 => break fds.remove(0),
            Some(_) => {}
            None => return Err(io::Error::other("the cluster ended before the worker's socket arrived")),
        }
    };
    let mut text = String::new();
    UnixStream::from(given).read_to_string(&mut text)?;
    check(text == "through the worker's socket", "a socket sent by a worker reached the primary")?;

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

//! Worker control from the primary's code, as Node's `worker` object offers it: the map of live
//! workers, `is_connected`, `is_dead`, `disconnect` and `kill`.
//!
//! ```sh
//! cargo run --example control
//! ```
//!
//! Prints one `ok:` line per check and exits 0 when all of them held.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use herd::{Cluster, Event, Mode, WorkerEvent, WorkerExit};

fn main() -> io::Result<()> {
    let cluster = Cluster::builder("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Reuseport)
        .workers(3)
        .shutdown_timeout(Duration::from_secs(5))
        .bind()?;
    let mut primary = cluster.start(|worker| {
        // The worker reopens its logs on SIGUSR1, say: it handles the signal.
        let reopen = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(libc::SIGUSR1, reopen)?;
        loop {
            if let WorkerEvent::Stop = worker.next_event()? {
                return Ok(());
            }
        }
    })?;
    let mut listening = 0;
    while listening < 3 {
        if let Some(Event::Listening { .. }) = primary.next_event()? {
            listening += 1;
        }
    }
    let workers = primary.workers();
    check(
        workers.len() == 3 && workers.iter().all(|w| w.connected && w.listening && !w.exiting),
        "three live workers",
    )?;
    let ids: Vec<usize> = workers.iter().map(|w| w.id).collect();
    check(ids == [0, 1, 2], "ids are the slots 0, 1, 2")?;

    // disconnect: the worker finishes and exits 0, asked for, and is not replaced.
    let first = workers[0].pid;
    check(primary.is_connected(first) && !primary.is_dead(first), "worker 0 is connected and alive")?;
    primary.disconnect(first)?;
    let (status, asked) = exit_of(&mut primary, first)?;
    check(status == WorkerExit::Code(0) && asked, "disconnect: worker 0 exited 0, expected")?;
    check(primary.is_dead(first) && !primary.is_connected(first), "worker 0 is dead")?;
    check(primary.workers().len() == 2, "a disconnected worker is not replaced")?;

    // kill with a signal the worker handles (SIGUSR1, to reopen its logs, say) or whose default
    // is to be ignored (SIGWINCH): delivered, and the worker goes on serving.
    let second = workers[1].pid;
    primary.kill(second, libc::SIGUSR1)?;
    primary.kill(second, libc::SIGWINCH)?;
    while primary.next_event_timeout(Some(Duration::from_millis(200)))?.is_some() {}
    let still = primary.workers().into_iter().find(|w| w.pid == second);
    check(
        still.is_some_and(|w| !w.exiting) && !primary.is_dead(second),
        "kill(SIGUSR1) and kill(SIGWINCH): worker 1 goes on serving",
    )?;

    // kill: the worker dies of the signal, asked for, and is not replaced.
    primary.kill(second, libc::SIGTERM)?;
    let (status, asked) = exit_of(&mut primary, second)?;
    check(status == WorkerExit::Signal(libc::SIGTERM) && asked, "kill(SIGTERM): worker 1 died of SIGTERM, expected")?;
    check(primary.workers().len() == 1, "a killed worker is not replaced")?;

    check(primary.kill(999_999_999, libc::SIGTERM).is_err(), "an unknown pid is an error")?;

    primary.shutdown(true)?;
    while primary.next_event()?.is_some() {}
    println!("ok: all checks passed");
    Ok(())
}

/// Turns the loop until worker `pid` exits: its status and whether it was asked to.
fn exit_of(primary: &mut herd::Primary, pid: u32) -> io::Result<(WorkerExit, bool)> {
    loop {
        match primary.next_event()? {
            Some(Event::Exit { pid: p, status, expected, .. }) if p == pid => {
                return Ok((status, expected));
            }
            Some(_) => {}
            None => return Err(io::Error::other("the cluster ended first")),
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

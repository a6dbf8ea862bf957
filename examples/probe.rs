//! The fault-injection harness the reliability tests drive: each scenario starts a small
//! cluster through the library API, puts it in a corner that only a fault reaches, and prints
//! what happened. Tests run it as a separate process (it forks) and read its output.
//!
//! ```sh
//! cargo run --example probe -- SCENARIO
//! ```
//!
//! Scenarios:
//!
//! - `reuseport-disconnect`: a reuseport cluster of 3 has worker 0 disconnected (not replaced);
//!   prints `ready addr=ADDR` once it has exited, then serves until SIGTERM. Every connection
//!   must still be answered: nobody accepts on slot 0's listener any more.
//! - `stalled-channel`: worker 1 never reads its channel; the primary sends it 5000 messages of
//!   1 KiB. The primary must not block: prints `ok: sends returned`, then the event that dealt
//!   with the stalled worker.
//! - `handoff-into-std`: a handoff cluster of 1 whose worker turns each connection into a std
//!   stream, answers `bye` to one byte and drops it; the first connection is held 1 s.
//!   Prints `ready addr=ADDR`, serves until SIGTERM.
//! - `buffered-output`: prints `before-fork` without a newline, starts 3 workers and stops.
//! - `worker-child-signals`: each worker runs `grep Sig /proc/self/status` and passes the
//!   output to the primary, which prints it.
//! - `thread-during-restart`: a thread appears in the primary, then worker 0 crashes; the
//!   primary must go on, and refill the slot once the thread has ended.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use herd::{Cluster, Event, Mode, Primary, WorkerEvent};

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let result = match scenario.as_str() {
        "reuseport-disconnect" => reuseport_disconnect(),
        "stalled-channel" => stalled_channel(),
        "handoff-into-std" => handoff_into_std(),
        "buffered-output" => buffered_output(),
        "worker-child-signals" => worker_child_signals(),
        "thread-during-restart" => thread_during_restart(),
        other => Err(io::Error::other(format!("unknown scenario {other:?}"))),
    };
    if let Err(e) = result {
        println!("FAIL: {e}");
        std::process::exit(1);
    }
}

/// Waits for `n` events matching `pred`, printing every event; fails after `within`.
fn wait_for(primary: &mut Primary, n: usize, within: Duration, pred: impl Fn(&Event) -> bool) -> io::Result<()> {
    let deadline = Instant::now() + within;
    let mut seen = 0;
    while seen < n {
        if Instant::now() > deadline {
            return Err(io::Error::other("timed out waiting for an event"));
        }
        match primary.next_event()? {
            Some(event) => {
                println!("event: {event}");
                if pred(&event) {
                    seen += 1;
                }
            }
            None => return Err(io::Error::other("the primary finished early")),
        }
    }
    Ok(())
}

/// Prints every event until the primary finishes (after SIGTERM).
fn run_to_end(mut primary: Primary) -> io::Result<()> {
    while let Some(event) = primary.next_event()? {
        println!("event: {event}");
    }
    println!("ok: finished");
    Ok(())
}

fn listening(e: &Event) -> bool {
    matches!(e, Event::Listening { .. })
}

/// A worker that answers `worker N\n` on every connection and closes it.
fn answer_and_close(worker: &mut herd::Worker) -> io::Result<()> {
    let id = worker.id();
    for stream in worker.incoming() {
        let _ = writeln!(stream?, "worker {id}");
    }
    Ok(())
}

fn reuseport_disconnect() -> io::Result<()> {
    let cluster = Cluster::builder("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Reuseport)
        .workers(3)
        .shutdown_timeout(Duration::from_secs(2))
        .bind()?;
    let addr = cluster.local_addr().clone();
    let mut primary = cluster.start(answer_and_close)?;
    wait_for(&mut primary, 3, Duration::from_secs(10), listening)?;
    let first = primary.workers()[0].pid;
    primary.disconnect(first)?;
    wait_for(&mut primary, 1, Duration::from_secs(10), |e| matches!(e, Event::Exit { pid, .. } if *pid == first))?;
    println!("ready addr={addr}");
    io::stdout().flush()?;
    run_to_end(primary)
}

fn stalled_channel() -> io::Result<()> {
    let cluster = Cluster::builder("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .shutdown_timeout(Duration::from_secs(1))
        .restart_limit(0, Duration::from_secs(60))
        .bind()?;
    let mut primary = cluster.start(|worker| {
        if worker.id() == 1 {
            // Never reads its channel again.
            std::thread::sleep(Duration::from_secs(60));
        }
        loop {
            if let WorkerEvent::Stop = worker.next_event()? {
                return Ok(());
            }
        }
    })?;
    wait_for(&mut primary, 2, Duration::from_secs(10), |e| matches!(e, Event::Online { .. }))?;
    let stalled = primary.workers().iter().find(|w| w.id == 1).map(|w| w.pid).unwrap();
    let message = vec![b'x'; 1024];
    let start = Instant::now();
    let mut refused = 0;
    for _ in 0..5000 {
        if primary.send(stalled, &message).is_err() {
            refused += 1;
        }
    }
    println!("ok: sends returned after {:.1}s ({refused} refused)", start.elapsed().as_secs_f64());
    io::stdout().flush()?;
    wait_for(&mut primary, 1, Duration::from_secs(10), |e| {
        matches!(e, Event::Unresponsive { id: 1, .. } | Event::Exit { id: 1, .. })
    })?;
    primary.shutdown(true)?;
    run_to_end(primary)
}

fn handoff_into_std() -> io::Result<()> {
    let cluster = Cluster::builder("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Handoff)
        .workers(1)
        .shutdown_timeout(Duration::from_secs(2))
        .bind()?;
    let addr = cluster.local_addr().clone();
    let mut primary = cluster.start(|worker| {
        let mut first = true;
        loop {
            match worker.next_event()? {
                WorkerEvent::Connection(stream) => {
                    if std::mem::take(&mut first) {
                        // Busy: the next handoff waits unread in the channel meanwhile.
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                    let Ok(mut tcp) = stream.into_tcp() else { continue };
                    tcp.set_nonblocking(false)?;
                    let mut byte = [0u8; 1];
                    if tcp.read_exact(&mut byte).is_ok() {
                        let _ = tcp.write_all(b"bye");
                    }
                }
                WorkerEvent::Stop => return Ok(()),
                _ => {}
            }
        }
    })?;
    wait_for(&mut primary, 1, Duration::from_secs(10), listening)?;
    println!("ready addr={addr} pid={}", std::process::id());
    io::stdout().flush()?;
    run_to_end(primary)
}

fn buffered_output() -> io::Result<()> {
    print!("before-fork");
    let cluster = Cluster::builder("127.0.0.1:0".parse().unwrap()).workers(3).bind()?;
    let mut primary = cluster.start(|worker| {
        loop {
            if let WorkerEvent::Stop = worker.next_event()? {
                return Ok(());
            }
        }
    })?;
    wait_for(&mut primary, 3, Duration::from_secs(10), listening)?;
    primary.shutdown(true)?;
    run_to_end(primary)
}

fn worker_child_signals() -> io::Result<()> {
    let cluster = Cluster::builder("127.0.0.1:0".parse().unwrap()).workers(1).bind()?;
    let mut primary = cluster.start(|worker| {
        let out = std::process::Command::new("grep").args(["^Sig", "/proc/self/status"]).output()?;
        worker.send(&out.stdout)?;
        let own = std::fs::read_to_string("/proc/self/status")?;
        let own: Vec<&str> = own.lines().filter(|l| l.starts_with("Sig")).collect();
        worker.send(format!("worker {}", own.join(" ")).as_bytes())?;
        loop {
            if let WorkerEvent::Stop = worker.next_event()? {
                return Ok(());
            }
        }
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut messages = 0;
    while messages < 2 && Instant::now() < deadline {
        if let Some(Event::Message { data, .. }) = primary.next_event()? {
            println!("{}", String::from_utf8_lossy(&data).replace('\n', " "));
            messages += 1;
        }
    }
    primary.shutdown(true)?;
    run_to_end(primary)
}

fn thread_during_restart() -> io::Result<()> {
    let cluster =
        Cluster::builder("127.0.0.1:0".parse().unwrap()).workers(2).shutdown_timeout(Duration::from_secs(2)).bind()?;
    let mut primary = cluster.start(|worker| {
        loop {
            match worker.next_event()? {
                WorkerEvent::Message { data, .. } if data == b"crash" => std::process::abort(),
                WorkerEvent::Stop => return Ok(()),
                _ => {}
            }
        }
    })?;
    wait_for(&mut primary, 2, Duration::from_secs(10), listening)?;
    // A helper thread (a metrics exporter, say) lives for 1.5 s.
    let helper = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(1500)));
    let victim = primary.workers()[0].pid;
    primary.send(victim, b"crash")?;
    wait_for(&mut primary, 1, Duration::from_secs(10), |e| matches!(e, Event::Exit { id: 0, .. }))?;
    println!("ok: worker 0 crashed while a thread existed");
    wait_for(&mut primary, 1, Duration::from_secs(10), |e| matches!(e, Event::Listening { id: 0, .. }))?;
    let _ = helper.join();
    println!("ok: slot 0 refilled");
    primary.shutdown(true)?;
    run_to_end(primary)
}

//! Micro-benchmarks of [`herd::channel::Channel`], in one process (no fork).
//!
//! In handoff mode every connection crosses the channel: the primary `accept`s it, sends a
//! `Handoff` frame with the descriptor attached (`sendmsg` + `SCM_RIGHTS`), the worker
//! `recvmsg`s it and sends back an `Ack`. This file measures that path in isolation, two ways:
//!
//! - **Round trip** (latency): one handoff goes out, its ack comes back, and only then the next
//!   handoff. This is the cost one connection pays when the primary is idle, and, with a window
//!   of 1 (Node's), the ceiling on how many connections one worker can take per second. With both
//!   ends on **one thread** (send, recv, send ack, recv ack) it is pure system-call cost; with the
//!   two ends on **two threads**, as between the primary and a worker process, each direction
//!   adds a wake-up of the other thread, which costs very different amounts depending on where
//!   the threads run — so the two-thread rows are measured three ways: wherever the scheduler
//!   puts them (`any CPU`), pinned to **one CPU** (a wake-up is a context switch there) and
//!   pinned to **two CPUs** (a wake-up must reach another CPU that has gone idle).
//! - **Throughput** (messages per second): a sender thread streams frames to a receiver thread
//!   as fast as the socket buffer lets it — the regime of a saturated primary with a window.
//!   On one CPU the two take turns in long runs, so a message costs the sender's work plus the
//!   receiver's; on two CPUs they overlap and the slower side sets the pace, but every time the
//!   receiver catches up and sleeps it must be woken again. Small frames without descriptors,
//!   1 KiB user frames, handoffs with descriptors, and handoffs under a window of
//!   unacknowledged handoffs as the primary keeps them, acknowledged one by one or 32 at a time.
//!
//! **Why descriptors cost more than bytes.** `SCM_RIGHTS` does not pass a number: the kernel takes
//! a reference to the sender's open file when the frame is sent and, on `recvmsg`, allocates a
//! *new* descriptor in the receiver's table and installs the file there (close-on-exec here, as
//! `MSG_CMSG_CLOEXEC` asks). So every handoff costs a descriptor allocation in the receiver and a
//! `close` afterwards (the file itself lives on: the sender keeps its copy). The `no fd` rows are
//! the baseline that isolates that cost. Passing an `AF_UNIX` socket also enters the kernel's
//! in-flight accounting for the Unix garbage collector (it can form reference cycles), hence the
//! separate `unix` rows; herd passes TCP sockets, or Unix ones when it listens on a path.
//!
//! Run it with `cargo bench --bench channel` (about 30 s), or `cargo bench --bench channel --
//! --quick` (or `HERD_BENCH_QUICK=1`) for ten times fewer iterations. Words that are not options
//! filter the benchmarks by name (`cargo bench --bench channel -- "2 CPUs"`). Under `cargo test` (no
//! `--bench` argument) every benchmark runs a few iterations only, as a smoke test.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use herd::channel::{Channel, Message, Received};
use herd::mode::handoff::DEFAULT_WINDOW;

/// How much work each benchmark does.
#[derive(Debug, Clone, Copy)]
struct Scale {
    /// Round trips: timed batches (odd, so the median is one of them).
    batches: usize,
    /// Round trips: the wall time each batch aims for.
    batch_time: Duration,
    /// Throughput: timed runs per benchmark.
    runs: usize,
    /// Throughput: the length of each run.
    run_time: Duration,
    name: &'static str,
}

const FULL: Scale = Scale {
    batches: 21,
    batch_time: Duration::from_millis(50),
    runs: 5,
    run_time: Duration::from_millis(200),
    name: "full",
};
const QUICK: Scale = Scale {
    batches: 11,
    batch_time: Duration::from_millis(10),
    runs: 5,
    run_time: Duration::from_millis(20),
    name: "quick",
};
/// `cargo test` runs harness-less benches too: just check that every benchmark works.
const SMOKE: Scale = Scale {
    batches: 3,
    batch_time: Duration::from_millis(1),
    runs: 1,
    run_time: Duration::from_millis(2),
    name: "smoke test",
};

/// The descriptor a handoff carries, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// No descriptor: `Ack` frames both ways, the baseline.
    None,
    /// An accepted loopback TCP connection, what herd passes when it listens on TCP.
    Tcp,
    /// One end of a `UnixStream::pair()`: an `AF_UNIX` socket in flight.
    Unix,
}

impl Payload {
    fn label(self) -> &'static str {
        match self {
            Payload::None => "no fd (Ack -> Ack)",
            Payload::Tcp => "TCP socket (Handoff -> Ack)",
            Payload::Unix => "unix socket (Handoff -> Ack)",
        }
    }
}

/// A descriptor to attach to every handoff, and what must stay open alongside it.
struct Attachment {
    fd: Option<OwnedFd>,
    _peer: Option<OwnedFd>,
}

impl Attachment {
    fn new(payload: Payload) -> Attachment {
        match payload {
            Payload::None => Attachment { fd: None, _peer: None },
            Payload::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
                let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect to loopback");
                let (accepted, _) = listener.accept().expect("accept");
                Attachment { fd: Some(accepted.into()), _peer: Some(client.into()) }
            }
            Payload::Unix => {
                let (a, b) = UnixStream::pair().expect("UnixStream::pair");
                Attachment { fd: Some(a.into()), _peer: Some(b.into()) }
            }
        }
    }

    /// The frame to send and the descriptors to attach.
    fn frame(&self, seq: u64) -> (Message, Option<BorrowedFd<'_>>) {
        match &self.fd {
            Some(fd) => (Message::Handoff { seq }, Some(fd.as_fd())),
            None => (Message::Ack { received: 1 }, None),
        }
    }
}

fn send(channel: &Channel, message: &Message, fd: Option<BorrowedFd<'_>>) {
    let fds = fd.as_slice();
    channel.send(message, fds).unwrap_or_else(|e| panic!("send {message:?}: {e}"));
}

/// Receives one frame and checks it carries `fds` descriptors; dropping the result closes them.
fn recv(channel: &mut Channel, fds: usize) -> Received {
    let received = channel.recv().unwrap_or_else(|e| panic!("recv: {e}"));
    assert_eq!(received.fds.len(), fds, "descriptors with {:?}", received.message);
    received
}

/// Several measurements of one figure (ns per round trip, or messages per second): the median,
/// the lowest and the highest.
#[derive(Debug, Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(mut values: Vec<f64>) -> Summary {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Summary { median, min: values[0], max: values[n - 1] }
    }
}

/// Times `batch(n)` (which does `n` round trips): a warm-up sizes the batches to about
/// `scale.batch_time` each, then `scale.batches` batches are timed.
fn time_batches(scale: Scale, mut batch: impl FnMut(u64)) -> Summary {
    let warmup = 200;
    let start = Instant::now();
    batch(warmup);
    let per_op = start.elapsed().as_secs_f64() / warmup as f64;
    let n = ((scale.batch_time.as_secs_f64() / per_op) as u64).max(10);
    let per_op_ns = (0..scale.batches)
        .map(|_| {
            let start = Instant::now();
            batch(n);
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    Summary::of(per_op_ns)
}

/// Both ends on this thread: send, receive (and close the descriptor), send the ack, receive it.
fn round_trip_same_thread(scale: Scale, payload: Payload) -> Summary {
    let (mut primary, mut worker) = Channel::pair().expect("Channel::pair");
    let attachment = Attachment::new(payload);
    let nfds = attachment.fd.is_some() as usize;
    let ack = Message::Ack { received: 1 };
    let mut seq = 0;
    time_batches(scale, |n| {
        for _ in 0..n {
            let (message, fd) = attachment.frame(seq);
            seq += 1;
            send(&primary, &message, fd);
            drop(recv(&mut worker, nfds));
            send(&worker, &ack, None);
            recv(&mut primary, 0);
        }
    })
}

/// Where the two threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Wherever the scheduler puts them.
    Any,
    /// Both pinned to one CPU: each wake-up is a switch on that CPU.
    OneCpu,
    /// Pinned to two different CPUs: each wake-up reaches another, idle, CPU.
    TwoCpus,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::Any => "any CPU",
            Placement::OneCpu => "1 CPU",
            Placement::TwoCpus => "2 CPUs",
        }
    }

    /// The CPUs for the primary's thread and the worker's, or `None` to leave them alone; `Err`
    /// if this process may not use two CPUs.
    fn cpus(self) -> Result<Option<(usize, usize)>, String> {
        let allowed = affinity::allowed();
        match (self, allowed.as_slice()) {
            (Placement::Any, _) => Ok(None),
            (Placement::OneCpu, [a, ..]) => Ok(Some((*a, *a))),
            (Placement::TwoCpus, [a, b, ..]) => Ok(Some((*a, *b))),
            _ => Err(format!("needs 2 CPUs, this process may use {}", allowed.len())),
        }
    }
}

/// The worker end on its own thread, which acks every frame until `Stop`.
fn round_trip_two_threads(scale: Scale, payload: Payload, placement: Placement) -> Result<Summary, String> {
    let cpus = placement.cpus()?;
    let (mut primary, worker) = Channel::pair().expect("Channel::pair");
    let attachment = Attachment::new(payload);
    let nfds = attachment.fd.is_some() as usize;
    let responder = thread::spawn(move || {
        if let Some((_, cpu)) = cpus {
            affinity::pin(cpu);
        }
        let mut worker = worker;
        let ack = Message::Ack { received: 1 };
        loop {
            let received = worker.recv().unwrap_or_else(|e| panic!("worker recv: {e}"));
            if received.message == Message::Stop {
                return;
            }
            assert_eq!(received.fds.len(), nfds);
            drop(received);
            send(&worker, &ack, None);
        }
    });
    let saved = cpus.map(|(cpu, _)| {
        let saved = affinity::get();
        affinity::pin(cpu);
        saved
    });
    let mut seq = 0;
    let summary = time_batches(scale, |n| {
        for _ in 0..n {
            let (message, fd) = attachment.frame(seq);
            seq += 1;
            send(&primary, &message, fd);
            recv(&mut primary, 0);
        }
    });
    if let Some(saved) = saved {
        affinity::set(&saved);
    }
    send(&primary, &Message::Stop, None);
    responder.join().expect("responder thread");
    Ok(summary)
}

/// Thread CPU affinity, `sched_{get,set}affinity(2)` on the calling thread.
mod affinity {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

    pub fn get() -> CpuSet {
        sched_getaffinity(None).expect("sched_getaffinity")
    }

    pub fn set(set: &CpuSet) {
        sched_setaffinity(None, set).expect("sched_setaffinity");
    }

    /// The CPUs this thread may run on.
    pub fn allowed() -> Vec<usize> {
        let set = get();
        (0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect()
    }

    /// Pins the calling thread to `cpu`.
    pub fn pin(cpu: usize) {
        let mut one = CpuSet::new();
        one.set(cpu);
        set(&one);
    }
}

/// A one-way stream: what is sent, and how (if at all) the receiver acknowledges.
#[derive(Debug, Clone, Copy)]
enum Stream {
    /// `Ack` frames (12 bytes), no descriptors, no replies.
    Acks,
    /// `User` frames with a 1 KiB payload, no replies.
    User1K,
    /// `Handoff` frames with a TCP socket attached, no replies.
    Handoffs,
    /// Handoffs under a window: the receiver sends `Ack{batch}` after every `batch` handoffs, the
    /// sender never has more than `window` unacknowledged.
    Acked { batch: u32, window: usize },
}

impl Stream {
    fn label(self) -> String {
        match self {
            Stream::Acks => "Ack frames (12 B), no fd".to_owned(),
            Stream::User1K => "User frames (1 KiB payload)".to_owned(),
            Stream::Handoffs => "Handoff + TCP fd, no acks".to_owned(),
            Stream::Acked { batch: 1, window } => format!("Handoff + TCP fd, Ack each, window {window}"),
            Stream::Acked { batch, window } => format!("Handoff + TCP fd, Ack per {batch}, window {window}"),
        }
    }
}

/// Streams frames from a sender thread to a receiver thread for `duration`; returns frames
/// received per second (the sender ends with `Stop`, which is not counted).
fn messages_per_second(stream: Stream, duration: Duration, cpus: Option<(usize, usize)>) -> f64 {
    let (primary, worker) = Channel::pair().expect("Channel::pair");
    let attachment = Attachment::new(Payload::Tcp);
    let start_line = Arc::new(Barrier::new(2));
    let receiver = {
        let start_line = Arc::clone(&start_line);
        thread::spawn(move || {
            if let Some((_, cpu)) = cpus {
                affinity::pin(cpu);
            }
            receive_stream(worker, stream, &start_line)
        })
    };
    let sender = {
        let start_line = Arc::clone(&start_line);
        thread::spawn(move || {
            if let Some((cpu, _)) = cpus {
                affinity::pin(cpu);
            }
            send_stream(primary, &attachment, stream, duration, &start_line)
        })
    };
    // The clock is read by the two threads, not here: this thread may wake up late.
    let (received, end) = receiver.join().expect("receiver thread");
    let (sent, start, _primary) = sender.join().expect("sender thread");
    assert_eq!(sent, received, "frames sent and received");
    received as f64 / (end - start).as_secs_f64()
}

/// Sends until `duration` is up, then `Stop`; returns the count, the start time and the
/// channel, which must stay open until the receiver is done: closing a `SOCK_SEQPACKET` end with frames (acks) still
/// unread in it makes the peer's next `recvmsg` fail with `ECONNRESET`, even with `Stop`
/// still queued for it.
fn send_stream(
    mut primary: Channel,
    attachment: &Attachment,
    stream: Stream,
    duration: Duration,
    go: &Barrier,
) -> (u64, Instant, Channel) {
    let user = Message::User(vec![0x5a; 1024]);
    let ack = Message::Ack { received: 1 };
    let mut unacked = 0;
    let mut sent = 0;
    go.wait();
    let start = Instant::now();
    let deadline = start + duration;
    // Reading the clock costs ~20 ns, a frame ~1 µs: look every 64 frames.
    while sent % 64 != 0 || Instant::now() < deadline {
        match stream {
            Stream::Acks => send(&primary, &ack, None),
            Stream::User1K => send(&primary, &user, None),
            Stream::Handoffs => {
                let (message, fd) = attachment.frame(sent);
                send(&primary, &message, fd);
            }
            Stream::Acked { window, .. } => {
                if unacked >= window {
                    // The window is full: wait for an ack, then take whatever else has come.
                    unacked -= acked(recv(&mut primary, 0));
                    while let Some(r) = primary.try_recv().unwrap_or_else(|e| panic!("try_recv: {e}")) {
                        unacked -= acked(r);
                    }
                }
                let (message, fd) = attachment.frame(sent);
                send(&primary, &message, fd);
                unacked += 1;
            }
        }
        sent += 1;
    }
    send(&primary, &Message::Stop, None);
    (sent, start, primary)
}

fn acked(received: Received) -> usize {
    match received.message {
        // This bench reads an ack as a count of handoffs it settles, not the running total herd sends.
        Message::Ack { received } => received as usize,
        other => panic!("expected an Ack, got {other:?}"),
    }
}

fn receive_stream(mut worker: Channel, stream: Stream, go: &Barrier) -> (u64, Instant) {
    let nfds = matches!(stream, Stream::Handoffs | Stream::Acked { .. }) as usize;
    let mut received = 0;
    let mut unacked = 0;
    go.wait();
    loop {
        let frame = worker.recv().unwrap_or_else(|e| panic!("receiver recv: {e}"));
        if frame.message == Message::Stop {
            return (received, Instant::now());
        }
        assert_eq!(frame.fds.len(), nfds, "descriptors with {:?}", frame.message);
        drop(frame);
        received += 1;
        if let Stream::Acked { batch, .. } = stream {
            unacked += 1;
            if unacked == batch {
                send(&worker, &Message::Ack { received: batch as u64 }, None);
                unacked = 0;
            }
        }
    }
}

struct Options {
    scale: Scale,
    filters: Vec<String>,
}

impl Options {
    /// `--quick` or `HERD_BENCH_QUICK=1`; `--bench` (which `cargo bench` passes) for a real run,
    /// a smoke test without it; other options are ignored, other words filter by name.
    fn from_env() -> Options {
        let mut quick = std::env::var("HERD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut bench = false;
        let mut filters = Vec::new();
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => quick = true,
                "--bench" => bench = true,
                a if a.starts_with('-') => {}
                a => filters.push(a.to_owned()),
            }
        }
        let scale = match (bench, quick) {
            (false, _) => SMOKE,
            (true, true) => QUICK,
            (true, false) => FULL,
        };
        Options { scale, filters }
    }

    fn selected(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }
}

fn main() {
    let options = Options::from_env();
    let scale = options.scale;
    println!(
        "herd channel benchmarks ({}; round trips: median of {} batches of ~{} ms; throughput: median of {} runs of {} ms)",
        scale.name,
        scale.batches,
        scale.batch_time.as_millis(),
        scale.runs,
        scale.run_time.as_millis()
    );

    println!();
    println!("{:<54} {:>10} {:>10} {:>10} {:>14}", "fd round trip, ns", "median", "min", "max", "round trips/s");
    let placements = [Placement::Any, Placement::OneCpu, Placement::TwoCpus];
    for placement in [None].into_iter().chain(placements.map(Some)) {
        for payload in [Payload::None, Payload::Tcp, Payload::Unix] {
            let name = match placement {
                None => format!("same thread, {}", payload.label()),
                Some(placement) => format!("two threads, {}, {}", placement.label(), payload.label()),
            };
            if !options.selected(&name) {
                continue;
            }
            let result = match placement {
                None => Ok(round_trip_same_thread(scale, payload)),
                Some(placement) => round_trip_two_threads(scale, payload, placement),
            };
            match result {
                Ok(s) => println!(
                    "  {name:<52} {:>10.0} {:>10.0} {:>10.0} {:>14}",
                    s.median,
                    s.min,
                    s.max,
                    thousands(1e9 / s.median)
                ),
                Err(why) => println!("  {name:<52} skipped: {why}"),
            }
        }
    }

    println!();
    println!(
        "{:<54} {:>10} {:>10} {:>10} {:>14}",
        "messages/s, sender thread -> receiver thread", "median", "min", "max", "ns/message"
    );
    for placement in placements {
        for stream in [
            Stream::Acks,
            Stream::User1K,
            Stream::Handoffs,
            Stream::Acked { batch: 1, window: DEFAULT_WINDOW },
            Stream::Acked { batch: 32, window: 2 * 32 },
        ] {
            let name = format!("{}, {}", placement.label(), stream.label());
            if !options.selected(&name) {
                continue;
            }
            let cpus = match placement.cpus() {
                Ok(cpus) => cpus,
                Err(why) => {
                    println!("  {name:<52} skipped: {why}");
                    continue;
                }
            };
            let rates = (0..scale.runs).map(|_| messages_per_second(stream, scale.run_time, cpus)).collect();
            let s = Summary::of(rates);
            println!(
                "  {name:<52} {:>10} {:>10} {:>10} {:>14.0}",
                thousands(s.median),
                thousands(s.min),
                thousands(s.max),
                1e9 / s.median
            );
        }
    }
}

/// `1234567.8` as `1 234 568`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

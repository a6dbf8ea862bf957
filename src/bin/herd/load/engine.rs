//! The engine: a few threads, each driving its share of the connections with its own epoll loop.
//!
//! Threads share nothing while they run. Each gets a fixed slice of the connections and of the
//! request budget, owns its epoll instance, read buffer, dialer and [`Tally`], and stops by
//! itself: at the deadline (requests in flight are abandoned, uncounted) or when its budget is
//! spent and its last request has ended (each one ends within the timeout). The tallies are
//! merged after the threads are joined.
//!
//! One loop iteration:
//!
//! 1. start a request on every free slot (one clock read for all of them);
//! 2. wait for readiness, no longer than the next deadline or timeout check;
//! 3. handle the batch of events (one clock read for the whole batch);
//! 4. if a request may have timed out, sweep the slots; the next sweep is due at the earliest
//!    deadline then in flight, so timeouts cost one pass per timeout period, not per event.

use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, CreateFlags, Event};
use rustix::io::Errno;
use rustix::time::Timespec;

use std::io::{Read, Write};

use super::config::{LoadConfig, Mode, Stall};
use super::conn::{Conn, Ctx, Step};
use super::http::{build_request, parse_worker};
use super::report::{LoadReport, StallOutcome, StallReport};
use super::socket::Dialer;
use super::stats::Tally;
use super::url::{Endpoint, Target};

/// Bytes read per `read` call; far more than a typical response, so one read usually suffices.
const READ_BUF: usize = 64 * 1024;

/// The most events taken from epoll at once.
const MAX_EVENTS: usize = 1024;

/// What one thread does.
struct Plan {
    index: usize,
    connections: usize,
    /// Request attempts this thread may start; `None` is unlimited.
    requests: Option<u64>,
    deadline: Option<Instant>,
}

/// Runs the load described by `cfg` and reports what it measured.
///
/// Fails only if the configuration is invalid or the machinery cannot be set up (threads,
/// epoll); network failures are counted in the report, never returned.
pub fn run(cfg: &LoadConfig) -> std::io::Result<LoadReport> {
    cfg.validate().map_err(|msg| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg))?;
    let request = build_request(&cfg.target, cfg.mode);
    let slow_request = build_request(&blocking(&cfg.target, cfg.slow_ms), cfg.mode);
    let threads = cfg.effective_threads();
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let mut stalled = None;
    let results: Vec<std::io::Result<(Tally, Instant)>> = thread::scope(|scope| {
        let stall = cfg.stall.map(|s| scope.spawn(move || stall_one_worker(cfg, s, start, deadline)));
        let mut handles = Vec::with_capacity(threads);
        let mut results = Vec::with_capacity(threads);
        for index in 0..threads {
            let plan = Plan {
                index,
                connections: split(cfg.connections as u64, threads, index) as usize,
                requests: cfg.requests.map(|n| split(n, threads, index)),
                deadline,
            };
            let (request, slow_request) = (&request, &slow_request);
            match thread::Builder::new()
                .name(format!("herd-load-{index}"))
                .spawn_scoped(scope, move || event_loop(cfg, request, slow_request, &plan))
            {
                Ok(handle) => handles.push(handle),
                Err(e) => results.push(Err(e)),
            }
        }
        for handle in handles {
            results.push(handle.join().unwrap_or_else(|_| Err(std::io::Error::other("a load thread panicked"))));
        }
        stalled = stall.and_then(|h| h.join().ok());
        results
    });
    let mut tally = Tally::default();
    let mut end = start;
    for result in results {
        let (t, finished) = result?;
        tally.merge(&t);
        end = end.max(finished);
    }
    Ok(LoadReport {
        url: cfg.target.url.clone(),
        mode: cfg.mode,
        connections: cfg.connections,
        threads,
        requests: tally.requests,
        errors: tally.errors,
        elapsed: end - start,
        latency_us: tally.latency,
        fast_latency_us: tally.fast_latency,
        slow_requests: tally.slow,
        workers: tally.workers,
        connections_per_worker: tally.connections,
        expected_workers: cfg.workers,
        stall: cfg.stall.map(|s| StallReport { ms: s.ms, outcome: stalled.flatten() }),
    })
}

/// Thread `index`'s share of `total` split `parts` ways, the remainder going to the first ones.
fn split(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts as u64;
    let index = index as u64;
    total / parts + u64::from(index < total % parts)
}

/// `target` with the path `/block/MS`: a request that blocks the worker MS milliseconds.
fn blocking(target: &Target, ms: u64) -> Target {
    Target { path: format!("/block/{ms}"), ..target.clone() }
}

/// The stalled worker: at `stall.after`, one request that blocks whichever worker takes it
/// for `stall.ms`, on a connection of its own. Returns the worker that answered and how long
/// the request took; `None` if it failed or the run ended first.
fn stall_one_worker(cfg: &LoadConfig, stall: Stall, start: Instant, deadline: Option<Instant>) -> Option<StallOutcome> {
    let at = start + stall.after;
    if deadline.is_some_and(|d| at >= d) {
        return None;
    }
    thread::sleep(at.saturating_duration_since(Instant::now()));
    let request = build_request(&blocking(&cfg.target, stall.ms), Mode::Churn);
    let timeout = Some(Duration::from_millis(stall.ms) + cfg.timeout);
    let began = Instant::now();
    let mut response = Vec::new();
    let done = match &cfg.target.endpoint {
        Endpoint::Tcp(addr) => std::net::TcpStream::connect_timeout(addr, cfg.timeout).and_then(|mut s| {
            s.set_read_timeout(timeout)?;
            s.write_all(&request)?;
            s.read_to_end(&mut response)
        }),
        Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path).and_then(|mut s| {
            s.set_read_timeout(timeout)?;
            s.write_all(&request)?;
            s.read_to_end(&mut response)
        }),
    };
    done.ok()?;
    Some(StallOutcome { worker: parse_worker(&response), took: began.elapsed() })
}

/// One thread's loop; see the module docs. Returns its tally and when it stopped.
fn event_loop(cfg: &LoadConfig, request: &[u8], slow_request: &[u8], plan: &Plan) -> std::io::Result<(Tally, Instant)> {
    let epoll = epoll::create(CreateFlags::CLOEXEC)?;
    let offset = plan.index * cfg.sources / cfg.effective_threads();
    let mut dialer = Dialer::new(&cfg.target.endpoint, cfg.sources, offset, cfg.mode == Mode::KeepAlive)?;
    let mut tally = Tally::default();
    let mut buf = vec![0u8; READ_BUF];
    let mut ctx = Ctx {
        epoll: epoll.as_fd(),
        request,
        buf: &mut buf,
        tally: &mut tally,
        mode: cfg.mode,
        timeout: cfg.timeout,
        slow_request,
        slow_every: cfg.slow_every(),
        started: 0,
    };
    let now = Instant::now();
    let mut conns: Vec<Conn> = (0..plan.connections).map(|slot| Conn::new(slot, now)).collect();
    let mut events: Vec<Event> = Vec::with_capacity(plan.connections.clamp(1, MAX_EVENTS));
    let mut free: Vec<usize> = (0..plan.connections).collect();
    let mut retry: Vec<usize> = Vec::new();
    let mut budget = plan.requests;
    let mut next_sweep = now + cfg.timeout;

    loop {
        let now = Instant::now();
        if plan.deadline.is_some_and(|d| now >= d) {
            break;
        }
        for slot in free.drain(..) {
            if budget == Some(0) {
                conns[slot].close();
                continue;
            }
            if let Some(left) = &mut budget {
                *left -= 1;
            }
            // A request that fails at once (no port, refused) frees its slot for the next round.
            if conns[slot].start(&mut ctx, &mut dialer, now) == Step::Done {
                retry.push(slot);
            }
        }
        std::mem::swap(&mut free, &mut retry);
        if budget == Some(0) && conns.iter().all(|c| c.deadline().is_none()) {
            break;
        }

        let wake = plan.deadline.map_or(next_sweep, |d| d.min(next_sweep));
        let wait = if free.is_empty() { wake.saturating_duration_since(now) } else { Duration::ZERO };
        events.clear();
        match epoll::wait(&epoll, spare_capacity(&mut events), Some(&timespec(wait))) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }

        let now = Instant::now();
        for event in &events {
            // Copy the fields out: `Event` is packed on x86-64.
            let (flags, data) = (event.flags, event.data);
            let (slot, generation) = Conn::split_token(data.u64());
            let conn = &mut conns[slot];
            if conn.generation() == generation && conn.on_event(flags, &mut ctx, now) == Step::Done {
                free.push(slot);
            }
        }

        if now >= next_sweep {
            next_sweep = now + cfg.timeout;
            for (slot, conn) in conns.iter_mut().enumerate() {
                if conn.expire(&mut ctx, now) == Step::Done {
                    free.push(slot);
                } else if let Some(deadline) = conn.deadline() {
                    next_sweep = next_sweep.min(deadline);
                }
            }
        }
    }
    drop(conns);
    Ok((tally, Instant::now()))
}

/// A `Duration` as an epoll timeout (rustix rounds up to whole milliseconds).
fn timespec(d: Duration) -> Timespec {
    Timespec { tv_sec: d.as_secs().min(i64::MAX as u64) as i64, tv_nsec: i64::from(d.subsec_nanos()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::url::Target;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::os::unix::net::UnixListener;

    #[test]
    fn splits_evenly_with_remainder_first() {
        let parts: Vec<u64> = (0..3).map(|i| split(10, 3, i)).collect();
        assert_eq!(parts, [4, 3, 3]);
        assert_eq!((0..4).map(|i| split(2, 4, i)).sum::<u64>(), 2);
    }

    /// Answers requests on one connection as worker `id` until the client closes or asks to.
    fn answer<S: Read + Write>(mut stream: S, id: usize) {
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                pending.drain(..end + 4);
                let body = format!("worker {id} pid 1\n");
                let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                if stream.write_all(reply.as_bytes()).is_err() || head.contains("connection: close") {
                    return;
                }
            }
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Serves `connections` TCP connections, round-robin over two worker ids, then stops.
    fn serve_tcp(connections: usize) -> (String, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let mut served = Vec::new();
            for i in 0..connections {
                let (stream, _) = listener.accept().unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                served.push(thread::spawn(move || answer(stream, i % 2)));
            }
            served.into_iter().for_each(|h| h.join().unwrap());
        });
        (url, handle)
    }

    fn config(url: &str, mode: Mode, connections: usize, requests: u64) -> LoadConfig {
        LoadConfig {
            mode,
            connections,
            threads: 2,
            duration: Some(Duration::from_secs(10)),
            requests: Some(requests),
            ..LoadConfig::new(Target::parse(url).unwrap())
        }
    }

    #[test]
    fn churn_opens_a_connection_per_request() {
        let (url, server) = serve_tcp(40);
        let report = run(&config(&url, Mode::Churn, 4, 40)).unwrap();
        server.join().unwrap();
        assert_eq!((report.requests, report.errors.total()), (40, 0), "{report}");
        assert_eq!(report.per_worker(), [20, 20]);
        assert_eq!(report.latency_us.len(), 40);
    }

    #[test]
    fn keep_alive_reuses_connections() {
        let (url, server) = serve_tcp(3);
        let report = run(&config(&url, Mode::KeepAlive, 3, 300)).unwrap();
        server.join().unwrap();
        assert_eq!((report.requests, report.errors.total()), (300, 0), "{report}");
        // Three connections served everything (a fourth would never have been answered), and the
        // requests are split by thread (150 each), not by connection.
        let per_worker = report.per_worker();
        assert_eq!((per_worker.len(), per_worker.iter().sum::<u64>()), (2, 300));
    }

    #[test]
    fn speaks_over_unix_sockets() {
        let path = std::env::temp_dir().join(format!("herd-load-test-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            for _ in 0..10 {
                let (stream, _) = listener.accept().unwrap();
                answer(stream, 0);
            }
        });
        let report = run(&config(&format!("unix:{}", path.display()), Mode::Churn, 1, 10)).unwrap();
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!((report.requests, report.per_worker()), (10, vec![10]), "{report}");
    }

    #[test]
    fn counts_refusals() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let report = run(&config(&format!("http://127.0.0.1:{port}/"), Mode::Churn, 2, 6)).unwrap();
        assert_eq!((report.requests, report.errors.refused), (0, 6), "{report}");
    }

    #[test]
    fn counts_timeouts_and_stops() {
        // A listener that never accepts: connects complete in the backlog, nothing answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let mut cfg = config(&url, Mode::KeepAlive, 2, 4);
        cfg.timeout = Duration::from_millis(30);
        let report = run(&cfg).unwrap();
        assert_eq!((report.requests, report.errors.timeout), (0, 4), "{report}");
        assert!(report.elapsed < Duration::from_secs(2));
        drop(listener);
    }

    #[test]
    fn stops_at_the_duration() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = config(&format!("http://{}/", listener.local_addr().unwrap()), Mode::Churn, 2, 1);
        cfg.requests = None;
        cfg.duration = Some(Duration::from_millis(100));
        let report = run(&cfg).unwrap();
        assert!(report.elapsed >= Duration::from_millis(100) && report.elapsed < Duration::from_secs(1));
        assert_eq!(report.requests, 0);
    }
}

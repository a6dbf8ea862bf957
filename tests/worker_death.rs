//! What survives a dying worker. Handoff: the primary keeps each connection until the worker
//! acknowledges it, so a worker that dies with connections unacknowledged loses none of them.
//! Reuseport: the primary owns the listeners, so a dead worker's queue waits for its replacement.

mod util;

use std::time::Duration;

use rustix::process::Signal;
use util::Serve;

#[test]
fn handoff_requeues_unacked_connections_when_worker_dies() {
    let serve = Serve::start(&["--workers", "4", "--listen", "127.0.0.1:0", "--mode", "handoff"], 4);
    let victim = serve.worker_pids()[&1];
    // A stopped worker still has connections handed to it (they queue in its channel), but it
    // cannot acknowledge them.
    rustix::process::kill_process(util::pid(victim), Signal::STOP).unwrap();
    let target = serve.target.clone();
    let clients = std::thread::spawn(move || util::load_bodies(&target, 40, 20));
    // Round-robin gives worker 1 every fourth connection; wait until some are in its channel.
    std::thread::sleep(Duration::from_millis(500));
    rustix::process::kill_process(util::pid(victim), Signal::KILL).unwrap();
    let (bodies, failures) = clients.join().unwrap();
    assert!(failures.is_empty(), "connections were lost with the worker: {failures:?}");
    assert_eq!(bodies.len(), 40);
    assert!(bodies.iter().all(|b| util::pid_of(b) != victim), "the stopped worker answered nothing: {bodies:?}");
    serve.wait_for_log(|l| l.contains("herd: exit worker=1") && l.contains("signal 9"), 1);

    let stopped = serve.stop();
    assert!(stopped.status.success(), "{:?}", stopped.status);
    let (_, [accepted, _, _, requeued]) = util::counters(&stopped.stdout);
    assert_eq!(accepted, 40);
    assert!(requeued >= 1, "worker 1's unacknowledged connections were requeued:\n{}", stopped.stdout);
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
}

/// Reuseport's counterpart: the primary owns every listener, so the connections queued on a
/// worker's listener outlive that worker, and its replacement (same slot, same listener) serves
/// them.
#[test]
fn reuseport_queue_survives_its_workers_restart() {
    let serve = Serve::start(&["--workers", "4", "--listen", "127.0.0.1:0", "--mode", "reuseport"], 4);
    let victim = serve.worker_pids()[&1];
    // Stopped, worker 1 accepts nothing: what the kernel hashes to listener 1 waits in its queue.
    rustix::process::kill_process(util::pid(victim), Signal::STOP).unwrap();
    let target = serve.target.clone();
    let clients = std::thread::spawn(move || util::load_bodies(&target, 60, 30));
    std::thread::sleep(Duration::from_millis(500));
    rustix::process::kill_process(util::pid(victim), Signal::KILL).unwrap();
    let (bodies, failures) = clients.join().unwrap();
    assert!(failures.is_empty(), "{}", util::summary(&failures));
    assert_eq!(bodies.len(), 60);
    let replacement: Vec<&String> = bodies.iter().filter(|b| util::worker_of(b) == 1).collect();
    assert!(!replacement.is_empty(), "slot 1's queued connections were served, by its replacement");
    assert!(replacement.iter().all(|b| util::pid_of(b) != victim));
    let stopped = serve.stop();
    assert!(stopped.status.success());
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
}

//! Handoff mode's promise: the primary keeps each connection until the worker acknowledges it,
//! so a worker that dies with connections unacknowledged loses none of them.

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

//! Supervision, checked from the client's side: every scenario runs `herd serve` in its own
//! process group under a bounded client on loopback.

mod util;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use util::{Continuous, Serve};

const MODES: [&[&str]; 4] = [
    &["--mode", "shared", "--accept", "epoll-rotate"],
    &["--mode", "shared", "--accept", "blocking"],
    &["--mode", "handoff"],
    &["--mode", "reuseport"],
];

fn serve_args<'a>(workers: &'a str, mode: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--workers", workers, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(mode);
    args.extend_from_slice(extra);
    args
}

#[test]
fn reload_in_every_mode_fails_no_request_and_replaces_every_worker() {
    for mode in MODES {
        let serve = Serve::start(&serve_args("2", mode, &[]), 2);
        let before = serve.worker_pids();
        let load = Continuous::start(&serve.target, 4);
        std::thread::sleep(Duration::from_millis(200));
        for generation in 1..=2 {
            serve.signal(Signal::HUP);
            serve.wait_for_log(|l| l.contains(&format!("reload generation={generation} finished")), 1);
            std::thread::sleep(Duration::from_millis(200));
        }
        let (bodies, failures) = load.finish();
        assert!(failures.is_empty(), "{mode:?}: requests failed across two reloads: {}", util::summary(&failures));
        assert!(bodies.len() > 100, "{mode:?}: the load ran ({} requests)", bodies.len());
        let after = serve.worker_pids();
        assert_eq!(after.len(), 2);
        for (id, pid) in &after {
            assert_ne!(before[id], *pid, "{mode:?}: worker {id} was replaced");
        }
        let stopped = serve.stop();
        assert!(stopped.status.success(), "{mode:?}: {:?}", stopped.status);
        for old in before.values() {
            assert!(
                stopped
                    .log
                    .iter()
                    .any(|l| l.contains("exit worker=") && l.contains(&format!("pid={old} code 0 expected=true"))),
                "{mode:?}: old worker {old} drained and exited cleanly"
            );
        }
        util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
    }
}

#[test]
fn a_killed_worker_is_replaced_in_its_slot_within_a_second() {
    for mode in MODES {
        let serve = Serve::start(&serve_args("4", mode, &[]), 4);
        let victim = serve.worker_pids()[&1];
        let load = Continuous::start(&serve.target, 4);
        std::thread::sleep(Duration::from_millis(300));
        rustix::process::kill_process(util::pid(victim), Signal::KILL).unwrap();
        let exit = serve.wait_for_log(|l| l.contains(&format!("exit worker=1 pid={victim} signal 9")), 1);
        let listening = serve.wait_for_log(|l| l.contains("herd: listening worker=1 "), 2);
        let gap = util::log_millis(&listening) - util::log_millis(&exit);
        assert!(gap <= 1000, "{mode:?}: replacement listening {gap} ms after the exit");
        std::thread::sleep(Duration::from_millis(300));
        let (bodies, failures) = load.finish();
        assert!(bodies.len() > 50);
        let stopped = serve.stop();
        assert!(stopped.status.success());
        let (rows, _) = util::counters(&stopped.stdout);
        // Only the connections the dead worker had already taken may fail: those it accepted
        // (or, in handoff, received and acknowledged) and never closed — the slot's counters
        // show them, since its replacement closes everything it takes. Connections still queued
        // for the slot are not among them: the kernel's queue (shared, reuseport) and the
        // primary's unacknowledged copies (handoff, requeued) outlive the worker. Where the worker
        // calls accept4 itself, one more: an accept the kernel had completed when SIGKILL landed,
        // before the worker could count it.
        let accept_in_flight = u64::from(!mode.contains(&"handoff"));
        let taken = rows[&1].accepts + rows[&1].handoffs - rows[&1].closed;
        assert!(
            failures.len() as u64 <= taken + accept_in_flight,
            "{mode:?}: {}, but the dead worker had taken only {taken} connections it had not finished",
            util::summary(&failures)
        );
        assert!(taken <= 4, "{mode:?}: at most the 4 connections in flight were open");
        util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
    }
}

#[test]
fn a_crash_loop_gives_up_after_the_restart_limit() {
    let serve = Serve::start_unready(&[
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--crash-after",
        "0",
        "--restart-limit",
        "3",
        "--restart-window",
        "30",
    ]);
    let mut serve = serve;
    let stopped = serve.wait();
    assert_eq!(stopped.status.code(), Some(1), "the primary exits non-zero; log:\n{}", stopped.log.join("\n"));
    let log = stopped.log.join("\n");
    assert!(log.contains("giving up: 4 restarts within 30s exceeds the restart limit"), "{log}");
    assert!(log.contains("gave up: more than 3 restarts within 30s"), "{log}");
    let forks = stopped.log.iter().filter(|l| l.contains("herd: fork ")).count();
    assert_eq!(forks, 2 + 3, "two workers and three restarts, then no more: {log}");
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
}

#[test]
fn sigterm_under_load_lets_requests_in_flight_finish() {
    for mode in MODES {
        let serve = Serve::start(&serve_args("2", mode, &["--delay", "400"]), 2);
        let target = serve.target.clone();
        let clients = std::thread::spawn(move || util::load_bodies(&target, 8, 8));
        std::thread::sleep(Duration::from_millis(150));
        let asked = Instant::now();
        let stopped = serve.stop();
        let took = asked.elapsed();
        let (bodies, failures) = clients.join().unwrap();
        assert!(failures.is_empty(), "{mode:?}: requests in flight completed: {}", util::summary(&failures));
        assert_eq!(bodies.len(), 8);
        assert_eq!(stopped.status.code(), Some(0), "{mode:?}");
        assert!(took < Duration::from_secs(10), "{mode:?}: the tree exited well within the 30 s timeout ({took:?})");
        util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(1));
    }
}

#[test]
fn a_second_sigint_kills_the_workers_at_once() {
    let serve = Serve::start(&["--workers", "2", "--listen", "127.0.0.1:0", "--delay", "5000"], 2);
    let target = serve.target.clone();
    let clients = std::thread::spawn(move || util::load_bodies(&target, 2, 2));
    std::thread::sleep(Duration::from_millis(200));
    serve.signal(Signal::INT);
    serve.wait_for_log(|l| l.contains("shutdown signal=2 graceful"), 1);
    serve.signal(Signal::INT);
    serve.wait_for_log(|l| l.contains("shutdown signal=2 immediate"), 1);
    let mut serve = serve;
    let stopped = serve.wait();
    let (_, failures) = clients.join().unwrap();
    assert_eq!(failures.len(), 2, "the held requests were cut off");
    assert!(stopped.log.iter().any(|l| l.contains("signal 9")), "workers were killed");
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(1));
}

#[test]
fn killing_the_primary_leaves_no_worker_behind() {
    for mode in MODES {
        let serve = Serve::start(&serve_args("3", mode, &[]), 3);
        let workers: Vec<u32> = serve.worker_pids().values().copied().collect();
        rustix::process::kill_process(util::pid(serve.pid()), Signal::KILL).unwrap();
        util::assert_all_gone(&workers, Duration::from_secs(1));
    }
}

#[test]
fn scaling_up_and_down_under_load_fails_no_request() {
    for mode in [MODES[0], MODES[2]] {
        let serve = Serve::start(&serve_args("2", mode, &[]), 2);
        let load = Continuous::start(&serve.target, 4);
        // Signals of one kind do not queue: wait for each to be handled before the next.
        serve.signal(Signal::TTIN);
        serve.wait_for_log(|l| l.contains("herd: scale workers=3"), 1);
        serve.signal(Signal::TTIN);
        serve.wait_for_log(|l| l.contains("herd: listening worker=3 "), 1);
        std::thread::sleep(Duration::from_millis(300));
        serve.signal(Signal::TTOU);
        serve.wait_for_log(|l| l.contains("herd: scale workers=3"), 2);
        serve.signal(Signal::TTOU);
        serve.wait_for_log(|l| l.contains("herd: exit worker=2 "), 1);
        serve.wait_for_log(|l| l.contains("herd: exit worker=3 "), 1);
        std::thread::sleep(Duration::from_millis(300));
        let (bodies, failures) = load.finish();
        let stopped = serve.stop();
        assert!(
            failures.is_empty(),
            "{mode:?}: {}\nlog:\n{}\n{}",
            util::summary(&failures),
            stopped.log.join("\n"),
            stopped.stdout
        );
        let served_by: BTreeMap<usize, usize> = bodies.iter().fold(BTreeMap::new(), |mut m, b| {
            *m.entry(util::worker_of(b)).or_insert(0) += 1;
            m
        });
        assert!(served_by.contains_key(&3), "{mode:?}: the added workers served: {served_by:?}");
        assert!(stopped.status.success());
        util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
    }
}

#[test]
fn a_retiring_worker_is_replaced_before_it_exits() {
    let serve =
        Serve::start(&["--workers", "2", "--listen", "127.0.0.1:0", "--mode", "handoff", "--retire-after", "20"], 2);
    let load = Continuous::start(&serve.target, 2);
    serve.wait_for_log(|l| l.contains("herd: retiring worker="), 2);
    std::thread::sleep(Duration::from_millis(300));
    let (_, failures) = load.finish();
    assert!(failures.is_empty(), "{}", util::summary(&failures));
    let log = serve.log();
    let retiring = log.iter().position(|l| l.contains("herd: retiring worker=")).unwrap();
    let pid = log[retiring].split("pid=").nth(1).unwrap().to_owned();
    let exit =
        log.iter().position(|l| l.contains(&format!("pid={pid} code 0"))).expect("the retiring worker exited cleanly");
    let replacement = log[retiring..].iter().position(|l| l.contains("herd: fork ")).map(|i| i + retiring).unwrap();
    assert!(replacement < exit, "the replacement was forked before the retiring worker exited:\n{}", log.join("\n"));
    assert!(log[exit].contains("expected=true"));
    assert!(serve.stop().status.success());
}

#[test]
fn a_hung_worker_is_killed_and_replaced() {
    let serve = Serve::start(
        &["--workers", "2", "--listen", "127.0.0.1:0", "--heartbeat", "0.1", "--heartbeat-timeout", "0.5"],
        2,
    );
    let hung = serve.worker_pids()[&0];
    rustix::process::kill_process(util::pid(hung), Signal::STOP).unwrap();
    serve.wait_for_log(|l| l.contains(&format!("unresponsive worker=0 pid={hung}")), 1);
    serve.wait_for_log(|l| l.contains(&format!("exit worker=0 pid={hung} signal 9")), 1);
    serve.wait_for_log(|l| l.contains("herd: listening worker=0 "), 2);
    let (seen, failures) = util::load(&serve.target, 50, 2);
    assert!(failures.is_empty(), "{}", util::summary(&failures));
    assert_eq!(seen.values().sum::<usize>(), 50);
    let stopped = serve.stop();
    assert!(stopped.status.success());
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(1));
}

#[test]
fn a_failed_reload_keeps_the_old_workers_serving() {
    let serve = Serve::start(
        &["--workers", "2", "--listen", "127.0.0.1:0", "--mode", "handoff", "--broken-generation", "1"],
        2,
    );
    let before = serve.worker_pids();
    let load = Continuous::start(&serve.target, 2);
    serve.signal(Signal::HUP);
    let failed = serve.wait_for_log(|l| l.contains("reload generation=1 failed"), 1);
    assert!(failed.contains("exited with signal 6 before listening"), "the log says why: {failed}");
    std::thread::sleep(Duration::from_millis(300));
    let (bodies, failures) = load.finish();
    assert!(failures.is_empty(), "{}", util::summary(&failures));
    let pids: std::collections::BTreeSet<u32> = bodies.iter().map(|b| util::pid_of(b)).collect();
    let old: std::collections::BTreeSet<u32> = before.values().copied().collect();
    assert_eq!(pids, old, "only the old generation served");
    let log = serve.log();
    assert_eq!(log.iter().filter(|l| l.contains("herd: fork ")).count(), 4, "the failed workers were not restarted");
    let stopped = serve.stop();
    assert!(stopped.status.success());
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(1));
}

#[test]
fn a_reload_waiting_for_listening_times_out_and_keeps_the_old_workers() {
    // Workers take 500 ms to start; a reload waits only 100 ms for them.
    let args = ["--workers", "2", "--listen", "127.0.0.1:0", "--startup-delay", "500", "--reload-timeout", "0.1"];
    let serve = Serve::start(&args, 2);
    let before = serve.worker_pids();
    serve.signal(Signal::HUP);
    let failed = serve.wait_for_log(|l| l.contains("reload generation=1 failed"), 1);
    assert!(failed.contains("not listening after"), "{failed}");
    std::thread::sleep(Duration::from_millis(200));
    let (seen, failures) = util::load(&serve.target, 40, 2);
    assert!(failures.is_empty(), "{}", util::summary(&failures));
    assert_eq!(seen.values().sum::<usize>(), 40);
    let exited: Vec<u32> =
        serve.log().iter().filter(|l| l.contains("herd: exit ")).map(|l| util::pid_of_log(l)).collect();
    assert!(before.values().all(|p| !exited.contains(p)), "the old workers are still alive");
    assert_eq!(exited.len(), 2, "the two late new workers were killed");
    assert!(serve.stop().status.success());
}

#[test]
fn scaling_down_during_a_reload_does_not_fail_the_reload() {
    // New workers take 400 ms to listen; the cluster loses its last slot meanwhile.
    for mode in [MODES[0], MODES[3]] {
        let serve = Serve::start(&serve_args("3", mode, &["--startup-delay", "400"]), 3);
        serve.signal(Signal::HUP);
        serve.wait_for_log(|l| l.contains("reload generation=1 started"), 1);
        serve.signal(Signal::TTOU);
        serve.wait_for_log(|l| l.contains("herd: scale workers=2"), 1);
        let done = serve.wait_for_log(|l| l.contains("reload generation=1 "), 2);
        assert!(done.contains("finished"), "{mode:?}: {done}");
        let (seen, failures) = util::load(&serve.target, 40, 4);
        assert!(failures.is_empty(), "{mode:?}: {}", util::summary(&failures));
        assert!(!seen.contains_key(&2), "{mode:?}: the slot scaled away serves nothing: {seen:?}");
        let stopped = serve.stop();
        assert!(stopped.status.success());
        util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(2));
    }
}

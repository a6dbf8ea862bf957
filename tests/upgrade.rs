//! SIGUSR2: the primary executes the binary now at its path, keeping its pid, listeners,
//! workers and counters; continuous load sees no failure; a broken binary changes nothing.
//!
//! Each test runs a copy of the `herd` binary from a directory of its own, so that it can
//! replace the file under the running primary as a deploy would (a new file renamed over it).

mod util;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use util::{Continuous, Serve, counters, fd_count, summary};

const HERD: &str = env!("CARGO_BIN_EXE_herd");

struct Deploy {
    dir: PathBuf,
    exe: PathBuf,
}

impl Deploy {
    fn new(name: &str) -> Deploy {
        let dir = std::env::temp_dir().join(format!("herd-upgrade-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("herd");
        std::fs::copy(HERD, &exe).unwrap();
        Deploy { dir, exe }
    }

    /// A new file at the program's path: `source` copied beside it and renamed over it.
    fn replace_with(&self, source: &Path) {
        let new = self.dir.join("herd.new");
        std::fs::copy(source, &new).unwrap();
        std::fs::rename(&new, &self.exe).unwrap();
    }

    /// A shell script that exits at once, in the program's place: a broken build.
    fn break_it(&self) {
        let new = self.dir.join("broken");
        std::fs::write(&new, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::rename(&new, &self.exe).unwrap();
    }
}

impl Drop for Deploy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether process `pid` runs the file now at `path` (same inode), not a replaced one.
fn runs_file_at(pid: u32, path: &Path) -> bool {
    let running = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    let at_path = std::fs::metadata(path).unwrap();
    (running.dev(), running.ino()) == (at_path.dev(), at_path.ino())
}

fn upgrade_under_load(deploy: &Deploy, args: &[&str], what: &str) {
    let serve = Serve::start_exe(&deploy.exe, args, 2);
    let pid = serve.pid();
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = fd_count(pid);
    let client = Continuous::start(&serve.target, 4);
    std::thread::sleep(Duration::from_millis(300));
    deploy.replace_with(Path::new(HERD));
    assert!(!runs_file_at(pid, &deploy.exe), "{what}: the file was replaced");
    serve.signal(Signal::USR2);
    let line = serve.wait_for_log(|l| l.contains("herd: upgraded "), 1);
    assert!(line.contains(&format!("pid={pid} workers=2")), "{what}: {line}");
    assert!(runs_file_at(pid, &deploy.exe), "{what}: /proc/{pid}/exe is the new file");
    std::thread::sleep(Duration::from_millis(300));
    // The new image reloads the workers onto the new binary, still under load.
    serve.signal(Signal::HUP);
    serve.wait_for_log(|l| l.contains("reload generation=1 finished"), 1);
    std::thread::sleep(Duration::from_millis(300));
    let (bodies, failures) = client.finish();
    assert!(failures.is_empty(), "{what}: {}", summary(&failures));
    assert!(bodies.len() > 50, "{what}: {} requests", bodies.len());
    // The hand-over memfd and the check's pipe are gone; nothing else changed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fd_count(pid) != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fd_count(pid), fds_before, "{what}: the primary's descriptors");
    let stopped = serve.stop();
    assert!(stopped.status.success(), "{what}: {:?}\n{}", stopped.status, stopped.log.join("\n"));
    assert!(!stopped.log.iter().any(|l| l.contains("upgrade refused")), "{what}");
    // The counters kept counting across the exec: every request is in the table.
    let (rows, primary) = counters(&stopped.stdout);
    let served: u64 = rows.values().map(|r| r.accepts + r.handoffs).sum();
    assert!(served >= bodies.len() as u64, "{what}: {served} counted, {} answered", bodies.len());
    if what.contains("handoff") {
        assert!(primary[0] >= bodies.len() as u64, "{what}: the primary's accepted count survived");
    }
    util::assert_all_gone(&stopped.worker_pids, Duration::from_secs(5));
}

#[test]
fn sigusr2_upgrades_herd_serve_in_place_under_load_in_every_mode() {
    for mode in ["shared", "handoff", "reuseport"] {
        let deploy = Deploy::new(&format!("serve-{mode}"));
        upgrade_under_load(
            &deploy,
            &["serve", "--mode", mode, "-w", "2", "-l", "127.0.0.1:0"],
            &format!("serve {mode}"),
        );
    }
}

#[test]
fn sigusr2_upgrades_herd_run_in_place_under_load() {
    for mode in ["shared", "handoff", "reuseport"] {
        let deploy = Deploy::new(&format!("run-{mode}"));
        upgrade_under_load(
            &deploy,
            &["run", "--mode", mode, "-w", "2", "-l", "127.0.0.1:0", "--", HERD, "worker"],
            &format!("run {mode}"),
        );
    }
}

#[test]
fn a_broken_or_missing_binary_leaves_the_old_primary_serving() {
    let deploy = Deploy::new("broken");
    let serve = Serve::start_exe(&deploy.exe, &["serve", "-w", "2", "-l", "127.0.0.1:0"], 2);
    let pid = serve.pid();
    deploy.break_it();
    serve.signal(Signal::USR2);
    let line = serve.wait_for_log(|l| l.contains("upgrade refused"), 1);
    assert!(line.contains("did not answer the hand-over check"), "{line}");
    std::fs::remove_file(&deploy.exe).unwrap();
    serve.signal(Signal::USR2);
    let line = serve.wait_for_log(|l| l.contains("upgrade refused"), 2);
    assert!(line.contains(&deploy.exe.display().to_string()), "{line}");
    let (_, failures) = util::load(&serve.target, 100, 4);
    assert!(failures.is_empty(), "{}", summary(&failures));
    assert!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap().to_string_lossy().ends_with("(deleted)"));
    let stopped = serve.stop();
    assert!(stopped.status.success());
    assert!(!stopped.log.iter().any(|l| l.contains("herd: upgraded")));
}

#[test]
fn a_primary_with_its_own_ring_refuses_to_upgrade_and_says_why() {
    let deploy = Deploy::new("ring");
    let serve = Serve::start_exe(
        &deploy.exe,
        &["serve", "--mode", "handoff", "--backend", "io-uring", "-w", "2", "-l", "127.0.0.1:0"],
        2,
    );
    if serve.log().iter().any(|l| l.contains("io-uring is unavailable")) {
        eprintln!("SKIPPED: io_uring is unavailable here: {}", serve.log().join(" | "));
        return;
    }
    serve.signal(Signal::USR2);
    let line = serve.wait_for_log(|l| l.contains("upgrade refused"), 1);
    assert!(line.contains("io_uring primary"), "{line}");
    let (_, failures) = util::load(&serve.target, 100, 4);
    assert!(failures.is_empty(), "{}", summary(&failures));
    assert!(serve.stop().status.success());
}

/// A deploy that switches a symbolic link (`herd -> releases/2`) is followed: the primary
/// executes the path it was started as, not the file that path led to at start.
#[test]
fn an_upgrade_follows_a_switched_symbolic_link() {
    let deploy = Deploy::new("symlink");
    let (one, two) = (deploy.dir.join("herd-1"), deploy.dir.join("herd-2"));
    std::fs::rename(&deploy.exe, &one).unwrap();
    std::os::unix::fs::symlink(&one, &deploy.exe).unwrap();
    let serve = Serve::start_exe(&deploy.exe, &["serve", "-w", "2", "-l", "127.0.0.1:0"], 2);
    let pid = serve.pid();
    assert!(runs_file_at(pid, &one));
    std::fs::copy(HERD, &two).unwrap();
    let link = deploy.dir.join("herd.link");
    std::os::unix::fs::symlink(&two, &link).unwrap();
    std::fs::rename(&link, &deploy.exe).unwrap();
    serve.signal(Signal::USR2);
    serve.wait_for_log(|l| l.contains("herd: upgraded "), 1);
    assert!(runs_file_at(pid, &two), "the new image is the file the link leads to now");
    assert!(serve.stop().status.success());
}

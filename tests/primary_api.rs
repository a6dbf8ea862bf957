//! The cluster API from a primary's code — messages both ways and worker control — run as the
//! examples `messages` and `control`, each in its own process (they fork).

use std::path::PathBuf;
use std::process::Command;

/// The example program, built by `cargo build --examples` (which `make test` runs first).
fn example(name: &str) -> PathBuf {
    let herd = PathBuf::from(env!("CARGO_BIN_EXE_herd"));
    let path = herd.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (`cargo build --examples`, as `make test` does)",
        path.display()
    );
    path
}

/// Runs an example to completion and checks that it succeeded and printed every `checks` line.
fn run_example(name: &str, checks: &[&str]) {
    let out = Command::new(example(name)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for check in checks {
        assert!(stdout.contains(check), "{name}: missing {check:?} in:\n{stdout}");
    }
}

#[test]
fn messages_round_trip_broadcast_and_refuse_an_oversize_one() {
    run_example(
        "messages",
        &[
            "ok: round trip primary -> worker -> primary",
            "ok: broadcast reached every worker",
            "ok: every worker answered the broadcast",
            "ok: a message of exactly MAX_MESSAGE bytes round-trips",
            "ok: primary refuses an over-size message",
            "ok: worker refuses an over-size message",
            "ok: all checks passed",
        ],
    );
}

#[test]
fn workers_can_be_listed_disconnected_and_killed_from_code() {
    run_example(
        "control",
        &[
            "ok: three live workers",
            "ok: disconnect: worker 0 exited 0, exited_after_disconnect",
            "ok: a disconnected worker is not replaced",
            "ok: kill(SIGTERM): worker 1 died of SIGTERM, exited_after_disconnect",
            "ok: a killed worker is not replaced",
            "ok: an unknown pid is an error",
            "ok: all checks passed",
        ],
    );
}

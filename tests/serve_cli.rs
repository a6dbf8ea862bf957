//! `herd serve`'s command line: bad input is one clear line and exit code 2.

use std::process::Command;

fn serve(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herd")).arg("serve").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_usage_error(args: &[&str], needle: &str) {
    let (code, _, stderr) = serve(args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in {stderr:?}");
}

#[test]
fn unknown_mode_is_a_usage_error() {
    assert_usage_error(&["--mode", "roundrobin"], "unknown mode \"roundrobin\"");
    assert_usage_error(&["--mode", "shared", "--accept", "spin"], "unknown accept strategy \"spin\"");
    assert_usage_error(&["--mode", "handoff", "--accept", "epoll"], "shared mode only");
}

#[test]
fn bad_address_is_a_usage_error() {
    assert_usage_error(&["--listen", "localhost:80"], "invalid listen address \"localhost:80\"");
    assert_usage_error(&["--listen", "127.0.0.1:99999"], "invalid listen address");
    assert_usage_error(&["--workers", "many"], "--workers many");
}

#[test]
fn port_in_use_is_a_usage_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_usage_error(&["--listen", &addr, "--workers", "1"], "in use");
}

#[test]
fn help_documents_every_option() {
    let (code, stdout, _) = serve(&["--help"]);
    assert_eq!(code, 0);
    for option in [
        "--mode",
        "--accept",
        "--workers",
        "--listen",
        "--backlog",
        "--window",
        "--shutdown-timeout",
        "epoll-exclusive",
        "reuseport",
        "handoff",
    ] {
        assert!(stdout.contains(option), "--help mentions {option}");
    }
}

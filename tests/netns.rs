//! Tests that need a sysctl run in a private network namespace (`unshare -n`), which has its own
//! copy of `net.ipv4.*`: the host's settings are never changed. Skipped, loudly, where
//! `unshare -n` is not permitted.

use std::process::Command;

/// Runs `tests/netns/SCRIPT ARGS` under `unshare -n`; `None` if namespaces are not available.
fn in_private_netns(script: &str, args: &[&str]) -> Option<String> {
    let probe = Command::new("unshare").args(["-n", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: `unshare -n` is not permitted here (needs root or user namespaces)");
        return None;
    }
    let path = format!("{}/tests/netns/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("unshare").args(["-n", "bash", &path]).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number after `"key":` in a flat JSON text.
fn number(json: &str, key: &str) -> u64 {
    let rest = json.split(&format!("\"{key}\":")).nth(1).unwrap_or_else(|| panic!("no {key} in {json}"));
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn reuseport_scale_down_loses_nothing_with_tcp_migrate_req() {
    let dir = std::env::temp_dir().join(format!("herd-netns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(report) =
        in_private_netns("reuseport-scale-down.sh", &["1", env!("CARGO_BIN_EXE_herd"), dir.to_str().unwrap()])
    else {
        return;
    };
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(number(&report, "requests") > 1000, "the load ran: {report}");
    for kind in ["refused", "reset", "timeout", "bad_status", "other"] {
        assert_eq!(number(&report, kind), 0, "{kind} errors while scaling 4 -> 1 with tcp_migrate_req=1: {report}");
    }
}

/// Without `tcp_migrate_req` the primary serves a removed slot's listener while its worker
/// drains, then accepts what is left on it and closes it at once.
#[test]
fn reuseport_scale_down_loses_nothing_without_tcp_migrate_req_either() {
    let dir = std::env::temp_dir().join(format!("herd-netns-0-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(report) =
        in_private_netns("reuseport-scale-down.sh", &["0", env!("CARGO_BIN_EXE_herd"), dir.to_str().unwrap()])
    else {
        return;
    };
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(number(&report, "requests") > 1000, "the load ran: {report}");
    for kind in ["refused", "reset", "timeout", "bad_status", "other"] {
        assert_eq!(number(&report, kind), 0, "{kind} errors while scaling 4 -> 1 with tcp_migrate_req=0: {report}");
    }
}

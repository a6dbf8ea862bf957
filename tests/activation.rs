//! Socket activation of herd itself: `--listen systemd` and `--listen sd:NAME` take the
//! listeners a launcher passed by the `sd_listen_fds(3)` convention, in every mode.
//!
//! The launcher is a shell: the test binds the socket, hands it to `sh` as its stdin, and the
//! shell moves it to descriptor 3 (without close-on-exec), sets `LISTEN_PID` to its own pid and
//! `exec`s herd — so herd runs with the pid the variables name, as under systemd.

mod util;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rustix::net::{AddressFamily, SocketType, sockopt};
use util::{Serve, Target, load, summary};

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// A listening TCP socket on a free loopback port, with or without `SO_REUSEPORT`.
fn listening_socket(reuseport: bool) -> (OwnedFd, SocketAddr) {
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_reuseaddr(&fd, true).unwrap();
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true).unwrap();
    }
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    rustix::net::bind(&fd, &any).unwrap();
    rustix::net::listen(&fd, 128).unwrap();
    let addr = SocketAddr::try_from(rustix::net::getsockname(&fd).unwrap()).unwrap();
    (fd, addr)
}

/// `herd ARGS` started by a launcher that passes `socket` as descriptor 3, named `name`.
fn launch(socket: OwnedFd, name: &str, args: &str) -> std::process::Child {
    let script = format!("exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES={name} exec {HERD} {args}");
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::from(socket))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// How many sockets listen on loopback port `port` (`/proc/net/tcp`, state `0A`).
fn listeners_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] == "0A"
        })
        .count()
}

#[test]
fn herd_serve_takes_the_socket_it_was_passed_in_every_mode() {
    for (mode, reuseport, listen) in [
        ("shared", false, "systemd"),
        ("shared/blocking", false, "sd:web"),
        ("handoff", false, "systemd"),
        ("reuseport", true, "sd:web"),
    ] {
        let (socket, addr) = listening_socket(reuseport);
        let mut child = launch(socket, "web", &format!("serve --mode {mode} -w 3 --listen {listen}"));
        let serve = Serve::attach(&mut child, 3);
        assert!(matches!(serve.target, Target::Tcp(a) if a == addr), "{mode}: serves on the passed {addr}");
        let (seen, failures) = load(&serve.target, 300, 6);
        assert!(failures.is_empty(), "{mode}: {}", summary(&failures));
        assert!(seen.len() >= 2, "{mode}: {seen:?}");
        if mode == "reuseport" {
            // One passed, two more bound beside it: three listeners on the port.
            assert_eq!(listeners_on(addr.port()), 3, "{mode}");
        }
        let stopped = serve.stop();
        child.wait().unwrap();
        assert!(stopped.log.iter().any(|l| l.contains("shutdown")), "{mode}");
    }
}

#[test]
fn herd_run_takes_the_socket_it_was_passed() {
    let (socket, addr) = listening_socket(false);
    let mut child = launch(socket, "web", &format!("run --mode shared -w 2 --listen systemd -- {HERD} worker"));
    let serve = Serve::attach(&mut child, 2);
    assert!(matches!(serve.target, Target::Tcp(a) if a == addr));
    let (_, failures) = load(&serve.target, 200, 4);
    assert!(failures.is_empty(), "{}", summary(&failures));
    serve.stop();
    child.wait().unwrap();
}

#[test]
fn what_cannot_be_served_from_the_passed_sockets_is_refused_with_the_reason() {
    // Reuseport with one socket and no SO_REUSEPORT: herd cannot bind the others beside it.
    let (socket, _) = listening_socket(false);
    let out = launch(socket, "web", "serve --mode reuseport -w 3 --listen systemd").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SO_REUSEPORT") && err.contains("ReusePort=yes"), "{err}");
    // A name nobody passed.
    let (socket, _) = listening_socket(false);
    let out = launch(socket, "web", "serve --listen sd:api").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sd:api") && err.contains("web"), "{err}");
    // Nothing passed at all.
    let out = Command::new(HERD).args(["serve", "--listen", "systemd"]).env_remove("LISTEN_FDS").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no socket was passed"));
}

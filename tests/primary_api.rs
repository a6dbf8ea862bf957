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
    run_example_with(name, &[], checks);
}

/// [`run_example`] with arguments.
fn run_example_with(name: &str, args: &[&str], checks: &[&str]) {
    let out = Command::new(example(name)).args(args).output().unwrap();
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
            "ok: a socket sent to a worker reached it",
            "ok: a socket sent by a worker reached the primary",
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
            "ok: disconnect: worker 0 exited 0, expected",
            "ok: a disconnected worker is not replaced",
            "ok: kill(SIGUSR1) and kill(SIGWINCH): worker 1 goes on serving",
            "ok: kill(SIGTERM): worker 1 died of SIGTERM, expected",
            "ok: a killed worker is not replaced",
            "ok: an unknown pid is an error",
            "ok: all checks passed",
        ],
    );
}

const EMBEDDED_CHECKS: [&str; 6] = [
    "ok: 20 requests served while tokio drives the primary",
    "ok: reload() from code: every worker replaced",
    "ok: scale(3) from code: a third worker listens",
    "ok: 30 more served by the scaled cluster",
    "ok: shutdown(true) from code: every worker exited",
    "ok: all checks passed",
];

#[test]
fn the_primary_on_io_uring_runs_from_a_tokio_loop_too() {
    // On io_uring the primary's descriptor is its ring's eventfd: the host polls it the same way.
    if let Err(why) = herd::Backend::IoUring.available() {
        eprintln!("SKIPPED on io-uring: {why}");
        return;
    }
    run_example_with("embedded", &["--backend", "io-uring"], &EMBEDDED_CHECKS);
}

#[test]
fn the_primary_runs_from_a_tokio_loop_with_reload_scale_and_shutdown_called_as_methods() {
    run_example(
        "embedded",
        &[
            "ok: 20 requests served while tokio drives the primary",
            "ok: reload() from code: every worker replaced",
            "ok: scale(3) from code: a third worker listens",
            "ok: 30 more served by the scaled cluster",
            "ok: shutdown(true) from code: every worker exited",
            "ok: all checks passed",
        ],
    );
}

/// Reads one HTTP/1.1 response with a `Content-Length` body from a keep-alive connection.
fn read_response(reader: &mut impl std::io::BufRead) -> String {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the server closed mid-response");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    String::from_utf8(body).unwrap()
}

#[test]
fn the_tokio_example_serves_in_every_mode_with_keep_alive() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    for mode in ["shared", "shared/epoll-exclusive", "handoff", "reuseport"] {
        let mut child = Command::new(example("tokio"))
            .args(["--mode", mode, "--workers", "2", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let addr: std::net::SocketAddr = first.trim().strip_prefix("listening on ").unwrap().parse().unwrap();
        // Wait for the workers: connect until an answer comes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut bodies = Vec::new();
        while bodies.len() < 20 {
            assert!(std::time::Instant::now() < deadline, "{mode}: no answers");
            let Ok(mut s) = std::net::TcpStream::connect(addr) else { continue };
            s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n").unwrap();
            let mut response = String::new();
            if s.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200 OK") {
                bodies.push(response.split("\r\n\r\n").nth(1).unwrap().to_owned());
            }
        }
        assert!(bodies.iter().all(|b| b.starts_with("worker ") && b.contains(" pid ")), "{mode}: {bodies:?}");
        // Five requests on one keep-alive connection, all answered by the same worker.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let answers: Vec<String> = (0..5)
            .map(|_| {
                s.write_all(b"GET / HTTP/1.1\r\nHost: herd\r\n\r\n").unwrap();
                read_response(&mut reader)
            })
            .collect();
        assert!(answers.iter().all(|a| a == &answers[0]), "{mode}: one connection, one worker: {answers:?}");
        drop((s, reader));
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{mode}: {status:?}");
    }
}

//! Running out of descriptors (`EMFILE`) is handled, not fatal, and drops no connection: the
//! worker (or the primary, in handoff mode) stops accepting for a moment, and connections wait in
//! the kernel's backlog until descriptors are free again.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::Target;

/// More connections than the worker has descriptors for.
const CONNECTIONS: usize = 48;

#[test]
fn emfile_backs_off_and_every_waiting_connection_is_served() {
    for mode in ["shared", "handoff", "reuseport"] {
        // Start herd serve under a 32-descriptor limit, through the shell's ulimit.
        let script = format!(
            "ulimit -n 32 && exec '{}' serve --workers 1 --listen 127.0.0.1:0 --mode {mode}",
            env!("CARGO_BIN_EXE_herd")
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let serve = util::Serve::attach(&mut child, 1);
        let Target::Tcp(addr) = serve.target else { panic!("tcp") };
        // Open every connection first, sending nothing: the worker accepts until it runs out of
        // descriptors, and the rest wait in the backlog.
        let mut clients: Vec<TcpStream> = (0..CONNECTIONS).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        for c in &mut clients {
            c.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        }
        let mut answered = 0;
        for c in &mut clients {
            let mut response = String::new();
            c.read_to_string(&mut response).unwrap_or_else(|e| panic!("{mode}: a connection was not answered: {e}"));
            assert!(response.starts_with("HTTP/1.1 200 OK"), "{mode}: {response:?}");
            answered += 1;
        }
        assert_eq!(answered, CONNECTIONS);
        let log = serve.log().join("\n");
        assert!(log.contains("Too many open files"), "{mode}: the descriptor limit was reached and reported:\n{log}");
        let stopped = serve.stop();
        assert!(stopped.status.success(), "{mode}: {:?}\n{}", stopped.status, stopped.log.join("\n"));
        let _ = child.wait();
    }
}

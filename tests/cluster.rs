//! Library-level checks that need no fork: configuration and binding errors.

use std::io::ErrorKind;

use herd::{Cluster, ListenAddr, Mode};

#[test]
fn start_refuses_to_fork_a_multithreaded_process() {
    // The test harness runs this test on its own thread, so this process has at least two.
    let cluster = Cluster::builder("127.0.0.1:0".parse().unwrap()).workers(1).bind().unwrap();
    let err = cluster.start(|_| Ok(())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("threads"), "{err}");
}

#[test]
fn a_port_in_use_is_reported_with_its_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    for mode in [Mode::Handoff, Mode::Reuseport, Mode::default()] {
        let err = Cluster::builder(ListenAddr::Tcp(addr)).mode(mode).workers(2).bind().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{mode}: {err}");
        assert!(err.to_string().contains(&format!("bind({addr})")), "{err}");
    }
}

#[test]
fn reuseport_needs_a_tcp_address() {
    let err = Cluster::builder("/tmp/herd-never.sock".parse().unwrap()).mode(Mode::Reuseport).bind().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("reuseport"), "{err}");
}

#[test]
fn worker_count_and_window_are_checked() {
    let addr: ListenAddr = "127.0.0.1:0".parse().unwrap();
    assert_eq!(Cluster::builder(addr.clone()).workers(0).bind().unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(
        Cluster::builder(addr.clone()).workers(herd::MAX_WORKERS + 1).bind().unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(Cluster::builder(addr).handoff_window(0).bind().unwrap_err().kind(), ErrorKind::InvalidInput);
}

#[test]
fn a_live_unix_socket_is_not_stolen_but_a_stale_one_is_replaced() {
    let dir = std::env::temp_dir().join(format!("herd-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = Cluster::builder(ListenAddr::Unix(path.clone())).bind().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    drop(live); // the file stays behind, stale
    let cluster = Cluster::builder(ListenAddr::Unix(path.clone())).bind().unwrap();
    drop(cluster);
    assert!(!path.exists(), "the primary removes its socket file");
    std::fs::remove_dir_all(&dir).unwrap();
}

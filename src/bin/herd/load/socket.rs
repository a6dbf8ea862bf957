//! Opening connections: non-blocking, close-on-exec, and spread over loopback source addresses.
//!
//! # Not running out of ports
//!
//! A load generator that opens tens of thousands of connections a second runs into the 4-tuple
//! limit: every connection needs a distinct (source address, source port, destination address,
//! destination port), and a closed TCP connection keeps its tuple reserved in `TIME_WAIT` for
//! 60 s on the side that closed *first*. With one source address and the default ephemeral range
//! (32768–60999) that is about 470 connections a second sustained, far below what loopback can do.
//! Two measures keep the client clear of that wall:
//!
//! * **The server closes first.** Churn requests say `Connection: close`, and the client reads
//!   until end of file before it closes its own end. The server's close comes first, so its
//!   socket takes `TIME_WAIT` and the client's port is free again at once. (A server that is
//!   made to close is also the realistic case: it is what `Connection: close` asks for.)
//! * **Several source addresses.** The whole of 127.0.0.0/8 is local on Linux, so connections can
//!   come from 127.0.0.2, 127.0.0.3, … (round-robin, `--sources N`). Each address multiplies the
//!   tuple space, which keeps down how often a new connection lands on a tuple the server still
//!   holds in `TIME_WAIT`. Such a collision does not fail outright (the server accepts the new SYN
//!   thanks to TCP timestamps) but it makes the kernel's port search longer.
//!
//! Binding a source address the plain way (`bind(127.0.0.x:0)`) would make the kernel choose
//! the port at `bind` time, before it knows the destination, so that port could not be shared
//! with any other connection from the same address, whatever its destination — exhausting ports
//! sooner than not binding at all. `IP_BIND_ADDRESS_NO_PORT` defers the port choice to
//! `connect`, when the full tuple is known, and lets ports be shared exactly as for an unbound
//! socket. rustix has no wrapper for it; nix has (`sockopt::IpBindAddressNoPort`).
//!
//! If the kernel still finds no free port, `connect` fails with `EADDRNOTAVAIL`; the engine
//! counts that as a `no_port` error and carries on.
//!
//! # Non-blocking connect
//!
//! Sockets are created `SOCK_NONBLOCK | SOCK_CLOEXEC` and `connect` returns `EINPROGRESS`; the
//! caller writes the request straight away (on loopback the handshake has usually completed by
//! the time `connect` returns) and otherwise waits for the socket to become writable.
//!
//! `TCP_NODELAY` is set only for keep-alive connections: a churn request is one small write on a
//! fresh connection, which Nagle's algorithm never delays, so the extra system call would be
//! wasted.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::setsockopt;
use nix::sys::socket::sockopt::IpBindAddressNoPort;
use rustix::io::Errno;
use rustix::net::{self, AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};

use super::url::Endpoint;

/// The first source address used; 127.0.0.1 is left to the server and to other programs.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The resolved destination.
enum Dest {
    V4(SocketAddrV4),
    V6(SocketAddrV6),
    Unix(SocketAddrUnix),
}

/// Opens non-blocking connections to one endpoint, rotating over source addresses.
pub struct Dialer {
    dest: Dest,
    sources: Vec<Ipv4Addr>,
    next_source: usize,
    nodelay: bool,
}

impl Dialer {
    /// A dialer for `endpoint`. For IPv4, connections come from `sources` addresses starting at
    /// 127.0.0.2 (none: the kernel picks), beginning the rotation at `offset`; `nodelay` sets
    /// `TCP_NODELAY` on TCP connections.
    pub fn new(endpoint: &Endpoint, sources: usize, offset: usize, nodelay: bool) -> std::io::Result<Dialer> {
        let dest = match endpoint {
            Endpoint::Tcp(SocketAddr::V4(a)) => Dest::V4(*a),
            Endpoint::Tcp(SocketAddr::V6(a)) => Dest::V6(*a),
            Endpoint::Unix(path) => Dest::Unix(SocketAddrUnix::new(path.as_path())?),
        };
        let sources = match dest {
            Dest::V4(_) => (0..sources).map(|i| Ipv4Addr::from(u32::from(FIRST_SOURCE) + i as u32)).collect(),
            Dest::V6(_) | Dest::Unix(_) => Vec::new(),
        };
        let next_source = if sources.is_empty() { 0 } else { offset % sources.len() };
        Ok(Dialer { dest, sources, next_source, nodelay })
    }

    /// Starts connecting a new socket. `Ok` means connected or in progress; the caller finds out
    /// which by writing to it.
    pub fn dial(&mut self) -> Result<OwnedFd, Errno> {
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let fd = match &self.dest {
            Dest::V4(addr) => {
                let fd = net::socket_with(AddressFamily::INET, SocketType::STREAM, flags, None)?;
                if let Some(&source) = self.sources.get(self.next_source) {
                    self.next_source = (self.next_source + 1) % self.sources.len();
                    set_bind_address_no_port(fd.as_fd())?;
                    net::bind(&fd, &SocketAddrV4::new(source, 0))?;
                }
                start_connect(fd, addr)?
            }
            Dest::V6(addr) => {
                let fd = net::socket_with(AddressFamily::INET6, SocketType::STREAM, flags, None)?;
                start_connect(fd, addr)?
            }
            // A Unix stream connect completes (or fails, with EAGAIN if the backlog is full) at once.
            Dest::Unix(addr) => {
                let fd = net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
                net::connect(&fd, addr)?;
                return Ok(fd);
            }
        };
        if self.nodelay {
            sockopt::set_tcp_nodelay(&fd, true)?;
        }
        Ok(fd)
    }
}

/// Issues a non-blocking `connect`; in-progress counts as success.
fn start_connect(fd: OwnedFd, addr: &impl net::addr::SocketAddrArg) -> Result<OwnedFd, Errno> {
    match net::connect(&fd, addr) {
        Ok(()) | Err(Errno::INPROGRESS) | Err(Errno::INTR) => Ok(fd),
        Err(e) => Err(e),
    }
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`, so a later `bind(addr:0)` leaves the port to `connect`.
fn set_bind_address_no_port(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    setsockopt(&fd, IpBindAddressNoPort, &true).map_err(|e| Errno::from_raw_os_error(e as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn rotates_over_source_addresses() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint::Tcp(listener.local_addr().unwrap());
        let mut dialer = Dialer::new(&endpoint, 3, 1, false).unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            let fd = dialer.dial().unwrap();
            let (conn, peer) = listener.accept().unwrap();
            drop(conn);
            drop(fd);
            seen.push(peer.ip().to_string());
        }
        assert_eq!(seen, ["127.0.0.3", "127.0.0.4", "127.0.0.2", "127.0.0.3"]);
    }

    #[test]
    fn source_bound_sockets_leave_the_port_to_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint::Tcp(listener.local_addr().unwrap());
        let bound = Dialer::new(&endpoint, 1, 0, false).unwrap().dial().unwrap();
        assert!(nix::sys::socket::getsockopt(&bound, IpBindAddressNoPort).unwrap());
        let unbound = Dialer::new(&endpoint, 0, 0, false).unwrap().dial().unwrap();
        assert!(!nix::sys::socket::getsockopt(&unbound, IpBindAddressNoPort).unwrap());
    }

    #[test]
    fn sockets_are_nonblocking_and_cloexec() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut dialer = Dialer::new(&Endpoint::Tcp(listener.local_addr().unwrap()), 0, 0, true).unwrap();
        let fd = dialer.dial().unwrap();
        assert!(rustix::fs::fcntl_getfl(&fd).unwrap().contains(rustix::fs::OFlags::NONBLOCK));
        assert!(rustix::io::fcntl_getfd(&fd).unwrap().contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn refused_connections_surface_as_errors() {
        // Bind then drop a listener to find a port that is (very likely) closed.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut dialer = Dialer::new(&Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))), 1, 0, false).unwrap();
        // Loopback may refuse within connect() itself, or report it on the socket afterwards.
        match dialer.dial() {
            Err(e) => assert_eq!(e, Errno::CONNREFUSED),
            Ok(fd) => {
                let mut pfd = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::OUT)];
                rustix::event::poll(&mut pfd, None).unwrap();
                assert_eq!(sockopt::socket_error(&fd).unwrap(), Err(Errno::CONNREFUSED));
            }
        }
    }
}

//! **reuseport** — one `SO_REUSEPORT` listener per worker slot. The kernel spreads incoming
//! connections over the listeners bound to the same address by a hash of the connection's
//! 4-tuple, so each worker has its own accept queue and nobody races.
//!
//! The primary creates and owns every listener, and worker `i` gets listener `i`. Why the
//! primary and not the worker: a listener's accept queue dies with its last descriptor. If
//! worker 3 owned listener 3, connections already hashed to it would be reset when it crashed
//! or was replaced. Because the primary keeps a copy, the queue survives, and the replacement for
//! slot 3 inherits listener 3 with the connections still waiting in it.

use std::io;

use crate::ListenAddr;
use crate::listener::{BindOptions, Listener};

/// Binds `slots` listeners to `addr` with `SO_REUSEPORT`. With port 0, the first listener gets a
/// port from the kernel and the others bind that same port. Returns them with the address bound.
pub(crate) fn bind(addr: &ListenAddr, slots: usize, base: BindOptions) -> io::Result<(Vec<Listener>, ListenAddr)> {
    let ListenAddr::Tcp(mut tcp) = addr.clone() else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "reuseport mode needs a TCP address, not {addr}: Unix sockets cannot share a path with SO_REUSEPORT"
            ),
        ));
    };
    let opts = BindOptions { reuseport: true, nonblocking: true, ..base };
    let mut listeners = Vec::with_capacity(slots);
    for _ in 0..slots {
        let listener = Listener::bind(&ListenAddr::Tcp(tcp), opts)?;
        tcp = listener.tcp_addr()?;
        listeners.push(listener);
    }
    Ok((listeners, ListenAddr::Tcp(tcp)))
}

/// Binds one more listener, for a slot added at run time (SIGTTIN), on the address the others
/// already use.
pub(crate) fn bind_one(addr: &ListenAddr, base: BindOptions) -> io::Result<Listener> {
    Listener::bind(addr, BindOptions { reuseport: true, nonblocking: true, ..base })
}

//! Socket activation: listeners that a service manager (systemd, or any launcher that follows
//! [`sd_listen_fds(3)`]) bound and passed, instead of herd binding its own.
//!
//! The convention: the listeners are descriptors 3, 4, ... `3 + LISTEN_FDS - 1`; `LISTEN_PID`
//! names the process they are meant for (a child that inherited the variables must not take
//! them); `LISTEN_FDNAMES` names them, colon-separated (systemd's `FileDescriptorName=`).
//!
//! ```no_run
//! use herd::{Cluster, Mode};
//! let sockets = herd::activation::listen_fds()?;
//! let cluster = Cluster::builder("127.0.0.1:0".parse()?)
//!     .mode(Mode::Reuseport)
//!     .bind_inherited(sockets.into_iter().map(|s| s.fd).collect())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`sd_listen_fds(3)`]: https://man7.org/linux/man-pages/man3/sd_listen_fds.3.html

use std::io;
use std::os::fd::OwnedFd;

use crate::program::env;
use crate::sys::exec::{FIRST_FD, inherit_fd};

/// One socket the service manager passed.
#[derive(Debug)]
pub struct Activated {
    /// Its name (`LISTEN_FDNAMES`), or `unknown` as systemd says when there is none.
    pub name: String,
    /// The socket, now close-on-exec.
    pub fd: OwnedFd,
}

/// The sockets passed to this process by the `sd_listen_fds(3)` convention, in order; empty
/// if `LISTEN_FDS` is not set or `LISTEN_PID` names another process.
///
/// Call it once: the descriptors are taken (owned by what this returns). The variables are
/// left in the environment (changing the environment is not thread-safe); herd never passes
/// them on to the workers it executes, which get their own.
///
/// # Errors
/// `InvalidInput` naming the variable for a value that does not parse or a descriptor that is
/// not open.
pub fn listen_fds() -> io::Result<Vec<Activated>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let Ok(count) = std::env::var(env::LISTEN_FDS) else { return Ok(Vec::new()) };
    let count: i32 = count.parse().map_err(|e| invalid(format!("LISTEN_FDS={count}: {e}")))?;
    if let Ok(pid) = std::env::var(env::LISTEN_PID) {
        let pid: u32 = pid.parse().map_err(|e| invalid(format!("LISTEN_PID={pid}: {e}")))?;
        if pid != std::process::id() {
            return Ok(Vec::new());
        }
    }
    let names = std::env::var(env::LISTEN_FDNAMES).unwrap_or_default();
    let mut names = names.split(':').filter(|n| !n.is_empty());
    (0..count)
        .map(|i| {
            let fd = inherit_fd(FIRST_FD + i, "LISTEN_FDS")?;
            Ok(Activated { name: names.next().unwrap_or("unknown").to_owned(), fd })
        })
        .collect()
}

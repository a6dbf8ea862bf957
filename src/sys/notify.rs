//! The sd_notify protocol ([`sd_notify(3)`]): newline-separated `KEY=VALUE` lines in one
//! datagram on an `AF_UNIX` `SOCK_DGRAM` socket whose address is in `NOTIFY_SOCKET` — a path,
//! or an abstract name written with a leading `@`.
//!
//! herd speaks it both ways. As a service it tells its own supervisor (systemd) how it is
//! doing ([`send`]); as a supervisor it gives each worker it executes a socket of its own
//! ([`Receiver`]) and takes `READY=1` there as "listening".
//!
//! [`sd_notify(3)`]: https://man7.org/linux/man-pages/man3/sd_notify.3.html

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

/// The address `NOTIFY_SOCKET` names: `@name` is abstract, anything else a path.
fn address(notify_socket: &str) -> io::Result<SocketAddrUnix> {
    let addr = match notify_socket.strip_prefix('@') {
        Some(name) => SocketAddrUnix::new_abstract_name(name.as_bytes()),
        None => SocketAddrUnix::new(notify_socket),
    };
    addr.map_err(|e| super::context(super::from_errno(e), format!("NOTIFY_SOCKET={notify_socket}")))
}

fn datagram_socket() -> io::Result<OwnedFd> {
    rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK, None)
        .map_err(|e| super::context(super::from_errno(e), "socket(AF_UNIX, SOCK_DGRAM)"))
}

/// Sends `message` (`READY=1\nSTATUS=...`) to the supervisor at `notify_socket`, in one
/// datagram, without blocking.
///
/// # Errors
/// `socket` or `sendto`'s failure, naming the address (`ECONNREFUSED`: nobody listens there).
pub fn send(notify_socket: &str, message: &str) -> io::Result<()> {
    let addr = address(notify_socket)?;
    let fd = datagram_socket()?;
    rustix::net::sendto(&fd, message.as_bytes(), SendFlags::NOSIGNAL, &addr)
        .map_err(|e| super::context(super::from_errno(e), format!("sendto(NOTIFY_SOCKET={notify_socket})")))?;
    Ok(())
}

/// A socket that receives sd_notify datagrams, bound to an abstract name.
#[derive(Debug)]
pub struct Receiver {
    fd: OwnedFd,
    /// The value for the program's `NOTIFY_SOCKET`: `@` and the name.
    env: String,
}

impl Receiver {
    /// Binds a non-blocking datagram socket to the abstract name `name`.
    ///
    /// # Errors
    /// `socket` or `bind`'s failure (`EADDRINUSE` if the name is taken), naming the address.
    pub fn bind(name: &str) -> io::Result<Receiver> {
        let env = format!("@{name}");
        let addr = address(&env)?;
        let fd = datagram_socket()?;
        rustix::net::bind(&fd, &addr).map_err(|e| super::context(super::from_errno(e), format!("bind({env})")))?;
        Ok(Receiver { fd, env })
    }

    /// A receiver bound before (by the primary's previous image), with its `NOTIFY_SOCKET` value.
    pub fn adopt(fd: OwnedFd, env: String) -> Receiver {
        Receiver { fd, env }
    }

    /// What `NOTIFY_SOCKET` must say for a program to reach this socket.
    pub fn env_value(&self) -> &str {
        &self.env
    }

    /// Takes the next datagram, if one is waiting, as text (invalid UTF-8 replaced).
    ///
    /// # Errors
    /// `recv`'s failure other than `EAGAIN` and `EINTR`.
    pub fn recv(&self) -> io::Result<Option<String>> {
        let mut buf = [0u8; 4096];
        loop {
            match rustix::net::recv(&self.fd, &mut buf, RecvFlags::DONTWAIT) {
                Ok((n, _)) => return Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(super::context(super::from_errno(e), format!("recv({})", self.env))),
            }
        }
    }
}

impl AsFd for Receiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether a datagram's lines include `KEY=VALUE`.
pub fn says(datagram: &str, line: &str) -> bool {
    datagram.lines().any(|l| l == line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_sent_to_the_receivers_name_arrives() {
        let name = format!("herd-test/{}/notify", std::process::id());
        let r = Receiver::bind(&name).unwrap();
        assert_eq!(r.recv().unwrap(), None);
        send(r.env_value(), "READY=1\nSTATUS=serving").unwrap();
        let got = r.recv().unwrap().unwrap();
        assert!(says(&got, "READY=1") && says(&got, "STATUS=serving") && !says(&got, "STOPPING=1"), "{got:?}");
        let e = send("@herd-test/nobody-listens-here", "READY=1").unwrap_err().to_string();
        assert!(e.contains("NOTIFY_SOCKET=@herd-test/nobody-listens-here"), "{e}");
    }
}

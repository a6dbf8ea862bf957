//! `epoll(7)`: the readiness poller under every accept loop.
//!
//! A thin owner of an epoll instance. Interests are level-triggered unless asked otherwise,
//! because herd's `shared/epoll` strategy keeps the level-triggered thundering herd on purpose
//! (so it can be measured) and because level-triggering forgives a loop that stops early.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll;

/// What to wait for on a registered descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// `EPOLLIN`: readable, or (on a listener) a connection is waiting.
    pub readable: bool,
    /// `EPOLLOUT`: writable.
    pub writable: bool,
    /// `EPOLLET`: report transitions only.
    pub edge: bool,
    /// `EPOLLEXCLUSIVE` (Linux 4.5): when several epoll instances watch the same file, wake
    /// one (or a few) of them instead of all. Only valid with `EPOLL_CTL_ADD`.
    pub exclusive: bool,
}

impl Interest {
    /// Level-triggered readability.
    pub const READABLE: Interest = Interest { readable: true, writable: false, edge: false, exclusive: false };
    /// Level-triggered writability.
    pub const WRITABLE: Interest = Interest { readable: false, writable: true, edge: false, exclusive: false };

    fn flags(self) -> epoll::EventFlags {
        // EPOLLEXCLUSIVE may only be combined with EPOLLIN, EPOLLOUT, EPOLLET and EPOLLWAKEUP.
        let mut f = if self.exclusive { epoll::EventFlags::empty() } else { epoll::EventFlags::RDHUP };
        if self.readable {
            f |= epoll::EventFlags::IN;
        }
        if self.writable {
            f |= epoll::EventFlags::OUT;
        }
        if self.edge {
            f |= epoll::EventFlags::ET;
        }
        if self.exclusive {
            f |= epoll::EventFlags::EXCLUSIVE;
        }
        f
    }
}

/// One readiness report: from [`crate::Worker::poll`], for the user's descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The token the descriptor was registered with.
    pub token: u64,
    /// `EPOLLIN` was reported.
    pub readable: bool,
    /// `EPOLLOUT` was reported.
    pub writable: bool,
    /// `EPOLLHUP`, `EPOLLRDHUP` or `EPOLLERR` was reported: the peer is gone or the socket failed.
    pub hangup: bool,
}

/// The most events one [`Epoll::wait`] reports.
pub const MAX_EVENTS: usize = 64;

/// An epoll instance, created with `EPOLL_CLOEXEC`.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// Corresponds to `epoll_create1(EPOLL_CLOEXEC)`; see [`epoll_create1(2)`].
    ///
    /// [`epoll_create1(2)`]: https://man7.org/linux/man-pages/man2/epoll_create1.2.html
    pub fn new() -> io::Result<Epoll> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| super::context(super::from_errno(e), "epoll_create1"))?;
        Ok(Epoll { fd })
    }

    /// Corresponds to `epoll_ctl(EPOLL_CTL_ADD)`; see [`epoll_ctl(2)`].
    ///
    /// [`epoll_ctl(2)`]: https://man7.org/linux/man-pages/man2/epoll_ctl.2.html
    pub fn add(&self, fd: impl AsFd, token: u64, interest: Interest) -> io::Result<()> {
        super::tally::count(1);
        epoll::add(&self.fd, fd, epoll::EventData::new_u64(token), interest.flags())
            .map_err(|e| super::context(super::from_errno(e), "epoll_ctl(EPOLL_CTL_ADD)"))
    }

    /// Corresponds to `epoll_ctl(EPOLL_CTL_MOD)`. `interest.exclusive` must be false.
    pub fn modify(&self, fd: impl AsFd, token: u64, interest: Interest) -> io::Result<()> {
        super::tally::count(1);
        epoll::modify(&self.fd, fd, epoll::EventData::new_u64(token), interest.flags())
            .map_err(|e| super::context(super::from_errno(e), "epoll_ctl(EPOLL_CTL_MOD)"))
    }

    /// Corresponds to `epoll_ctl(EPOLL_CTL_DEL)`.
    pub fn delete(&self, fd: impl AsFd) -> io::Result<()> {
        super::tally::count(1);
        epoll::delete(&self.fd, fd).map_err(|e| super::context(super::from_errno(e), "epoll_ctl(EPOLL_CTL_DEL)"))
    }

    /// Corresponds to `epoll_wait(2)`; waits at most `timeout` (`None`: forever), retries
    /// `EINTR`, and appends what is ready to `out` (cleared first). Returns how many.
    ///
    /// [`epoll_wait(2)`]: https://man7.org/linux/man-pages/man2/epoll_wait.2.html
    pub fn wait(&self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<usize> {
        let timeout = timeout.map(super::timespec);
        let mut events: [epoll::Event; MAX_EVENTS] =
            [epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) }; MAX_EVENTS];
        out.clear();
        let n = loop {
            super::tally::count(1);
            match epoll::wait(&self.fd, &mut events[..], timeout.as_ref()) {
                Ok(n) => break n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(super::context(super::from_errno(e), "epoll_wait")),
            }
        };
        for ev in &events[..n] {
            let f = ev.flags;
            out.push(Ready {
                token: ev.data.u64(),
                readable: f.contains(epoll::EventFlags::IN),
                writable: f.contains(epoll::EventFlags::OUT),
                hangup: f.intersects(epoll::EventFlags::HUP | epoll::EventFlags::RDHUP | epoll::EventFlags::ERR),
            });
        }
        Ok(n)
    }
}

impl AsFd for Epoll {
    /// An epoll instance is itself pollable: it is readable while any of its interests is ready,
    /// which is how a worker's whole accept source is registered in someone else's event loop.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_with_a_huge_timeout_saturates_instead_of_failing() {
        let epoll = Epoll::new().unwrap();
        let ready = crate::sys::eventfd::EventFd::new().unwrap();
        ready.notify();
        epoll.add(&ready, 1, Interest::READABLE).unwrap();
        let mut out = Vec::new();
        assert_eq!(epoll.wait(&mut out, Some(Duration::MAX)).unwrap(), 1);
    }
}

//! [`eventfd(2)`]: a counter descriptor one thread writes to wake another's epoll loop.
//!
//! [`eventfd(2)`]: https://man7.org/linux/man-pages/man2/eventfd.2.html

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::EventfdFlags;

/// An eventfd created with `EFD_CLOEXEC | EFD_NONBLOCK`.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Corresponds to `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`.
    pub fn new() -> io::Result<EventFd> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| super::context(super::from_errno(e), "eventfd"))?;
        Ok(EventFd { fd })
    }

    /// An eventfd this process was given (across `execve`, or by the primary's previous image).
    pub fn adopt(fd: OwnedFd) -> EventFd {
        EventFd { fd }
    }

    /// Adds one to the counter, making the descriptor readable.
    pub fn notify(&self) {
        super::tally::count(1);
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Resets the counter to zero, so the descriptor stops being readable.
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        super::tally::count(1);
        let _ = rustix::io::read(&self.fd, &mut buf);
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

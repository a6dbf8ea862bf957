//! A one-shot [`timerfd_create(2)`] timer, so that deadlines (the shutdown kill timeout, the
//! `EMFILE` back-off) are just one more readable descriptor in an epoll loop.
//!
//! [`timerfd_create(2)`]: https://man7.org/linux/man-pages/man2/timerfd_create.2.html

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags};

/// A monotonic one-shot timer (`TFD_CLOEXEC | TFD_NONBLOCK`).
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
}

use super::timespec;

impl Timer {
    /// Corresponds to `timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)`.
    pub fn new() -> io::Result<Timer> {
        let fd =
            rustix::time::timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK)
                .map_err(|e| super::context(super::from_errno(e), "timerfd_create"))?;
        Ok(Timer { fd })
    }

    /// Fires once after `after` (at least 1 ns); replaces any earlier setting.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let value = Itimerspec {
            it_interval: timespec(Duration::ZERO),
            it_value: timespec(after.max(Duration::from_nanos(1))),
        };
        rustix::time::timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &value)
            .map(drop)
            .map_err(|e| super::context(super::from_errno(e), "timerfd_settime"))
    }

    /// Stops the timer (a zero `it_value` disarms it) and clears any pending expiry.
    pub fn disarm(&self) -> io::Result<()> {
        let zero = Itimerspec { it_interval: timespec(Duration::ZERO), it_value: timespec(Duration::ZERO) };
        rustix::time::timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &zero)
            .map_err(|e| super::context(super::from_errno(e), "timerfd_settime"))?;
        self.clear();
        Ok(())
    }

    /// Consumes an expiry so the descriptor stops being readable; returns whether it had fired.
    pub fn clear(&self) -> bool {
        let mut buf = [0u8; 8];
        matches!(rustix::io::read(&self.fd, &mut buf), Ok(8))
    }
}

impl AsFd for Timer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The monotonic clock (the same in every process), in microseconds.
pub fn monotonic_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_armed_for_ever_saturates_instead_of_failing() {
        let timer = Timer::new().unwrap();
        timer.arm(Duration::MAX).unwrap();
        assert!(!timer.clear(), "not fired");
        timer.disarm().unwrap();
    }
}

//! The syscall layer: the only module of herd (with the C ABI) that contains `unsafe`.
//!
//! Each wrapper is thin, creates every descriptor close-on-exec at birth (`SOCK_CLOEXEC`,
//! `EPOLL_CLOEXEC`, `SFD_CLOEXEC`, `MSG_CMSG_CLOEXEC`...), hands descriptors out as [`OwnedFd`]
//! the moment the kernel returns them, and takes [`AsFd`] / [`BorrowedFd`] everywhere else, so a
//! raw fd never travels through herd. Most calls go through [`rustix`]; the few it does not
//! cover (`fork`, `signalfd`, `sigprocmask`) use [`libc`] directly, each `unsafe` block with a
//! `// SAFETY:` line.
//!
//! [`OwnedFd`]: std::os::fd::OwnedFd
//! [`AsFd`]: std::os::fd::AsFd
//! [`BorrowedFd`]: std::os::fd::BorrowedFd

#![allow(unsafe_code)]

pub mod epoll;
pub mod eventfd;
pub mod exec;
pub mod fdpass;
pub mod listen;
pub mod notify;
pub mod process;
pub mod shm;
pub mod signal;
pub mod sockopt;
pub mod tally;
pub mod timerfd;
#[cfg(feature = "io-uring")]
pub mod uring;

use std::io;

/// Wraps `err` with what herd was doing, keeping its [`io::ErrorKind`].
///
/// Error messages in herd name the call that failed and why it was made, in the style of
/// nginx's `"socketpair() failed while spawning worker"`: `context(e, "bind(127.0.0.1:80)")`
/// reads `bind(127.0.0.1:80): Address already in use (os error 98)`.
pub fn context(err: impl Into<io::Error>, what: impl std::fmt::Display) -> io::Error {
    let err = err.into();
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// A `timespec` for `d`, saturating: a `Duration` of more seconds than `time_t` holds becomes
/// the largest `time_t` (about 292 billion years) instead of wrapping to a negative time, which
/// the kernel would refuse with `EINVAL`.
pub(crate) fn timespec(d: std::time::Duration) -> rustix::event::Timespec {
    rustix::event::Timespec { tv_sec: d.as_secs().min(i64::MAX as u64) as i64, tv_nsec: d.subsec_nanos() as _ }
}

/// Converts a rustix error into a `std::io::Error`.
pub(crate) fn from_errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

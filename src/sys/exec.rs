//! What a forked child does to become another program (`execve(2)`), and how that program
//! takes the descriptors it was given.
//!
//! The child side runs between `fork` and `execve` in a single-threaded copy of the primary:
//!
//! 1. [`place_fds`] puts the descriptors meant for the program at 3, 4, 5... (the order of
//!    `sd_listen_fds(3)`: listeners first), without close-on-exec, and marks **every** other
//!    descriptor above 2 close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`), including any the
//!    host program opened without the flag;
//! 2. [`reset_signals`] sets every signal's disposition to `SIG_DFL` and empties the mask, so
//!    the program starts as if a shell had started it (ignored signals and the mask would
//!    otherwise survive `execve`);
//! 3. [`execve`] replaces the process, or returns why it could not.
//!
//! On the other side of `execve`, [`inherit_fd`] turns a descriptor number found in the
//! environment into an [`OwnedFd`], checking that it is open and setting close-on-exec on it
//! again, so the program's own children do not inherit it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The first descriptor a program is given (0, 1 and 2 are stdin, stdout and stderr).
pub const FIRST_FD: RawFd = 3;

/// Places `fds` at [`FIRST_FD`], `FIRST_FD + 1`... in order, inheritable across `execve`, and
/// makes every other descriptor from `FIRST_FD` up close-on-exec.
///
/// The sources may themselves sit anywhere, even on the targets: each is first copied above
/// the last target (`F_DUPFD_CLOEXEC`), then `dup2`'d into place.
///
/// # Errors
/// `fcntl` or `dup2`'s failure (`EMFILE`), naming the call.
pub fn place_fds(fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let above = FIRST_FD + fds.len() as RawFd;
    let mut staged = Vec::with_capacity(fds.len());
    for fd in fds {
        staged.push(
            rustix::io::fcntl_dupfd_cloexec(fd, above)
                .map_err(|e| super::context(super::from_errno(e), "fcntl(F_DUPFD_CLOEXEC)"))?,
        );
    }
    for (i, fd) in staged.iter().enumerate() {
        let target = FIRST_FD + i as RawFd;
        // SAFETY: dup2 onto a number this process may hold: whatever was open there is closed
        // by the kernel, and nothing in this child uses descriptors by number any more (it
        // execs next). `fd` is open (owned above); the new descriptor has no close-on-exec flag,
        // which is the point.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(super::context(io::Error::last_os_error(), format!("dup2(.., {target})")));
        }
    }
    drop(staged);
    cloexec_from(above)
}

/// Marks every descriptor from `first` up close-on-exec: `close_range(first, ~0,
/// CLOSE_RANGE_CLOEXEC)` (Linux 5.11), or one `fcntl` per possible descriptor before that.
fn cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors; it closes
    // nothing and touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 4u32) };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(super::context(err, "close_range(CLOSE_RANGE_CLOEXEC)"));
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1 << 20);
    for fd in first..limit.min(RawFd::MAX as u64) as RawFd {
        // Most numbers are not open (EBADF): nothing to mark.
        let _ = fd_cloexec(fd, true);
    }
    Ok(())
}

/// Sets (`on`) or clears close-on-exec on descriptor number `fd`: `fcntl(F_GETFD)`, then
/// `fcntl(F_SETFD)`.
///
/// # Errors
/// The failing call (`"F_GETFD"`, `"F_SETFD"`) and its error (`EBADF`: not open).
fn fd_cloexec(fd: RawFd, on: bool) -> Result<(), (&'static str, io::Error)> {
    // SAFETY: F_GETFD reads one flag of a descriptor number; a number that is not open fails
    // with EBADF and nothing happens.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(("F_GETFD", io::Error::last_os_error()));
    }
    let flags = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: F_SETFD on the descriptor just read changes only its descriptor flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(("F_SETFD", io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets every catchable signal's disposition to `SIG_DFL` and unblocks every signal.
///
/// # Errors
/// `sigprocmask`'s failure.
pub fn reset_signals() -> io::Result<()> {
    // The kernel's `struct sigaction` with every field zero: SIG_DFL, no flags, no restorer,
    // an empty mask — whatever the architecture's layout, zero is zero.
    let default = [0u64; 4];
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads the zeroed struct above (SIG_DFL) and writes nothing
        // back (null old action); installing SIG_DFL runs no code of ours. The raw call, not
        // libc's `signal`, because glibc refuses the two real-time signals it keeps for itself
        // (32, 33) — which an ignoring parent may still have passed down as SIG_IGN.
        unsafe {
            libc::syscall(libc::SYS_rt_sigaction, signal, default.as_ptr(), std::ptr::null::<u8>(), 8usize);
        }
    }
    super::signal::SignalSet::empty().set_mask()
}

/// Corresponds to [`execve(2)`]: runs `path` with `argv` and `envp` in this process. Returns
/// only if it failed, with the error naming the call and the path.
///
/// [`execve(2)`]: https://man7.org/linux/man-pages/man2/execve.2.html
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let argv_ptrs: Vec<*const libc::c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp_ptrs: Vec<*const libc::c_char> =
        envp.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    // SAFETY: `path` and every string are NUL-terminated and outlive the call; both arrays end
    // with a null pointer, as execve requires. On success the call does not return.
    unsafe {
        libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
    }
    super::context(io::Error::last_os_error(), format!("execve({})", path.to_string_lossy()))
}

/// Takes ownership of descriptor `fd`, inherited across `execve` (named in the environment as
/// `what`), and sets close-on-exec on it again.
///
/// # Errors
/// `InvalidInput` naming `what` if `fd` is below [`FIRST_FD`] or not open — a descriptor this
/// process was not given must never be adopted (it may be someone else's, and closing it
/// later would close theirs).
pub fn inherit_fd(fd: RawFd, what: &str) -> io::Result<OwnedFd> {
    if fd < FIRST_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}={fd}: not a descriptor herd passes (0, 1 and 2 are stdio)"),
        ));
    }
    if let Err((call, e)) = fd_cloexec(fd, true) {
        let why = if e.raw_os_error() == Some(libc::EBADF) { "is not open" } else { "cannot be taken" };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}={fd}: descriptor {fd} {why} (fcntl({fd}, {call}): {e})"),
        ));
    }
    // SAFETY: the descriptor is open, and this process was handed it across exec for this
    // purpose; the caller takes it once per name (the environment names each number once), so
    // nothing else in the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets or clears close-on-exec on each of `fds`: cleared, they survive the coming `execve`
/// under the same numbers (the primary's in-place upgrade).
///
/// Every descriptor is tried, whatever the others do (so that giving the flag back after a
/// failure gives it back everywhere it can).
///
/// # Errors
/// The first `fcntl` failure, naming the call and the descriptor (`EBADF`: not open).
pub fn set_cloexec(fds: &[RawFd], cloexec: bool) -> io::Result<()> {
    let mut first = Ok(());
    for &fd in fds {
        if let Err((call, e)) = fd_cloexec(fd, cloexec) {
            if first.is_ok() {
                first = Err(super::context(e, format!("fcntl({fd}, {call})")));
            }
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherit_fd_refuses_stdio_and_closed_numbers() {
        let e = inherit_fd(1, "HERD_CHANNEL_FD").unwrap_err().to_string();
        assert!(e.contains("HERD_CHANNEL_FD=1"), "{e}");
        let e = inherit_fd(1_000_000, "HERD_LANE_FD").unwrap_err().to_string();
        assert!(e.contains("not open"), "{e}");
    }
}

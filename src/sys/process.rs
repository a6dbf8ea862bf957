//! `fork(2)`, `waitpid(2)`, `kill(2)` and the parent-death signal.
//!
//! herd forks its workers with a raw `fork`, as nginx and unicorn do, so that a worker starts
//! with the primary's memory: the listeners, the shared counter region and the user's closure are
//! simply there. This is only sound when the primary is single-threaded — a child of a
//! multi-threaded process holds a copy of every lock some other thread may have held, forever —
//! so [`fork_worker`] refuses to fork when `/proc/self/task` lists more than one thread.

use std::io;

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

use super::signal::SignalSet;

/// Which side of a [`fork_worker`] call we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the primary: the new worker's pid.
    Parent(Pid),
    /// In the new worker.
    Child,
}

/// How many threads this process has (entries in `/proc/self/task`).
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task").map_err(|e| super::context(e, "read /proc/self/task"))?.count())
}

/// Corresponds to [`fork(2)`], arranged for a worker process.
///
/// - Refuses (`io::ErrorKind::Unsupported`) if the process has more than one thread.
/// - Blocks every signal around the fork, so that no handler runs in the child before it is set
///   up (libuv does the same); the parent gets its mask back before returning.
/// - In the child: sets `PR_SET_PDEATHSIG(SIGKILL)` so the worker dies with the primary, then
///   checks that the parent is still the one that forked it (it may have died between `fork`
///   and `prctl`, in which case the signal will never come) and exits at once if not.
///
/// The child returns with all signals still blocked: it must set its own mask.
///
/// [`fork(2)`]: https://man7.org/linux/man-pages/man2/fork.2.html
pub fn fork_worker() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "fork: refusing to fork a process that has {threads} threads; herd forks only from a single-threaded primary"
            ),
        ));
    }
    let parent = rustix::process::getpid();
    let old = SignalSet::all().block()?;
    // SAFETY: the process is single-threaded (checked above), so the child gets a consistent
    // copy of every lock and allocator state; the child only makes async-signal-safe calls before
    // returning to the caller, which then runs ordinary single-threaded code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = io::Error::last_os_error();
        let _ = old.set_mask();
        return Err(super::context(err, "fork"));
    }
    if pid > 0 {
        old.set_mask()?;
        // SAFETY: `pid` is a positive pid just returned by fork.
        let pid = unsafe { Pid::from_raw_unchecked(pid) };
        return Ok(Forked::Parent(pid));
    }
    // In the child.
    if rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).is_err()
        || rustix::process::getppid() != Some(parent)
    {
        exit_now(1);
    }
    Ok(Forked::Child)
}

/// Corresponds to `_exit(2)`: ends the process at once, without running `atexit` handlers or
/// destructors (a forked worker must not run the primary's clean-up).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// How a child ended, decoded from a wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

fn decode(status: WaitStatus) -> Option<ExitStatus> {
    if let Some(code) = status.exit_status() {
        Some(ExitStatus::Code(code))
    } else {
        status.terminating_signal().map(ExitStatus::Signal)
    }
}

/// Corresponds to [`kill(2)`]. A process that is already gone (`ESRCH`) is not an error.
///
/// [`kill(2)`]: https://man7.org/linux/man-pages/man2/kill.2.html
pub fn kill(pid: Pid, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    let r = unsafe { libc::kill(pid.as_raw_nonzero().get(), signal) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(super::context(err, format!("kill({}, {signal})", pid.as_raw_nonzero())));
    }
    Ok(())
}

/// Corresponds to `waitpid(pid, WNOHANG)`: reaps `pid` if it has ended.
pub fn reap(pid: Pid) -> io::Result<Option<ExitStatus>> {
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                if let Some(s) = decode(status) {
                    return Ok(Some(s));
                }
            }
            Ok(None) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(super::context(super::from_errno(e), format!("waitpid({})", pid.as_raw_nonzero()))),
        }
    }
}

/// Kills `pid` with SIGKILL and waits for it (`waitpid(pid, 0)`, retrying `EINTR`), so that it
/// leaves neither a process nor a zombie behind. A child already reaped is not an error.
pub fn kill_and_wait(pid: Pid) {
    let _ = kill(pid, libc::SIGKILL);
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            Ok(Some((_, status))) if decode(status).is_none() => continue,
            _ => return,
        }
    }
}

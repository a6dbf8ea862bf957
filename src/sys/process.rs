//! `fork(2)`, pidfds (`pidfd_open(2)`, `pidfd_send_signal(2)`, `waitid(P_PIDFD)`), and the
//! parent-death signal.
//!
//! herd forks its workers with a raw `fork`, as nginx and unicorn do, so that a worker starts
//! with the primary's memory: the listeners, the shared counter region and the user's closure are
//! simply there. This is only sound when the primary is single-threaded — a child of a
//! multi-threaded process holds a copy of every lock some other thread may have held, forever —
//! so [`fork_worker`] refuses to fork while the process has other *user* threads (see
//! [`ThreadCheck`]).
//!
//! Each child is then watched through a **pidfd**: a descriptor that becomes readable when the
//! process exits. The primary polls it like any other descriptor, reaps with
//! `waitid(P_PIDFD, ..)` and signals with `pidfd_send_signal`, so it never scans with
//! `waitpid`, never reaps a child that is not its own, and never signals a recycled pid.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};

use super::signal::SignalSet;

/// Which side of a [`fork_worker`] call we are on.
#[derive(Debug)]
pub enum Forked {
    /// In the primary: the new worker.
    Parent(Child),
    /// In the new worker, with every signal blocked; `mask` is the mask the parent had.
    Child {
        /// The signal mask of the parent at the fork.
        mask: SignalSet,
    },
}

/// A child process and its pidfd.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    pidfd: OwnedFd,
}

impl Child {
    /// A child this process forked before an `execve` of its own (the primary's in-place
    /// upgrade): its pid and its pidfd, handed over. It is still this process's child, so
    /// `waitid` reaps it as before.
    pub fn adopt(pid: u32, pidfd: OwnedFd) -> io::Result<Child> {
        let pid = Pid::from_raw(pid as i32)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("pid {pid} is not a pid")))?;
        Ok(Child { pid, pidfd })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }

    /// Corresponds to [`pidfd_send_signal(2)`]. A process that already exited is not an error.
    ///
    /// # Errors
    /// `InvalidInput` (`EINVAL`) for a number that is not a signal.
    ///
    /// [`pidfd_send_signal(2)`]: https://man7.org/linux/man-pages/man2/pidfd_send_signal.2.html
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal takes a descriptor we own (borrowed for the call), a signal
        // number the kernel validates, and a null siginfo; it has no other memory effects.
        let r = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0)
        };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(super::context(err, format!("pidfd_send_signal(pid {}, signal {signal})", self.pid())));
        }
        Ok(())
    }

    /// Corresponds to `waitid(P_PIDFD, pidfd, WEXITED | WNOHANG)`: reaps the child if it has
    /// ended. `ECHILD` — someone else reaped it (a `waitpid(-1)` elsewhere in the program, or
    /// `SIGCHLD` set to `SIG_IGN`) — is not an error: the child is gone, its status unknown.
    pub fn try_reap(&self) -> io::Result<Option<ExitStatus>> {
        self.wait(WaitIdOptions::EXITED | WaitIdOptions::NOHANG)
    }

    /// Sends SIGKILL and waits for the child to end (`waitid(P_PIDFD, WEXITED)`), so that it
    /// leaves neither a process nor a zombie behind.
    pub fn kill_and_wait(&self) -> ExitStatus {
        let _ = self.signal(libc::SIGKILL);
        loop {
            match self.wait(WaitIdOptions::EXITED) {
                Ok(Some(status)) => return status,
                // A wait without WNOHANG returns only once the child ended; an error here
                // (ECHILD handled inside) leaves nothing to wait for.
                Ok(None) => continue,
                Err(_) => return ExitStatus::Unknown,
            }
        }
    }

    fn wait(&self, options: WaitIdOptions) -> io::Result<Option<ExitStatus>> {
        loop {
            match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), options) {
                Ok(Some(status)) => return Ok(decode(&status)),
                Ok(None) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::CHILD) => return Ok(Some(ExitStatus::Unknown)),
                Err(e) => return Err(super::context(super::from_errno(e), format!("waitid(P_PIDFD, {})", self.pid()))),
            }
        }
    }
}

impl AsFd for Child {
    /// The pidfd: readable once the child has exited.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// How [`fork_worker`] checks that the process is single-threaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ThreadCheck {
    /// Refuse to fork while `/proc/self/task` lists a user thread besides the caller. Threads
    /// the kernel owns — io_uring's `iou-wrk-*` and `iou-sqp-*` workers (`PF_IO_WORKER`) — are
    /// not user threads: they hold no user-space locks and are not copied by `fork`. Where
    /// `/proc` is not mounted the check cannot be made, and the fork goes ahead.
    #[default]
    Refuse,
    /// Fork whatever threads exist. The caller promises that no other thread holds a lock (a
    /// `Mutex`, an allocator arena, stdio) that the child will take: the child gets a copy of
    /// the lock in its held state, with no thread to release it.
    Allow,
}

/// The `PF_*` flags of a task that the kernel runs on the process's behalf (from
/// `include/linux/sched.h`): `PF_IO_WORKER` (io_uring workers) and `PF_KTHREAD`.
const KERNEL_TASK_FLAGS: u64 = 0x0000_0010 | 0x0020_0000;

/// Whether a `/proc/PID/task/TID/stat` line describes a thread the kernel owns: its 9th field
/// (`flags`, after the parenthesised command, which may itself contain spaces) has
/// `PF_IO_WORKER` or `PF_KTHREAD` set.
pub(crate) fn is_kernel_task(stat: &str) -> bool {
    let Some(after_comm) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return false };
    // Fields after the command: state (3), ppid (4), pgrp, session, tty_nr, tpgid, flags (9).
    after_comm.split_whitespace().nth(6).and_then(|f| f.parse::<u64>().ok()).is_some_and(|f| f & KERNEL_TASK_FLAGS != 0)
}

/// How many user threads this process has: entries of `/proc/self/task` that are not kernel
/// tasks (`PF_IO_WORKER`, `PF_KTHREAD`). `None` if `/proc` cannot be read.
pub fn user_thread_count() -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut count = 0;
    for task in tasks.flatten() {
        // A thread that ended between readdir and read is not counted.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        if !is_kernel_task(&stat) {
            count += 1;
        }
    }
    Some(count)
}

/// Corresponds to [`fork(2)`], arranged for a worker process.
///
/// - Refuses (`io::ErrorKind::Unsupported`) if the process has user threads besides the
///   caller, unless `check` is [`ThreadCheck::Allow`].
/// - Flushes C stdio buffers (`fflush(NULL)`), so that output buffered before the fork is not
///   written once more by every child. (Rust's `stdout` is flushed by the caller.)
/// - Blocks every signal around the fork, so that no handler runs in the child before it is set
///   up (libuv does the same); the parent gets its mask back before returning.
/// - In the parent: opens the child's pidfd.
/// - In the child: sets `PR_SET_PDEATHSIG(SIGKILL)` so the worker dies with the primary, then
///   checks that the parent is still the one that forked it (it may have died between `fork`
///   and `prctl`, in which case the signal will never come) and exits at once if not.
///
/// The child returns with all signals still blocked: it must set its own mask (the parent's is
/// in [`Forked::Child`]).
///
/// # Errors
/// The refusal above; `fork`'s `EAGAIN` (`RLIMIT_NPROC`, the system's process limit) or
/// `ENOMEM`; `pidfd_open`'s error (the child is then killed and reaped).
///
/// [`fork(2)`]: https://man7.org/linux/man-pages/man2/fork.2.html
pub fn fork_worker(check: ThreadCheck) -> io::Result<Forked> {
    if check == ThreadCheck::Refuse {
        if let Some(threads) = user_thread_count().filter(|&n| n > 1) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "fork: refusing to fork a process that has {threads} user threads; herd forks only from a \
                     single-threaded primary (see Builder::allow_threads; herd_builder_allow_threads in C)"
                ),
            ));
        }
    }
    // SAFETY: fflush(NULL) flushes every open C stream; it takes stdio's own locks, which no
    // other thread holds (the process is single-threaded, or the caller vouched for it).
    unsafe { libc::fflush(std::ptr::null_mut()) };
    let parent = rustix::process::getpid();
    let old = SignalSet::all().block()?;
    // SAFETY: the process is single-threaded (checked above) or the caller vouched that no other
    // thread holds a lock the child needs, so the child gets a consistent copy of the locks and
    // allocator state; the child only makes async-signal-safe calls before returning to the
    // caller, which then runs ordinary single-threaded code.
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
        return match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(pidfd) => Ok(Forked::Parent(Child { pid, pidfd })),
            Err(e) => {
                // A child the primary cannot watch must not live on: kill and reap it by pid.
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                Err(super::context(super::from_errno(e), "pidfd_open"))
            }
        };
    }
    // In the child.
    if rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).is_err()
        || rustix::process::getppid() != Some(parent)
    {
        exit_now(1);
    }
    Ok(Forked::Child { mask: old })
}

/// Corresponds to `_exit(2)`: ends the process at once, without running `atexit` handlers or
/// destructors (a forked worker must not run the primary's clean-up).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// Whether `signal` sent to `pid` ends that process: it is `SIGKILL`, or the process neither
/// catches nor ignores it (`SigCgt`, `SigIgn` in `/proc/PID/status`) and its default action is to
/// terminate (every signal's but `SIGCHLD`, `SIGCONT`, `SIGURG`, `SIGWINCH` — ignored — and the
/// stop signals). Where `/proc` cannot be read, it is assumed to.
pub fn signal_ends(pid: u32, signal: i32) -> bool {
    if signal == libc::SIGKILL {
        return true;
    }
    let by_default = !matches!(
        signal,
        libc::SIGCHLD
            | libc::SIGCONT
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
    );
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return by_default };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = 1u64.checked_shl(signal as u32 - 1).unwrap_or(0);
    by_default && (mask("SigCgt:") | mask("SigIgn:")) & bit == 0
}

/// How a child ended, decoded from a wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitStatus {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
    /// Reaped by someone else before the primary could (`ECHILD`): ended, status unknown.
    Unknown,
}

fn decode(status: &WaitIdStatus) -> Option<ExitStatus> {
    if let Some(code) = status.exit_status() {
        Some(ExitStatus::Code(code))
    } else {
        status.terminating_signal().map(ExitStatus::Signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_tasks_are_told_apart_by_their_flags() {
        // A user thread (flags 0x400040: PF_FORKNOEXEC | PF_RANDOMIZE) whose name has spaces
        // and a parenthesis.
        assert!(!is_kernel_task("123 (my (odd) name) S 1 123 123 0 -1 4194368 100 0 0 0"));
        // io_uring's iou-wrk worker: PF_IO_WORKER (0x10) set.
        assert!(is_kernel_task("124 (iou-wrk-123) S 1 123 123 0 -1 4194384 0 0 0 0"));
        assert!(!is_kernel_task("garbage"));
    }

    #[test]
    fn this_test_thread_is_a_user_thread() {
        assert!(user_thread_count().is_some_and(|n| n >= 1));
    }
}

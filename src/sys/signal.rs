//! Signal masks, dispositions and [`signalfd(2)`].
//!
//! The primary handles signals synchronously: it blocks them and reads them from a signalfd in
//! its event loop, so no async-signal-safety rules apply to what it does on `SIGCHLD`, `SIGTERM`
//! or `SIGHUP`.
//!
//! [`signalfd(2)`]: https://man7.org/linux/man-pages/man2/signalfd.2.html

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A set of signals (`sigset_t`).
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl std::fmt::Debug for SignalSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<i32> = (1..65).filter(|&s| self.contains(s)).collect();
        f.debug_tuple("SignalSet").field(&members).finish()
    }
}

impl SignalSet {
    /// The empty set (`sigemptyset`).
    pub fn empty() -> SignalSet {
        // SAFETY: sigemptyset initialises the set it is given.
        unsafe {
            let mut set = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            SignalSet(set)
        }
    }

    /// Every signal (`sigfillset`).
    pub fn all() -> SignalSet {
        // SAFETY: sigfillset initialises the set it is given.
        unsafe {
            let mut set = std::mem::zeroed();
            libc::sigfillset(&mut set);
            SignalSet(set)
        }
    }

    /// The set of `signals`.
    pub fn of(signals: &[i32]) -> SignalSet {
        let mut set = SignalSet::empty();
        for &s in signals {
            // SAFETY: `set.0` is initialised; an invalid signal number only returns EINVAL.
            unsafe { libc::sigaddset(&mut set.0, s) };
        }
        set
    }

    /// The set as a bit mask, bit `n - 1` for signal `n` (1 to 64), as `/proc/PID/status` shows
    /// masks.
    pub fn to_bits(self) -> u64 {
        (1..=64).filter(|&s| self.contains(s)).fold(0, |bits, s| bits | 1 << (s - 1))
    }

    /// The set of a bit mask made by [`to_bits`](Self::to_bits).
    pub fn from_bits(bits: u64) -> SignalSet {
        let signals: Vec<i32> = (1..=64).filter(|&s| bits & (1 << (s - 1)) != 0).collect();
        SignalSet::of(&signals)
    }

    /// Whether `signal` is in the set.
    pub fn contains(&self, signal: i32) -> bool {
        // SAFETY: `self.0` is initialised.
        unsafe { libc::sigismember(&self.0, signal) == 1 }
    }

    /// Adds this set to the thread's blocked mask (`sigprocmask(SIG_BLOCK)`); returns the old mask.
    pub fn block(&self) -> io::Result<SignalSet> {
        mask(libc::SIG_BLOCK, self)
    }

    /// Makes this set the blocked mask (`sigprocmask(SIG_SETMASK)`).
    pub fn set_mask(&self) -> io::Result<()> {
        mask(libc::SIG_SETMASK, self).map(drop)
    }
}

fn mask(how: i32, set: &SignalSet) -> io::Result<SignalSet> {
    let mut old = SignalSet::empty();
    // SAFETY: both sets are initialised sigset_t values owned by this frame.
    let r = unsafe { libc::pthread_sigmask(how, &set.0, &mut old.0) };
    if r != 0 {
        return Err(super::context(io::Error::from_raw_os_error(r), "pthread_sigmask"));
    }
    Ok(old)
}

/// What to do when a signal arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// `SIG_DFL`.
    Default,
    /// `SIG_IGN`.
    Ignore,
    /// A handler that does nothing (`SA_RESTART`): the signal is caught and dropped. Unlike
    /// `SIG_IGN`, a caught signal goes back to `SIG_DFL` across `execve`, so programs the
    /// process starts are not left ignoring it.
    Discard,
    /// A handler installed by someone else.
    Handler,
}

/// The handler behind [`Disposition::Discard`]. Async-signal-safe: it does nothing.
extern "C" fn discard(_signal: libc::c_int) {}

/// Corresponds to `sigaction(signal, ..)` with `SIG_DFL`, `SIG_IGN` or a handler that does
/// nothing; see [`sigaction(2)`].
///
/// # Errors
/// `InvalidInput` for [`Disposition::Handler`] (herd installs no other handler) or a bad signal.
///
/// [`sigaction(2)`]: https://man7.org/linux/man-pages/man2/sigaction.2.html
pub fn set_disposition(signal: i32, disposition: Disposition) -> io::Result<()> {
    let handler = match disposition {
        Disposition::Default => libc::SIG_DFL,
        Disposition::Ignore => libc::SIG_IGN,
        Disposition::Discard => discard as extern "C" fn(libc::c_int) as libc::sighandler_t,
        Disposition::Handler => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "set_disposition: herd installs no other handler"));
        }
    };
    // SAFETY: SIG_DFL and SIG_IGN run no code of ours in signal context, and `discard` is an
    // `extern "C"` function that does nothing, which is async-signal-safe; the action struct is
    // fully initialised before the call.
    let r = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if r < 0 {
        return Err(super::context(io::Error::last_os_error(), format!("sigaction({signal})")));
    }
    Ok(())
}

/// The current disposition of `signal` (`sigaction(signal, NULL, &old)`).
pub fn disposition(signal: i32) -> io::Result<Disposition> {
    // SAFETY: a null new action only reads the current one into `old`, which is ours.
    let (r, old) = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        let r = libc::sigaction(signal, std::ptr::null(), &mut old);
        (r, old)
    };
    if r < 0 {
        return Err(super::context(io::Error::last_os_error(), format!("sigaction({signal})")));
    }
    Ok(match old.sa_sigaction {
        libc::SIG_DFL => Disposition::Default,
        libc::SIG_IGN => Disposition::Ignore,
        h if h == discard as extern "C" fn(libc::c_int) as libc::sighandler_t => Disposition::Discard,
        _ => Disposition::Handler,
    })
}

/// A [`signalfd(2)`] created with `SFD_CLOEXEC | SFD_NONBLOCK`. The signals must also be
/// blocked, or they are delivered the ordinary way instead.
///
/// [`signalfd(2)`]: https://man7.org/linux/man-pages/man2/signalfd.2.html
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Corresponds to `signalfd(-1, set, SFD_CLOEXEC | SFD_NONBLOCK)`.
    pub fn new(set: &SignalSet) -> io::Result<SignalFd> {
        // SAFETY: `set.0` is an initialised sigset_t; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(super::context(io::Error::last_os_error(), "signalfd"));
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(SignalFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Reads one pending signal (its number and the sending pid), or `None` if none is pending.
    pub fn read(&self) -> io::Result<Option<(i32, i32)>> {
        // SAFETY: an all-zero signalfd_siginfo is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: `info` is a writable buffer of exactly `size` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut info).cast(), size) };
            if n == size as isize {
                return Ok(Some((info.ssi_signo as i32, info.ssi_pid as i32)));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(super::context(err, "read(signalfd)")),
            }
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

//! Errors across the boundary: a negative `errno` (or `NULL`) for the caller to test, and a
//! message for it to print, kept per thread.

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    /// The calling thread's last error message.
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

/// The message of the last call that failed on this thread — which call and why, e.g.
/// `herd_start: bind(127.0.0.1:80): Permission denied (os error 13)` — or an empty string.
///
/// The string belongs to herd and stays valid until the next herd call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn herd_last_error() -> *const c_char {
    LAST.with(|last| last.borrow().as_ptr())
}

/// Records `call`'s failure; returns the negative errno the call returns.
fn fail(call: &str, e: &io::Error) -> c_int {
    let errno = e.raw_os_error().unwrap_or_else(|| errno_of(e.kind()));
    record(format!("{call}: {e}"));
    // SAFETY: `__errno_location` returns this thread's errno, always valid to write.
    unsafe { *libc::__errno_location() = errno };
    -errno
}

fn record(message: String) {
    let message = CString::new(message.replace('\0', "\\0")).expect("NULs were replaced");
    LAST.with(|last| *last.borrow_mut() = message);
}

/// An errno for errors that carry none (herd's own: bad input, a closed channel...).
fn errno_of(kind: io::ErrorKind) -> c_int {
    match kind {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => libc::EINVAL,
        io::ErrorKind::NotFound => libc::ESRCH,
        io::ErrorKind::BrokenPipe => libc::EPIPE,
        io::ErrorKind::Unsupported => libc::ENOTSUP,
        io::ErrorKind::WouldBlock => libc::EAGAIN,
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        io::ErrorKind::AddrInUse => libc::EADDRINUSE,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        _ => libc::EIO,
    }
}

/// Runs `f` for `call`: its result, or — on an error or a panic — a negative errno, with the
/// message recorded.
pub(crate) fn guard(call: &str, f: impl FnOnce() -> io::Result<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => fail(call, &e),
        Err(panic) => fail(call, &io::Error::other(format!("panicked: {}", panic_text(panic.as_ref())))),
    }
}

/// [`guard`] for a call that returns a handle: `NULL` on failure.
pub(crate) fn guard_ptr<T>(call: &str, f: impl FnOnce() -> io::Result<*mut T>) -> *mut T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            fail(call, &e);
            std::ptr::null_mut()
        }
        Err(panic) => {
            fail(call, &io::Error::other(format!("panicked: {}", panic_text(panic.as_ref()))));
            std::ptr::null_mut()
        }
    }
}

/// [`guard`] for a call that cannot fail but must not unwind either: `fallback` on a panic.
pub(crate) fn guard_value<T>(call: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        record(format!("{call}: panicked: {}", panic_text(panic.as_ref())));
        fallback
    })
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// An `InvalidInput` error: a NULL pointer or an argument out of range.
pub(crate) fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: herd_last_error returns a valid NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(herd_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn an_error_is_a_negative_errno_and_a_message_naming_the_call() {
        let rc = guard("herd_test", || Err(io::Error::from_raw_os_error(libc::EADDRINUSE)));
        assert_eq!(rc, -libc::EADDRINUSE);
        assert!(last().starts_with("herd_test: Address already in use"), "{}", last());
        let rc = guard("herd_test", || Err(invalid("mode \"x\": expected shared, handoff, reuseport")));
        assert_eq!(rc, -libc::EINVAL);
        assert_eq!(last(), "herd_test: mode \"x\": expected shared, handoff, reuseport");
    }

    #[test]
    fn a_panic_is_an_error_not_an_unwind() {
        let rc = guard("herd_test", || panic!("boom"));
        assert_eq!(rc, -libc::EIO);
        assert_eq!(last(), "herd_test: panicked: boom");
        let p: *mut u8 = guard_ptr("herd_ptr", || panic!("bang"));
        assert!(p.is_null());
        assert_eq!(guard_value("herd_value", 7, || panic!("pow")), 7);
    }
}

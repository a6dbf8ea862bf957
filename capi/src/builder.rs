//! Configuring a cluster: `herd_builder_*`.

use std::ffi::{CStr, c_char, c_int};
use std::io;
use std::time::Duration;

use herd_rs::{Backend, Builder, Cluster, ListenAddr, Mode};

use crate::error::{guard, guard_ptr, guard_value, invalid};

/// The settings of a cluster not yet started. Opaque: made by `herd_builder_new`, consumed by
/// `herd_start`, or released by `herd_builder_free`.
pub struct herd_builder {
    /// `None` once consumed.
    pub(crate) builder: Option<Builder>,
}

/// A C string argument, or an `InvalidInput` error naming it.
pub(crate) fn text<'a>(ptr: *const c_char, what: &str) -> io::Result<&'a str> {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call (the header
    // says so for every `const char *` argument).
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| invalid(format!("{what} is not UTF-8")))
}

/// Applies a setting to the builder behind a handle, or fails with `InvalidInput`.
fn with(b: *mut herd_builder, f: impl FnOnce(Builder) -> Builder) -> io::Result<c_int> {
    // SAFETY: a non-NULL handle is one `herd_builder_new` returned and `herd_builder_free` has
    // not released; the caller does not share it between threads.
    let handle = unsafe { b.as_mut() }.ok_or_else(|| invalid("the builder is NULL"))?;
    let builder = handle.builder.take().ok_or_else(|| invalid("the builder was already used by herd_start"))?;
    handle.builder = Some(f(builder));
    Ok(0)
}

/// A new builder for a cluster listening on `listen`: `"127.0.0.1:8080"`, `"[::1]:0"` (port 0:
/// any free port), or a Unix socket path (`"/run/app.sock"`, `"unix:app.sock"`). Every other
/// setting starts at herd's default (shared mode, epoll, one worker per CPU).
///
/// Returns `NULL` for an address that cannot be parsed (`EINVAL`; see `herd_last_error`).
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_new(listen: *const c_char) -> *mut herd_builder {
    guard_ptr("herd_builder_new", || {
        let listen: ListenAddr = text(listen, "listen")?.parse().map_err(|e| invalid(format!("{e}")))?;
        Ok(Box::into_raw(Box::new(herd_builder { builder: Some(Cluster::builder(listen)) })))
    })
}

/// Releases a builder that `herd_start` did not consume. `NULL` is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_free(builder: *mut herd_builder) {
    guard_value("herd_builder_free", (), || {
        if !builder.is_null() {
            // SAFETY: a non-NULL handle came from `herd_builder_new` (Box::into_raw) and is
            // released once, here.
            drop(unsafe { Box::from_raw(builder) });
        }
    })
}

/// How connections reach the workers: `"shared"` (every worker accepts on one listener, with the
/// default strategy `epoll-balance`), `"shared/epoll"`, `"shared/epoll-exclusive"`,
/// `"shared/epoll-rotate"`, `"shared/blocking"`, `"shared/epoll-balance"`, `"handoff"` (the primary accepts and passes
/// each connection on) or `"reuseport"` (one `SO_REUSEPORT` listener per worker).
///
/// Returns 0, or `-EINVAL` for an unknown mode.
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_mode(builder: *mut herd_builder, mode: *const c_char) -> c_int {
    guard("herd_builder_mode", || {
        let mode: Mode = text(mode, "mode")?.parse().map_err(|e| invalid(format!("{e}")))?;
        with(builder, |b| b.mode(mode))
    })
}

/// How connections are taken off listeners: `"epoll"` (the default) or `"io-uring"`. Where
/// io_uring cannot run, the cluster runs on epoll and a `HERD_EVENT_WARNING` says why.
///
/// Returns 0, or `-EINVAL` for an unknown backend.
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_backend(builder: *mut herd_builder, backend: *const c_char) -> c_int {
    guard("herd_builder_backend", || {
        let backend: Backend = text(backend, "backend")?.parse().map_err(|e| invalid(format!("{e}")))?;
        with(builder, |b| b.backend(backend))
    })
}

/// The number of workers (1 to 1024; default: the number of CPUs).
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_workers(builder: *mut herd_builder, workers: u32) -> c_int {
    guard("herd_builder_workers", || {
        if workers == 0 || workers as usize > herd_rs::MAX_WORKERS {
            return Err(invalid(format!("{workers} workers: expected 1 to {}", herd_rs::MAX_WORKERS)));
        }
        with(builder, |b| b.workers(workers as usize))
    })
}

/// The `listen(2)` backlog (default 1024).
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_backlog(builder: *mut herd_builder, backlog: i32) -> c_int {
    guard("herd_builder_backlog", || with(builder, |b| b.backlog(backlog)))
}

/// Handoff mode: the handoffs in flight per worker, unacknowledged (default 32).
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_window(builder: *mut herd_builder, window: u32) -> c_int {
    guard("herd_builder_window", || {
        if window == 0 {
            return Err(invalid("a window of 0: expected at least 1"));
        }
        with(builder, |b| b.handoff_window(window as usize))
    })
}

/// A graceful shutdown kills the workers still busy after this many milliseconds (default
/// 30 000).
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_shutdown_timeout(builder: *mut herd_builder, ms: u64) -> c_int {
    guard("herd_builder_shutdown_timeout", || with(builder, |b| b.shutdown_timeout(Duration::from_millis(ms))))
}

/// The primary gives up (and stops every worker) after more than `limit` restarts within
/// `window_ms` milliseconds (default: 10 within 60 000).
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_restart_limit(builder: *mut herd_builder, limit: u32, window_ms: u64) -> c_int {
    guard("herd_builder_restart_limit", || {
        with(builder, |b| b.restart_limit(limit as usize, Duration::from_millis(window_ms)))
    })
}

/// Pings every worker each `interval_ms`, and kills (and replaces) one silent for `timeout_ms`.
/// `interval_ms` 0 turns heartbeats off (the default).
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_heartbeat(builder: *mut herd_builder, interval_ms: u64, timeout_ms: u64) -> c_int {
    guard("herd_builder_heartbeat", || {
        if interval_ms == 0 {
            return Ok(0);
        }
        if timeout_ms < interval_ms {
            return Err(invalid(format!("a heartbeat timeout of {timeout_ms} ms is shorter than its interval")));
        }
        with(builder, |b| b.heartbeat(Duration::from_millis(interval_ms), Duration::from_millis(timeout_ms)))
    })
}

/// A reload gives up on a new worker that is not listening after this many milliseconds
/// (default 10 000).
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_reload_timeout(builder: *mut herd_builder, ms: u64) -> c_int {
    guard("herd_builder_reload_timeout", || with(builder, |b| b.reload_timeout(Duration::from_millis(ms))))
}

/// Whether the primary takes `SIGINT`, `SIGTERM`, `SIGQUIT`, `SIGHUP`, `SIGTTIN` and `SIGTTOU`
/// itself (non-zero, the default: they shut down, reload and scale as `herd serve` documents) or
/// leaves them to the program (0), which then calls `herd_primary_shutdown`, `_reload` and
/// `_scale`.
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_handle_signals(builder: *mut herd_builder, on: c_int) -> c_int {
    guard("herd_builder_handle_signals", || with(builder, |b| b.handle_signals(on != 0)))
}

/// Lets `herd_start` (and every later fork: a restart, a reload) fork a process that has other
/// threads (non-zero). By default herd refuses (`-ENOTSUP`): a fork copies only the calling
/// thread, and a lock another thread held at that moment — the allocator's, stdio's, the
/// program's own — stays locked in the child for ever. Turn this on only if no other thread
/// can hold such a lock while herd forks.
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_allow_threads(builder: *mut herd_builder, on: c_int) -> c_int {
    guard("herd_builder_allow_threads", || with(builder, |b| b.allow_threads(on != 0)))
}

/// `TCP_DEFER_ACCEPT`: a connection is accepted once its first bytes have arrived (non-zero) or
/// at once (0, the default).
#[unsafe(no_mangle)]
pub extern "C" fn herd_builder_defer_accept(builder: *mut herd_builder, on: c_int) -> c_int {
    guard("herd_builder_defer_accept", || with(builder, |b| b.defer_accept(on != 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn a_bad_setting_is_refused_and_the_builder_kept() {
        let listen = CString::new("127.0.0.1:0").unwrap();
        let b = herd_builder_new(listen.as_ptr());
        assert!(!b.is_null());
        let bad = CString::new("sideways").unwrap();
        assert_eq!(herd_builder_mode(b, bad.as_ptr()), -libc::EINVAL);
        assert_eq!(herd_builder_workers(b, 0), -libc::EINVAL);
        let good = CString::new("handoff").unwrap();
        assert_eq!(herd_builder_mode(b, good.as_ptr()), 0, "the builder survived the bad settings");
        assert_eq!(herd_builder_mode(b, std::ptr::null()), -libc::EINVAL);
        herd_builder_free(b);
        herd_builder_free(std::ptr::null_mut());
    }

    #[test]
    fn a_bad_address_is_null() {
        let listen = CString::new("nowhere:99999").unwrap();
        assert!(herd_builder_new(listen.as_ptr()).is_null());
        assert!(herd_builder_new(std::ptr::null()).is_null());
    }
}

//! The primary: `herd_start` and `herd_primary_*`.

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use herd_rs::Primary;

use crate::builder::herd_builder;
use crate::error::{guard, guard_ptr, guard_value, invalid};
use crate::event::{Held, fill, herd_event};
use crate::worker::herd_worker;

/// A running cluster, seen from the primary process. Opaque: made by `herd_start`, released by
/// `herd_primary_free`.
pub struct herd_primary {
    primary: Primary,
    held: Held,
    local_addr: CString,
}

/// The counters of the primary (`herd_primary_counters`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct herd_primary_stats {
    /// Connections the primary accepted (handoff; reuseport slots without a worker).
    pub accepted: u64,
    /// Handoffs sent to workers.
    pub dispatched: u64,
    /// Connections that waited in the primary's queue.
    pub queued: u64,
    /// Handoffs taken back from a worker that died or ran out of descriptors, and sent on.
    pub requeued: u64,
    /// System calls the primary made on its hot path.
    pub syscalls: u64,
}

/// The counters of one worker slot (`herd_primary_worker_counters`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct herd_worker_stats {
    /// Times the worker woke for its accept source.
    pub wakeups: u64,
    /// Connections it accepted itself.
    pub accepts: u64,
    /// Accepts that found nothing (`EAGAIN`).
    pub eagains: u64,
    /// Connections handed to it by the primary.
    pub handoffs_received: u64,
    /// Handoffs it acknowledged.
    pub handoffs_acked: u64,
    /// Connections it finished with.
    pub closed: u64,
    /// System calls it made on herd's hot path.
    pub syscalls: u64,
}

/// One live worker (`herd_primary_workers`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct herd_worker_info {
    /// Its slot, 0 to N-1.
    pub worker: u32,
    /// Its pid.
    pub pid: i32,
    /// Its generation: 0, then one more per reload.
    pub generation: u64,
    /// Its channel is open (1) or closed (0).
    pub connected: i32,
    /// It takes connections (1).
    pub listening: i32,
    /// It was asked to exit, or announced it would, and is finishing (1).
    pub exiting: i32,
}

fn handle<'a>(p: *mut herd_primary) -> io::Result<&'a mut herd_primary> {
    // SAFETY: a non-NULL handle is one `herd_start` returned and `herd_primary_free` has not
    // released; the header forbids using it from two threads at once.
    unsafe { p.as_mut() }.ok_or_else(|| invalid("the primary is NULL"))
}

/// Binds the listener(s) `builder` describes, forks the workers, and returns the primary.
/// `builder` is consumed, whether this succeeds or not: do not use it or free it afterwards.
///
/// Each worker, in its own process, calls `worker_main(worker, user_data)` (a
/// `herd_worker_fn`) and exits once it returns: with 0 if it returned 0, else with 1 after
/// telling the primary (a `HERD_EVENT_WARNING`). It takes connections from `worker` (see
/// `herd_worker_accept` and `herd_worker_next_event`); `user_data` is passed as given.
///
/// Call from a single-threaded process: herd forks, and a fork copies only the calling thread
/// (a lock another thread held would stay locked in the child for ever). herd refuses to fork
/// a process that has other threads (`-ENOTSUP`).
///
/// Returns `NULL` on failure — a bad address, a port in use (`EADDRINUSE`), a failed fork —
/// with `errno` and `herd_last_error()` saying why.
#[unsafe(no_mangle)]
pub extern "C" fn herd_start(
    builder: *mut herd_builder,
    worker_main: Option<extern "C" fn(worker: *mut herd_worker, user_data: *mut c_void) -> c_int>,
    user_data: *mut c_void,
) -> *mut herd_primary {
    guard_ptr("herd_start", || {
        if builder.is_null() {
            return Err(invalid("the builder is NULL"));
        }
        // SAFETY: a non-NULL builder came from `herd_builder_new`; it is consumed here, once.
        let mut b = unsafe { Box::from_raw(builder) };
        let worker_main = worker_main.ok_or_else(|| invalid("the worker callback is NULL"))?;
        let builder = b.builder.take().ok_or_else(|| invalid("the builder was already used"))?;
        let cluster = builder.bind()?;
        let user_data = user_data as usize;
        let primary = cluster.start(move |worker| {
            let mut handle = herd_worker::new(worker);
            let code = worker_main(&mut handle, user_data as *mut c_void);
            if code == 0 { Ok(()) } else { Err(io::Error::other(format!("the worker callback returned {code}"))) }
        })?;
        let local_addr = CString::new(primary.local_addr().to_string()).unwrap_or_default();
        Ok(Box::into_raw(Box::new(herd_primary { primary, held: Held::default(), local_addr })))
    })
}

/// Releases the primary. Workers still running are killed (`SIGKILL`) and reaped first: call
/// `herd_primary_shutdown` and wait for the events to end for a graceful stop. `NULL` is
/// ignored.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_free(primary: *mut herd_primary) {
    guard_value("herd_primary_free", (), || {
        if !primary.is_null() {
            // SAFETY: a non-NULL handle came from `herd_start` (Box::into_raw) and is released
            // once, here.
            drop(unsafe { Box::from_raw(primary) });
        }
    })
}

/// The primary's descriptor, to poll for reading in the program's own event loop: readable
/// whenever `herd_primary_next_event(primary, &event, 0)` has something to do. Call that until
/// it returns 0. Owned by herd: do not close it. -1 for `NULL`.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_fd(primary: *mut herd_primary) -> c_int {
    guard_value("herd_primary_fd", -1, || handle(primary).map_or(-1, |p| p.primary.as_fd().as_raw_fd()))
}

/// The next event, waiting at most `timeout_ms` milliseconds (0: not at all, -1: for ever).
///
/// Returns 1 with `*event` filled; 0 if none came in time — or none will come any more, once
/// every worker has exited after a shutdown (`herd_primary_finished` tells the two apart); or a
/// negative errno if the primary itself failed (its epoll or timer). What `*event` points to is
/// valid until the next call on `primary`.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_next_event(
    primary: *mut herd_primary,
    event: *mut herd_event,
    timeout_ms: i64,
) -> c_int {
    guard("herd_primary_next_event", || {
        let p = handle(primary)?;
        // SAFETY: the caller passes a writable `herd_event`, or NULL (refused).
        let out = unsafe { event.as_mut() }.ok_or_else(|| invalid("the event is NULL"))?;
        match p.primary.next_event_timeout(crate::timeout(timeout_ms))? {
            Some(e) => {
                fill(e, &mut p.held, out);
                Ok(1)
            }
            None => Ok(0),
        }
    })
}

/// 1 once every worker has exited after a shutdown (or none is left at all): no event will
/// come any more. 0 otherwise.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_finished(primary: *mut herd_primary) -> c_int {
    guard_value("herd_primary_finished", 1, || handle(primary).map_or(1, |p| p.primary.is_finished().into()))
}

/// The address the cluster listens on, e.g. `127.0.0.1:40123` (the port chosen if it was 0), or
/// the Unix socket's path. Owned by the primary, valid until `herd_primary_free`.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_local_addr(primary: *mut herd_primary) -> *const c_char {
    guard_value("herd_primary_local_addr", std::ptr::null(), || {
        handle(primary).map_or(std::ptr::null(), |p| p.local_addr.as_ptr())
    })
}

/// The backend that runs: `"epoll"`, or `"io-uring"` if it was asked for and can run here.
/// A static string.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_backend(primary: *mut herd_primary) -> *const c_char {
    guard_value("herd_primary_backend", std::ptr::null(), || match handle(primary) {
        Ok(p) => match p.primary.backend() {
            herd_rs::Backend::IoUring => c"io-uring".as_ptr(),
            _ => c"epoll".as_ptr(),
        },
        Err(_) => std::ptr::null(),
    })
}

/// The descriptors of a C array, borrowed, or an error for a NULL array that is not empty.
pub(crate) fn borrowed_fds<'a>(fds: *const c_int, nfds: usize) -> io::Result<Vec<BorrowedFd<'a>>> {
    if nfds == 0 {
        return Ok(Vec::new());
    }
    if fds.is_null() {
        return Err(invalid(format!("{nfds} descriptors at NULL")));
    }
    // SAFETY: the caller passes `nfds` descriptors at `fds`, open for the duration of the call.
    let raw = unsafe { std::slice::from_raw_parts(fds, nfds) };
    raw.iter()
        .map(|&fd| {
            if fd < 0 {
                return Err(invalid(format!("descriptor {fd}")));
            }
            // SAFETY: as above: each is an open descriptor the caller keeps open meanwhile.
            Ok(unsafe { BorrowedFd::borrow_raw(fd) })
        })
        .collect()
}

/// A pid from C (`pid_t`): positive.
fn pid_of(pid: i32) -> io::Result<u32> {
    u32::try_from(pid).ok().filter(|&p| p > 0).ok_or_else(|| invalid(format!("pid {pid}")))
}

/// `len` bytes at `data` (NULL allowed when `len` is 0).
pub(crate) fn bytes<'a>(data: *const c_void, len: usize) -> io::Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(invalid(format!("{len} bytes at NULL")));
    }
    // SAFETY: the caller passes `len` readable bytes at `data` for the duration of the call.
    Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

/// Sends `len` bytes (at most 65 528), and `nfds` descriptors (duplicated into the worker; the
/// program keeps its own), to the worker `pid`, which gets a `HERD_WORKER_MESSAGE`. Never blocks.
///
/// Returns 0; `-ESRCH` if `pid` is no live worker; `-EINVAL` for too many bytes; `-EPIPE` if
/// its channel is closed.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_send(
    primary: *mut herd_primary,
    pid: i32,
    data: *const c_void,
    len: usize,
    fds: *const c_int,
    nfds: usize,
) -> c_int {
    guard("herd_primary_send", || {
        let p = handle(primary)?;
        p.primary.send_with_fds(pid_of(pid)?, bytes(data, len)?, &borrowed_fds(fds, nfds)?)?;
        Ok(0)
    })
}

/// Sends `len` bytes to every connected worker; returns how many it reached.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_broadcast(primary: *mut herd_primary, data: *const c_void, len: usize) -> c_int {
    guard("herd_primary_broadcast", || {
        let p = handle(primary)?;
        let n = p.primary.broadcast(bytes(data, len)?)?;
        Ok(c_int::try_from(n).unwrap_or(c_int::MAX))
    })
}

/// Asks the worker `pid` to stop taking connections, finish its open ones and exit (Node's
/// `worker.disconnect()`); it is not replaced. Returns 0 or `-ESRCH`.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_disconnect(primary: *mut herd_primary, pid: i32) -> c_int {
    guard("herd_primary_disconnect", || {
        handle(primary)?.primary.disconnect(pid_of(pid)?)?;
        Ok(0)
    })
}

/// Sends `signal` to the worker `pid`. A signal that ends it makes its exit expected (it is not
/// replaced); one it survives (`SIGUSR1` to reopen logs, say) changes nothing. Returns 0 or
/// `-ESRCH`.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_kill(primary: *mut herd_primary, pid: i32, signal: c_int) -> c_int {
    guard("herd_primary_kill", || {
        handle(primary)?.primary.kill(pid_of(pid)?, signal)?;
        Ok(0)
    })
}

/// A rolling reload, as `SIGHUP` does: a new generation is forked, and each old worker retired
/// once its replacement listens. The `HERD_EVENT_RELOAD_*` events follow. Returns 0, or
/// `-EINVAL` once the cluster has shut down.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_reload(primary: *mut herd_primary) -> c_int {
    guard("herd_primary_reload", || {
        running(primary)?.primary.reload()?;
        Ok(0)
    })
}

/// Sets the number of workers to `workers` (1 to 1024), forking or retiring the difference.
/// Returns 0, or `-EINVAL` for a number out of range or a cluster that has shut down.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_scale(primary: *mut herd_primary, workers: u32) -> c_int {
    guard("herd_primary_scale", || {
        let p = running(primary)?;
        if workers == 0 || workers as usize > herd_rs::MAX_WORKERS {
            return Err(invalid(format!("{workers} workers: expected 1 to {}", herd_rs::MAX_WORKERS)));
        }
        p.primary.scale(workers as usize)?;
        Ok(0)
    })
}

/// The primary, unless its cluster has shut down (`herd_primary_finished`).
fn running<'a>(p: *mut herd_primary) -> io::Result<&'a mut herd_primary> {
    let p = handle(p)?;
    if p.primary.is_finished() {
        return Err(invalid("the cluster has shut down"));
    }
    Ok(p)
}

/// Begins a shutdown: graceful (non-zero: the workers finish their connections and exit, and
/// are killed after the shutdown timeout) or immediate (0: killed at once). Keep calling
/// `herd_primary_next_event` until `herd_primary_finished`.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_shutdown(primary: *mut herd_primary, graceful: c_int) -> c_int {
    guard("herd_primary_shutdown", || {
        handle(primary)?.primary.shutdown(graceful != 0)?;
        Ok(0)
    })
}

/// The primary's counters, into `*out`. Returns 0.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_counters(primary: *mut herd_primary, out: *mut herd_primary_stats) -> c_int {
    guard("herd_primary_counters", || {
        let p = handle(primary)?;
        // SAFETY: the caller passes a writable struct, or NULL (refused).
        let out = unsafe { out.as_mut() }.ok_or_else(|| invalid("the counters are NULL"))?;
        let s = p.primary.counters().primary();
        *out = herd_primary_stats {
            accepted: s.accepted,
            dispatched: s.dispatched,
            queued: s.queued,
            requeued: s.requeued,
            syscalls: s.syscalls,
        };
        Ok(0)
    })
}

/// The counters of worker slot `slot` into `*out` (cumulative over every worker that has
/// filled the slot). Returns the number of slots used so far (so `slot` may range below it), or
/// `-EINVAL` for a slot beyond them.
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_worker_counters(
    primary: *mut herd_primary,
    slot: u32,
    out: *mut herd_worker_stats,
) -> c_int {
    guard("herd_primary_worker_counters", || {
        let p = handle(primary)?;
        let counters = p.primary.counters();
        let slots = counters.slots();
        if slot as usize >= slots {
            return Err(invalid(format!("slot {slot}: {slots} slots are in use")));
        }
        // SAFETY: the caller passes a writable struct, or NULL (refused).
        let out = unsafe { out.as_mut() }.ok_or_else(|| invalid("the counters are NULL"))?;
        let w = counters.worker(slot as usize);
        *out = herd_worker_stats {
            wakeups: w.wakeups,
            accepts: w.accepts,
            eagains: w.eagains,
            handoffs_received: w.handoffs_received,
            handoffs_acked: w.handoffs_acked,
            closed: w.closed,
            syscalls: w.syscalls,
        };
        Ok(c_int::try_from(slots).unwrap_or(c_int::MAX))
    })
}

/// The live workers, in fork order: up to `capacity` into `out`. Returns how many there are
/// (which may be more than `capacity`).
#[unsafe(no_mangle)]
pub extern "C" fn herd_primary_workers(
    primary: *mut herd_primary,
    out: *mut herd_worker_info,
    capacity: usize,
) -> c_int {
    guard("herd_primary_workers", || {
        let p = handle(primary)?;
        let workers = p.primary.workers();
        if capacity > 0 && out.is_null() {
            return Err(invalid("the array is NULL"));
        }
        for (i, w) in workers.iter().take(capacity).enumerate() {
            let info = herd_worker_info {
                worker: w.id as u32,
                pid: i32::try_from(w.pid).unwrap_or(i32::MAX),
                generation: w.generation,
                connected: w.connected.into(),
                listening: w.listening.into(),
                exiting: w.exiting.into(),
            };
            // SAFETY: the caller passes room for `capacity` structs at `out`, and i < capacity.
            unsafe { out.add(i).write(info) };
        }
        Ok(c_int::try_from(workers.len()).unwrap_or(c_int::MAX))
    })
}

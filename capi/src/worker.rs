//! The worker side: what the worker callback gets, `herd_worker_*`. Every call here is for the
//! worker process, inside the callback.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::time::Instant;

use herd_rs::{Worker, WorkerEvent};

use crate::error::{guard, guard_value, invalid};
use crate::event::{HERD_WORKER_CONNECTION, HERD_WORKER_STOP, Held, fill_message, herd_worker_event};
use crate::primary::{borrowed_fds, bytes};

/// The worker callback: runs in each forked worker with its `herd_worker` and the `user_data`
/// given to `herd_start`; the worker process exits when it returns (0: success).
pub type herd_worker_fn = extern "C" fn(worker: *mut herd_worker, user_data: *mut c_void) -> c_int;

/// A worker, seen from inside the worker callback (valid until the callback returns), or made
/// by `herd_worker_from_env` in a program `herd run` started (valid until `herd_worker_free`).
/// Opaque.
pub struct herd_worker {
    worker: *mut Worker,
    /// The worker itself, when this handle owns it (`herd_worker_from_env`).
    owned: Option<Box<Worker>>,
    held: Held,
    ready: Vec<herd_rs::Ready>,
    /// Messages taken from the worker and not yet given to the program.
    messages: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    /// `HERD_WORKER_STOP` was returned: it is returned again, at once, by every later call.
    stopped: bool,
}

impl herd_worker {
    pub(crate) fn new(worker: &mut Worker) -> herd_worker {
        herd_worker {
            worker,
            owned: None,
            held: Held::default(),
            ready: Vec::new(),
            messages: VecDeque::new(),
            stopped: false,
        }
    }
}

/// For a program that `herd run` started (each worker a program of its own): the worker it
/// was started as, taken from what herd passed — the listener at descriptor 3 (`LISTEN_FDS`),
/// the channel, the lane and the counters (`HERD_CHANNEL_FD`...; see docs/exec.md). Use it as
/// the worker callback uses its handle (`herd_worker_accept`, `herd_worker_next_event`...),
/// then release it with `herd_worker_free` before exiting.
///
/// Returns `NULL` with `errno` and `herd_last_error()` saying why: `ENOENT` if the program
/// was not started by herd (`HERD_CHANNEL_FD is not set`), `EINVAL` naming the variable for a
/// value that does not parse or a descriptor that is not open.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_from_env() -> *mut herd_worker {
    crate::error::guard_ptr("herd_worker_from_env", || {
        let mut owned = Box::new(Worker::from_env()?);
        let mut handle = herd_worker::new(&mut owned);
        handle.owned = Some(owned);
        Ok(Box::into_raw(Box::new(handle)))
    })
}

/// Releases a worker made by `herd_worker_from_env` (its descriptors close). `NULL`, and the
/// handle a worker callback was given (herd releases that one), are ignored.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_free(worker: *mut herd_worker) {
    guard_value("herd_worker_free", (), || {
        // SAFETY: a non-NULL handle came from `herd_worker_from_env` (Box::into_raw) or is the
        // callback's (checked below: it owns nothing and is not released here).
        if let Some(handle) = unsafe { worker.as_mut() } {
            if handle.owned.is_some() {
                // SAFETY: made by Box::into_raw in `herd_worker_from_env`, released once.
                drop(unsafe { Box::from_raw(worker) });
            }
        }
    })
}

type Parts<'a> = (&'a mut Worker, &'a mut Held, &'a mut Vec<herd_rs::Ready>);

fn handle<'a>(w: *mut herd_worker) -> io::Result<Parts<'a>> {
    with_messages(w).map(|(worker, held, ready, _)| (worker, held, ready))
}

/// Whether `HERD_WORKER_STOP` was returned already (and, with `set`, that it is now).
fn stopped(w: *mut herd_worker, set: bool) -> bool {
    // SAFETY: as in `with_messages`: the handle the callback got, used from its thread.
    match unsafe { w.as_mut() } {
        Some(handle) => {
            handle.stopped |= set;
            handle.stopped
        }
        None => false,
    }
}

#[allow(clippy::type_complexity)]
fn with_messages<'a>(
    w: *mut herd_worker,
) -> io::Result<(&'a mut Worker, &'a mut Held, &'a mut Vec<herd_rs::Ready>, &'a mut VecDeque<(Vec<u8>, Vec<OwnedFd>)>)>
{
    // SAFETY: a non-NULL handle is the one herd passed to the worker callback, which is still
    // running (the header says the handle is valid only until it returns); the `Worker` it
    // points to outlives the callback, and nothing else uses it meanwhile.
    let handle = unsafe { w.as_mut() }.ok_or_else(|| invalid("the worker is NULL"))?;
    // SAFETY: as above.
    let worker = unsafe { handle.worker.as_mut() }.ok_or_else(|| invalid("the worker is NULL"))?;
    Ok((worker, &mut handle.held, &mut handle.ready, &mut handle.messages))
}

/// The worker's slot, 0 to N-1 (a replacement takes its predecessor's).
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_id(worker: *mut herd_worker) -> u32 {
    guard_value("herd_worker_id", 0, || handle(worker).map_or(0, |(w, ..)| w.id() as u32))
}

/// The worker's generation: 0 for the first workers, one more for each reload.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_generation(worker: *mut herd_worker) -> u64 {
    guard_value("herd_worker_generation", 0, || handle(worker).map_or(0, |(w, ..)| w.generation()))
}

/// The worker's descriptor, to poll for reading in the program's own event loop (epoll, libuv,
/// libevent): readable whenever `herd_worker_next_event(worker, &event, 0)` has something.
/// Call that until it returns 0; call `herd_worker_ready` once the loop runs. Owned by herd:
/// do not close it.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_fd(worker: *mut herd_worker) -> c_int {
    guard_value("herd_worker_fd", -1, || handle(worker).map_or(-1, |(w, ..)| w.as_raw_fd()))
}

/// Tells the primary this worker takes connections — once; herd does it on the first
/// `herd_worker_accept` or `herd_worker_next_event`. Until then the primary hands it nothing,
/// and a reload does not retire the worker it replaces.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_ready(worker: *mut herd_worker) {
    guard_value("herd_worker_ready", (), || {
        if let Ok((w, ..)) = handle(worker) {
            w.ready();
        }
    })
}

/// Fills `out` from a worker event.
fn fill(event: WorkerEvent, held: &mut Held, out: &mut herd_worker_event, blocking: bool) -> io::Result<()> {
    *out = herd_worker_event::empty();
    match event {
        WorkerEvent::Connection(stream) => {
            stream.set_nonblocking(!blocking)?;
            out.kind = HERD_WORKER_CONNECTION;
            out.fd = OwnedFd::from(stream).into_raw_fd();
        }
        WorkerEvent::Message { data, fds } => fill_message(data, fds, held, out),
        _ => out.kind = HERD_WORKER_STOP,
    }
    Ok(())
}

/// The next event of the worker — a connection, a message, or the request to stop — waiting at
/// most `timeout_ms` milliseconds (0: not at all, -1: for ever).
///
/// Returns 1 with `*event` filled, 0 if none came in time, or a negative errno. A connection's
/// descriptor is non-blocking and the program's to close; what a message points to is valid
/// until the next call on `worker`. After `HERD_WORKER_STOP`, finish the open connections and
/// return from the callback; every later call returns `HERD_WORKER_STOP` again, at once.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_next_event(
    worker: *mut herd_worker,
    event: *mut herd_worker_event,
    timeout_ms: i64,
) -> c_int {
    guard("herd_worker_next_event", || {
        let already_stopped = stopped(worker, false);
        let (w, held, ready) = handle(worker)?;
        // SAFETY: the caller passes a writable struct, or NULL (refused).
        let out = unsafe { event.as_mut() }.ok_or_else(|| invalid("the event is NULL"))?;
        if already_stopped {
            *out = herd_worker_event::empty();
            out.kind = HERD_WORKER_STOP;
            return Ok(1);
        }
        let deadline = crate::timeout(timeout_ms).map(|t| Instant::now() + t);
        loop {
            if let Some(e) = w.try_event()? {
                fill(e, held, out, false)?;
                if out.kind == HERD_WORKER_STOP {
                    stopped(worker, true);
                }
                return Ok(1);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(0);
            }
            // Nothing of the program's is registered with the worker: this waits for herd's
            // own sources, whose events the next `try_event` returns.
            w.poll(ready, left)?;
        }
    })
}

/// The blocking way: waits for the next connection and returns 1 with its descriptor — in
/// blocking mode, the program's to close — in `*fd`; 0 when the primary asks the worker to stop
/// (return from the callback); or a negative errno. Messages that arrive meanwhile are kept for
/// `herd_worker_take_message`.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_accept(worker: *mut herd_worker, fd: *mut c_int) -> c_int {
    guard("herd_worker_accept", || {
        let (w, ..) = handle(worker)?;
        // SAFETY: the caller passes a writable int, or NULL (refused).
        let out = unsafe { fd.as_mut() }.ok_or_else(|| invalid("fd is NULL"))?;
        match w.incoming().next() {
            Some(stream) => {
                *out = OwnedFd::from(stream?).into_raw_fd();
                Ok(1)
            }
            None => Ok(0),
        }
    })
}

/// A message that arrived during `herd_worker_accept`: returns 1 with `*event` filled
/// (`HERD_WORKER_MESSAGE`), or 0 if none is waiting.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_take_message(worker: *mut herd_worker, event: *mut herd_worker_event) -> c_int {
    guard("herd_worker_take_message", || {
        let (w, held, _, messages) = with_messages(worker)?;
        // SAFETY: the caller passes a writable struct, or NULL (refused).
        let out = unsafe { event.as_mut() }.ok_or_else(|| invalid("the event is NULL"))?;
        messages.extend(w.take_messages());
        let Some((data, fds)) = messages.pop_front() else { return Ok(0) };
        fill_message(data, fds, held, out);
        Ok(1)
    })
}

/// Sends `len` bytes (at most 65 528), and `nfds` descriptors (duplicated into the primary; the
/// program keeps its own), to the primary, which reports a `HERD_EVENT_MESSAGE`. Blocks while
/// the channel is full — the primary has not yet read earlier messages.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_send(
    worker: *mut herd_worker,
    data: *const c_void,
    len: usize,
    fds: *const c_int,
    nfds: usize,
) -> c_int {
    guard("herd_worker_send", || {
        let (w, ..) = handle(worker)?;
        w.send_with_fds(bytes(data, len)?, &borrowed_fds(fds, nfds)?)?;
        Ok(0)
    })
}

/// "I am about to exit": the primary forks this worker's replacement at once and does not count
/// the exit as a crash. No more connections come; `herd_worker_accept` returns 0 (or
/// `herd_worker_next_event` `HERD_WORKER_STOP`) once those already taken are out.
#[unsafe(no_mangle)]
pub extern "C" fn herd_worker_retire(worker: *mut herd_worker) -> c_int {
    guard("herd_worker_retire", || {
        handle(worker)?.0.retire()?;
        Ok(0)
    })
}

//! Events as C sees them: plain structs whose pointers borrow from the handle that filled them.

use std::ffi::{CString, c_char, c_int};
use std::os::fd::{IntoRawFd, OwnedFd};

use herd_rs::{Event, ReloadPhase, WorkerExit};

/// A worker was forked (`worker`, `pid`).
pub const HERD_EVENT_FORK: u32 = 1;
/// A worker is running and has said so.
pub const HERD_EVENT_ONLINE: u32 = 2;
/// A worker takes connections now.
pub const HERD_EVENT_LISTENING: u32 = 3;
/// A worker sent a message: `data`/`len`, and `fds`/`nfds` (now the program's to close).
pub const HERD_EVENT_MESSAGE: u32 = 4;
/// A worker's channel closed: it takes no more connections and is finishing.
pub const HERD_EVENT_DISCONNECT: u32 = 5;
/// A worker exited: its `exit_code` (or -1) or the `signal` that killed it (or 0); `flag` is 1
/// if the exit was expected (the worker was asked to go, or announced it would), 0 for a crash.
pub const HERD_EVENT_EXIT: u32 = 6;
/// A worker announced it will exit on its own; its replacement is forked at once.
pub const HERD_EVENT_RETIRING: u32 = 7;
/// A worker stopped answering heartbeats for `millis` ms and is killed.
pub const HERD_EVENT_UNRESPONSIVE: u32 = 8;
/// A reload to generation `generation` started.
pub const HERD_EVENT_RELOAD_STARTED: u32 = 9;
/// Every worker of generation `generation` listens; the old ones are retired.
pub const HERD_EVENT_RELOAD_FINISHED: u32 = 10;
/// The reload failed (`text` says why); the old workers keep serving.
pub const HERD_EVENT_RELOAD_FAILED: u32 = 11;
/// The target number of workers is now `count`.
pub const HERD_EVENT_SCALE: u32 = 12;
/// More than the restart limit: `count` restarts within `millis` ms. Every worker is stopped.
pub const HERD_EVENT_GAVE_UP: u32 = 13;
/// Forking worker `worker` failed (`text`); it is retried in `millis` ms (0: not retried).
pub const HERD_EVENT_SPAWN_FAILED: u32 = 14;
/// Something the program should know (`text`); `worker` and `pid` are -1 for the primary's own.
pub const HERD_EVENT_WARNING: u32 = 15;
/// A shutdown began: `signal` (0 when asked from code), `graceful` or not.
pub const HERD_EVENT_SHUTDOWN: u32 = 16;
/// An event this version of the header does not know; `description` says what it is.
pub const HERD_EVENT_OTHER: u32 = 255;

/// One event of the primary (`herd_primary_next_event`). Fields that do not apply to `kind`
/// are 0, -1 or `NULL`, as each says. Pointers borrow from the primary: valid until the next
/// call on it.
#[repr(C)]
#[derive(Debug)]
pub struct herd_event {
    /// One of `HERD_EVENT_*`.
    pub kind: u32,
    /// The worker's slot (0 to N-1), or -1.
    pub worker: i32,
    /// The worker's pid, or -1.
    pub pid: i32,
    /// `HERD_EVENT_EXIT`: the exit code, or -1 (killed by a signal, or unknown).
    pub exit_code: i32,
    /// `HERD_EVENT_EXIT`: the signal that killed it, or 0. `HERD_EVENT_SHUTDOWN`: the signal
    /// that asked for it, or 0.
    pub signal: i32,
    /// `HERD_EVENT_EXIT`: the exit was asked for (1) or is a crash (0).
    /// `HERD_EVENT_SHUTDOWN`: graceful (1) or immediate (0).
    pub flag: i32,
    /// `HERD_EVENT_RELOAD_*`: the new generation.
    pub generation: u64,
    /// `HERD_EVENT_SCALE`: workers. `HERD_EVENT_GAVE_UP`: restarts.
    pub count: u64,
    /// `HERD_EVENT_UNRESPONSIVE`: silent for. `HERD_EVENT_GAVE_UP`: within.
    /// `HERD_EVENT_SPAWN_FAILED`: retried in (0: not retried). In milliseconds.
    pub millis: u64,
    /// `HERD_EVENT_WARNING`, `_SPAWN_FAILED`, `_RELOAD_FAILED`: what happened; else `NULL`.
    pub text: *const c_char,
    /// `HERD_EVENT_MESSAGE`: the bytes (`len` of them); else `NULL`.
    pub data: *const u8,
    pub len: usize,
    /// `HERD_EVENT_MESSAGE`: the descriptors that came with it (`nfds`), now the program's to
    /// close; else `NULL`.
    pub fds: *const c_int,
    pub nfds: usize,
    /// Every event: one line saying what happened, as `herd serve` logs it.
    pub description: *const c_char,
}

/// What an event's pointers point to, kept by the handle until its next call.
#[derive(Debug, Default)]
pub(crate) struct Held {
    text: Option<CString>,
    description: CString,
    data: Vec<u8>,
    fds: Vec<c_int>,
}

fn c_string(s: String) -> CString {
    CString::new(s.replace('\0', "\\0")).expect("NULs were replaced")
}

fn id(id: usize) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Hands `fds` to C: from now on the program closes them.
pub(crate) fn release(fds: Vec<OwnedFd>) -> Vec<c_int> {
    fds.into_iter().map(IntoRawFd::into_raw_fd).collect()
}

impl herd_event {
    /// An event with nothing set.
    pub(crate) fn empty() -> herd_event {
        herd_event {
            kind: 0,
            worker: -1,
            pid: -1,
            exit_code: -1,
            signal: 0,
            flag: 0,
            generation: 0,
            count: 0,
            millis: 0,
            text: std::ptr::null(),
            data: std::ptr::null(),
            len: 0,
            fds: std::ptr::null(),
            nfds: 0,
            description: std::ptr::null(),
        }
    }
}

/// Fills `out` from `event`, keeping what it points to in `held`.
pub(crate) fn fill(event: Event, held: &mut Held, out: &mut herd_event) {
    *out = herd_event::empty();
    held.description = c_string(event.to_string());
    held.text = None;
    held.data.clear();
    held.fds.clear();
    let who = |out: &mut herd_event, w: usize, pid: u32| {
        out.worker = id(w);
        out.pid = i32::try_from(pid).unwrap_or(-1);
    };
    match event {
        Event::Fork { id: w, pid } => {
            out.kind = HERD_EVENT_FORK;
            who(out, w, pid);
        }
        Event::Online { id: w, pid } => {
            out.kind = HERD_EVENT_ONLINE;
            who(out, w, pid);
        }
        Event::Listening { id: w, pid } => {
            out.kind = HERD_EVENT_LISTENING;
            who(out, w, pid);
        }
        Event::Message { id: w, pid, data, fds } => {
            out.kind = HERD_EVENT_MESSAGE;
            who(out, w, pid);
            held.data = data;
            held.fds = release(fds);
        }
        Event::Disconnect { id: w, pid } => {
            out.kind = HERD_EVENT_DISCONNECT;
            who(out, w, pid);
        }
        Event::Exit { id: w, pid, status, expected } => {
            out.kind = HERD_EVENT_EXIT;
            who(out, w, pid);
            match status {
                WorkerExit::Code(c) => out.exit_code = c,
                WorkerExit::Signal(s) => out.signal = s,
                _ => {}
            }
            out.flag = expected.into();
        }
        Event::Retiring { id: w, pid } => {
            out.kind = HERD_EVENT_RETIRING;
            who(out, w, pid);
        }
        Event::Unresponsive { id: w, pid, silent_for } => {
            out.kind = HERD_EVENT_UNRESPONSIVE;
            who(out, w, pid);
            out.millis = millis(silent_for);
        }
        Event::Reload { generation, phase } => {
            out.generation = generation;
            out.kind = match phase {
                ReloadPhase::Started => HERD_EVENT_RELOAD_STARTED,
                ReloadPhase::Finished => HERD_EVENT_RELOAD_FINISHED,
                ReloadPhase::Failed { reason } => {
                    held.text = Some(c_string(reason));
                    HERD_EVENT_RELOAD_FAILED
                }
                _ => HERD_EVENT_OTHER,
            };
        }
        Event::Scale { workers } => {
            out.kind = HERD_EVENT_SCALE;
            out.count = workers as u64;
        }
        Event::GaveUp { restarts, within } => {
            out.kind = HERD_EVENT_GAVE_UP;
            out.count = restarts as u64;
            out.millis = millis(within);
        }
        Event::SpawnFailed { id: w, error, retry_in } => {
            out.kind = HERD_EVENT_SPAWN_FAILED;
            out.worker = id(w);
            out.millis = retry_in.map_or(0, millis);
            held.text = Some(c_string(error));
        }
        Event::Warning { id: w, pid, message } => {
            out.kind = HERD_EVENT_WARNING;
            out.worker = w.map_or(-1, id);
            out.pid = pid.and_then(|p| i32::try_from(p).ok()).unwrap_or(-1);
            held.text = Some(c_string(message));
        }
        Event::Shutdown { signal, graceful } => {
            out.kind = HERD_EVENT_SHUTDOWN;
            out.signal = signal;
            out.flag = graceful.into();
        }
        _ => out.kind = HERD_EVENT_OTHER,
    }
    out.description = held.description.as_ptr();
    out.text = held.text.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    if out.kind == HERD_EVENT_MESSAGE {
        out.data = held.data.as_ptr();
        out.len = held.data.len();
        out.fds = if held.fds.is_empty() { std::ptr::null() } else { held.fds.as_ptr() };
        out.nfds = held.fds.len();
    }
}

/// A connection for the worker: `fd`, now the program's (to read, write and close).
pub const HERD_WORKER_CONNECTION: u32 = 1;
/// A message from the primary: `data`/`len`, and `fds`/`nfds` (now the program's to close).
pub const HERD_WORKER_MESSAGE: u32 = 2;
/// The primary asks the worker to stop: no more connections will come. Finish the open ones and
/// return from the worker callback.
pub const HERD_WORKER_STOP: u32 = 3;

/// One event of a worker (`herd_worker_next_event`). Pointers borrow from the worker: valid
/// until the next call on it.
#[repr(C)]
#[derive(Debug)]
pub struct herd_worker_event {
    /// One of `HERD_WORKER_*`.
    pub kind: u32,
    /// `HERD_WORKER_CONNECTION`: the connection (non-blocking, close-on-exec); else -1.
    pub fd: c_int,
    /// `HERD_WORKER_MESSAGE`: the bytes; else `NULL`.
    pub data: *const u8,
    pub len: usize,
    /// `HERD_WORKER_MESSAGE`: the descriptors that came with it; else `NULL`.
    pub fds: *const c_int,
    pub nfds: usize,
}

impl herd_worker_event {
    pub(crate) fn empty() -> herd_worker_event {
        herd_worker_event { kind: 0, fd: -1, data: std::ptr::null(), len: 0, fds: std::ptr::null(), nfds: 0 }
    }
}

/// Fills `out` with a message, keeping its bytes and descriptors in `held`.
pub(crate) fn fill_message(data: Vec<u8>, fds: Vec<OwnedFd>, held: &mut Held, out: &mut herd_worker_event) {
    *out = herd_worker_event::empty();
    held.data = data;
    held.fds = release(fds);
    out.kind = HERD_WORKER_MESSAGE;
    out.data = held.data.as_ptr();
    out.len = held.data.len();
    out.fds = if held.fds.is_empty() { std::ptr::null() } else { held.fds.as_ptr() };
    out.nfds = held.fds.len();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn text(p: *const c_char) -> String {
        // SAFETY: `fill` points these at CStrings it keeps in `held`, alive for this test.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    #[test]
    fn events_become_flat_structs_that_borrow_their_text() {
        let mut held = Held::default();
        let mut out = herd_event::empty();
        let exit = Event::Exit { id: 2, pid: 4242, status: WorkerExit::Signal(9), expected: false };
        fill(exit, &mut held, &mut out);
        assert_eq!(
            (out.kind, out.worker, out.pid, out.exit_code, out.signal, out.flag),
            (HERD_EVENT_EXIT, 2, 4242, -1, 9, 0)
        );
        assert_eq!(text(out.description), "exit worker=2 pid=4242 signal 9 expected=false");
        assert!(out.text.is_null() && out.data.is_null() && out.fds.is_null());
        let warning = Event::Warning { id: None, pid: None, message: "no tcp_migrate_req".into() };
        fill(warning, &mut held, &mut out);
        assert_eq!((out.kind, out.worker, out.pid), (HERD_EVENT_WARNING, -1, -1));
        assert_eq!(text(out.text), "no tcp_migrate_req");
    }

    #[test]
    fn a_message_hands_its_descriptors_over() {
        let mut held = Held::default();
        let mut out = herd_event::empty();
        let fd: OwnedFd = rustix_free_dup();
        fill(Event::Message { id: 0, pid: 7, data: b"hi".to_vec(), fds: vec![fd] }, &mut held, &mut out);
        assert_eq!((out.kind, out.len, out.nfds), (HERD_EVENT_MESSAGE, 2, 1));
        // SAFETY: `fill` points `data` at 2 bytes and `fds` at 1 descriptor kept in `held`.
        let (data, fd) = unsafe { (std::slice::from_raw_parts(out.data, out.len), *out.fds) };
        assert_eq!(data, b"hi");
        // SAFETY: the descriptor is ours now (the event handed it over); close it once.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }

    /// A descriptor to pass around: a duplicate of stdin.
    fn rustix_free_dup() -> OwnedFd {
        use std::os::fd::AsFd;
        std::io::stdin().as_fd().try_clone_to_owned().unwrap()
    }
}

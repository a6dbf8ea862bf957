//! Workers that are programs of their own: each worker is `fork` + `execve` of a command, as
//! Node's `child_process.fork`, einhorn and systemd start theirs — so a worker can be written
//! in any language, and a reload runs whatever the program file holds *now*.
//!
//! [`crate::Cluster::start_program`] starts a cluster of them. What each program receives (see
//! `docs/exec.md` and `docs/channel-protocol.md`):
//!
//! | descriptor / variable | in which modes | what it is |
//! |---|---|---|
//! | fd 3, `LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES=herd` | shared, reuseport | the listener to accept on, by the `sd_listen_fds(3)` convention: the shared one, or the slot's own |
//! | [`env::CHANNEL_FD`] | all | the control channel (`SOCK_SEQPACKET`) |
//! | [`env::LANE_FD`], [`env::HANDOFF_WINDOW`] | handoff, reuseport | the lane that handed-off connections arrive on, and its window |
//! | [`env::COUNTERS_FD`] | all | the memfd of the shared counters |
//! | [`env::WORKER_ID`], [`env::GENERATION`], [`env::MODE`], [`env::BACKEND`] | all | the slot, the reload generation, the mode, the backend |
//! | `NOTIFY_SOCKET` | all | a socket of the worker's own for `READY=1` (sd_notify) |
//!
//! In `shared/epoll-balance` mode one more follows, [`env::BALANCE_FD`]: the cluster's hand-on
//! eventfd.
//!
//! Descriptors go from 3 up in that order (listener, channel, lane, counters); every other one
//! is closed at exec, every signal disposition is the default and the signal mask is empty.
//! A program linked with herd takes all of it with [`crate::Worker::from_env`].
//!
//! A worker is *listening* once it says so on its channel (programs linked with herd), once it
//! sends `READY=1` on its `NOTIFY_SOCKET`, or once [`Program::ready_delay`] has passed. A worker
//! that has spoken on its channel (any frame but `Online` and `Warning`) is stopped with a
//! `Stop` message; one that never has (or has closed its channel since) gets
//! `SIGTERM` (what most servers take as "finish and exit"); both get `SIGKILL` after the
//! shutdown timeout.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variables herd sets for the programs it starts.
pub mod env {
    /// The control channel's descriptor.
    pub const CHANNEL_FD: &str = "HERD_CHANNEL_FD";
    /// The lane's descriptor (handoff and reuseport modes).
    pub const LANE_FD: &str = "HERD_LANE_FD";
    /// How many handoffs may be unacknowledged on the lane.
    pub const HANDOFF_WINDOW: &str = "HERD_HANDOFF_WINDOW";
    /// The counters memfd's descriptor.
    pub const COUNTERS_FD: &str = "HERD_COUNTERS_FD";
    /// `shared/epoll-balance`: the cluster's hand-on eventfd.
    pub const BALANCE_FD: &str = "HERD_BALANCE_FD";
    /// The worker's slot, 0 to N-1.
    pub const WORKER_ID: &str = "HERD_WORKER_ID";
    /// The reload generation the worker belongs to.
    pub const GENERATION: &str = "HERD_GENERATION";
    /// The mode, as `--mode` takes it (`shared/epoll-rotate`, `handoff`, `reuseport`).
    pub const MODE: &str = "HERD_MODE";
    /// The backend (`epoll`, `io-uring`).
    pub const BACKEND: &str = "HERD_BACKEND";
    /// What the connections are: `tcp` or `unix` (in handoff mode there is no listener to ask).
    pub const STREAM: &str = "HERD_STREAM";
    /// `sd_listen_fds(3)`: how many listeners start at descriptor 3.
    pub const LISTEN_FDS: &str = "LISTEN_FDS";
    /// `sd_listen_fds(3)`: the pid the listeners are meant for.
    pub const LISTEN_PID: &str = "LISTEN_PID";
    /// `sd_listen_fds(3)`: the listeners' names, colon-separated.
    pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
    /// `sd_notify(3)`: where to send `READY=1`.
    pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

    /// Every variable above, and the in-place upgrade's: what a worker's environment never
    /// inherits from the primary's.
    pub(crate) const ALL: [&str; 16] = [
        STREAM,
        crate::upgrade::UPGRADE_FD,
        crate::upgrade::UPGRADE_CHECK,
        BALANCE_FD,
        CHANNEL_FD,
        LANE_FD,
        HANDOFF_WINDOW,
        COUNTERS_FD,
        WORKER_ID,
        GENERATION,
        MODE,
        BACKEND,
        LISTEN_FDS,
        LISTEN_PID,
        LISTEN_FDNAMES,
        NOTIFY_SOCKET,
    ];
}

/// A command each worker runs: a program file and its arguments.
#[derive(Clone, Debug)]
pub struct Program {
    path: PathBuf,
    args: Vec<OsString>,
    ready_delay: Option<Duration>,
}

impl Program {
    /// The program at `path`: a path with a `/` is taken as it is; a bare name is looked up in
    /// `PATH`, as a shell would (once, here: every worker, and every reload, then runs the file
    /// at the path found).
    ///
    /// # Errors
    /// `NotFound` naming the program if no executable file is found; `PermissionDenied` if the
    /// file is not executable.
    pub fn new(path: impl AsRef<OsStr>) -> io::Result<Program> {
        let path = resolve(path.as_ref())?;
        Ok(Program { path, args: Vec::new(), ready_delay: None })
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Program {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Program
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Count a worker as listening this long after it started, if it has not said so by then
    /// (on its channel or with `READY=1`): for programs that do neither. Default: never.
    pub fn ready_delay(mut self, delay: Duration) -> Program {
        self.ready_delay = Some(delay);
        self
    }

    /// The program file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn delay(&self) -> Option<Duration> {
        self.ready_delay
    }

    /// The path and `argv` as C strings (`argv[0]` is the path as given).
    pub(crate) fn c_strings(&self) -> io::Result<(CString, Vec<CString>)> {
        let c = |s: &OsStr| {
            CString::new(s.as_bytes().to_vec()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("program argument {s:?} contains a NUL byte"))
            })
        };
        let path = c(self.path.as_os_str())?;
        let mut argv = vec![path.clone()];
        for a in &self.args {
            argv.push(c(a)?);
        }
        Ok((path, argv))
    }
}

/// The environment a worker program starts from: the primary's, without herd's own variables
/// (and `LISTEN_*` and `NOTIFY_SOCKET`, which were meant for the primary), as `KEY=VALUE`.
pub(crate) fn base_environment() -> Vec<CString> {
    std::env::vars_os()
        .filter(|(k, _)| !env::ALL.iter().any(|ours| k == ours))
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect()
}

fn executable(p: &Path) -> bool {
    rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok() && p.is_file()
}

/// The first executable file called `name` in the directories of `PATH` (a shell's default
/// when it is unset), as `execvp` would find it.
pub(crate) fn find_in_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| executable(p))
}

fn resolve(name: &OsStr) -> io::Result<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        if !p.exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("program {}: no such file", p.display())));
        }
        if !executable(&p) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("program {}: not an executable file", p.display()),
            ));
        }
        return Ok(p);
    }
    find_in_path(name)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("program {name:?}: not found in PATH")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_path_or_refused_by_name() {
        assert!(Program::new("sh").unwrap().path().is_absolute());
        let e = Program::new("herd-no-such-program").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("herd-no-such-program"), "{e}");
        let plain = std::env::temp_dir().join(format!("herd-program-test-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        let e = Program::new(&plain).unwrap_err();
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let e = Program::new("/no/such/file").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn the_base_environment_leaves_out_what_herd_sets() {
        let env = base_environment();
        assert!(!env.iter().any(|kv| kv.as_bytes().starts_with(b"HERD_CHANNEL_FD=")));
        assert!(env.iter().any(|kv| kv.as_bytes().starts_with(b"PATH=")));
    }
}

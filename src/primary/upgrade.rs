//! The primary's in-place upgrade (SIGUSR2): the old image checks the new binary, writes its
//! state and executes it; the new image reads the state and goes on. See [`crate::upgrade`]
//! for the sequence and the format.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::accepting::Accepting;
use super::supervise::{Restarts, Retries};
use super::timers::Deadlines;
use super::{Primary, PrimaryIo, Token, WorkerHandle, WorkerProgram};
use crate::accept::Backend;
use crate::channel::Channel;
use crate::config::{Config, Heartbeat};
use crate::listener::UnixPath;
use crate::mode::handoff::Dispatcher;
use crate::stats::Counters;
use crate::sys::epoll::Interest;
use crate::sys::process::{self, Child, Forked, ThreadCheck};
use crate::sys::signal::{SignalFd, SignalSet};
use crate::upgrade::{self, Line, Writer};
use crate::{Event, ListenAddr};

/// How long the new binary has to answer the hand-over check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn from_ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Primary {
    /// Upgrades the primary in place, as SIGUSR2 does (with
    /// [`crate::Builder::upgrade_on_sigusr2`]): once the events already queued have been
    /// returned, the next [`next_event`](Self::next_event) checks the binary now at this
    /// program's path, and executes it with the same arguments, handing it the listeners,
    /// the workers and the counters. The program's `main` must call [`crate::upgrade::answer_check`]
    /// first and resume with [`Primary::resume`]; see [`crate::upgrade`].
    ///
    /// If anything stands in the way — a shutdown or reload under way, the io_uring primary
    /// (its ring cannot be handed over), a binary that fails the check, an `execve` that
    /// fails — the primary carries on as it was and says why in an [`Event::Warning`].
    pub fn upgrade(&mut self) {
        self.upgrade_asked = true;
    }

    /// Called with no event queued: upgrades if asked to. Returns only if the upgrade did not
    /// happen (a warning event says why).
    pub(super) fn upgrade_if_asked(&mut self) {
        if !std::mem::take(&mut self.upgrade_asked) {
            return;
        }
        if let Err(why) = self.try_upgrade() {
            self.warn(format!("upgrade refused: {why}; this primary carries on"));
        }
    }

    fn try_upgrade(&mut self) -> Result<(), String> {
        if self.shutting_down {
            return Err("the cluster is shutting down".into());
        }
        if self.reload.is_some() {
            return Err("a reload is under way; upgrade once it is done".into());
        }
        #[cfg(feature = "io-uring")]
        if self.io().ring.is_some() {
            return Err("the io_uring primary cannot hand its ring over (run it on epoll to upgrade in place)".into());
        }
        let exe = self.exe.clone().ok_or("the path of this program is unknown (/proc/self/exe)")?;
        // A binary being written ("text file busy") gets a few more tries.
        let mut tries = 0;
        loop {
            match check_new_binary(&exe, self.config.allow_threads) {
                Ok(()) => break,
                Err(Check::Busy(_)) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(Check::Busy(why) | Check::Failed(why)) => return Err(why),
            }
        }
        let path = CString::new(exe.as_os_str().as_bytes()).map_err(|_| "the program's path has a NUL byte")?;
        let argv: Vec<CString> = std::env::args_os().filter_map(|a| CString::new(a.as_bytes()).ok()).collect();
        let (text, mut fds) = self.export().finish();
        let state = upgrade::state_memfd(&text).map_err(|e| e.to_string())?;
        fds.push(state.as_raw_fd());
        // The environment without herd's variables (HERD_UPGRADE_FD among them), then ours.
        let mut env = crate::program::base_environment();
        env.push(CString::new(format!("{}={}", upgrade::UPGRADE_FD, state.as_raw_fd())).expect("no NUL"));
        // The workers' own variables were filtered out; the primary's NOTIFY_SOCKET goes back
        // as it was (its service manager still speaks to this pid). LISTEN_* do not: the new
        // image takes its listeners from the hand-over, not from socket activation.
        for var in [crate::program::env::NOTIFY_SOCKET] {
            if let Some(v) = std::env::var_os(var) {
                let mut kv = format!("{var}=").into_bytes();
                kv.extend(v.as_bytes());
                env.extend(CString::new(kv));
            }
        }
        // Everything that can fail is done: only now do the descriptors lose close-on-exec, and
        // whatever happens next gives it back (a worker forked later must not inherit them).
        let result = crate::sys::exec::set_cloexec(&fds, false).map_err(|e| e.to_string()).and_then(|()| {
            // The signal mask stays across execve: the new image's signalfd finds what arrived.
            Err(crate::sys::exec::execve(&path, &argv, &env).to_string())
        });
        let _ = crate::sys::exec::set_cloexec(&fds, true);
        result
    }

    /// The state the new image needs, as [`Writer`] lines.
    fn export(&self) -> Writer {
        let mut w = Writer::new();
        let c = &self.config;
        w.line("config")
            .text("listen", &c.listen.to_string())
            .text("mode", &c.mode.to_string())
            .kv("backend", c.backend)
            .kv("workers", c.workers)
            .kv("backlog", c.backlog)
            .kv("window", c.handoff_window)
            .kv("queue_limit", c.handoff_queue_limit)
            .kv("handoff_policy", c.handoff_policy)
            .kv("shutdown_ms", ms(c.shutdown_timeout))
            .kv("defer_accept", u8::from(c.defer_accept))
            .kv("restart_limit", c.restart_limit)
            .kv("restart_window_ms", ms(c.restart_window))
            .kv("heartbeat_ms", c.heartbeat.map_or("-".to_owned(), |h| ms(h.interval).to_string()))
            .kv("heartbeat_timeout_ms", c.heartbeat.map_or("-".to_owned(), |h| ms(h.timeout).to_string()))
            .kv("reload_ms", ms(c.reload_timeout))
            .kv("handle_signals", u8::from(c.handle_signals))
            .kv("allow_threads", u8::from(c.allow_threads))
            .kv("sd_notify", u8::from(c.sd_notify))
            .kv("upgrade", u8::from(c.upgrade_on_sigusr2));
        let now = Instant::now();
        w.line("primary")
            .text("local", &self.local_addr.to_string())
            .kv("backend", self.backend)
            .fd("counters", self.counters.memfd())
            .kv("saved_mask", self.saved_mask.map_or("-".to_owned(), |m| m.to_bits().to_string()))
            .kv("next_key", self.next_key)
            .kv("target", self.target)
            .kv("generation", self.generation)
            .text("unix_path", &self._unix_path.as_ref().map_or(String::new(), |p| p.path().display().to_string()))
            .kv("told_ready", u8::from(self.service_manager.as_ref().is_some_and(|n| n.told_ready())))
            .kv("outboxes_dropped", self.workers.values().filter(|w| !w.outbox.is_empty()).count());
        for slot in &self.vacated {
            w.line("vacated").kv("slot", slot);
        }
        for (slot, generation) in &self.slot_generation {
            w.line("slot_generation").kv("slot", slot).kv("generation", generation);
        }
        for age in self.restarts.ages(now) {
            w.line("restart").kv("age_ms", ms(age));
        }
        for (slot, generation) in self.retries.pending() {
            w.line("retry").kv("slot", slot).kv("generation", generation);
        }
        for (key, h) in &self.workers {
            let line = w
                .line("worker")
                .kv("key", key)
                .kv("id", h.id)
                .kv("generation", h.generation)
                .kv("pid", h.pid())
                .fd("pidfd", h.child.as_fd())
                .fd("control", h.control.as_fd())
                .kv("connected", u8::from(h.connected))
                .kv("listening", u8::from(h.listening))
                .kv("asked_to_exit", u8::from(h.asked_to_exit))
                .kv("hung", u8::from(h.hung))
                .kv("speaks", u8::from(h.speaks))
                .kv("program", u8::from(h.program))
                .kv(
                    "ready_in_ms",
                    h.ready_at.map_or("-".to_owned(), |t| ms(t.saturating_duration_since(now)).to_string()),
                );
            match &h.notify {
                Some(n) => line.fd("notify", n.as_fd()).text("notify_env", n.env_value()),
                None => line.kv("notify", "-").kv("notify_env", "-"),
            };
        }
        if let Some(mode) = &self.mode {
            mode.export(&mut w);
        }
        if let Some(d) = &self.dispatcher {
            d.export(&mut w);
        }
        w
    }

    /// The new image of an in-place upgrade: the primary the old one handed over, supervising
    /// the same workers, which now fork (or execute) `worker_main`'s code when replaced.
    pub(crate) fn resume_from(lines: Vec<Line>, worker_main: WorkerProgram) -> io::Result<Primary> {
        let find = |kind: &str| {
            lines
                .iter()
                .find(|l| l.kind == kind)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("hand-over state: no {kind} line")))
        };
        let c = find("config")?;
        let parse_err =
            |what: &str, e: String| io::Error::new(io::ErrorKind::InvalidData, format!("hand-over state: {what}: {e}"));
        let listen: ListenAddr =
            c.text("listen")?.parse().map_err(|e: crate::AddrParseError| parse_err("listen", e.to_string()))?;
        let mut config = Config::new(listen);
        config.mode =
            c.text("mode")?.parse().map_err(|e: crate::mode::ParseModeError| parse_err("mode", e.to_string()))?;
        config.backend = c.get("backend")?;
        config.workers = c.get("workers")?;
        config.backlog = c.get("backlog")?;
        config.handoff_window = c.get("window")?;
        config.handoff_queue_limit = c.get("queue_limit")?;
        config.handoff_policy = c.get("handoff_policy")?;
        config.shutdown_timeout = from_ms(c.get("shutdown_ms")?);
        config.defer_accept = c.flag("defer_accept")?;
        config.restart_limit = c.get("restart_limit")?;
        config.restart_window = from_ms(c.get("restart_window_ms")?);
        config.heartbeat = match (c.opt::<u64>("heartbeat_ms")?, c.opt::<u64>("heartbeat_timeout_ms")?) {
            (Some(i), Some(t)) => Some(Heartbeat { interval: from_ms(i), timeout: from_ms(t) }),
            _ => None,
        };
        config.reload_timeout = from_ms(c.get("reload_ms")?);
        config.handle_signals = c.flag("handle_signals")?;
        config.allow_threads = c.flag("allow_threads")?;
        config.sd_notify = c.flag("sd_notify")?;
        config.upgrade_on_sigusr2 = c.flag("upgrade")?;

        let p = find("primary")?;
        let local_addr: ListenAddr =
            p.text("local")?.parse().map_err(|e: crate::AddrParseError| parse_err("local", e.to_string()))?;
        let backend: Backend = p.get("backend")?;
        let counters = Counters::from_fd(p.fd("counters")?)?;
        counters.count_syscalls_as_primary();
        let saved_mask = p.opt::<u64>("saved_mask")?.map(SignalSet::from_bits);
        let signals = if config.handle_signals {
            // Still blocked: the mask survived execve. The signalfd reads what is pending.
            let set = SignalSet::of(&super::primary_signals(&config));
            set.block()?;
            Some(SignalFd::new(&set)?)
        } else {
            None
        };
        let io = PrimaryIo::new(signals)?;
        let mode = crate::mode::import(config.mode, &lines)?;
        let dispatcher = if mode.uses_lanes() { Some(Dispatcher::import(&lines, counters.clone())?) } else { None };
        let unix_path = match p.text("unix_path")? {
            path if path.is_empty() => None,
            path => Some(UnixPath::adopt(PathBuf::from(path))),
        };
        let now = Instant::now();
        let mut workers = BTreeMap::new();
        for l in lines.iter().filter(|l| l.kind == "worker") {
            let key: u64 = l.get("key")?;
            let child = Child::adopt(l.get("pid")?, l.fd("pidfd")?)?;
            let control = Channel::from(l.fd("control")?);
            let notify = match l.opt_fd("notify")? {
                Some(fd) => Some(crate::sys::notify::Receiver::adopt(fd, l.text("notify_env")?)),
                None => None,
            };
            let connected = l.flag("connected")?;
            if connected {
                io.epoll.add(&control, Token::Control(key).into(), Interest::READABLE)?;
            }
            io.epoll.add(&child, Token::Pidfd(key).into(), Interest::READABLE)?;
            if let Some(n) = &notify {
                io.epoll.add(n, Token::Notify(key).into(), Interest::READABLE)?;
            }
            if let Some(fd) = dispatcher.as_ref().and_then(|d| d.lane_fd(key)) {
                io.epoll.add(fd, Token::Lane(key).into(), Interest::READABLE)?;
            }
            workers.insert(
                key,
                WorkerHandle {
                    id: l.get("id")?,
                    generation: l.get("generation")?,
                    child,
                    control,
                    outbox: Default::default(),
                    connected,
                    listening: l.flag("listening")?,
                    asked_to_exit: l.flag("asked_to_exit")?,
                    last_seen: now,
                    hung: l.flag("hung")?,
                    watching_writable: false,
                    outbox_retry: None,
                    speaks: l.flag("speaks")?,
                    program: l.flag("program")?,
                    notify,
                    ready_at: l.opt::<u64>("ready_in_ms")?.map(|m| now + from_ms(m)),
                },
            );
        }
        let mut restarts = Restarts::new(config.restart_limit, config.restart_window);
        let ages: Vec<Duration> = lines
            .iter()
            .filter(|l| l.kind == "restart")
            .map(|l| l.get("age_ms").map(from_ms))
            .collect::<io::Result<_>>()?;
        restarts.restore(&ages, now);
        let mut retries = Retries::default();
        for l in lines.iter().filter(|l| l.kind == "retry") {
            retries.restore(l.get("slot")?, l.get("generation")?, now);
        }
        let mut slot_generation = BTreeMap::new();
        for l in lines.iter().filter(|l| l.kind == "slot_generation") {
            slot_generation.insert(l.get("slot")?, l.get("generation")?);
        }
        let vacated = lines.iter().filter(|l| l.kind == "vacated").map(|l| l.get("slot")).collect::<io::Result<_>>()?;
        let service_manager =
            if config.sd_notify { super::notify::Notifier::resumed(p.flag("told_ready")?) } else { None };
        let mut deadlines = Deadlines { stall_check: dispatcher.as_ref().map(|_| now), ..Default::default() };
        if let Some(hb) = config.heartbeat {
            deadlines.heartbeat = Some(now + hb.interval);
        }
        let count = workers.len();
        let mut primary = Primary {
            backend,
            target: p.get("target")?,
            restarts,
            config,
            local_addr,
            counters,
            mode: Some(mode),
            _unix_path: unix_path,
            io: Some(io),
            saved_mask,
            workers,
            next_key: p.get("next_key")?,
            vacated,
            generation: p.get("generation")?,
            slot_generation,
            retries,
            reload: None,
            gave_up: false,
            dispatcher,
            accepting: Accepting::new(),
            deadlines,
            events: VecDeque::new(),
            shutting_down: false,
            finished: false,
            ready: Vec::with_capacity(64),
            service_manager,
            upgrade_asked: false,
            exe: program_path(),
            serving_slots: u64::MAX,
            stalled: Default::default(),
            worker_main,
        };
        primary.events.push_back(Event::Upgraded { pid: std::process::id(), workers: count });
        let dropped: usize = p.get("outboxes_dropped")?;
        if dropped > 0 {
            primary.warn(format!(
                "{dropped} workers had messages waiting for room in their channel at the upgrade; they were not sent"
            ));
        }
        primary.settle()?;
        Ok(primary)
    }
}

/// The path this program was started as, for executing it again: `argv[0]` as given (made
/// absolute against the working directory at start) or looked up in `PATH` — not
/// `/proc/self/exe`, which has symbolic links resolved, so that a deploy that switches a link
/// (`current -> releases/1.1`) is followed. `/proc/self/exe` when `argv[0]` leads nowhere.
pub(super) fn program_path() -> Option<PathBuf> {
    let argv0 = std::env::args_os().next()?;
    let given = PathBuf::from(&argv0);
    let found = if argv0.as_bytes().contains(&b'/') {
        std::env::current_dir().ok().map(|cwd| cwd.join(&given)).filter(|p| p.is_file())
    } else {
        crate::program::find_in_path(&argv0)
    };
    found.or_else(|| std::env::current_exe().ok())
}

/// Why the hand-over check failed.
enum Check {
    /// `execve` found the file busy (`ETXTBSY`: still open for writing somewhere): worth
    /// another try.
    Busy(String),
    Failed(String),
}

/// Runs the new binary with `HERD_UPGRADE_CHECK` and checks its answer, within
/// [`CHECK_TIMEOUT`]. The child is killed and reaped whatever happens.
fn check_new_binary(exe: &std::path::Path, allow_threads: bool) -> Result<(), Check> {
    let name = exe.display();
    let path = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| Check::Failed(format!("{name}: a NUL byte in the path")))?;
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Check::Failed(format!("pipe for the hand-over check: {e}")))?;
    let mut env = crate::program::base_environment();
    env.push(CString::new(format!("{}={}", upgrade::UPGRADE_CHECK, crate::sys::exec::FIRST_FD)).expect("no NUL"));
    let check = if allow_threads { ThreadCheck::Allow } else { ThreadCheck::Refuse };
    let child = match process::fork_worker(check)
        .map_err(|e| Check::Failed(format!("forking the hand-over check: {e}")))?
    {
        Forked::Parent(child) => child,
        Forked::Child { .. } => {
            drop(read);
            let code =
                match crate::sys::exec::place_fds(&[write.as_fd()]).and_then(|()| crate::sys::exec::reset_signals()) {
                    Ok(()) => {
                        let e = crate::sys::exec::execve(&path, std::slice::from_ref(&path), &env);
                        // Say why on the pipe (now descriptor 3): the primary retries a busy file.
                        let busy = e.raw_os_error() == Some(libc::ETXTBSY);
                        let _ = rustix::io::write(&write, if busy { b"busy\n" } else { b"" });
                        127
                    }
                    Err(_) => 126,
                };
            process::exit_now(code)
        }
    };
    drop(write);
    let answer = read_answer(&read);
    let status = child.kill_and_wait();
    match answer {
        Ok(text) if text.trim() == "busy" => {
            Err(Check::Busy(format!("the new binary {name}: the file is busy (being written)")))
        }
        Ok(text) => upgrade::check_answer(&text)
            .map_err(|why| Check::Failed(format!("the new binary {name}: {why} (it exited with {status:?})"))),
        Err(why) => Err(Check::Failed(format!("the new binary {name}: {why} (it exited with {status:?})"))),
    }
}

/// Reads what the check child writes until it closes the pipe, or [`CHECK_TIMEOUT`].
fn read_answer(read: &std::os::fd::OwnedFd) -> Result<String, String> {
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer to the hand-over check within {}s", CHECK_TIMEOUT.as_secs()));
        }
        let mut fds = [rustix::event::PollFd::new(read, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&crate::sys::timespec(left))) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let mut buf = [0u8; 256];
        match rustix::io::read(read, &mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) if got.len() < 4096 => got.extend_from_slice(&buf[..n]),
            Ok(_) => return Err("an answer too long to be one".into()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

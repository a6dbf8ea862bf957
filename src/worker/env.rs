//! A worker in a program of its own: [`Worker::from_env`] takes what `herd run` passed across
//! `execve` (see [`crate::program`]) and builds the same [`Worker`] a forked worker gets.

use std::io;
use std::os::fd::OwnedFd;

use super::Worker;
use crate::accept::{Backend, WorkerAccept};
use crate::channel::Channel;
use crate::listener::{Listener, StreamKind};
use crate::mode::Mode;
use crate::program::env;
use crate::stats::Counters;
use crate::sys::exec::inherit_fd;
use crate::sys::signal::{Disposition, disposition, set_disposition};

/// Signals a terminal sends to the whole process group, and the ones that drive the primary:
/// a worker must not die of them (the primary decides what its workers do), so it catches and
/// drops them. A caught signal, unlike an ignored one, is reset to its default across `execve`:
/// programs the worker starts get ordinary dispositions.
const LEFT_TO_THE_PRIMARY: [i32; 5] = [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU];

/// What every worker does with signals, forked or executed: leaves SIGINT, SIGQUIT, SIGHUP,
/// SIGTTIN and SIGTTOU to the primary, and does not die of SIGPIPE (a client that hung up must
/// not kill a worker mid-write) — with handlers that do nothing, never with `SIG_IGN`, which
/// would be passed on to every program the worker starts.
pub(crate) fn leave_signals_to_the_primary() -> io::Result<()> {
    for s in LEFT_TO_THE_PRIMARY {
        set_disposition(s, Disposition::Discard)?;
    }
    // Rust programs start with SIGPIPE ignored already (and `Command` resets it for their
    // children); leave that as it is, and catch it where it would kill.
    if disposition(libc::SIGPIPE)? == Disposition::Default {
        set_disposition(libc::SIGPIPE, Disposition::Discard)?;
    }
    Ok(())
}

/// An environment variable herd set, parsed, naming the variable in the error.
fn var<T: std::str::FromStr>(name: &str) -> io::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: {e}"))),
        Ok(text) => text
            .parse()
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{name}={text}: {e}"))),
    }
}

fn missing(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{name} is not set: this program was not started by `herd run` (or its environment was cleared)"),
    )
}

fn required<T: std::str::FromStr>(name: &str) -> io::Result<T>
where
    T::Err: std::fmt::Display,
{
    var(name)?.ok_or_else(|| missing(name))
}

fn descriptor(name: &str) -> io::Result<Option<OwnedFd>> {
    var::<i32>(name)?.map(|fd| inherit_fd(fd, name)).transpose()
}

impl Worker {
    /// The worker that `herd run` (or [`crate::Cluster::start_program`]) started this program
    /// as: its control channel, its listener (shared and reuseport modes, descriptor 3 by the
    /// `sd_listen_fds(3)` convention), its lane (handoff and reuseport), the shared counters,
    /// its slot and its generation, all read from the environment. It then works exactly as a
    /// forked worker's [`Worker`] does, in all three ways of taking connections; like one, it
    /// leaves SIGINT, SIGQUIT, SIGHUP, SIGTTIN and SIGTTOU to the primary.
    ///
    /// The descriptors it takes are made close-on-exec again, so programs this one starts do
    /// not inherit them; the variables stay (`LISTEN_PID` tells such a program the listener
    /// was not meant for it).
    ///
    /// # Errors
    /// `NotFound` if `HERD_CHANNEL_FD` is not set (the program was not started by herd);
    /// `InvalidInput` naming the variable for a value that does not parse, a descriptor that
    /// is not open, a listener that is not a listening socket, or none where the mode needs
    /// one (`LISTEN_FDS` unset, or `LISTEN_PID` naming another process).
    pub fn from_env() -> io::Result<Worker> {
        let control = Channel::from(descriptor(env::CHANNEL_FD)?.ok_or_else(|| missing(env::CHANNEL_FD))?);
        let id: usize = required(env::WORKER_ID)?;
        let generation: u64 = required(env::GENERATION)?;
        let mode: Mode = required(env::MODE)?;
        let backend: Backend = var(env::BACKEND)?.unwrap_or_default();
        // io_uring may be refused to this program where it was not to the primary (a seccomp
        // filter of its own): epoll then.
        let backend = if backend.available().is_ok() { backend } else { Backend::Epoll };
        // By the sd_listen_fds convention: herd passes one, at descriptor 3.
        let listener = match crate::activation::listen_fds()?.into_iter().next() {
            Some(passed) => Some(Listener::inherited(passed.fd, "descriptor 3 (LISTEN_FDS)")?),
            None => None,
        };
        let wait = match mode {
            Mode::Shared(strategy) => Some(strategy.wait()),
            Mode::Reuseport => Some(crate::accept::Wait::Own),
            Mode::Handoff => None,
        };
        let nudge = descriptor(env::BALANCE_FD)?.map(crate::sys::eventfd::EventFd::adopt);
        let (accept, kind) = match (listener, wait) {
            (Some((listener, kind, _)), Some(wait)) => {
                (Some(WorkerAccept::new(listener, wait).with_nudge(nudge).on(backend)), kind)
            }
            (None, None) => {
                let kind = match var::<String>(env::STREAM)?.as_deref() {
                    Some("unix") => StreamKind::Unix,
                    _ => StreamKind::Tcp,
                };
                (None, kind)
            }
            (Some(_), None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("LISTEN_FDS: a listener in {mode} mode"),
                ));
            }
            (None, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "no listener was passed (LISTEN_FDS is unset or 0, or LISTEN_PID names another process): \
                         {mode} mode passes the worker one"
                    ),
                ));
            }
        };
        let lane = match descriptor(env::LANE_FD)? {
            Some(fd) => Some((Channel::from(fd), required::<usize>(env::HANDOFF_WINDOW)?.max(1))),
            None => None,
        };
        let counters = match descriptor(env::COUNTERS_FD)? {
            Some(fd) => Counters::from_fd(fd)?,
            // Counted in a region of this process's own: nobody else sees it.
            None => Counters::new(id + 1)?,
        };
        if id >= counters.capacity() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("HERD_WORKER_ID={id}: the counters hold {} slots", counters.capacity()),
            ));
        }
        counters.count_syscalls_as_worker(id);
        leave_signals_to_the_primary()?;
        Worker::new(id, generation, kind, control, accept, lane, counters)
    }
}

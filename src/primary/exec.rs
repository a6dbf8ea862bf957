//! Workers that execute a program (`herd run`): what the forked child does to become it, and
//! how the primary learns that it is ready.
//!
//! The child places its descriptors at 3, 4, 5... (`sys::exec::place_fds`), builds the
//! environment the program reads (see [`crate::program`]), resets every signal to its default
//! and calls `execve`. Just before, it sends `Online` on the channel: the process runs. If
//! `execve` fails, the child says why on the channel (a warning event) and exits with 127, the
//! shell's "command not found" — a crash, restarted under the restart limit like any other.
//!
//! Readiness comes three ways: `Listening` on the channel (`Worker::from_env` sends it),
//! `READY=1` on the worker's own `NOTIFY_SOCKET` (a datagram socket the primary binds for it
//! before the fork, [`Primary::on_notify`]), or the program's ready delay passing
//! ([`Primary::ready_delays_due`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use super::{Primary, Token};
use crate::channel::{Channel, Message};
use crate::program::{Program, base_environment, env};
use crate::sys::epoll::Interest;
use crate::sys::notify::{self, Receiver};

/// What every worker of an exec cluster runs, converted once at start.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) program: Program,
    path: CString,
    argv: Vec<CString>,
    /// The primary's environment at start, without herd's variables.
    base_env: Vec<CString>,
}

impl Plan {
    pub(crate) fn new(program: Program) -> io::Result<Plan> {
        let (path, argv) = program.c_strings()?;
        Ok(Plan { program, path, argv, base_env: base_environment() })
    }
}

impl Primary {
    /// Before forking worker `key`: its sd_notify socket, watched in the primary's epoll.
    pub(super) fn notify_receiver(&self, key: u64) -> io::Result<Receiver> {
        let name = format!("herd/{}/worker/{key}", std::process::id());
        let receiver = Receiver::bind(&name)?;
        self.io().epoll.add(&receiver, Token::Notify(key).into(), Interest::READABLE)?;
        Ok(receiver)
    }

    /// In the forked child: becomes the program. Returns the exit code only if it could not.
    pub(super) fn become_program(
        &mut self,
        slot: usize,
        generation: u64,
        control: Channel,
        lane: Option<Channel>,
        notify_socket: Option<String>,
    ) -> i32 {
        let super::WorkerProgram::Exec(plan) = &self.worker_main else {
            unreachable!("become_program runs in exec clusters only")
        };
        let accept = self.mode.as_mut().and_then(|m| m.worker_accept(slot));
        // Descriptors go to 3, 4, 5... in this order.
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(4);
        let mut vars: Vec<(&str, String)> = Vec::with_capacity(14);
        let number = |fds: &Vec<BorrowedFd<'_>>| crate::sys::exec::FIRST_FD + fds.len() as i32 - 1;
        let listener_fd = accept.as_ref().map(|a| {
            fds.push(a.listener.as_fd());
            number(&fds)
        });
        fds.push(control.as_fd());
        let control_fd = number(&fds);
        let lane_fd = lane.as_ref().map(|l| {
            fds.push(l.as_fd());
            number(&fds)
        });
        fds.push(self.counters.memfd());
        let counters_fd = number(&fds);
        let balance_fd = accept.as_ref().and_then(|a| a.nudge.as_ref()).map(|n| {
            fds.push(n.as_fd());
            number(&fds)
        });
        if listener_fd.is_some() {
            vars.push((env::LISTEN_FDS, "1".into()));
            vars.push((env::LISTEN_PID, std::process::id().to_string()));
            vars.push((env::LISTEN_FDNAMES, "herd".into()));
        }
        vars.push((env::CHANNEL_FD, control_fd.to_string()));
        if let Some(fd) = lane_fd {
            vars.push((env::LANE_FD, fd.to_string()));
            vars.push((env::HANDOFF_WINDOW, self.config.handoff_window.to_string()));
        }
        vars.push((env::COUNTERS_FD, counters_fd.to_string()));
        if let Some(fd) = balance_fd {
            vars.push((env::BALANCE_FD, fd.to_string()));
        }
        vars.push((env::WORKER_ID, slot.to_string()));
        vars.push((env::GENERATION, generation.to_string()));
        vars.push((env::MODE, self.config.mode.to_string()));
        vars.push((env::BACKEND, self.backend.to_string()));
        let stream = if matches!(self.local_addr, crate::ListenAddr::Unix(_)) { "unix" } else { "tcp" };
        vars.push((env::STREAM, stream.to_owned()));
        if let Some(n) = notify_socket {
            vars.push((env::NOTIFY_SOCKET, n));
        }
        let mut envp = plan.base_env.clone();
        envp.extend(vars.iter().filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok()));
        let fail = |what: io::Error| {
            let _ = control.send(&Message::Warning(format!("starting {}: {what}", plan.program.path().display())), &[]);
            127
        };
        if let Err(e) = control.send(&Message::Online, &[]) {
            return fail(e.into());
        }
        if let Err(e) = crate::sys::exec::place_fds(&fds).and_then(|()| crate::sys::exec::reset_signals()) {
            return fail(e);
        }
        // Only returns on failure; `control` (close-on-exec, still open at its old number)
        // carries the reason.
        let e = crate::sys::exec::execve(&plan.path, &plan.argv, &envp);
        fail(e)
    }

    /// Worker `key`'s sd_notify socket is readable.
    pub(super) fn on_notify(&mut self, key: u64) {
        let mut ready = false;
        let mut failure = None;
        if let Some(receiver) = self.workers.get(&key).and_then(|w| w.notify.as_ref()) {
            loop {
                match receiver.recv() {
                    Ok(Some(datagram)) => ready |= notify::says(&datagram, "READY=1"),
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = failure {
            self.worker_warning(key, format!("reading the worker's NOTIFY_SOCKET: {e}"));
            // A socket that fails is not watched again.
            if let (Some(w), Some(io)) = (self.workers.get_mut(&key), &self.io) {
                if let Some(r) = w.notify.take() {
                    let _ = io.epoll.delete(&r);
                }
            }
        }
        if ready && self.workers.get(&key).is_some_and(|w| !w.listening) {
            self.on_listening(key);
        }
    }

    /// Workers whose ready delay has passed without a word from them count as listening.
    pub(super) fn ready_delays_due(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .workers
            .iter_mut()
            .filter(|(_, w)| w.ready_at.is_some_and(|t| t <= now))
            .map(|(k, w)| {
                w.ready_at = None;
                *k
            })
            .collect();
        for key in due {
            if self.workers.get(&key).is_some_and(|w| !w.listening) {
                self.on_listening(key);
            }
        }
    }

    fn worker_warning(&mut self, key: u64, message: String) {
        let (id, pid) = self.workers.get(&key).map_or((None, None), |w| (Some(w.id), Some(w.pid())));
        self.events.push_back(crate::Event::Warning { id, pid, message });
    }
}

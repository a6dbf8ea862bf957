//! The primary's API for the program: the live workers, messages to them, and Node's
//! `worker.kill` / `worker.disconnect` / `isConnected` / `isDead`, by pid.

use std::io;
use std::os::fd::BorrowedFd;

use super::Primary;
use crate::channel::{self, Message};

/// What the primary knows of one live worker; see [`Primary::workers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its slot, 0 to N-1.
    pub id: usize,
    /// Its pid.
    pub pid: u32,
    /// Its generation: 0 for the first workers, one more for each reload.
    pub generation: u64,
    /// Its channel is open.
    pub connected: bool,
    /// It reported `listening`.
    pub listening: bool,
    /// It was asked to exit (or announced it would) and is draining.
    pub exiting: bool,
}

impl Primary {
    /// The live workers (Node's `cluster.workers`), in fork order.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.workers
            .values()
            .map(|w| WorkerInfo {
                id: w.id,
                pid: w.pid(),
                generation: w.generation,
                connected: w.connected,
                listening: w.listening,
                exiting: w.asked_to_exit,
            })
            .collect()
    }

    fn key_of(&self, pid: u32) -> io::Result<u64> {
        self.workers
            .iter()
            .find(|(_, w)| w.pid() == pid)
            .map(|(k, _)| *k)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no live worker with pid {pid}")))
    }

    /// Sends `bytes` to the worker `pid`, which receives a [`crate::WorkerEvent::Message`].
    ///
    /// Never blocks: what the worker's channel cannot take now waits in its outbox, in order.
    /// A worker that lets its outbox overflow (it stopped reading) is killed as hung and
    /// replaced, with an [`crate::Event::Unresponsive`].
    ///
    /// # Errors
    /// `InvalidInput` for more than [`channel::MAX_MESSAGE`] bytes; `NotFound` for a pid that is
    /// not a live worker; `BrokenPipe` if the worker's channel is closed or its outbox overflowed.
    pub fn send(&mut self, pid: u32, bytes: &[u8]) -> io::Result<()> {
        self.send_with_fds(pid, bytes, &[])
    }

    /// [`send`](Self::send) with descriptors attached (at most [`channel::MAX_FDS`]), as Node's
    /// `worker.send(message, handle)`: the worker receives its own copies of them.
    ///
    /// # Errors
    /// As [`send`](Self::send); `InvalidInput` for too many descriptors.
    pub fn send_with_fds(&mut self, pid: u32, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        check_message(bytes, fds)?;
        let key = self.key_of(pid)?;
        if self.send_control(key, Message::User(bytes.to_vec()), fds) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, format!("worker {pid} is not reading its channel")))
        }
    }

    /// Sends `bytes` to every connected worker; returns how many it reached.
    pub fn broadcast(&mut self, bytes: &[u8]) -> io::Result<usize> {
        check_message(bytes, &[])?;
        let keys: Vec<u64> = self.workers.iter().filter(|(_, w)| w.connected).map(|(k, _)| *k).collect();
        Ok(keys.into_iter().filter(|&k| self.send_control(k, Message::User(bytes.to_vec()), &[])).count())
    }

    /// Sends `signal` to the worker `pid` (Node's `worker.kill`).
    ///
    /// A signal that ends the worker — `SIGKILL`, or one it neither catches nor ignores whose
    /// default action is to terminate — makes its exit expected, and its slot stays empty.
    /// Any other (`SIGUSR1` to a worker that reopens its logs on it, say) is just delivered:
    /// the worker goes on serving, and if it does exit of it, that exit is a crash.
    pub fn kill(&mut self, pid: u32, signal: i32) -> io::Result<()> {
        let key = self.key_of(pid)?;
        let ends = crate::sys::process::signal_ends(pid, signal);
        self.workers[&key].child.signal(signal)?;
        if ends {
            self.set_serving(key, false);
            let w = self.workers.get_mut(&key).expect("key just found");
            w.asked_to_exit = true;
            let slot = w.id;
            self.leave_slot_empty(slot);
        }
        Ok(())
    }

    /// Asks the worker `pid` to stop accepting, finish its connections and exit (Node's
    /// `worker.disconnect`). Its slot stays empty.
    pub fn disconnect(&mut self, pid: u32) -> io::Result<()> {
        let key = self.key_of(pid)?;
        let slot = self.workers[&key].id;
        self.stop_worker(key);
        self.leave_slot_empty(slot);
        Ok(())
    }

    /// The program emptied `slot` on purpose: no refill, and (reuseport) the primary serves its
    /// listener meanwhile.
    fn leave_slot_empty(&mut self, slot: usize) {
        if !self.slot_has_live_worker(slot) {
            self.vacated.insert(slot);
        }
        self.accepting.dirty = true;
        let _ = self.settle();
    }

    /// Whether the worker `pid` is alive with its channel open.
    pub fn is_connected(&self, pid: u32) -> bool {
        self.key_of(pid).is_ok_and(|k| self.workers[&k].connected)
    }

    /// Whether the worker `pid` has exited (or never was one of ours).
    pub fn is_dead(&self, pid: u32) -> bool {
        self.key_of(pid).is_err()
    }
}

fn check_message(bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if bytes.len() > channel::MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds the {}-byte limit", bytes.len(), channel::MAX_MESSAGE),
        ));
    }
    if fds.len() > channel::MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} descriptors exceed the {}-descriptor limit of a message", fds.len(), channel::MAX_FDS),
        ));
    }
    Ok(())
}

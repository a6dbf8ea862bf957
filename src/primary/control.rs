//! The primary's API for the program: the live workers, messages to them, and Node's
//! `worker.kill` / `worker.disconnect` / `isConnected` / `isDead`, by pid.

use std::io;

use super::Primary;
use crate::channel;
use crate::sys::process;

/// What the primary knows of one live worker; see [`Primary::workers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    fn key_of(&self, pid: u32) -> Option<u64> {
        self.workers.iter().find(|(_, w)| w.pid() == pid).map(|(k, _)| *k)
    }

    fn not_a_worker(pid: u32) -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, format!("no live worker with pid {pid}"))
    }

    /// Sends `bytes` to the worker `pid`, which receives a [`crate::WorkerEvent::Message`].
    ///
    /// # Errors
    /// `InvalidInput` for more than [`channel::MAX_MESSAGE`] bytes; `NotFound` for a pid that is
    /// not a live worker; the channel's error if the worker is gone.
    pub fn send(&self, pid: u32, bytes: &[u8]) -> io::Result<()> {
        check_message_size(bytes)?;
        let key = self.key_of(pid).ok_or_else(|| Primary::not_a_worker(pid))?;
        self.workers[&key].channel.send_user(bytes).map_err(io::Error::from)
    }

    /// Sends `bytes` to every connected worker; returns how many it reached.
    pub fn broadcast(&self, bytes: &[u8]) -> io::Result<usize> {
        check_message_size(bytes)?;
        Ok(self.workers.values().filter(|w| w.connected && w.channel.send_user(bytes).is_ok()).count())
    }

    /// Sends `signal` to the worker `pid` (Node's `worker.kill`); its exit then counts as asked
    /// for, so it is not replaced.
    pub fn kill(&mut self, pid: u32, signal: i32) -> io::Result<()> {
        let key = self.key_of(pid).ok_or_else(|| Primary::not_a_worker(pid))?;
        self.stop_dispatching_to(key);
        let w = self.workers.get_mut(&key).expect("key just found");
        w.asked_to_exit = true;
        process::kill(w.pid, signal)
    }

    /// Asks the worker `pid` to stop accepting, finish its connections and exit (Node's
    /// `worker.disconnect`). It is not replaced.
    pub fn disconnect(&mut self, pid: u32) -> io::Result<()> {
        let key = self.key_of(pid).ok_or_else(|| Primary::not_a_worker(pid))?;
        self.disconnect_key(key);
        Ok(())
    }

    /// Whether the worker `pid` is alive with its channel open.
    pub fn is_connected(&self, pid: u32) -> bool {
        self.key_of(pid).is_some_and(|k| self.workers[&k].connected)
    }

    /// Whether the worker `pid` has exited (or never was one of ours).
    pub fn is_dead(&self, pid: u32) -> bool {
        self.key_of(pid).is_none()
    }
}

fn check_message_size(bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > channel::MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds the {}-byte limit", bytes.len(), channel::MAX_MESSAGE),
        ));
    }
    Ok(())
}

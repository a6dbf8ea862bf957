//! **handoff** — only the primary accepts; it passes each connection's descriptor to a worker
//! over the channel (`sendmsg` with `SCM_RIGHTS`), in round-robin order. This is Node's
//! `cluster` default (`SCHED_RR`, its `RoundRobinHandle`).
//!
//! As in Node:
//! - the worker **acknowledges** each connection (herd batches the acks: one `Ack{n}` per
//!   channel drain);
//! - the primary **keeps its copy** of the descriptor until that acknowledgement. If the worker
//!   dies first, its unacknowledged connections are still open in the primary, and go to another
//!   worker instead of being lost (`requeued`);
//! - a connection that finds no worker with room waits in the primary's **queue** (a
//!   `VecDeque`: O(1) at both ends).
//!
//! Flow control is a per-worker **window**: at most `window` unacknowledged handoffs per
//! worker. Node's window is 1 (a worker gets its next connection after acknowledging the last).
//! A larger window keeps the primary from waiting on a worker's round trip; see
//! [`DEFAULT_WINDOW`] for the figure it was chosen by.
//!
//! Round-robin skips a worker whose window is full, so shares are exact only while no window
//! fills — with a healthy cluster, whenever fewer than `window` connections are in flight per
//! worker.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::ListenAddr;
use crate::channel::{Channel, ChannelError, Message};
use crate::listener::{BindOptions, Listener};
use crate::stats::{Counters, PrimaryCounter};

/// The default window of unacknowledged handoffs per worker.
///
/// Measured on the project's 2-core machine (4 workers, `herd load -c 64` churn, 3 s runs,
/// two rounds, 2026-11-21): a window of 1 — Node's — gave 20.4–21.3k requests/s; windows of 2
/// to 128 all gave 20.7–25.9k, the same within this machine's ±10 % noise. Windows below 16
/// queued 25–65k connections in the primary and shifted shares (Jain 0.9986–0.9999); from 16
/// up (64 in flight over 4 workers) nothing queued and round-robin was exact (Jain 1.0). 32
/// keeps it exact up to 128 connections in flight on 4 workers, and a larger window costs
/// nothing but the descriptors the primary holds anyway.
pub const DEFAULT_WINDOW: usize = 32;

/// The default limit on connections waiting in the primary's queue; beyond it the primary stops
/// accepting, and connections wait in the kernel's backlog instead.
pub const DEFAULT_QUEUE_LIMIT: usize = 4096;

/// Creates the primary's (non-blocking) listener.
pub(crate) fn bind(addr: &ListenAddr, base: BindOptions) -> io::Result<Listener> {
    Listener::bind(addr, BindOptions { reuseport: false, nonblocking: true, ..base })
}

/// One worker's lane: its unacknowledged handoffs, oldest first.
#[derive(Debug)]
struct Lane {
    key: u64,
    unacked: VecDeque<OwnedFd>,
    next_seq: u64,
    /// Whether the worker still takes new handoffs (false once it disconnects or fails).
    open: bool,
}

/// The primary's round-robin dispatcher.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    window: usize,
    lanes: Vec<Lane>,
    next: usize,
    queue: VecDeque<OwnedFd>,
    counters: Counters,
}

impl Dispatcher {
    pub(crate) fn new(window: usize, counters: Counters) -> Dispatcher {
        Dispatcher { window: window.max(1), lanes: Vec::new(), next: 0, queue: VecDeque::new(), counters }
    }

    /// Connections waiting in the primary.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Starts giving connections to worker `key` (it reported `listening`).
    pub(crate) fn add_worker<'a>(&mut self, key: u64, channel_of: impl Fn(u64) -> Option<&'a Channel>) {
        match self.lanes.iter_mut().find(|l| l.key == key) {
            Some(lane) => lane.open = true,
            None => self.lanes.push(Lane { key, unacked: VecDeque::new(), next_seq: 0, open: true }),
        }
        self.drain_queue(channel_of);
    }

    /// Stops giving connections to worker `key` (it is disconnecting or gone). With
    /// `requeue_unacked`, its unacknowledged handoffs go back to the front of the queue, to be
    /// given to another worker; otherwise they stay until acknowledged.
    pub(crate) fn remove_worker<'a>(
        &mut self,
        key: u64,
        requeue_unacked: bool,
        channel_of: impl Fn(u64) -> Option<&'a Channel>,
    ) {
        let Some(i) = self.lanes.iter().position(|l| l.key == key) else { return };
        if !requeue_unacked {
            // Out of rotation; the lane goes once its last handoffs are acknowledged.
            self.lanes[i].open = false;
            if !self.lanes[i].unacked.is_empty() {
                return;
            }
        }
        let lane = self.lanes.remove(i);
        if i < self.next {
            self.next -= 1;
        }
        self.requeue(lane.unacked);
        self.drain_queue(channel_of);
    }

    /// Worker `key` took its `count` oldest unacknowledged handoffs: close the primary's copies.
    pub(crate) fn ack<'a>(&mut self, key: u64, count: u32, channel_of: impl Fn(u64) -> Option<&'a Channel>) {
        if let Some(lane) = self.lanes.iter_mut().find(|l| l.key == key) {
            let n = (count as usize).min(lane.unacked.len());
            lane.unacked.drain(..n);
            if !lane.open && lane.unacked.is_empty() {
                self.lanes.retain(|l| l.key != key);
                self.next = 0;
            }
        }
        self.drain_queue(channel_of);
    }

    /// Worker `key` could not take its `count` oldest unacknowledged handoffs: give them to
    /// another worker.
    pub(crate) fn reject<'a>(&mut self, key: u64, count: u32, channel_of: impl Fn(u64) -> Option<&'a Channel>) {
        if let Some(lane) = self.lanes.iter_mut().find(|l| l.key == key) {
            let n = (count as usize).min(lane.unacked.len());
            let back: VecDeque<OwnedFd> = lane.unacked.drain(..n).collect();
            self.requeue(back);
        }
        self.drain_queue(channel_of);
    }

    fn requeue(&mut self, fds: VecDeque<OwnedFd>) {
        self.counters.bump_primary(PrimaryCounter::Requeued, fds.len() as u64);
        for fd in fds.into_iter().rev() {
            self.queue.push_front(fd);
        }
    }

    /// Gives a freshly accepted connection to the next worker with room, or queues it.
    pub(crate) fn dispatch<'a>(&mut self, fd: OwnedFd, channel_of: impl Fn(u64) -> Option<&'a Channel>) {
        if !self.queue.is_empty() {
            // Keep arrival order: older connections go first.
            self.counters.bump_primary(PrimaryCounter::Queued, 1);
            self.queue.push_back(fd);
            self.drain_queue(channel_of);
            return;
        }
        if let Err(fd) = self.try_send(fd, &channel_of) {
            self.counters.bump_primary(PrimaryCounter::Queued, 1);
            self.queue.push_back(fd);
        }
    }

    fn drain_queue<'a>(&mut self, channel_of: impl Fn(u64) -> Option<&'a Channel>) {
        while let Some(fd) = self.queue.pop_front() {
            if let Err(fd) = self.try_send(fd, &channel_of) {
                self.queue.push_front(fd);
                return;
            }
        }
    }

    /// Sends `fd` to the next worker in rotation with room in its window; gives it back if none.
    fn try_send<'a>(&mut self, fd: OwnedFd, channel_of: &impl Fn(u64) -> Option<&'a Channel>) -> Result<(), OwnedFd> {
        let mut tried = 0;
        while tried < self.lanes.len() {
            tried += 1;
            let i = self.next % self.lanes.len();
            self.next = (i + 1) % self.lanes.len();
            let lane = &mut self.lanes[i];
            if !lane.open || lane.unacked.len() >= self.window {
                continue;
            }
            let Some(channel) = channel_of(lane.key) else { continue };
            match channel.try_send(&Message::Handoff { seq: lane.next_seq }, &[fd.as_fd()]) {
                Ok(()) => {
                    lane.next_seq += 1;
                    lane.unacked.push_back(fd);
                    self.counters.bump_primary(PrimaryCounter::Dispatched, 1);
                    return Ok(());
                }
                // The worker's receive buffer is full: treat its window as full for now.
                Err(ChannelError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // Dead or broken: the exit (or hangup) handling will requeue what it had.
                Err(e) => {
                    lane.open = false;
                    eprintln!("herd: sendmsg(SCM_RIGHTS) to worker (key {}): {e}", lane.key);
                }
            }
        }
        Err(fd)
    }
}

//! The dispatcher on io_uring: the same round-robin, windows and queue as on epoll (`mod.rs`),
//! carried out through the primary's ring.
//!
//! - **Sends.** [`Dispatcher::flush`] runs the round-robin once per turn of the primary and
//!   queues each batch as an `IORING_OP_SENDMSG` (`MSG_DONTWAIT`): up to [`crate::channel::MAX_FDS`]
//!   descriptors in one frame, at most one frame in the ring per lane, so frames arrive in
//!   order and a failed one is taken back whole — its sequence numbers too. The primary's
//!   copies are closed by `IORING_OP_CLOSE`s linked to the send: they run only if it
//!   succeeded, post nothing, and cost no `close(2)` each.
//! - **Acknowledgements.** Every lane always has an `IORING_OP_RECV` waiting; an `Ack` arrives
//!   as its completion, with no `epoll_wait` and no `recvmsg` of the primary's own.
//! - **A full lane** (`EAGAIN`) gets an `IORING_OP_POLL_ADD` for `POLLOUT` instead of an epoll
//!   registration.
//! - **A worker that exits** may still have a send or a receive in the ring: its lane is
//!   *retired* — both ends kept open, the receive cancelled — and taken back (`reclaim`) once
//!   the ring is done with it, so a send that lands after the worker died is taken back too.
//!
//! All of these go out with the `io_uring_enter` that the primary waits in anyway.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use super::{Dispatcher, FIRST_BACKOFF, Orphan};
use crate::channel::{Channel, ChannelError, Message, frame};
use crate::stats::PrimaryCounter;
use crate::sys::uring::{Completion, PollFor, Ring, SendOptions};

/// The kinds of the dispatcher's ring operations, in the top byte of their tags; the lane's
/// key is below. The primary's own operations use other kinds.
const KIND_SHIFT: u32 = 56;
const SEND: u64 = 0x11;
const RECV: u64 = 0x12;
const ROOM: u64 = 0x13;

fn tag(kind: u64, key: u64) -> u64 {
    (kind << KIND_SHIFT) | (key & ((1 << KIND_SHIFT) - 1))
}

/// Whether an operation with this tag is the dispatcher's.
pub(crate) fn owns(tag: u64) -> bool {
    matches!(tag >> KIND_SHIFT, SEND | RECV | ROOM)
}

/// Room for the largest frame a worker sends on its lane (an `Ack`: 16 bytes).
const RECV_BUFFER: usize = 64;

/// The ring's side of the lanes.
#[derive(Debug, Default)]
pub(crate) struct RingLanes {
    /// The receive waiting on each lane, by key: its operation.
    recv: HashMap<u64, u64>,
    /// The poll for room on each lane whose buffer was full, by key.
    room: HashMap<u64, u64>,
    /// Lanes of workers that exited while the ring may still have had operations on them.
    retired: Vec<Retired>,
    /// Connections accepted since the last flush: those the flush could not send count as
    /// queued.
    pub(super) fresh: usize,
}

/// An exited worker's lane, kept whole until the ring is done with it.
#[derive(Debug)]
struct Retired {
    key: u64,
    ours: Channel,
    theirs: Channel,
    /// Its last send is still in the ring.
    sending: bool,
    /// Its receive and poll have been cancelled.
    cancelled: bool,
}

impl RingLanes {
    /// Worker `key` exited: keep its lane until the ring has finished with it.
    pub(super) fn retire(&mut self, key: u64, ours: Channel, theirs: Channel, sending: bool) {
        self.retired.push(Retired { key, ours, theirs, sending, cancelled: false });
    }
}

impl Dispatcher {
    /// Sends go through the primary's ring from now on (io_uring backend).
    pub(crate) fn use_ring(&mut self) {
        self.ring = Some(RingLanes::default());
    }

    /// Queues in `ring` what this turn calls for: the round-robin's batches, a receive on every
    /// lane that has none, a poll on every full lane, and the cancellations and take-backs of
    /// retired lanes. The primary's next `io_uring_enter` submits it all.
    pub(crate) fn flush(&mut self, ring: &mut Ring) {
        let Some(lanes) = self.ring.as_mut() else { return };
        // Retired lanes: cancel what waits on them; take back the ones the ring is done with.
        let mut done = Vec::new();
        for (i, r) in lanes.retired.iter_mut().enumerate() {
            if !r.cancelled {
                // Cancelled once every cancellation is queued; one that is not is tried again
                // at the next flush.
                let ops = [lanes.recv.get(&r.key), lanes.room.get(&r.key)];
                r.cancelled = ops.into_iter().flatten().all(|op| ring.cancel(*op).is_ok());
            }
            if !r.sending && !lanes.recv.contains_key(&r.key) && !lanes.room.contains_key(&r.key) {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let Retired { key, ours, mut theirs, .. } = lanes.retired.remove(i);
            let (_, complete) = Self::reclaim(key, &mut theirs, &mut self.queue, &self.counters, &mut self.warnings);
            close(ring, ours.into());
            if complete {
                close(ring, theirs.into());
            } else {
                let retry_at = Instant::now() + crate::accept::BACKOFF;
                self.orphans.push(Orphan { key, theirs, retry_at });
            }
        }
        // Every live lane waits for its next acknowledgement.
        for lane in &self.lanes {
            if let Entry::Vacant(slot) = lanes.recv.entry(lane.key) {
                match ring.recv(lane.ours.as_fd(), RECV_BUFFER, tag(RECV, lane.key)) {
                    Ok(op) => {
                        slot.insert(op);
                    }
                    Err(e) => {
                        self.warnings.push(format!("io_uring: receiving on worker (key {})'s lane: {e}", lane.key))
                    }
                }
            }
        }
        let fresh = std::mem::take(&mut lanes.fresh);
        self.drain_with(|d, i, n| d.send_on_ring(ring, i, n));
        self.counters.bump_primary(PrimaryCounter::Queued, self.queue.len().min(fresh) as u64);
        // A lane found full waits for room: a poll, not the primary's epoll.
        self.writability.clear();
        let Some(lanes) = self.ring.as_mut() else { return };
        for lane in &self.lanes {
            if let (true, Entry::Vacant(slot)) = (lane.full, lanes.room.entry(lane.key)) {
                match ring.poll(lane.ours.as_fd(), PollFor::Writable, tag(ROOM, lane.key)) {
                    Ok(op) => {
                        slot.insert(op);
                    }
                    Err(e) => self.warnings.push(format!("io_uring: watching worker (key {})'s lane: {e}", lane.key)),
                }
            }
        }
    }

    /// Queues a `sendmsg` of the `n` oldest queued connections to lane `i`.
    fn send_on_ring(&mut self, ring: &mut Ring, i: usize, n: usize) -> bool {
        let lane = &mut self.lanes[i];
        let message = Message::Handoff { seq: lane.sent };
        let mut scratch = [0u8; 8];
        let payload = message.payload(&mut scratch);
        let header = match frame::encode_header(message.kind(), n, payload.len()) {
            Ok(header) => header,
            Err(e) => {
                self.warnings.push(format!("handing {n} connections to worker (key {}): {e}", lane.key));
                return false;
            }
        };
        let fds: Vec<OwnedFd> = self.queue.drain(..n).collect();
        let options = SendOptions { nonblocking: true, close_sent: true };
        match ring.sendmsg(lane.ours.as_fd(), &header, payload, fds, options, tag(SEND, lane.key)) {
            Ok(_) => {
                lane.sent += n as u64;
                lane.sending = true;
                true
            }
            Err((e, fds)) => {
                for fd in fds.into_iter().rev() {
                    self.queue.push_front(fd);
                }
                self.send_failed(i, n, ChannelError::Io(e));
                false
            }
        }
    }

    /// One of the dispatcher's completions (see [`owns`]).
    pub(crate) fn on_completion(&mut self, completion: Completion) {
        let Some(lanes) = self.ring.as_mut() else { return };
        match completion {
            Completion::Sent { tag, result, fds, count: n } => {
                let key = tag & ((1 << KIND_SHIFT) - 1);
                if let Some(i) = self.lanes.iter().position(|l| l.key == key) {
                    let lane = &mut self.lanes[i];
                    lane.sending = false;
                    match result {
                        // The connections live in the worker's lane now; the primary's copies
                        // were closed in the ring, right after the send.
                        Ok(_) => {
                            lane.next_backoff = FIRST_BACKOFF;
                            self.counters.bump_primary(PrimaryCounter::Dispatched, n as u64);
                        }
                        Err(e) => {
                            // Not sent: the batch goes back to the front of the queue, and
                            // its sequence numbers back to the lane.
                            lane.sent -= n as u64;
                            for fd in fds.into_iter().rev() {
                                self.queue.push_front(fd);
                            }
                            self.send_failed(i, n, channel_error(e));
                        }
                    }
                } else if let Some(r) = lanes.retired.iter_mut().find(|r| r.key == key) {
                    r.sending = false;
                    match result {
                        // Sent to a worker that has exited: the flush takes it back from the
                        // lane with the rest.
                        Ok(_) => {}
                        // Not sent: back to the front of the queue.
                        Err(_) => {
                            for fd in fds.into_iter().rev() {
                                self.queue.push_front(fd);
                            }
                        }
                    }
                }
            }
            Completion::Received { tag, result } => {
                let key = tag & ((1 << KIND_SHIFT) - 1);
                lanes.recv.remove(&key);
                let Some(i) = self.lanes.iter().position(|l| l.key == key) else { return };
                match result {
                    Ok(bytes) if bytes.is_empty() => {}
                    Ok(bytes) => match frame::decode(&bytes, 0) {
                        Ok(message) => self.on_message(i, message),
                        Err(e) => self.warnings.push(format!("reading worker lane (key {key}): {e}")),
                    },
                    Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
                    Err(e) => self.warnings.push(format!("io_uring: receiving on worker (key {key})'s lane: {e}")),
                }
            }
            Completion::Polled { tag, .. } => {
                let key = tag & ((1 << KIND_SHIFT) - 1);
                lanes.room.remove(&key);
                if let Some(lane) = self.lanes.iter_mut().find(|l| l.key == key) {
                    lane.full = false;
                }
            }
            Completion::Accepted { result, .. } => {
                // Not the dispatcher's; never tagged as such.
                drop(result);
            }
        }
    }
}

/// Closes `fd` through the ring, or at once if the ring cannot take it.
fn close(ring: &mut Ring, fd: OwnedFd) {
    // `Ring::close` closes it itself when it cannot queue the operation.
    let _ = ring.close(fd);
}

/// A send's error as the epoll path would have seen it from `Channel::try_send`.
fn channel_error(e: io::Error) -> ChannelError {
    match e.raw_os_error() {
        Some(libc::EPIPE | libc::ECONNRESET) => ChannelError::Closed,
        _ => ChannelError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Counters;

    fn ring() -> Option<Ring> {
        if let Err(why) = crate::sys::uring::probe() {
            eprintln!("SKIPPED: io_uring is unavailable here: {why}");
            return None;
        }
        Some(Ring::new(64).unwrap())
    }

    fn connection() -> OwnedFd {
        rustix::io::dup(std::io::stdin()).expect("dup stdin")
    }

    /// A ring dispatcher with `n` serving lanes; returns the workers' ends.
    fn dispatcher(n: usize, window: usize) -> (Dispatcher, Vec<Channel>) {
        let mut d = Dispatcher::new(window, Counters::new(4).unwrap());
        d.use_ring();
        let mut workers = Vec::new();
        for key in 0..n as u64 {
            let (ours, theirs) = Channel::pair().unwrap();
            let copy = Channel::from(rustix::io::dup(&theirs).unwrap());
            d.add_lane(key, key as usize, ours, copy);
            d.set_serving(key, true);
            workers.push(theirs);
        }
        (d, workers)
    }

    /// Flushes, submits and feeds completions back until nothing changes.
    fn turn(d: &mut Dispatcher, ring: &mut Ring) {
        for _ in 0..10 {
            d.flush(ring);
            // A short wait: the sends complete within the call, and the receives and polls
            // only when the test's worker side acts.
            ring.submit_and_wait(Some(std::time::Duration::from_millis(1))).unwrap();
            let mut done = Vec::new();
            ring.completions(&mut done);
            if done.is_empty() {
                return;
            }
            for c in done {
                d.on_completion(c);
            }
        }
    }

    fn received(worker: &mut Channel) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(r) = worker.try_recv().unwrap() {
            let Message::Handoff { seq } = r.message else { panic!("{:?}", r.message) };
            seqs.extend((0..r.fds.len() as u64).map(|i| seq + i));
        }
        seqs
    }

    #[test]
    fn batches_go_out_through_the_ring_and_acks_come_back_through_it() {
        let Some(mut ring) = ring() else { return };
        let (mut d, mut workers) = dispatcher(2, 4);
        d.push_all((0..10).map(|_| connection()));
        assert_eq!(d.queued(), 10, "nothing goes before the flush");
        turn(&mut d, &mut ring);
        let counts: Vec<usize> = workers.iter_mut().map(|w| received(w).len()).collect();
        assert_eq!(counts, [4, 4], "a full window each");
        assert_eq!(d.queued(), 2);
        assert_eq!(d.counters.primary().dispatched, 8);
        workers[1].send(&Message::Ack { received: 4 }, &[]).unwrap();
        turn(&mut d, &mut ring);
        assert_eq!(received(&mut workers[1]), [4, 5], "the ack, read by the ring, opened the window");
        assert_eq!(d.queued(), 0);
    }

    #[test]
    fn a_full_lane_waits_for_room_and_loses_nothing() {
        let Some(mut ring) = ring() else { return };
        let (mut d, mut workers) = dispatcher(1, 1024);
        // One connection per frame from now on (as after a worker ran out of descriptors), so
        // the lane's socket buffer fills long before the window does.
        d.pressure(0);
        d.resume(0);
        d.push_all((0..600).map(|_| connection()));
        let mut turns = 0;
        while !d.lanes[0].full {
            turn(&mut d, &mut ring);
            turns += 1;
            assert!(turns < 1000, "the lane never filled");
        }
        let room = d.ring.as_ref().unwrap().room.len();
        assert_eq!(room, 1, "a poll waits for room on the full lane");
        let mut got = Vec::new();
        for _ in 0..1000 {
            got.extend(received(&mut workers[0]));
            if got.len() >= 600 {
                break;
            }
            turn(&mut d, &mut ring);
        }
        assert_eq!(got, (0..600).collect::<Vec<u64>>(), "every connection reached the worker, in order, once");
        assert_eq!(d.counters.primary().dispatched, 600);
    }

    #[test]
    fn a_lane_removed_with_a_send_in_the_ring_is_taken_back_whole() {
        let Some(mut ring) = ring() else { return };
        let (mut d, mut workers) = dispatcher(2, 32);
        d.push_all((0..4).map(|_| connection()));
        d.flush(&mut ring); // queued in the ring, not yet submitted
        d.remove_lane(0);
        turn(&mut d, &mut ring);
        assert_eq!(received(&mut workers[1]).len(), 4, "worker 0's two came back and went to worker 1");
        assert_eq!(d.counters.primary().requeued, 2);
        assert!(d.ring.as_ref().unwrap().retired.is_empty(), "the lane is gone once taken back");
    }
}

//! The worker's end of its lane: handed-off connections in, acknowledgements out.
//!
//! See [`crate::mode::handoff`] for the protocol. This side reads with
//! [`Channel::try_recv_keeping_fds`], so a full descriptor table never costs a connection: the
//! frame stays queued, the lane reports [`Read::OutOfDescriptors`], and the worker asks the
//! primary to take the lane back (`Pressure`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::channel::{Channel, ChannelError, Message};
use crate::stats::{Counters, WorkerCounter};

/// How many frames one [`LaneReader::read`] takes at most before letting the worker look at
/// its other sources (level-triggered epoll reports the lane again if more wait).
const FRAMES_PER_READ: usize = 64;

/// What one [`LaneReader::read`] came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// The lane is empty now.
    Empty,
    /// More frames may be waiting (the read stopped at its limit).
    More,
    /// The next frame's descriptors do not fit the descriptor table: it is still queued.
    OutOfDescriptors,
    /// The primary closed its end.
    Closed,
}

/// The worker's end of a lane.
#[derive(Debug)]
pub(crate) struct LaneReader {
    channel: Channel,
    /// Connections received on this lane so far.
    received: u64,
    /// The total last acknowledged.
    acked: u64,
    /// Acknowledge once this many are unacknowledged: half the primary's window, so the window
    /// never closes on a worker that keeps up, and an idle worker costs the primary nothing.
    ack_every: u64,
    /// The sequence number the next handoff should carry at least.
    next_seq: u64,
    /// Where each received handoff is counted, the moment its frame leaves the lane — so a
    /// worker killed in the middle of a read of many frames leaves uncounted at most the one
    /// whose `recvmsg` the kill ended, not every frame read before it.
    counters: Counters,
    slot: usize,
}

impl LaneReader {
    pub(crate) fn new(channel: Channel, window: usize, counters: Counters, slot: usize) -> LaneReader {
        LaneReader {
            channel,
            received: 0,
            acked: 0,
            ack_every: window.div_ceil(2).max(1) as u64,
            next_seq: 0,
            counters,
            slot,
        }
    }

    /// Reads up to [`FRAMES_PER_READ`] frames, appending each handed-off connection to `into`
    /// and each oddity to `warnings`.
    pub(crate) fn read(&mut self, into: &mut VecDeque<OwnedFd>, warnings: &mut Vec<String>) -> io::Result<Read> {
        for _ in 0..FRAMES_PER_READ {
            match self.channel.try_recv_keeping_fds() {
                Ok(None) => return Ok(Read::Empty),
                Ok(Some(r)) => match r.message {
                    Message::Handoff { seq } => {
                        // Sequence numbers only grow; a gap is handoffs the primary took back.
                        if seq < self.next_seq {
                            warnings.push(format!("handoff numbered {seq} after {}", self.next_seq));
                        }
                        self.next_seq = seq + r.fds.len() as u64;
                        self.received += r.fds.len() as u64;
                        self.counters.bump_worker(self.slot, WorkerCounter::HandoffsReceived, r.fds.len() as u64);
                        into.extend(r.fds);
                    }
                    other => warnings.push(format!("unexpected {other:?} on the lane")),
                },
                Err(ChannelError::ControlTruncated { kind: Some(_) }) => return Ok(Read::OutOfDescriptors),
                Err(ChannelError::Closed) => return Ok(Read::Closed),
                Err(ChannelError::Io(e)) => return Err(crate::sys::context(e, "reading the lane")),
                // A bad frame was removed (its descriptors closed); the next one may be fine.
                Err(e) => warnings.push(format!("bad frame on the lane: {e}")),
            }
        }
        Ok(Read::More)
    }

    /// Acknowledges what was received, if half a window is waiting for it (or, with `force`,
    /// anything at all); returns how many handoffs this acknowledged. A full or closed channel
    /// leaves it for next time: the count is a running total, so a later acknowledgement
    /// covers this one.
    pub(crate) fn acknowledge(&mut self, force: bool) -> u64 {
        let due = self.received - self.acked;
        if due == 0 || (!force && due < self.ack_every) {
            return 0;
        }
        if self.channel.try_send(&Message::Ack { received: self.received }, &[]).is_ok() {
            self.acked = self.received;
            return due;
        }
        0
    }
}

impl AsFd for LaneReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.channel.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::handoff::Dispatcher;

    fn connection() -> OwnedFd {
        rustix::io::dup(std::io::stdin()).expect("dup stdin")
    }

    #[test]
    fn acknowledgements_come_every_half_window_and_keep_the_window_open() {
        let (ours, theirs) = Channel::pair().unwrap();
        let copy = Channel::from(rustix::io::dup(&theirs).unwrap());
        let mut d = Dispatcher::new(4, Counters::new(1).unwrap());
        d.add_lane(0, 0, ours, copy);
        d.set_serving(0, true);
        let mut lane = LaneReader::new(theirs, 4, Counters::new(1).unwrap(), 0);
        let (mut got, mut warnings) = (VecDeque::new(), Vec::new());
        for round in 0..10 {
            for _ in 0..2 {
                d.push_all([connection()]);
            }
            assert_eq!(lane.read(&mut got, &mut warnings).unwrap(), Read::Empty);
            lane.acknowledge(false);
            d.on_lane_readable(0);
            assert_eq!(d.queued(), 0, "round {round}: the window never closed");
        }
        assert_eq!(got.len(), 20);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_bad_frame_between_two_handoffs_costs_only_itself() {
        let (primary, theirs) = Channel::pair().unwrap();
        let mut lane = LaneReader::new(theirs, 32, Counters::new(1).unwrap(), 0);
        let a = connection();
        primary.send(&Message::Handoff { seq: 0 }, &[a.as_fd()]).unwrap();
        // A frame of the handoff kind whose header claims two descriptors but carries one.
        let mut bad = crate::channel::frame::encode(&Message::Handoff { seq: 1 }, 2).unwrap();
        bad[2] = 2;
        crate::sys::fdpass::send_with_fds(primary.as_fd(), &[&bad], &[a.as_fd()], false).unwrap();
        primary.send(&Message::Handoff { seq: 2 }, &[a.as_fd()]).unwrap();
        let (mut got, mut warnings) = (VecDeque::new(), Vec::new());
        assert_eq!(lane.read(&mut got, &mut warnings).unwrap(), Read::Empty);
        assert_eq!(got.len(), 2, "both good handoffs arrived");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        lane.acknowledge(true);
        let mut primary = primary;
        assert_eq!(primary.recv().unwrap().message, Message::Ack { received: 2 }, "the bad frame counts for nothing");
    }
}

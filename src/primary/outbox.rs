//! What the primary sends on a worker's control channel, never blocking.
//!
//! A worker that stops reading its channel (stuck in a long computation, stopped, deadlocked)
//! fills the channel's socket buffer after a few hundred frames. A blocking `sendmsg` would
//! then freeze the primary — no reaping, no heartbeat, no accepting. So every send is
//! `MSG_DONTWAIT`; what does not fit waits in the worker's outbox, in order, and goes out when
//! the channel is writable again. The outbox is bounded: a worker that lets it overflow is not
//! reading, and is treated as hung (killed and replaced).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::channel::{Channel, ChannelError, Message};

/// The most frames an outbox holds.
pub(super) const MAX_FRAMES: usize = 1024;
/// The most payload bytes an outbox holds.
pub(super) const MAX_BYTES: usize = 8 << 20;

/// A frame waiting to be sent, with its own copies of the descriptors it carries.
#[derive(Debug)]
struct Frame {
    message: Message,
    fds: Vec<OwnedFd>,
}

impl Frame {
    fn len(&self) -> usize {
        match &self.message {
            Message::User(bytes) => bytes.len(),
            Message::Warning(text) => text.len(),
            _ => 8,
        }
    }
}

/// What a send came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sent {
    /// Sent, or queued behind earlier frames.
    Done,
    /// Queued, and the channel is full: watch it for writability.
    Waiting,
    /// The outbox would overflow: the worker is not reading.
    Overflow,
    /// The worker's end is closed.
    Closed,
}

/// A worker's outbox.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    frames: VecDeque<Frame>,
    bytes: usize,
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Sends `message` with `fds` now if nothing is queued before it and the channel has room;
    /// queues it (duplicating `fds`) otherwise.
    ///
    /// # Errors
    /// Duplicating a descriptor failed (`EMFILE`), or the send failed for a reason other than a
    /// full or closed channel; nothing was queued.
    pub(super) fn send(&mut self, channel: &Channel, message: Message, fds: &[BorrowedFd<'_>]) -> io::Result<Sent> {
        if self.frames.is_empty() {
            match channel.try_send(&message, fds) {
                Ok(()) => return Ok(Sent::Done),
                Err(ChannelError::Closed) => return Ok(Sent::Closed),
                Err(ChannelError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        let frame = Frame {
            message,
            fds: fds
                .iter()
                .map(|fd| fd.try_clone_to_owned())
                .collect::<io::Result<_>>()
                .map_err(|e| crate::sys::context(e, "fcntl(F_DUPFD_CLOEXEC) to queue a message's descriptors"))?,
        };
        if self.frames.len() >= MAX_FRAMES || self.bytes + frame.len() > MAX_BYTES {
            return Ok(Sent::Overflow);
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Ok(Sent::Waiting)
    }

    /// The channel is writable: sends what it takes. Returns whether the outbox is empty now.
    pub(super) fn flush(&mut self, channel: &Channel) -> Result<bool, ChannelError> {
        while let Some(frame) = self.frames.front() {
            let fds: Vec<BorrowedFd<'_>> = frame.fds.iter().map(|fd| fd.as_fd()).collect();
            match channel.try_send(&frame.message, &fds) {
                Ok(()) => {
                    self.bytes -= frame.len();
                    self.frames.pop_front();
                }
                Err(ChannelError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_stops_fills_the_outbox_without_blocking_then_overflows() {
        let (primary, worker) = Channel::pair().unwrap();
        let mut outbox = Outbox::default();
        let message = Message::User(vec![b'x'; 4096]);
        let mut results = Vec::new();
        for _ in 0..5000 {
            let r = outbox.send(&primary, message.clone(), &[]).unwrap();
            let stop = r == Sent::Overflow;
            results.push(r);
            if stop {
                break;
            }
        }
        assert_eq!(results.last(), Some(&Sent::Overflow), "the outbox is bounded");
        assert!(results.contains(&Sent::Waiting));
        drop(worker);
        assert!(outbox.flush(&primary).is_err(), "a closed worker end fails the flush");
    }

    #[test]
    fn queued_frames_go_out_in_order_when_the_reader_catches_up() {
        let (primary, mut worker) = Channel::pair().unwrap();
        let mut outbox = Outbox::default();
        let mut sent = 0u32;
        while outbox.send(&primary, Message::User(sent.to_le_bytes().to_vec()), &[]).unwrap() == Sent::Done {
            sent += 1;
        }
        for _ in 0..10 {
            outbox
                .send(
                    &primary,
                    Message::User(
                        {
                            sent += 1;
                            sent
                        }
                        .to_le_bytes()
                        .to_vec(),
                    ),
                    &[],
                )
                .unwrap();
        }
        let mut next = 0u32;
        loop {
            while let Some(r) = worker.try_recv().unwrap() {
                assert_eq!(r.message, Message::User(next.to_le_bytes().to_vec()));
                next += 1;
            }
            if outbox.flush(&primary).unwrap() {
                break;
            }
        }
        while let Some(r) = worker.try_recv().unwrap() {
            assert_eq!(r.message, Message::User(next.to_le_bytes().to_vec()));
            next += 1;
        }
        assert_eq!(next, sent + 1);
    }
}

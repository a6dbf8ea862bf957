//! What the primary sends on a worker's control channel, never blocking.
//!
//! A worker that stops reading its channel (stuck in a long computation, stopped, deadlocked)
//! fills the channel's socket buffer after a few hundred frames. A blocking `sendmsg` would
//! then freeze the primary — no reaping, no heartbeat, no accepting. So every send is
//! `MSG_DONTWAIT`; what does not fit waits in the worker's outbox, in order, and goes out when
//! the channel is writable again. A send that fails for a passing reason (`ENOBUFS`, `ENOMEM`,
//! `ETOOMANYREFS` for a frame with descriptors) is retried after a back-off instead; a frame
//! with descriptors that keeps failing is given up, with a warning, so that it cannot hold up
//! the frames behind it for ever. The outbox is bounded: a worker that lets it overflow is not
//! reading, and is treated as hung (killed and replaced).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::channel::{Channel, ChannelError, Message};

/// The most frames an outbox holds.
pub(super) const MAX_FRAMES: usize = 1024;
/// The most payload bytes an outbox holds.
pub(super) const MAX_BYTES: usize = 8 << 20;
/// The first wait after a send failed for a passing reason; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(10);
const MAX_RETRY: Duration = Duration::from_secs(1);
/// A frame with descriptors that failed this many times is given up.
const MAX_FAILURES: u32 = 8;

/// A frame waiting to be sent, with its own copies of the descriptors it carries.
#[derive(Debug)]
struct Frame {
    message: Message,
    fds: Vec<OwnedFd>,
    failures: u32,
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

/// What is left to do after a send or a flush.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pending {
    /// Nothing: everything went out.
    Nothing,
    /// The channel is full: watch it for writability.
    Writable,
    /// A send failed for a passing reason: try again then.
    RetryAt(Instant),
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
    next_retry: Option<Duration>,
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Sends `message` with `fds` now if nothing is queued before it and the channel takes it;
    /// queues it (duplicating `fds`) otherwise. Frames given up on the way are described in
    /// `warnings`.
    ///
    /// # Errors
    /// Duplicating a descriptor failed (`EMFILE`); nothing was queued.
    pub(super) fn send(
        &mut self,
        channel: &Channel,
        message: Message,
        fds: &[BorrowedFd<'_>],
        warnings: &mut Vec<String>,
    ) -> io::Result<Pending> {
        let queued_before = !self.frames.is_empty();
        let frame = Frame {
            message,
            fds: fds
                .iter()
                .map(|fd| fd.try_clone_to_owned())
                .collect::<io::Result<_>>()
                .map_err(|e| crate::sys::context(e, "fcntl(F_DUPFD_CLOEXEC) to queue a message's descriptors"))?,
            failures: 0,
        };
        if self.frames.len() >= MAX_FRAMES || self.bytes + frame.len() > MAX_BYTES {
            return Ok(Pending::Overflow);
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        if queued_before {
            // Behind earlier frames, which are waiting for something already.
            return Ok(Pending::Nothing);
        }
        Ok(self.flush(channel, warnings))
    }

    /// Sends what the channel takes, in order.
    pub(super) fn flush(&mut self, channel: &Channel, warnings: &mut Vec<String>) -> Pending {
        while let Some(frame) = self.frames.front_mut() {
            let fds: Vec<BorrowedFd<'_>> = frame.fds.iter().map(|fd| fd.as_fd()).collect();
            let result = channel.try_send(&frame.message, &fds);
            drop(fds);
            match result {
                Ok(()) => {
                    let frame = self.frames.pop_front().expect("just sent");
                    self.bytes -= frame.len();
                    self.next_retry = None;
                }
                Err(ChannelError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Pending::Writable,
                Err(ChannelError::Closed) => return Pending::Closed,
                Err(e) => {
                    frame.failures += 1;
                    if !frame.fds.is_empty() && frame.failures >= MAX_FAILURES {
                        warnings.push(format!(
                            "gave up sending a {}-descriptor message to the worker after {MAX_FAILURES} tries: {e}",
                            frame.fds.len()
                        ));
                        let frame = self.frames.pop_front().expect("just tried");
                        self.bytes -= frame.len();
                        continue;
                    }
                    let delay = self.next_retry.unwrap_or(FIRST_RETRY);
                    self.next_retry = Some((delay * 2).min(MAX_RETRY));
                    return Pending::RetryAt(Instant::now() + delay);
                }
            }
        }
        Pending::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_stops_fills_the_outbox_without_blocking_then_overflows() {
        let (primary, worker) = Channel::pair().unwrap();
        let mut outbox = Outbox::default();
        let mut warnings = Vec::new();
        let message = Message::User(vec![b'x'; 4096]);
        let mut results = Vec::new();
        for _ in 0..5000 {
            let r = outbox.send(&primary, message.clone(), &[], &mut warnings).unwrap();
            let stop = r == Pending::Overflow;
            results.push(r);
            if stop {
                break;
            }
        }
        assert_eq!(results.last(), Some(&Pending::Overflow), "the outbox is bounded");
        assert!(results.contains(&Pending::Writable));
        drop(worker);
        assert_eq!(outbox.flush(&primary, &mut warnings), Pending::Closed);
    }

    #[test]
    fn queued_frames_go_out_in_order_when_the_reader_catches_up() {
        let (primary, mut worker) = Channel::pair().unwrap();
        let mut outbox = Outbox::default();
        let mut warnings = Vec::new();
        let mut sent = 0u32;
        while outbox.send(&primary, Message::User(sent.to_le_bytes().to_vec()), &[], &mut warnings).unwrap()
            == Pending::Nothing
        {
            sent += 1;
        }
        for _ in 0..10 {
            sent += 1;
            outbox.send(&primary, Message::User(sent.to_le_bytes().to_vec()), &[], &mut warnings).unwrap();
        }
        let mut next = 0u32;
        loop {
            while let Some(r) = worker.try_recv().unwrap() {
                assert_eq!(r.message, Message::User(next.to_le_bytes().to_vec()));
                next += 1;
            }
            if outbox.flush(&primary, &mut warnings) == Pending::Nothing {
                break;
            }
        }
        while let Some(r) = worker.try_recv().unwrap() {
            assert_eq!(r.message, Message::User(next.to_le_bytes().to_vec()));
            next += 1;
        }
        assert_eq!(next, sent + 1);
        assert!(warnings.is_empty());
    }
}

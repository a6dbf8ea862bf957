//! The blocking iterator: one connection at a time.

use std::io;

use super::{Worker, WorkerEvent};
use crate::stream::Stream;

/// The iterator of [`Worker::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    pub(super) worker: &'a mut Worker,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<Stream>;

    fn next(&mut self) -> Option<io::Result<Stream>> {
        loop {
            match self.worker.next_event() {
                Ok(WorkerEvent::Connection(stream)) => return Some(stream.set_nonblocking(false).map(|()| stream)),
                Ok(WorkerEvent::Message { data, fds }) => self.worker.messages.push_back((data, fds)),
                Ok(WorkerEvent::Stop) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

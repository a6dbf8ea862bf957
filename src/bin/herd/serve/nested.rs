//! The epoll instance of `--worker-api nested`: the worker's own loop, made with rustix
//! directly, as a foreign event loop (mio, tokio) would make it, with the worker's descriptor
//! registered in it like any other source.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use herd::{Interest, Ready};
use rustix::event::epoll;

/// An epoll instance of our own.
pub struct Nested {
    fd: OwnedFd,
    events: Vec<epoll::Event>,
}

fn flags(interest: Interest) -> epoll::EventFlags {
    let mut f = epoll::EventFlags::RDHUP;
    if interest.readable {
        f |= epoll::EventFlags::IN;
    }
    if interest.writable {
        f |= epoll::EventFlags::OUT;
    }
    if interest.edge {
        f |= epoll::EventFlags::ET;
    }
    f
}

fn context(e: rustix::io::Errno, call: &str) -> io::Error {
    let e = io::Error::from_raw_os_error(e.raw_os_error());
    io::Error::new(e.kind(), format!("{call}: {e}"))
}

impl Nested {
    pub fn new() -> io::Result<Nested> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| context(e, "epoll_create1"))?;
        Ok(Nested { fd, events: Vec::with_capacity(256) })
    }

    pub fn add(&self, fd: impl AsFd, token: u64, interest: Interest) -> io::Result<()> {
        epoll::add(&self.fd, fd, epoll::EventData::new_u64(token), flags(interest))
            .map_err(|e| context(e, "epoll_ctl(EPOLL_CTL_ADD)"))
    }

    pub fn modify(&self, fd: impl AsFd, token: u64, interest: Interest) -> io::Result<()> {
        epoll::modify(&self.fd, fd, epoll::EventData::new_u64(token), flags(interest))
            .map_err(|e| context(e, "epoll_ctl(EPOLL_CTL_MOD)"))
    }

    /// Waits at most `timeout` (`None`: forever); what is ready goes to `out` (cleared first).
    pub fn wait(&mut self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = timeout.map(|d| rustix::event::Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: d.subsec_nanos() as _,
        });
        self.events.clear();
        loop {
            match epoll::wait(&self.fd, rustix::buffer::spare_capacity(&mut self.events), timeout.as_ref()) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(context(e, "epoll_wait")),
            }
        }
        out.clear();
        out.extend(self.events.iter().map(|ev| {
            // `epoll_event` is packed: copy the fields out rather than borrow them.
            let (flags, data) = (ev.flags, ev.data);
            Ready {
                token: data.u64(),
                readable: flags.contains(epoll::EventFlags::IN),
                writable: flags.contains(epoll::EventFlags::OUT),
                hangup: flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::RDHUP | epoll::EventFlags::ERR),
            }
        }));
        Ok(())
    }
}

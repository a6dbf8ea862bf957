//! Every deadline the primary keeps, on one timerfd.
//!
//! The shutdown kill timeout, the accept back-off, the reload timeout, the heartbeat, fork
//! retries and lane back-offs are each an `Option<Instant>` somewhere; after every turn the
//! primary arms its one timer for the earliest of them, so that a host polling the primary's
//! descriptor ([`super::Primary`]'s `AsFd`) wakes for deadlines as for anything else.

use std::io;
use std::time::Instant;

use crate::sys::timerfd::Timer;

/// The deadlines that are not kept elsewhere.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    /// Graceful shutdown: SIGKILL every worker still running.
    pub(super) kill: Option<Instant>,
    /// The primary's accepting was paused after `EMFILE`: resume.
    pub(super) accept: Option<Instant>,
    /// A reload's new workers must be listening by then.
    pub(super) reload: Option<Instant>,
    /// Ping the workers; kill those silent too long.
    pub(super) heartbeat: Option<Instant>,
    /// Look for stalled workers (modes with lanes).
    pub(super) stall_check: Option<Instant>,
}

/// The timerfd and the deadline it is armed for.
#[derive(Debug)]
pub(super) struct Alarm {
    timer: Timer,
    armed_for: Option<Instant>,
}

impl Alarm {
    pub(super) fn new() -> io::Result<Alarm> {
        Ok(Alarm { timer: Timer::new()?, armed_for: None })
    }

    pub(super) fn timer(&self) -> &Timer {
        &self.timer
    }

    /// Arms the timer for `at` (or disarms it), unless it already is.
    pub(super) fn set(&mut self, at: Option<Instant>) -> io::Result<()> {
        if at == self.armed_for {
            return Ok(());
        }
        match at {
            Some(at) => self.timer.arm(at.saturating_duration_since(Instant::now()))?,
            None => self.timer.disarm()?,
        }
        self.armed_for = at;
        Ok(())
    }

    /// The timer fired: consume the expiry, forget what it was armed for.
    pub(super) fn fired(&mut self) {
        self.timer.clear();
        self.armed_for = None;
    }
}

/// Whether `deadline` has passed; if so, clears it.
pub(super) fn due(deadline: &mut Option<Instant>, now: Instant) -> bool {
    if deadline.is_some_and(|t| t <= now) {
        *deadline = None;
        return true;
    }
    false
}

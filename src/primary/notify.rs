//! Telling a service manager how the cluster is doing: the sd_notify protocol
//! ([`sd_notify(3)`]), when [`crate::Builder::sd_notify`] is on and `NOTIFY_SOCKET` is set.
//!
//! | the cluster | what the primary sends |
//! |---|---|
//! | every slot's worker listens, the first time | `READY=1`, `MAINPID=<its pid>` |
//! | a reload starts (SIGHUP) | `RELOADING=1`, `MONOTONIC_USEC=<now>` (systemd's `Type=notify-reload`) |
//! | the reload ended (done or failed) | `READY=1` |
//! | a shutdown starts | `STOPPING=1` |
//! | the number of listening workers or the generation changes | `STATUS=N of M workers listening, generation G` |
//!
//! The state is recomputed after every turn of the loop and only changes are sent.
//!
//! [`sd_notify(3)`]: https://man7.org/linux/man-pages/man3/sd_notify.3.html

use super::Primary;
use crate::sys::notify;

/// Where the cluster stands, as the service manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Reloading,
    Stopping,
}

/// The service manager's socket and what it was last told.
#[derive(Debug)]
pub(super) struct Notifier {
    socket: String,
    phase: Phase,
    /// What the last `STATUS=` said: (workers listening, target, generation).
    status: Option<(usize, usize, u64)>,
}

impl Notifier {
    /// Whether the service manager was told `READY=1` already (for the primary's next image).
    pub(super) fn told_ready(&self) -> bool {
        self.phase != Phase::Starting
    }

    /// The notifier of the primary's next image: `READY=1` is not said again.
    pub(super) fn resumed(told_ready: bool) -> Option<Notifier> {
        let mut n = Notifier::from_env()?;
        if told_ready {
            n.phase = Phase::Ready;
        }
        Some(n)
    }

    /// A notifier for the `NOTIFY_SOCKET` of this process, if it has one.
    pub(super) fn from_env() -> Option<Notifier> {
        let socket = std::env::var(crate::program::env::NOTIFY_SOCKET).ok().filter(|s| !s.is_empty())?;
        Some(Notifier { socket, phase: Phase::Starting, status: None })
    }
}

impl Primary {
    /// Tells the service manager what changed since the last turn.
    pub(super) fn notify_service_manager(&mut self) {
        let Some(n) = &self.service_manager else { return };
        let listening = self.workers.values().filter(|w| w.listening && !w.asked_to_exit).count();
        let phase = if self.shutting_down {
            Phase::Stopping
        } else if self.reload.is_some() {
            Phase::Reloading
        } else if n.phase != Phase::Starting || listening >= self.target {
            Phase::Ready
        } else {
            Phase::Starting
        };
        // Compared as numbers: this runs after every turn, and says nothing most of the time.
        let status = Some((listening, self.target, self.generation));
        if phase == n.phase && status == n.status {
            return;
        }
        let mut lines = Vec::new();
        if phase != n.phase {
            match phase {
                Phase::Ready if n.phase == Phase::Starting => {
                    lines.push("READY=1".to_owned());
                    lines.push(format!("MAINPID={}", std::process::id()));
                }
                Phase::Ready => lines.push("READY=1".to_owned()),
                Phase::Reloading => {
                    lines.push("RELOADING=1".to_owned());
                    let usec = crate::sys::timerfd::monotonic_us();
                    lines.push(format!("MONOTONIC_USEC={usec}"));
                }
                Phase::Stopping => lines.push("STOPPING=1".to_owned()),
                Phase::Starting => {}
            }
        }
        if status != n.status {
            lines.push(format!(
                "STATUS={listening} of {} workers listening, generation {}",
                self.target, self.generation
            ));
        }
        if lines.is_empty() {
            return;
        }
        match notify::send(&n.socket, &lines.join("\n")) {
            Ok(()) => {
                let n = self.service_manager.as_mut().expect("checked");
                n.phase = phase;
                n.status = status;
            }
            // A full socket buffer, say: the same lines go out after the next turn.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR)) => {}
            Err(e) => {
                // Said once: a service manager that cannot be reached is not asked again.
                self.service_manager = None;
                self.warn(format!("telling the service manager (sd_notify): {e}; not trying again"));
            }
        }
    }
}

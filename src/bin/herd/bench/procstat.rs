//! What the kernel says a process did: voluntary context switches and CPU time, from `/proc`.
//!
//! # Why context switches measure the herd
//!
//! A worker that sleeps in `epoll_wait` or `accept` and is woken up gives up the CPU again when
//! it finds nothing to do: each such sleep is one *voluntary* context switch. When a connection
//! wakes every idle worker (plain epoll on a shared listener), every one of them switches once
//! — the loser included, even though it never returns to user space: the kernel re-polls the
//! listener for it, finds the queue already emptied by the winner and puts it back to sleep
//! inside `epoll_wait`. So counting `epoll_wait` returns shows about one per accept whatever
//! happens, and only the context switch counter shows the whole herd.
//!
//! `voluntary_ctxt_switches` in `/proc/PID/status` counts one *thread*; a worker of the
//! `blocking` strategy has a second thread parked in `accept`, so the sample sums every thread
//! in `/proc/PID/task/`.
//!
//! # CPU time
//!
//! `utime` and `stime` (fields 14 and 15 of `/proc/PID/stat`) cover the whole process, every
//! thread included, in clock ticks. The tick rate is the kernel's `USER_HZ`, which is what
//! `sysconf(_SC_CLK_TCK)` returns (rustix's [`clock_ticks_per_second`], read from the `AT_CLKTCK`
//! entry of the auxiliary vector the kernel gives every process). It is 100 on every common
//! architecture. A tick is 10 ms, so CPU figures are only as exact as runs are long: a run of a
//! few seconds per row keeps the rounding under a few percent.
//!
//! [`clock_ticks_per_second`]: rustix::param::clock_ticks_per_second

use std::fs;
use std::io;

/// One process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Voluntary context switches, summed over the process's threads.
    pub voluntary_switches: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

impl Sample {
    /// Reads `/proc/PID/task/*/status` and `/proc/PID/stat`.
    ///
    /// # Errors
    ///
    /// The process is gone, or `/proc` is not what this expects; the message names the file.
    pub fn of(pid: u32) -> io::Result<Sample> {
        let stat_path = format!("/proc/{pid}/stat");
        let stat = fs::read_to_string(&stat_path).map_err(|e| context(e, &stat_path))?;
        let cpu_ticks = cpu_ticks(&stat).ok_or_else(|| malformed(&stat_path))?;
        let tasks = format!("/proc/{pid}/task");
        let mut voluntary_switches = 0;
        for task in fs::read_dir(&tasks).map_err(|e| context(e, &tasks))? {
            let path = task?.path().join("status");
            // A thread that ended since the directory was listed has nothing left to count.
            let Ok(status) = fs::read_to_string(&path) else { continue };
            voluntary_switches += voluntary_switches_in(&status).ok_or_else(|| malformed(&path.to_string_lossy()))?;
        }
        Ok(Sample { voluntary_switches, cpu_ticks })
    }

    /// What happened between `self` (earlier) and `later`.
    pub fn delta(&self, later: &Sample) -> Sample {
        Sample {
            voluntary_switches: later.voluntary_switches.saturating_sub(self.voluntary_switches),
            cpu_ticks: later.cpu_ticks.saturating_sub(self.cpu_ticks),
        }
    }
}

/// The `voluntary_ctxt_switches:` line of a `status` file.
fn voluntary_switches_in(status: &str) -> Option<u64> {
    status.lines().find_map(|line| line.strip_prefix("voluntary_ctxt_switches:")).and_then(|v| v.trim().parse().ok())
}

/// `utime + stime` from a `stat` line. The command name (field 2) is in parentheses and may hold
/// spaces or parentheses itself, so fields are counted from the last `)`: the next one is
/// field 3, which makes `utime` (field 14) the twelfth.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`USER_HZ`), the unit of CPU times in `/proc`.
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

fn context(e: io::Error, path: &str) -> io::Error {
    io::Error::new(e.kind(), format!("reading {path}: {e}"))
}

fn malformed(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("reading {path}: unexpected format"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "4242 (herd (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 1 0 99 1000 50";
        assert_eq!(cpu_ticks(stat), Some(42));
        assert_eq!(cpu_ticks("4242 (herd) S 1"), None);
    }

    #[test]
    fn reads_voluntary_switches() {
        let status = "Name:\therd\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t5\n";
        assert_eq!(voluntary_switches_in(status), Some(1234));
        assert_eq!(voluntary_switches_in("Name:\therd\n"), None);
    }

    #[test]
    fn clock_ticks_are_sane() {
        assert!((1..=10_000).contains(&clock_ticks_per_second()));
    }

    #[test]
    fn samples_this_process() {
        let a = Sample::of(std::process::id()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = Sample::of(std::process::id()).unwrap();
        assert!(a.delta(&b).voluntary_switches >= 1, "{a:?} {b:?}");
        assert!(Sample::of(u32::MAX / 2).is_err());
    }
}

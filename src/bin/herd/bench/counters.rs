//! The server's own counters, as `herd serve --stats json` prints them on exit:
//!
//! ```text
//! {"primary":{"accepted":0,"dispatched":0,"queued":0,"requeued":0},
//!  "workers":[{"wakeups":5,"accepts":5,"eagains":0,"handoffs_received":0,"handoffs_acked":0,"closed":5},...]}
//! ```
//!
//! (one line). The shape is fixed and flat — two levels of objects holding integers — so a few
//! lines of scanning read it; no JSON library is needed.

use std::collections::BTreeMap;

/// The primary's counters (handoff mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Primary {
    pub accepted: u64,
    pub dispatched: u64,
    pub queued: u64,
    pub requeued: u64,
}

/// One worker slot's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Worker {
    /// Wakeups seen in user space: `epoll_wait` returns reporting the accept source, or blocking
    /// `accept` returns.
    pub wakeups: u64,
    pub accepts: u64,
    pub eagains: u64,
    pub handoffs_received: u64,
    pub handoffs_acked: u64,
    pub closed: u64,
}

impl Worker {
    /// Connections this worker got, by accepting them or by handoff.
    pub fn connections(&self) -> u64 {
        self.accepts + self.handoffs_received
    }
}

/// Everything the server counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub primary: Primary,
    /// By worker slot.
    pub workers: Vec<Worker>,
}

impl Counters {
    /// Parses the last line of `stdout` that holds the counters object.
    pub fn parse(stdout: &str) -> Result<Counters, String> {
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with("{\"primary\""))
            .ok_or("herd serve printed no counters on exit")?;
        let after = |key: &str| line.find(key).map(|i| &line[i + key.len()..]);
        let primary = after("\"primary\"").and_then(object).ok_or("no primary object in the counters")?;
        let p = fields(primary)?;
        let primary = Primary {
            accepted: get(&p, "accepted")?,
            dispatched: get(&p, "dispatched")?,
            queued: get(&p, "queued")?,
            requeued: get(&p, "requeued")?,
        };
        let mut rest = after("\"workers\"")
            .and_then(|s| s.trim_start_matches(separator).strip_prefix('['))
            .ok_or("no workers array in the counters")?;
        let mut workers = Vec::new();
        while let Some(obj) = object(rest) {
            let w = fields(obj)?;
            workers.push(Worker {
                wakeups: get(&w, "wakeups")?,
                accepts: get(&w, "accepts")?,
                eagains: get(&w, "eagains")?,
                handoffs_received: get(&w, "handoffs_received")?,
                handoffs_acked: get(&w, "handoffs_acked")?,
                closed: get(&w, "closed")?,
            });
            rest = &rest[rest.find('}').map_or(rest.len(), |i| i + 1)..];
        }
        Ok(Counters { primary, workers })
    }
}

/// The inside of the flat `{...}` object that `s` starts with (after blanks, `:` or `,`).
fn object(s: &str) -> Option<&str> {
    let s = s.trim_start_matches(separator).strip_prefix('{')?;
    Some(&s[..s.find('}')?])
}

/// What may come between a key and its value, or between array elements.
fn separator(c: char) -> bool {
    c.is_whitespace() || c == ':' || c == ','
}

/// `"key":123,...` as a map.
fn fields(obj: &str) -> Result<BTreeMap<&str, u64>, String> {
    obj.split(',')
        .filter(|f| !f.trim().is_empty())
        .map(|field| {
            let (key, value) = field.split_once(':').ok_or_else(|| format!("counter field {field:?} has no value"))?;
            let value = value.trim().parse().map_err(|_| format!("counter field {field:?} is not a count"))?;
            Ok((key.trim().trim_matches('"'), value))
        })
        .collect()
}

fn get(map: &BTreeMap<&str, u64>, key: &str) -> Result<u64, String> {
    map.get(key).copied().ok_or_else(|| format!("counter {key:?} missing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"primary":{"accepted":7,"dispatched":8,"queued":1,"requeued":0},"workers":[{"wakeups":5,"accepts":4,"eagains":1,"handoffs_received":0,"handoffs_acked":0,"closed":4},{"wakeups":2,"accepts":0,"eagains":0,"handoffs_received":3,"handoffs_acked":3,"closed":3}]}"#;

    #[test]
    fn parses_what_serve_prints() {
        let c = Counters::parse(&format!("noise\n{LINE}\n")).unwrap();
        assert_eq!(c.primary, Primary { accepted: 7, dispatched: 8, queued: 1, requeued: 0 });
        assert_eq!(c.workers.len(), 2);
        assert_eq!(
            c.workers[0],
            Worker { wakeups: 5, accepts: 4, eagains: 1, handoffs_received: 0, handoffs_acked: 0, closed: 4 }
        );
        assert_eq!(c.workers.iter().map(Worker::connections).collect::<Vec<_>>(), [4, 3]);
    }

    #[test]
    fn tolerates_blanks_and_no_workers() {
        let c = Counters::parse(
            r#"{"primary": {"accepted": 1, "dispatched": 0, "queued": 0, "requeued": 0}, "workers": []}"#,
        )
        .unwrap();
        assert_eq!((c.primary.accepted, c.workers.len()), (1, 0));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(Counters::parse("").unwrap_err().contains("no counters"));
        assert!(Counters::parse(r#"{"primary":{"accepted":1}}"#).unwrap_err().contains("dispatched"));
        assert!(Counters::parse(&LINE.replace(":5,", ":x,")).unwrap_err().contains("not a count"));
    }
}

//! The counters as `herd serve --stats json` prints them on exit, and as `herd bench` reads
//! them back — one line:
//!
//! ```text
//! {"primary":{"accepted":0,"dispatched":0,"queued":0,"requeued":0,"syscalls":3},
//!  "workers":[{"wakeups":5,"accepts":5,"eagains":0,"handoffs_received":0,"handoffs_acked":0,"closed":5,
//!    "syscalls":12,"busy_us":3400},...]}
//! ```
//!
//! The library's [`Snapshot`] knows nothing of serde (it depends on libc and rustix alone), so
//! this module is the one place that maps its fields to JSON keys and back.

use herd::stats::{PrimaryStats, Snapshot, WorkerStats};
use serde_json::{Value, json};

/// The counters as one JSON object: `{"primary":{...},"workers":[{...},...]}`.
pub fn encode(s: &Snapshot) -> String {
    let p = &s.primary;
    let workers: Vec<Value> = s
        .workers
        .iter()
        .map(|w| {
            json!({
                "wakeups": w.wakeups,
                "accepts": w.accepts,
                "eagains": w.eagains,
                "handoffs_received": w.handoffs_received,
                "handoffs_acked": w.handoffs_acked,
                "closed": w.closed,
                "syscalls": w.syscalls,
                "busy_us": w.busy_us,
            })
        })
        .collect();
    let primary = json!({
        "accepted": p.accepted,
        "dispatched": p.dispatched,
        "queued": p.queued,
        "requeued": p.requeued,
        "syscalls": p.syscalls,
    });
    json!({ "primary": primary, "workers": workers }).to_string()
}

/// Parses the last line of `stdout` that holds the counters object.
pub fn decode(stdout: &str) -> Result<Snapshot, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("{\"primary\""))
        .ok_or("herd serve printed no counters on exit")?;
    let counters: Value = serde_json::from_str(line).map_err(|e| format!("the counters are not JSON: {e}"))?;
    let p = counters.get("primary").ok_or("no primary object in the counters")?;
    let mut primary = PrimaryStats::default();
    primary.accepted = count(p, "accepted")?;
    primary.dispatched = count(p, "dispatched")?;
    primary.queued = count(p, "queued")?;
    primary.requeued = count(p, "requeued")?;
    primary.syscalls = count(p, "syscalls")?;
    let workers = counters
        .get("workers")
        .and_then(Value::as_array)
        .ok_or("no workers array in the counters")?
        .iter()
        .map(|w| {
            let mut stats = WorkerStats::default();
            stats.wakeups = count(w, "wakeups")?;
            stats.accepts = count(w, "accepts")?;
            stats.eagains = count(w, "eagains")?;
            stats.handoffs_received = count(w, "handoffs_received")?;
            stats.handoffs_acked = count(w, "handoffs_acked")?;
            stats.closed = count(w, "closed")?;
            stats.syscalls = count(w, "syscalls")?;
            stats.busy_us = count(w, "busy_us")?;
            Ok(stats)
        })
        .collect::<Result<_, String>>()?;
    Ok(Snapshot { primary, workers })
}

/// The count under `key` in a counters object.
fn count(object: &Value, key: &str) -> Result<u64, String> {
    let value = object.get(key).ok_or_else(|| format!("counter {key:?} missing"))?;
    value.as_u64().ok_or_else(|| format!("counter {key:?} is not a count: {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"primary":{"accepted":7,"dispatched":8,"queued":1,"requeued":0,"syscalls":20},"workers":[{"wakeups":5,"accepts":4,"eagains":1,"handoffs_received":0,"handoffs_acked":0,"closed":4,"syscalls":11,"busy_us":900},{"wakeups":2,"accepts":0,"eagains":0,"handoffs_received":3,"handoffs_acked":3,"closed":3,"syscalls":6,"busy_us":30}]}"#;

    #[test]
    fn decodes_what_it_encodes() {
        let s = decode(LINE).unwrap();
        assert_eq!(encode(&s), LINE);
    }

    #[test]
    fn parses_what_serve_prints() {
        let c = decode(&format!("noise\n{LINE}\n")).unwrap();
        let p = c.primary;
        assert_eq!((p.accepted, p.dispatched, p.queued, p.requeued, p.syscalls), (7, 8, 1, 0, 20));
        assert_eq!(c.workers.len(), 2);
        let w = c.workers[0];
        assert_eq!(
            (w.wakeups, w.accepts, w.eagains, w.handoffs_received, w.handoffs_acked, w.closed, w.syscalls),
            (5, 4, 1, 0, 0, 4, 11)
        );
        assert_eq!(c.workers.iter().map(WorkerStats::connections).collect::<Vec<_>>(), [4, 3]);
    }

    #[test]
    fn tolerates_blanks_and_no_workers() {
        let c = decode(r#"{"primary": {"accepted": 1, "dispatched": 0, "queued": 0, "requeued": 0, "syscalls": 0}, "workers": []}"#)
            .unwrap();
        assert_eq!((c.primary.accepted, c.workers.len()), (1, 0));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(decode("").unwrap_err().contains("no counters"));
        assert!(decode(r#"{"primary":{"accepted":1}}"#).unwrap_err().contains("dispatched"));
        assert!(decode(&LINE.replace(":5,", r#":"5","#)).unwrap_err().contains("not a count"));
        assert!(decode(&LINE.replace(":5,", ":x,")).unwrap_err().contains("not JSON"));
        assert!(
            decode(r#"{"primary":{"accepted":1,"dispatched":0,"queued":0,"requeued":0,"syscalls":0}}"#)
                .unwrap_err()
                .contains("no workers")
        );
    }
}

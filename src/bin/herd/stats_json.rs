//! The counters as `herd serve --stats json` prints them on exit, and as `herd bench` reads
//! them back — one line:
//!
//! ```text
//! {"primary":{"accepted":0,"dispatched":0,"queued":0,"requeued":0},
//!  "workers":[{"wakeups":5,"accepts":5,"eagains":0,"handoffs_received":0,"handoffs_acked":0,"closed":5},...]}
//! ```
//!
//! The shape is fixed and flat — two levels of objects holding integers — so a few lines of
//! formatting write it and a few lines of scanning read it; no JSON library is needed.

use std::collections::BTreeMap;

use herd::stats::{PrimaryStats, Snapshot, WorkerStats};

/// The counters as one JSON object: `{"primary":{...},"workers":[{...},...]}`.
pub fn encode(s: &Snapshot) -> String {
    let p = &s.primary;
    let workers: Vec<String> = s
        .workers
        .iter()
        .map(|w| {
            format!(
                r#"{{"wakeups":{},"accepts":{},"eagains":{},"handoffs_received":{},"handoffs_acked":{},"closed":{}}}"#,
                w.wakeups, w.accepts, w.eagains, w.handoffs_received, w.handoffs_acked, w.closed
            )
        })
        .collect();
    format!(
        r#"{{"primary":{{"accepted":{},"dispatched":{},"queued":{},"requeued":{}}},"workers":[{}]}}"#,
        p.accepted,
        p.dispatched,
        p.queued,
        p.requeued,
        workers.join(",")
    )
}

/// Parses the last line of `stdout` that holds the counters object.
pub fn decode(stdout: &str) -> Result<Snapshot, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("{\"primary\""))
        .ok_or("herd serve printed no counters on exit")?;
    let after = |key: &str| line.find(key).map(|i| &line[i + key.len()..]);
    let primary = after("\"primary\"").and_then(object).ok_or("no primary object in the counters")?;
    let p = fields(primary)?;
    let primary = PrimaryStats {
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
        workers.push(WorkerStats {
            wakeups: get(&w, "wakeups")?,
            accepts: get(&w, "accepts")?,
            eagains: get(&w, "eagains")?,
            handoffs_received: get(&w, "handoffs_received")?,
            handoffs_acked: get(&w, "handoffs_acked")?,
            closed: get(&w, "closed")?,
        });
        rest = &rest[rest.find('}').map_or(rest.len(), |i| i + 1)..];
    }
    Ok(Snapshot { primary, workers })
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
    fn decodes_what_it_encodes() {
        let s = decode(LINE).unwrap();
        assert_eq!(encode(&s), LINE);
    }

    #[test]
    fn parses_what_serve_prints() {
        let c = decode(&format!("noise\n{LINE}\n")).unwrap();
        assert_eq!(c.primary, PrimaryStats { accepted: 7, dispatched: 8, queued: 1, requeued: 0 });
        assert_eq!(c.workers.len(), 2);
        assert_eq!(
            c.workers[0],
            WorkerStats { wakeups: 5, accepts: 4, eagains: 1, handoffs_received: 0, handoffs_acked: 0, closed: 4 }
        );
        assert_eq!(c.workers.iter().map(WorkerStats::connections).collect::<Vec<_>>(), [4, 3]);
    }

    #[test]
    fn tolerates_blanks_and_no_workers() {
        let c = decode(r#"{"primary": {"accepted": 1, "dispatched": 0, "queued": 0, "requeued": 0}, "workers": []}"#)
            .unwrap();
        assert_eq!((c.primary.accepted, c.workers.len()), (1, 0));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(decode("").unwrap_err().contains("no counters"));
        assert!(decode(r#"{"primary":{"accepted":1}}"#).unwrap_err().contains("dispatched"));
        assert!(decode(&LINE.replace(":5,", ":x,")).unwrap_err().contains("not a count"));
    }
}

//! Machine-readable output: one JSON object per line (`--json`) or CSV with a header (`--csv`).
//!
//! Both are rendered from the same [`record`] — one JSON object whose keys keep their order — so
//! they carry the same data under the same names, and a failed cell has every key too (`null`,
//! or an empty CSV field), with the reason under `error`.

use serde_json::{Map, Value, json};

use super::row::{Cell, Figures};
use crate::cli::json_number;

/// Every key of a cell, in output order.
pub fn record(cell: &Cell, defer_accept: bool) -> Map<String, Value> {
    let f = cell.outcome.as_ref().ok();
    let num = |get: fn(&Figures) -> Option<f64>, decimals| f.and_then(get).map(|v| json_number(v, decimals));
    let int = |get: fn(&Figures) -> u64| f.map(get);
    let record = json!({
        "mode": cell.row.mode,
        "accept": cell.row.accept,
        "backend": cell.backend.name(),
        "workers": cell.workers,
        "load": cell.load.kind.as_str(),
        "connections": cell.load.connections,
        "defer_accept": defer_accept,
        "requests": int(|f| f.requests),
        "failures": int(|f| f.failures),
        "rps": num(|f| Some(f.rps), 1),
        "p50_us": int(|f| f.p50_us),
        "p99_us": int(|f| f.p99_us),
        "wakeups_per_accept": num(|f| f.wakeups_per_accept(), 4),
        "epoll_returns_per_accept": num(|f| f.epoll_returns_per_accept(), 4),
        "eagains": int(|f| f.eagains),
        "jain": num(|f| f.jain(), 6),
        "max_min_share": num(|f| f.max_min_share(), 4),
        "per_worker": f.map(|f| &f.per_worker),
        "cpu_primary_s": num(|f| Some(f.cpu_primary_s), 2),
        "cpu_workers_s": num(|f| Some(f.cpu_workers_s), 2),
        "cpu_us_per_request": num(|f| f.cpu_us_per_request(), 2),
        "syscalls_per_conn": num(|f| f.syscalls_per_conn(), 3),
        "primary_syscalls_per_conn": num(|f| f.primary_syscalls_per_conn(), 3),
        "worker_switches": int(|f| f.worker_switches),
        "primary_switches": int(|f| f.primary_switches),
        "epoll_returns": int(|f| f.epoll_returns),
        "syscalls_primary": int(|f| f.syscalls_primary),
        "syscalls_workers": int(|f| f.syscalls_workers),
        "consistent": f.is_some_and(|f| f.consistent()),
        "error": cell.outcome.as_ref().err(),
    });
    let Value::Object(fields) = record else { unreachable!("json! of an object literal is an object") };
    fields
}

/// The cell as one line of JSON.
pub fn json_line(cell: &Cell, defer_accept: bool) -> String {
    Value::Object(record(cell, defer_accept)).to_string()
}

/// The CSV header: the keys of [`record`].
pub fn csv_header() -> String {
    let keys: Vec<String> = record(&placeholder(), false).into_iter().map(|(k, _)| k).collect();
    keys.join(",")
}

/// The cell as one CSV line; `per_worker` is one field, its counts separated by spaces.
pub fn csv_line(cell: &Cell, defer_accept: bool) -> String {
    let fields: Vec<String> = record(cell, defer_accept)
        .into_iter()
        .map(|(_, value)| match value {
            Value::Null => String::new(),
            Value::String(t) => csv_field(&t),
            Value::Array(counts) => counts.iter().map(Value::to_string).collect::<Vec<_>>().join(" "),
            // Numbers and booleans read as in the JSON.
            number_or_bool => number_or_bool.to_string(),
        })
        .collect();
    fields.join(",")
}

/// A cell with no figures, only there to list the keys.
fn placeholder() -> Cell {
    use super::plan::{Load, LoadKind, ROWS};
    Cell {
        row: ROWS[0],
        backend: herd::Backend::Epoll,
        load: Load { kind: LoadKind::Light, connections: 1, requests: 1 },
        workers: 1,
        outcome: Err(String::new()),
    }
}

/// A CSV field (RFC 4180): quoted, with quotes doubled, if it holds a comma, quote or line break.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::super::plan::{Load, LoadKind, ROWS};
    use super::super::row::Figures;
    use super::*;

    fn cell(outcome: Result<Figures, String>) -> Cell {
        Cell {
            row: ROWS[4],
            backend: herd::Backend::IoUring,
            load: Load { kind: LoadKind::Saturating, connections: 64, requests: 4 },
            workers: 2,
            outcome,
        }
    }

    fn figures() -> Figures {
        Figures {
            requests: 4,
            rps: 1234.56,
            p50_us: 80,
            p99_us: 300,
            per_worker: vec![3, 1],
            answered_by: vec![3, 1],
            worker_switches: 8,
            epoll_returns: 4,
            cpu_primary_s: 0.01,
            cpu_workers_s: 0.03,
            syscalls_primary: 1,
            syscalls_workers: 9,
            ..Figures::default()
        }
    }

    #[test]
    fn escapes_json_strings() {
        let line = json_line(&cell(Err("a\"b\\c\nd\u{1}é".into())), true);
        assert!(line.ends_with(r#""error":"a\"b\\c\nd\u0001é"}"#), "{line}");
    }

    #[test]
    fn escapes_csv_fields() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn writes_a_json_line() {
        let line = json_line(&cell(Ok(figures())), true);
        assert!(line.starts_with(r#"{"mode":"handoff","accept":null,"backend":"io-uring","workers":2,"load":"saturating","connections":64,"defer_accept":true,"requests":4,"failures":0,"rps":1234.6,"p50_us":80,"p99_us":300,"wakeups_per_accept":2.0,"epoll_returns_per_accept":1.0,"eagains":0,"jain":0.8,"max_min_share":3.0,"per_worker":[3,1],"cpu_primary_s":0.01,"cpu_workers_s":0.03,"cpu_us_per_request":10000.0,"syscalls_per_conn":2.5,"primary_syscalls_per_conn":0.25,"#), "{line}");
        assert!(
            line.ends_with(
                r#""epoll_returns":4,"syscalls_primary":1,"syscalls_workers":9,"consistent":true,"error":null}"#
            ),
            "{line}"
        );
    }

    #[test]
    fn a_failed_cell_has_every_key() {
        let line = json_line(&cell(Err("herd serve: \"boom\"".into())), false);
        assert!(line.contains(r#""backend":"io-uring","#), "a failed cell still names its backend: {line}");
        assert!(line.contains(r#""requests":null,"failures":null"#), "{line}");
        assert!(line.ends_with(r#""consistent":false,"error":"herd serve: \"boom\""}"#), "{line}");
        assert_eq!(record(&cell(Err(String::new())), false).len(), record(&cell(Ok(figures())), false).len());
    }

    #[test]
    fn infinite_shares_are_null() {
        let mut f = figures();
        f.per_worker = vec![4, 0];
        assert!(json_line(&cell(Ok(f)), true).contains(r#""max_min_share":null"#));
    }

    #[test]
    fn writes_csv_with_the_same_keys() {
        let header = csv_header();
        assert!(header.starts_with("mode,accept,backend,workers,load,connections,defer_accept,requests,failures,rps,"));
        let line = csv_line(&cell(Ok(figures())), true);
        assert_eq!(header.split(',').count(), line.split(',').count(), "{header}\n{line}");
        assert!(line.starts_with("handoff,,io-uring,2,saturating,64,true,4,0,1234.6,80,300,"), "{line}");
        assert!(line.contains(",3 1,"), "{line}");
        assert!(csv_line(&cell(Err("a, b".into())), true).ends_with(",false,\"a, b\""));
    }
}

//! The matrix `herd bench` runs: which server configurations (rows) under which loads.
//!
//! A row is a distribution mode, plus an accept strategy in shared mode. Each row runs under
//! two loads, because the thundering herd only shows when workers are idle:
//!
//! - **light**: one request in flight. Between connections every worker sleeps in the kernel,
//!   so a connection that wakes them all (`shared/epoll`) costs one context switch per worker,
//!   while a strategy that wakes one costs one.
//! - **saturating**: many requests in flight (64 by default). Workers are busy and rarely
//!   sleep, so there is hardly anybody to wake: the herd hides, and what shows instead is
//!   throughput, latency, CPU per request and how the load spreads when everyone is busy.
//!
//! Both loads churn (a new TCP connection per request), so every request is one accept.
//!
//! Each row runs on each accept backend it has a form on ([`Row::runs_on`]): epoll always,
//! io_uring for every row but the level-triggered herd and the blocking thread, which io_uring
//! cannot reproduce. A row's backends sit next to each other, so the table compares them line
//! by line.

use std::fmt;

use herd::Backend;

/// One server configuration: `herd serve --mode MODE [--accept STRATEGY | --handoff-policy
/// POLICY]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub mode: &'static str,
    /// The accept strategy in shared mode; the handoff policy in handoff mode (`None`: the
    /// default, round-robin).
    pub accept: Option<&'static str>,
}

/// Every row, in the order the table prints them.
pub const ROWS: [Row; 8] = [
    Row { mode: "shared", accept: Some("epoll") },
    Row { mode: "shared", accept: Some("epoll-exclusive") },
    Row { mode: "shared", accept: Some("epoll-rotate") },
    Row { mode: "shared", accept: Some("blocking") },
    Row { mode: "handoff", accept: None },
    Row { mode: "reuseport", accept: None },
    Row { mode: "shared", accept: Some("epoll-balance") },
    Row { mode: "handoff", accept: Some("least-loaded") },
];

impl fmt::Display for Row {
    /// `shared/epoll`, `handoff`: the name `--rows` takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.accept {
            Some(accept) => write!(f, "{}/{accept}", self.mode),
            None => f.write_str(self.mode),
        }
    }
}

impl Row {
    /// Whether the row has a form on `backend`: `shared/epoll` (the level-triggered herd) and
    /// `shared/blocking` (a thread parked in `accept`) have none on io_uring.
    pub fn runs_on(&self, backend: Backend) -> bool {
        backend == Backend::Epoll || !matches!(self.accept, Some("epoll" | "blocking"))
    }
}

/// Parses a comma-separated list of row names, keeping the table's order (not the list's).
pub fn parse_rows(list: &str) -> Result<Vec<Row>, String> {
    let names = names(list, "--rows")?;
    for name in &names {
        if !ROWS.iter().any(|row| row.to_string() == *name) {
            let known: Vec<String> = ROWS.iter().map(Row::to_string).collect();
            return Err(format!("--rows: unknown row {name:?}; expected some of {}", known.join(",")));
        }
    }
    Ok(ROWS.into_iter().filter(|row| names.contains(&row.to_string())).collect())
}

/// Parses a comma-separated list of backend names, keeping epoll before io-uring.
pub fn parse_backends(list: &str) -> Result<Vec<Backend>, String> {
    let names = names(list, "--backends")?;
    if let Some(bad) = names.iter().find(|n| n.parse::<Backend>().is_err()) {
        return Err(format!("--backends: unknown backend {bad:?}; expected epoll, io-uring or both"));
    }
    Ok(Backend::ALL.into_iter().filter(|b| names.iter().any(|n| n == b.name())).collect())
}

/// The backends to measure: `wanted`, less io-uring if `io_uring` (its availability here) says
/// it cannot run, with the line that says so.
pub fn usable_backends(wanted: &[Backend], io_uring: Result<(), String>) -> (Vec<Backend>, Option<String>) {
    match io_uring {
        Err(why) if wanted.contains(&Backend::IoUring) => (
            wanted.iter().copied().filter(|&b| b != Backend::IoUring).collect(),
            Some(format!("io-uring: unavailable here ({why}); epoll only")),
        ),
        _ => (wanted.to_vec(), None),
    }
}

/// The line that says which of `rows` run on epoll alone although io-uring was asked for
/// (before [`usable_backends`] took it away, so the line is not lost with it), or `None`.
pub fn epoll_only_note(rows: &[Row], wanted: &[Backend]) -> Option<String> {
    if !wanted.contains(&Backend::IoUring) {
        return None;
    }
    let names: Vec<String> = rows.iter().filter(|r| !r.runs_on(Backend::IoUring)).map(Row::to_string).collect();
    let (subject, verb) = match names.as_slice() {
        [] => return None,
        [one] => (one.clone(), "has"),
        [init @ .., last] => (format!("{} and {last}", init.join(", ")), "have"),
    };
    let rest = if wanted.contains(&Backend::Epoll) {
        "epoll only"
    } else {
        "epoll only; not run, as --backends leaves epoll out"
    };
    Some(format!("{subject} {verb} no io_uring form: {rest}"))
}

/// Every (row, backend, load) cell to measure, in table order: for each row, for each backend
/// it runs on, for each load.
pub fn cells(rows: &[Row], backends: &[Backend], loads: &[Load]) -> Vec<(Row, Backend, Load)> {
    let mut cells = Vec::new();
    for &row in rows {
        for &backend in backends.iter().filter(|&&b| row.runs_on(b)) {
            cells.extend(loads.iter().map(|&load| (row, backend, load)));
        }
    }
    cells
}

/// The two loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadKind {
    Light,
    Saturating,
}

impl LoadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadKind::Light => "light",
            LoadKind::Saturating => "saturating",
        }
    }
}

/// Parses a comma-separated list of load names, keeping light before saturating.
pub fn parse_loads(list: &str) -> Result<Vec<LoadKind>, String> {
    let names = names(list, "--loads")?;
    let all = [LoadKind::Light, LoadKind::Saturating];
    if let Some(bad) = names.iter().find(|n| !all.iter().any(|k| k.as_str() == *n)) {
        return Err(format!("--loads: unknown load {bad:?}; expected light, saturating or both"));
    }
    Ok(all.into_iter().filter(|k| names.iter().any(|n| n == k.as_str())).collect())
}

/// One load: how many requests in flight, and how many in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub kind: LoadKind,
    /// Requests in flight at once, each on its own connection.
    pub connections: usize,
    /// Requests in the run: the run is bounded by count, not time, so that the server's accepts
    /// can be checked against it exactly.
    pub requests: u64,
}

impl fmt::Display for Load {
    /// `light (1 in flight)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} in flight)", self.kind.as_str(), self.connections)
    }
}

/// The non-empty, comma-separated names of a list option.
fn names(list: &str, option: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        return Err(format!("{option}: empty list"));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_named_like_the_serve_flags() {
        let names: Vec<String> = ROWS.iter().map(Row::to_string).collect();
        assert_eq!(
            names,
            [
                "shared/epoll",
                "shared/epoll-exclusive",
                "shared/epoll-rotate",
                "shared/blocking",
                "handoff",
                "reuseport",
                "shared/epoll-balance",
                "handoff/least-loaded"
            ]
        );
    }

    #[test]
    fn parses_row_lists_in_table_order() {
        assert_eq!(parse_rows("reuseport, shared/epoll").unwrap(), [ROWS[0], ROWS[5]]);
        assert!(parse_rows("shared").unwrap_err().contains("unknown row \"shared\""));
        assert!(parse_rows(",").is_err());
    }

    #[test]
    fn parses_load_lists() {
        assert_eq!(parse_loads("saturating,light").unwrap(), [LoadKind::Light, LoadKind::Saturating]);
        assert_eq!(parse_loads("saturating").unwrap(), [LoadKind::Saturating]);
        assert!(parse_loads("heavy").is_err());
    }

    #[test]
    fn parses_backend_lists_epoll_first() {
        assert_eq!(parse_backends("io-uring, epoll").unwrap(), [Backend::Epoll, Backend::IoUring]);
        assert_eq!(parse_backends("io-uring").unwrap(), [Backend::IoUring]);
        let err = parse_backends("epoll,uring").unwrap_err();
        assert!(err.contains("unknown backend \"uring\"") && !err.contains('\n'), "{err}");
        assert!(parse_backends("").is_err());
    }

    #[test]
    fn the_herd_and_the_blocking_thread_run_on_epoll_only() {
        let on_uring: Vec<String> = ROWS.iter().filter(|r| r.runs_on(Backend::IoUring)).map(Row::to_string).collect();
        assert_eq!(
            on_uring,
            [
                "shared/epoll-exclusive",
                "shared/epoll-rotate",
                "handoff",
                "reuseport",
                "shared/epoll-balance",
                "handoff/least-loaded"
            ]
        );
        assert!(ROWS.iter().all(|r| r.runs_on(Backend::Epoll)));
    }

    #[test]
    fn cells_keep_a_rows_backends_together() {
        let light = Load { kind: LoadKind::Light, connections: 1, requests: 1 };
        let saturating = Load { kind: LoadKind::Saturating, connections: 64, requests: 1 };
        let cells = cells(&[ROWS[0], ROWS[4]], &Backend::ALL, &[light, saturating]);
        let names: Vec<String> = cells.iter().map(|(r, b, l)| format!("{r} {b} {}", l.kind.as_str())).collect();
        assert_eq!(
            names,
            [
                "shared/epoll epoll light",
                "shared/epoll epoll saturating",
                "handoff epoll light",
                "handoff epoll saturating",
                "handoff io-uring light",
                "handoff io-uring saturating",
            ]
        );
        assert!(super::cells(&[ROWS[3]], &[Backend::IoUring], &[light]).is_empty());
    }

    #[test]
    fn io_uring_is_dropped_where_it_cannot_run() {
        let (usable, line) = usable_backends(&Backend::ALL, Err("io_uring_setup: EPERM".into()));
        assert_eq!(usable, [Backend::Epoll]);
        assert_eq!(line.unwrap(), "io-uring: unavailable here (io_uring_setup: EPERM); epoll only");
        assert_eq!(usable_backends(&Backend::ALL, Ok(())), (Backend::ALL.to_vec(), None));
        assert_eq!(usable_backends(&[Backend::Epoll], Err("no".into())), (vec![Backend::Epoll], None));
    }

    #[test]
    fn notes_the_rows_with_no_io_uring_form() {
        assert_eq!(
            epoll_only_note(&ROWS, &Backend::ALL).unwrap(),
            "shared/epoll and shared/blocking have no io_uring form: epoll only"
        );
        assert_eq!(
            epoll_only_note(&ROWS[3..6], &[Backend::IoUring]).unwrap(),
            "shared/blocking has no io_uring form: epoll only; not run, as --backends leaves epoll out"
        );
        assert_eq!(epoll_only_note(&ROWS, &[Backend::Epoll]), None);
        assert_eq!(epoll_only_note(&ROWS[4..6], &Backend::ALL), None);
    }

    #[test]
    fn loads_state_what_is_in_flight() {
        let load = Load { kind: LoadKind::Saturating, connections: 64, requests: 10 };
        assert_eq!(load.to_string(), "saturating (64 in flight)");
    }
}

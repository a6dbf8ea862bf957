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

use std::fmt;

/// One server configuration: `herd serve --mode MODE [--accept STRATEGY]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub mode: &'static str,
    /// The accept strategy (shared mode only).
    pub accept: Option<&'static str>,
}

/// Every row, in the order the table prints them.
pub const ROWS: [Row; 6] = [
    Row { mode: "shared", accept: Some("epoll") },
    Row { mode: "shared", accept: Some("epoll-exclusive") },
    Row { mode: "shared", accept: Some("epoll-rotate") },
    Row { mode: "shared", accept: Some("blocking") },
    Row { mode: "handoff", accept: None },
    Row { mode: "reuseport", accept: None },
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
                "reuseport"
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
    fn loads_state_what_is_in_flight() {
        let load = Load { kind: LoadKind::Saturating, connections: 64, requests: 10 };
        assert_eq!(load.to_string(), "saturating (64 in flight)");
    }
}

//! The human report: a header naming the machine, one table line per cell, a legend, and a
//! per-worker distribution chart for every cell drawn with Unicode eighth blocks.

use std::fmt::Write as _;

use super::Run;
use super::row::{Cell, Figures};

/// The width of the longest bar in the distribution charts, in characters.
const BAR_WIDTH: usize = 40;

/// Partial blocks, from one eighth to seven eighths of a character.
const EIGHTHS: [char; 7] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉'];

/// The whole report.
pub fn render(run: &Run, cells: &[Cell]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", run.header());
    let _ = writeln!(out, "{}", run.loads_line());
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<22}  {:<25} {:>8} {:>7} {:>7} {:>10} {:>10} {:>7} {:>7} {:>7} {:>9} {:>9} {:>8} {:>6}",
        "mode/accept",
        "load",
        "req/s",
        "p50 µs",
        "p99 µs",
        "kwake/acc",
        "uwake/acc",
        "EAGAIN",
        "Jain",
        "max/min",
        "CPU pri s",
        "CPU wrk s",
        "µs/req",
        "fail"
    );
    for cell in cells {
        let _ = writeln!(out, "{}", line(cell));
    }
    out.push('\n');
    out.push_str(LEGEND);
    out.push('\n');
    let _ = writeln!(out, "Connections per worker (bars scaled to the busiest worker):");
    for cell in cells {
        out.push('\n');
        out.push_str(&chart(cell));
    }
    out
}

const LEGEND: &str = "\
kwake/acc  kernel wakeups per accept: the workers' voluntary context switches per connection
uwake/acc  user-space wakeups per accept: epoll_wait (or blocking accept) returns per connection
EAGAIN     accept calls that found the queue empty (herd losers that reached user space)
Jain       Jain's fairness index over connections per worker: 1 = even, 1/N = one took all
max/min    the busiest worker's connections over the idlest's (inf: a worker got none)
CPU pri s, CPU wrk s   CPU seconds of the primary and of all workers during the load
µs/req     server CPU (primary + workers) per request; fail: failed requests (any kind)
";

/// One table line.
fn line(cell: &Cell) -> String {
    let head = format!("{:<22}  {:<25}", cell.row.to_string(), cell.load.to_string());
    let f = match &cell.outcome {
        Ok(f) => f,
        Err(e) => return format!("{head} FAILED: {e}"),
    };
    let mut s = format!(
        "{head} {:>8.0} {:>7} {:>7} {:>10} {:>10} {:>7} {:>7} {:>7} {:>9.2} {:>9.2} {:>8} {:>6}",
        f.rps,
        f.p50_us,
        f.p99_us,
        fixed(f.wakeups_per_accept(), 2),
        fixed(f.epoll_returns_per_accept(), 2),
        f.eagains,
        fixed(f.jain(), 4),
        fixed(f.max_min_share(), 2),
        f.cpu_primary_s,
        f.cpu_workers_s,
        fixed(f.cpu_us_per_request(), 1),
        f.failures
    );
    if !f.consistent() {
        let _ = write!(s, "  INCONSISTENT: {}", inconsistency(f));
    }
    s
}

/// What does not add up, for a cell whose counts disagree.
fn inconsistency(f: &Figures) -> String {
    format!(
        "server counted {} connections for {} requests answered; per worker {:?}, bodies named {:?}",
        f.connections(),
        f.requests,
        f.per_worker,
        f.answered_by
    )
}

/// `v` with `decimals` digits, `inf` for infinity, `-` when undefined.
fn fixed(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_infinite() => "inf".into(),
        Some(v) => format!("{v:.decimals$}"),
        None => "-".into(),
    }
}

/// The distribution chart of one cell.
fn chart(cell: &Cell) -> String {
    let mut out = format!("{}, {}", cell.row, cell.load);
    let f = match &cell.outcome {
        Ok(f) => f,
        Err(_) => return out + ": failed\n",
    };
    let _ = writeln!(out, "  Jain {}  max/min {}", fixed(f.jain(), 4), fixed(f.max_min_share(), 2));
    let top = f.per_worker.iter().copied().max().unwrap_or(0);
    for (id, (&n, share)) in f.per_worker.iter().zip(f.shares()).enumerate() {
        let fraction = if top == 0 { 0.0 } else { n as f64 / top as f64 };
        let _ = writeln!(out, "  w{id:<3} {:<BAR_WIDTH$} {share:>6.2} % {n:>8}", bar(fraction, BAR_WIDTH, n > 0));
    }
    out
}

/// A bar `fraction` of `width` characters long, in eighths of a character; a non-empty count
/// never rounds down to nothing.
fn bar(fraction: f64, width: usize, nonzero: bool) -> String {
    let eighths = (fraction.clamp(0.0, 1.0) * (width * 8) as f64).round() as usize;
    let eighths = if nonzero { eighths.max(1) } else { eighths };
    let mut s = "█".repeat(eighths / 8);
    if eighths % 8 > 0 {
        s.push(EIGHTHS[eighths % 8 - 1]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_use_eighths() {
        assert_eq!(bar(1.0, 4, true), "████");
        assert_eq!(bar(0.5, 4, true), "██");
        assert_eq!(bar(0.5 + 1.0 / 32.0, 4, true), "██▏");
        assert_eq!(bar(0.0, 4, true), "▏");
        assert_eq!(bar(0.0, 4, false), "");
        assert_eq!(bar(7.0 / 32.0, 4, true), "▉");
    }

    #[test]
    fn formats_undefined_and_infinite_figures() {
        assert_eq!(fixed(None, 2), "-");
        assert_eq!(fixed(Some(f64::INFINITY), 2), "inf");
        assert_eq!(fixed(Some(0.12345), 3), "0.123");
    }
}

//! The human report: a header naming the machine (and what could not run on it), one table
//! line per cell, the ratios held to their targets, a legend, and a per-worker distribution
//! chart for every cell drawn with Unicode eighth blocks.

use std::fmt::Write as _;

use super::Run;
use super::ratios;
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
    for note in &run.notes {
        let _ = writeln!(out, "{note}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<22}  {:<8}  {:<25} {:>8} {:>7} {:>7} {:>10} {:>10} {:>7} {:>7} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>6}",
        "mode/accept",
        "backend",
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
        "sys/conn",
        "pri sys/c",
        "fail"
    );
    for cell in cells {
        let _ = writeln!(out, "{}", line(cell));
    }
    out.push('\n');
    let ratios = ratios::render(&ratios::ratios(cells));
    if !ratios.is_empty() {
        out.push_str(&ratios);
        out.push('\n');
    }
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
sys/conn   the server's hot-path system calls (accept4, epoll_wait, epoll_ctl, io_uring_enter,
           sendmsg, recvmsg, ...; its own counts, over its whole life) per connection
pri sys/c  the same for the primary alone: what handing connections on costs it
";

/// One table line.
fn line(cell: &Cell) -> String {
    let head = format!("{:<22}  {:<8}  {:<25}", cell.row.to_string(), cell.backend.name(), cell.load.to_string());
    let f = match &cell.outcome {
        Ok(f) => f,
        Err(e) => return format!("{head} FAILED: {e}"),
    };
    let mut s = format!(
        "{head} {:>8.0} {:>7} {:>7} {:>10} {:>10} {:>7} {:>7} {:>7} {:>9.2} {:>9.2} {:>8} {:>8} {:>9} {:>6}",
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
        fixed(f.syscalls_per_conn(), 2),
        fixed(f.primary_syscalls_per_conn(), 2),
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
    let mut out = title(cell);
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

/// What a chart shows: `handoff · io-uring, saturating (64 in flight)`.
pub fn title(cell: &Cell) -> String {
    format!("{} · {}, {}", cell.row, cell.backend, cell.load)
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
    use super::super::plan::{Load, LoadKind, ROWS};
    use super::*;
    use herd::Backend;

    fn run() -> Run {
        Run {
            workers: 2,
            defer_accept: true,
            loads: vec![Load { kind: LoadKind::Saturating, connections: 64, requests: 4 }],
            notes: vec!["io-uring: unavailable here (io_uring_setup: EPERM); epoll only".into()],
            nproc: 2,
            kernel: "6.18".into(),
            date: "2026-11-29".into(),
        }
    }

    fn cell(row: usize, backend: Backend, us_per_req: f64) -> Cell {
        let f = Figures {
            requests: 4,
            per_worker: vec![3, 1],
            answered_by: vec![3, 1],
            cpu_workers_s: us_per_req * 4.0 / 1e6,
            syscalls_primary: 1,
            syscalls_workers: 9,
            ..Figures::default()
        };
        Cell { row: ROWS[row], backend, load: run().loads[0], workers: 2, outcome: Ok(f) }
    }

    #[test]
    fn renders_backends_syscalls_notes_and_ratios() {
        let cells = [cell(4, Backend::IoUring, 30.0), cell(5, Backend::IoUring, 20.0)];
        let report = render(&run(), &cells);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines[2], "io-uring: unavailable here (io_uring_setup: EPERM); epoll only", "{report}");
        let header: Vec<&str> = lines[4].split("  ").filter(|s| !s.is_empty()).map(str::trim).collect();
        assert_eq!(header[..3], ["mode/accept", "backend", "load"], "{report}");
        assert!(lines[4].ends_with("µs/req sys/conn pri sys/c   fail"), "{report}");
        let row: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(row[..3], ["handoff", "io-uring", "saturating"], "{report}");
        assert_eq!(row[row.len() - 3..], ["2.50", "0.25", "0"], "sys/conn, pri sys/c, fail: {report}");
        assert!(report.contains("\n  handoff ÷ reuseport, µs/req, saturating, io-uring: 1.50 (target ≤ 1.2: not met"));
        assert!(report.contains("\nhandoff · io-uring, saturating (64 in flight)  Jain "), "{report}");
        assert!(report.contains("pri sys/c  the same for the primary alone"), "the legend explains the columns");
    }

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

//! The ratios the table exists to answer, each against its target, from the cells of one run:
//!
//! - **handoff ÷ reuseport, µs/req**, per backend and load: what passing every connection
//!   through the primary costs over letting the kernel spread them. Targets: ≤ 1.2 saturating,
//!   ≤ 2 light (one connection at a time leaves the primary's hop nothing to hide behind).
//! - **io-uring ÷ epoll, reuseport µs/req**, per load: whether io_uring's multishot accept pays
//!   for itself where nothing else differs. Target ≤ 1.
//! - **handoff primary syscalls per connection**, per backend and load: what the primary spends
//!   per connection it hands on. Target ≤ 0.25 on io-uring under the saturating load, where
//!   batched sends and linked closes should leave it a fraction of a call each; the other
//!   figures are shown for comparison, with no target.
//!
//! CPU per request rather than requests per second, because on a small machine the client
//! saturates first (see [`super::row`]). CPU time comes in clock ticks (10 ms), so a ratio of
//! cells that used little of it is rough: one that rests on less than [`ROUGH_CPU_S`] says so,
//! and one whose cells measured no CPU at all (a short light run) is shown as not measured
//! rather than as 0 or infinity. A ratio whose cells are missing or failed is left out.

use herd::Backend;

use super::plan::LoadKind;
use super::row::{Cell, Figures};

/// One figure and the target it is held to, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Ratio {
    /// What was divided by what, under which load and backend.
    pub label: String,
    /// The figure, or `None` if its cells ran but measured no CPU.
    pub value: Option<f64>,
    /// The figure must be at most this.
    pub target: Option<f64>,
    /// For a ratio of CPU times, the smaller of the two cells' CPU seconds.
    pub cpu_s: Option<f64>,
}

/// Below this much CPU in a cell (20 ticks of 10 ms), one tick more or less moves a ratio by 5 %.
pub const ROUGH_CPU_S: f64 = 0.2;

impl Ratio {
    /// Whether the figure meets its target (`None` without a target or a figure).
    pub fn met(&self) -> Option<bool> {
        Some(self.value? <= self.target?)
    }

    /// `handoff ÷ reuseport, µs/req, saturating, io-uring: 1.12 (target ≤ 1.2: met)`.
    pub fn line(&self) -> String {
        let value = self.value.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let rough = match self.cpu_s {
            Some(cpu) if cpu < ROUGH_CPU_S => format!("; rough: {cpu:.2} s of CPU measured"),
            _ => String::new(),
        };
        let verdict = match (self.target, self.met()) {
            (Some(t), Some(met)) => format!(" (target ≤ {t}: {}{rough})", if met { "met" } else { "not met" }),
            (Some(t), None) => format!(" (target ≤ {t}: not measured, CPU under a clock tick; run more requests)"),
            (None, _) => String::new(),
        };
        format!("{}: {value}{verdict}", self.label)
    }
}

const LOADS: [LoadKind; 2] = [LoadKind::Light, LoadKind::Saturating];

/// Every ratio the cells allow, in a fixed order: handoff ÷ reuseport, io-uring ÷ epoll, the
/// primary's system calls.
pub fn ratios(cells: &[Cell]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for backend in Backend::ALL {
        for kind in LOADS {
            let target = if kind == LoadKind::Saturating { 1.2 } else { 2.0 };
            if let Some((value, cpu_s)) = quotient(cells, ("handoff", backend), ("reuseport", backend), kind) {
                let label = format!("handoff ÷ reuseport, µs/req, {}, {backend}", kind.as_str());
                out.push(Ratio { label, value, target: Some(target), cpu_s: Some(cpu_s) });
            }
        }
    }
    for kind in LOADS {
        if let Some((value, cpu_s)) =
            quotient(cells, ("reuseport", Backend::IoUring), ("reuseport", Backend::Epoll), kind)
        {
            let label = format!("io-uring ÷ epoll, reuseport µs/req, {}", kind.as_str());
            out.push(Ratio { label, value, target: Some(1.0), cpu_s: Some(cpu_s) });
        }
    }
    for backend in Backend::ALL {
        for kind in LOADS {
            let Some(value) = figures(cells, "handoff", backend, kind).and_then(Figures::primary_syscalls_per_conn)
            else {
                continue;
            };
            let target = (backend == Backend::IoUring && kind == LoadKind::Saturating).then_some(0.25);
            let label = format!("handoff primary syscalls/conn, {}, {backend}", kind.as_str());
            out.push(Ratio { label, value: Some(value), target, cpu_s: None });
        }
    }
    out
}

/// The block printed under the table: a heading and one line per ratio; empty if there are none.
pub fn render(ratios: &[Ratio]) -> String {
    if ratios.is_empty() {
        return String::new();
    }
    let mut out = String::from("Ratios (server CPU µs per request, and the primary's system calls per connection):\n");
    for r in ratios {
        out.push_str("  ");
        out.push_str(&r.line());
        out.push('\n');
    }
    out
}

/// µs/req of the first (mode, backend) cell over the second's, under `kind` (`None` if either
/// measured no CPU), and the smaller of the two cells' CPU seconds; `None` if either cell is
/// missing or failed.
fn quotient(cells: &[Cell], a: (&str, Backend), b: (&str, Backend), kind: LoadKind) -> Option<(Option<f64>, f64)> {
    let (a, b) = (figures(cells, a.0, a.1, kind)?, figures(cells, b.0, b.1, kind)?);
    let cpu = |f: &Figures| f.cpu_primary_s + f.cpu_workers_s;
    let value =
        a.cpu_us_per_request().zip(b.cpu_us_per_request()).filter(|&(t, b)| t > 0.0 && b > 0.0).map(|(t, b)| t / b);
    Some((value, cpu(a).min(cpu(b))))
}

/// The figures of the cell of `mode` (handoff or reuseport: rows with no accept strategy) on
/// `backend` under `kind`, if it ran.
fn figures<'a>(cells: &'a [Cell], mode: &str, backend: Backend, kind: LoadKind) -> Option<&'a Figures> {
    cells
        .iter()
        .find(|c| c.row.mode == mode && c.row.accept.is_none() && c.backend == backend && c.load.kind == kind)?
        .outcome
        .as_ref()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::super::plan::{Load, ROWS};
    use super::*;

    /// A cell of `row` whose server spent `us_per_req` µs of CPU per request over 100 000
    /// requests (seconds of CPU: plenty of clock ticks), and made `primary_syscalls` calls in
    /// the primary.
    fn cell(row: usize, backend: Backend, kind: LoadKind, us_per_req: f64, primary_syscalls: u64) -> Cell {
        let figures = Figures {
            requests: 100_000,
            per_worker: vec![50_000, 50_000],
            answered_by: vec![50_000, 50_000],
            cpu_workers_s: us_per_req * 100_000.0 / 1e6,
            syscalls_primary: primary_syscalls,
            ..Figures::default()
        };
        let load = Load { kind, connections: 1, requests: 100_000 };
        Cell { row: ROWS[row], backend, load, workers: 2, outcome: Ok(figures) }
    }

    const HANDOFF: usize = 4;
    const REUSEPORT: usize = 5;

    #[test]
    fn compares_handoff_with_reuseport_per_backend_and_load() {
        let cells = [
            cell(HANDOFF, Backend::Epoll, LoadKind::Saturating, 30.0, 300_000),
            cell(HANDOFF, Backend::IoUring, LoadKind::Saturating, 22.4, 10_000),
            cell(REUSEPORT, Backend::Epoll, LoadKind::Saturating, 20.0, 0),
            cell(REUSEPORT, Backend::IoUring, LoadKind::Saturating, 20.0, 0),
        ];
        let lines: Vec<String> = ratios(&cells).iter().map(Ratio::line).collect();
        assert_eq!(
            lines,
            [
                "handoff ÷ reuseport, µs/req, saturating, epoll: 1.50 (target ≤ 1.2: not met)",
                "handoff ÷ reuseport, µs/req, saturating, io-uring: 1.12 (target ≤ 1.2: met)",
                "io-uring ÷ epoll, reuseport µs/req, saturating: 1.00 (target ≤ 1: met)",
                "handoff primary syscalls/conn, saturating, epoll: 3.00",
                "handoff primary syscalls/conn, saturating, io-uring: 0.10 (target ≤ 0.25: met)",
            ]
        );
    }

    #[test]
    fn light_loads_have_their_own_targets() {
        let cells = [
            cell(HANDOFF, Backend::IoUring, LoadKind::Light, 39.0, 30_000),
            cell(REUSEPORT, Backend::IoUring, LoadKind::Light, 20.0, 0),
            cell(REUSEPORT, Backend::Epoll, LoadKind::Light, 16.0, 0),
        ];
        let r = ratios(&cells);
        assert_eq!(r[0].line(), "handoff ÷ reuseport, µs/req, light, io-uring: 1.95 (target ≤ 2: met)");
        assert_eq!(r[1].line(), "io-uring ÷ epoll, reuseport µs/req, light: 1.25 (target ≤ 1: not met)");
        assert_eq!((r[2].value, r[2].target, r[2].met()), (Some(0.3), None, None), "no target under the light load");
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn cpu_under_a_clock_tick_is_not_measured() {
        let cells = [
            cell(HANDOFF, Backend::Epoll, LoadKind::Light, 15.0, 500_000),
            cell(REUSEPORT, Backend::Epoll, LoadKind::Light, 0.0, 0),
        ];
        let r = ratios(&cells);
        assert_eq!((r[0].value, r[0].met()), (None, None));
        assert_eq!(
            r[0].line(),
            "handoff ÷ reuseport, µs/req, light, epoll: - (target ≤ 2: not measured, CPU under a clock tick; run more requests)"
        );
        assert_eq!(r[1].line(), "handoff primary syscalls/conn, light, epoll: 5.00");
    }

    #[test]
    fn leaves_out_what_is_missing_or_failed() {
        let mut failed = cell(REUSEPORT, Backend::Epoll, LoadKind::Saturating, 20.0, 0);
        failed.outcome = Err("herd serve exited".into());
        let cells = [cell(HANDOFF, Backend::Epoll, LoadKind::Saturating, 30.0, 0), failed];
        let r = ratios(&cells);
        assert_eq!(r.len(), 1, "only the primary's syscalls: {r:?}");
        assert!(r[0].label.starts_with("handoff primary syscalls/conn"));
        // A shared row is never taken for handoff or reuseport, whatever its figures.
        assert!(ratios(&[cell(0, Backend::Epoll, LoadKind::Light, 1.0, 1)]).is_empty());
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn renders_a_block() {
        let r = Ratio { label: "x ÷ y".into(), value: Some(0.5), target: Some(1.0), cpu_s: Some(3.0) };
        assert_eq!(render(&[r]).lines().nth(1), Some("  x ÷ y: 0.50 (target ≤ 1: met)"));
    }

    #[test]
    fn a_ratio_on_few_clock_ticks_says_it_is_rough() {
        let mut cells = [
            cell(HANDOFF, Backend::Epoll, LoadKind::Light, 20.0, 0),
            cell(REUSEPORT, Backend::Epoll, LoadKind::Light, 10.0, 0),
        ];
        for c in &mut cells {
            let f = c.outcome.as_mut().unwrap();
            f.cpu_workers_s /= 100.0;
        }
        let r = ratios(&cells);
        assert_eq!(r[0].cpu_s, Some(0.01));
        assert_eq!(
            r[0].line(),
            "handoff ÷ reuseport, µs/req, light, epoll: 2.00 (target ≤ 2: met; rough: 0.01 s of CPU measured)"
        );
    }
}

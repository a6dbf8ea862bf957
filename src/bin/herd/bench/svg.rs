//! `--svg FILE`: the per-worker distribution charts as one self-contained SVG.
//!
//! A grid of panels — one line per (row, backend), one column per load — each with a bar per worker
//! showing its share of the connections, a dashed line at the fair share (1/N), and the row's
//! Jain index. Every panel shares one axis, so bars can be compared across panels. Written by
//! hand: rectangles, lines and text, no scripts, no external fonts or styles.

use std::fmt::Write as _;

use super::Run;
use super::plan::LoadKind;
use super::row::Cell;
use super::table::title;

const PANEL_W: f64 = 470.0;
const BAR_X: f64 = 48.0;
const BAR_MAX_W: f64 = 300.0;
const BAR_H: f64 = 14.0;
const BAR_STEP: f64 = 18.0;
const PANEL_HEAD: f64 = 40.0;
const PANEL_GAP: f64 = 18.0;
const TOP: f64 = 80.0;
/// Room for each of the run's notes under the header.
const NOTE_H: f64 = 16.0;
const MARGIN: f64 = 16.0;

/// The whole document.
pub fn render(run: &Run, cells: &[Cell]) -> String {
    let columns: Vec<LoadKind> = run.loads.iter().map(|l| l.kind).collect();
    let rows: Vec<_> = {
        let mut rows = Vec::new();
        for cell in cells {
            if !rows.contains(&(cell.row, cell.backend)) {
                rows.push((cell.row, cell.backend));
            }
        }
        rows
    };
    let top = TOP + NOTE_H * run.notes.len() as f64;
    let panel_h = PANEL_HEAD + BAR_STEP * run.workers as f64 + PANEL_GAP;
    let width = MARGIN * 2.0 + PANEL_W * columns.len().max(1) as f64;
    let height = top + panel_h * rows.len() as f64 + MARGIN;
    let axis = axis_percent(run.workers, cells);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="12">"#
    );
    let _ = writeln!(s, "<title>{}</title>", escape(&run.header()));
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ =
        writeln!(s, r#"<text x="{MARGIN}" y="24" font-size="14" font-weight="bold">{}</text>"#, escape(&run.header()));
    let _ = writeln!(s, r##"<text x="{MARGIN}" y="44" fill="#444">{}</text>"##, escape(&run.loads_line()));
    let _ = writeln!(
        s,
        r##"<text x="{MARGIN}" y="60" fill="#444">Bars: each worker's share of the connections (axis 0–{axis:.0} %); dashed line: the fair share, 1/{}</text>"##,
        run.workers
    );
    for (i, note) in run.notes.iter().enumerate() {
        let y = 76.0 + NOTE_H * i as f64;
        let _ = writeln!(s, r##"<text x="{MARGIN}" y="{y:.0}" fill="#444">{}</text>"##, escape(note));
    }
    for cell in cells {
        let (Some(col), Some(row)) = (
            columns.iter().position(|&k| k == cell.load.kind),
            rows.iter().position(|&r| r == (cell.row, cell.backend)),
        ) else {
            continue;
        };
        let x = MARGIN + PANEL_W * col as f64;
        let y = top + panel_h * row as f64;
        panel(&mut s, cell, x, y, axis);
    }
    s.push_str("</svg>\n");
    s
}

/// The axis in percent: room for the largest share and for twice the fair one, in steps of 10.
fn axis_percent(workers: usize, cells: &[Cell]) -> f64 {
    let fair = 100.0 / workers.max(1) as f64;
    let largest =
        cells.iter().filter_map(|c| c.outcome.as_ref().ok()).flat_map(|f| f.shares()).fold(2.0 * fair, f64::max);
    ((largest / 10.0).ceil() * 10.0).min(100.0)
}

/// One panel: title, Jain index, a bar per worker, the fair-share line.
fn panel(s: &mut String, cell: &Cell, x: f64, y: f64, axis: f64) {
    let colour = match cell.load.kind {
        LoadKind::Light => "#4c78a8",
        LoadKind::Saturating => "#e45756",
    };
    let _ = writeln!(s, r#"<text x="{x}" y="{:.1}" font-weight="bold">{}</text>"#, y + 14.0, escape(&title(cell)));
    let f = match &cell.outcome {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(s, r##"<text x="{x}" y="{:.1}" fill="#b00">failed: {}</text>"##, y + 30.0, escape(e));
            return;
        }
    };
    let jain = f.jain().map_or("-".into(), |j| format!("{j:.4}"));
    let _ = writeln!(
        s,
        r##"<text x="{x}" y="{:.1}" fill="#444">Jain {jain} · {} connections · {:.2} kernel wakeups/accept</text>"##,
        y + 30.0,
        f.connections(),
        f.wakeups_per_accept().unwrap_or(0.0)
    );
    let scale = BAR_MAX_W / axis;
    for (id, share) in f.shares().into_iter().enumerate() {
        let by = y + PANEL_HEAD + BAR_STEP * id as f64;
        let w = share * scale;
        let _ = writeln!(s, r#"<text x="{x}" y="{:.1}">w{id}</text>"#, by + 11.0);
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{by:.1}" width="{:.1}" height="{BAR_H}" fill="{colour}"/><rect x="{:.1}" y="{by:.1}" width="{BAR_MAX_W}" height="{BAR_H}" fill="none" stroke="#ddd"/>"##,
            x + BAR_X,
            w.max(0.0),
            x + BAR_X
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{share:.2} %</text>"#, x + BAR_X + BAR_MAX_W + 8.0, by + 11.0);
    }
    let fair_x = x + BAR_X + 100.0 / f.per_worker.len().max(1) as f64 * scale;
    let _ = writeln!(
        s,
        r##"<line x1="{fair_x:.1}" y1="{:.1}" x2="{fair_x:.1}" y2="{:.1}" stroke="#222" stroke-dasharray="4 3"/>"##,
        y + PANEL_HEAD - 3.0,
        y + PANEL_HEAD + BAR_STEP * f.per_worker.len() as f64
    );
}

/// Text escaped for XML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::plan::{Load, ROWS};
    use super::super::row::Figures;
    use super::*;
    use herd::Backend;

    fn run() -> Run {
        Run {
            workers: 2,
            defer_accept: true,
            loads: vec![Load { kind: LoadKind::Light, connections: 1, requests: 4 }],
            notes: vec!["shared/epoll has no io_uring form: epoll only".into()],
            nproc: 2,
            kernel: "6.18".into(),
            date: "2026-11-21".into(),
        }
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }

    #[test]
    fn draws_a_bar_per_worker_and_the_failures() {
        let load = Load { kind: LoadKind::Light, connections: 1, requests: 4 };
        let ok = Figures { requests: 4, per_worker: vec![3, 1], answered_by: vec![3, 1], ..Figures::default() };
        let cells = [
            Cell { row: ROWS[0], backend: Backend::Epoll, load, workers: 2, outcome: Ok(ok) },
            Cell { row: ROWS[1], backend: Backend::Epoll, load, workers: 2, outcome: Err("no <port>".into()) },
        ];
        let svg = render(&run(), &cells);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#4c78a8\"").count(), 2);
        assert!(svg.contains("75.00 %") && svg.contains("25.00 %"));
        assert!(svg.contains("Jain 0.8000"));
        assert!(svg.contains("failed: no &lt;port&gt;"));
        // The axis leaves room for the busiest worker's 75 %.
        assert_eq!(axis_percent(2, &cells), 100.0);
        assert_eq!(axis_percent(8, &cells[1..]), 30.0);
        assert!(svg.contains(">shared/epoll has no io_uring form: epoll only</text>"));
    }

    #[test]
    fn a_rows_backends_get_lines_of_their_own() {
        let load = Load { kind: LoadKind::Light, connections: 1, requests: 4 };
        let ok = Figures { requests: 4, per_worker: vec![2, 2], answered_by: vec![2, 2], ..Figures::default() };
        let cells = [Backend::Epoll, Backend::IoUring].map(|backend| Cell {
            row: ROWS[4],
            backend,
            load,
            workers: 2,
            outcome: Ok(ok.clone()),
        });
        let svg = render(&run(), &cells);
        assert!(svg.contains(">handoff · epoll, light (1 in flight)</text>"), "{svg}");
        assert!(svg.contains(">handoff · io-uring, light (1 in flight)</text>"), "{svg}");
        let ys: Vec<&str> = svg
            .lines()
            .filter(|l| l.contains("font-weight=\"bold\">handoff"))
            .map(|l| l.split('"').nth(3).unwrap())
            .collect();
        assert_eq!(ys.len(), 2);
        assert_ne!(ys[0], ys[1], "one panel under the other, not on top of it");
    }
}

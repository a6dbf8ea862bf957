//! Replays every fuzz input checked in — the corpus and the regressions, the crashes libFuzzer
//! once found (`fuzz/`) — through the same checks the fuzz targets make, on stable, in
//! `make test`.

#[path = "../../../fuzz/checks.rs"]
mod checks;

use std::path::PathBuf;

/// Every file in `fuzz/corpus/TARGET` and `fuzz/regressions/TARGET`.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out
}

#[test]
fn the_frame_corpus_and_regressions_replay_clean() {
    let inputs = inputs("frame");
    assert!(inputs.len() >= 10, "the frame corpus is checked in ({} inputs)", inputs.len());
    for (_path, bytes) in inputs {
        checks::frame(&bytes);
    }
}

#[test]
fn the_http_request_corpus_and_regressions_replay_clean() {
    let inputs = inputs("http_request");
    assert!(inputs.len() >= 10, "the http_request corpus is checked in ({} inputs)", inputs.len());
    for (_path, bytes) in inputs {
        checks::http_request(&bytes, |b| crate::serve::http::parse(b).map(|r| r.map(|r| r.len)).map_err(drop));
    }
}

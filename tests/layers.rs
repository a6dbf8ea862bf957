//! The library's layers flow one way (docs/architecture.md):
//!
//! ```text
//! sys → addr, channel, stats, listener, upgrade → stream, program → accept, activation → mode
//!     → config, event → worker → primary → cluster
//! ```
//!
//! This test reads every file under `src/` (but the command-line tool) and fails if code — not
//! comments, not the unit tests at the end of a file — names a module of a higher layer, or if
//! two modules of one layer name each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module's layer.
const LAYERS: &[(&str, u32)] = &[
    ("sys", 0),
    ("addr", 1),
    ("channel", 1),
    ("stats", 1),
    ("listener", 1),
    ("upgrade", 1),
    ("stream", 2),
    ("program", 2),
    ("accept", 3),
    ("activation", 3),
    ("mode", 4),
    ("config", 5),
    ("event", 5),
    ("worker", 6),
    ("primary", 7),
    ("cluster", 8),
];

/// What the crate root re-exports, by the module that defines it.
const REEXPORTS: &[(&str, &str)] = &[
    ("ListenAddr", "addr"),
    ("AddrParseError", "addr"),
    ("Event", "event"),
    ("ReloadPhase", "event"),
    ("WorkerExit", "event"),
    ("Mode", "mode"),
    ("SharedAccept", "mode"),
    ("Interest", "sys"),
    ("Ready", "sys"),
    ("Stream", "stream"),
    ("StreamKind", "listener"),
    ("Worker", "worker"),
    ("WorkerEvent", "worker"),
    ("WorkerListener", "worker"),
    ("Primary", "primary"),
    ("Program", "program"),
    ("Cluster", "cluster"),
    ("Builder", "cluster"),
    ("Config", "config"),
    ("Heartbeat", "config"),
    ("MAX_WORKERS", "config"),
];

fn layer(module: &str) -> u32 {
    LAYERS.iter().find(|(m, _)| *m == module).unwrap_or_else(|| panic!("module {module} has no layer in this test")).1
}

/// The code of a file without comments and without its unit tests (`#[cfg(test)]` to the end).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The modules a file's code names through `crate::`.
fn names(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let item = ident(item.trim());
                if !item.is_empty() {
                    found.insert(item);
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found
        .into_iter()
        .map(|n| REEXPORTS.iter().find(|(item, _)| *item == n).map_or(n.clone(), |(_, m)| (*m).to_owned()))
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                walk(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_library_layers_flow_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs");
        if module == "lib" {
            continue;
        }
        for named in names(&code(&std::fs::read_to_string(file).unwrap())) {
            if named == module {
                continue;
            }
            if layer(&named) > layer(module) {
                wrong.push(format!(
                    "{} (layer {}) uses {named} (layer {})",
                    relative.display(),
                    layer(module),
                    layer(&named)
                ));
            }
            edges.entry(module.to_owned()).or_default().insert(named);
        }
    }
    for (a, targets) in &edges {
        for b in targets {
            if edges.get(b).is_some_and(|back| back.contains(a)) {
                wrong.push(format!("{a} and {b} use each other"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

//! `include/herd.h` is what cbindgen makes of this crate: this test generates it and fails if
//! the committed header differs. `make header` (`HERD_UPDATE_HEADER=1`) writes it instead.

use std::path::Path;

#[test]
fn the_committed_header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("capi/cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen understands capi/src")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("a header is text");
    let committed_path = crate_dir.join("../include/herd.h");
    if std::env::var_os("HERD_UPDATE_HEADER").is_some() {
        std::fs::write(&committed_path, &generated).expect("writing include/herd.h");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/herd.h is out of date with capi/src: run `make header` and commit it\n--- generated:\n{generated}"
    );
}

#[test]
fn every_function_is_documented() {
    let header = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/herd.h")).unwrap();
    let lines: Vec<&str> = header.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let declares = line.contains("herd_") && line.trim_end().ends_with(");") && !line.starts_with("//");
        if declares {
            let mut j = i;
            while j > 0 && !lines[j - 1].trim().is_empty() && !lines[j - 1].starts_with("//") {
                j -= 1;
            }
            assert!(j > 0 && lines[j - 1].starts_with("//"), "undocumented in include/herd.h: {line}");
        }
    }
}

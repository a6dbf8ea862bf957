//! The `#[repr(C)]` structs have the same layout on both sides of the ABI: this test compiles a
//! C program that prints `offsetof` and `sizeof` for every field of every struct in
//! `include/herd.h`, and compares each with Rust's `offset_of!` and `size_of`. Skipped, loudly,
//! without a C compiler.

use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

use crate::{herd_event, herd_primary_stats, herd_worker_event, herd_worker_info, herd_worker_stats};

/// `(struct, size, [(field, offset)])` for every struct of the header, from the Rust side.
macro_rules! layouts {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {
        vec![$((stringify!($ty), size_of::<$ty>(), vec![$((stringify!($field), offset_of!($ty, $field))),*])),*]
    };
}

#[test]
fn every_struct_has_the_same_layout_in_c() {
    let rust = layouts! {
        herd_event { kind, worker, pid, exit_code, signal, flag, generation, count, millis, text, data, len, fds, nfds, description }
        herd_worker_event { kind, fd, data, len, fds, nfds }
        herd_primary_stats { accepted, dispatched, queued, requeued, syscalls }
        herd_worker_stats { wakeups, accepts, eagains, handoffs_received, handoffs_acked, closed, syscalls }
        herd_worker_info { worker, pid, generation, connected, listening, exiting }
    };
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_err() {
        eprintln!("SKIPPED: no C compiler ({cc}) to check the structs' layout with");
        return;
    }
    let dir = std::env::temp_dir().join(format!("herd-capi-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("layout.c");
    let mut c = String::from("#include <stddef.h>\n#include <stdio.h>\n#include \"herd.h\"\nint main(void) {\n");
    for (ty, _, fields) in &rust {
        c.push_str(&format!("    printf(\"{ty} %zu\\n\", sizeof({ty}));\n"));
        for (field, _) in fields {
            c.push_str(&format!("    printf(\"{ty}.{field} %zu\\n\", offsetof({ty}, {field}));\n"));
        }
    }
    c.push_str("    return 0;\n}\n");
    std::fs::write(&source, c).unwrap();
    let binary = dir.join("layout");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&include)
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .output()
        .unwrap();
    assert!(built.status.success(), "compiling the layout check: {}", String::from_utf8_lossy(&built.stderr));
    let out = Command::new(&binary).output().unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let mut expected = String::new();
    for (ty, size, fields) in &rust {
        expected.push_str(&format!("{ty} {size}\n"));
        for (field, offset) in fields {
            expected.push_str(&format!("{ty}.{field} {offset}\n"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(printed, expected, "C's offsetof/sizeof (left) against Rust's offset_of!/size_of (right)");
}

//! Gives libherd.so its soname, so that programs linked against it load `libherd.so.0` — the
//! ABI's major version — and `make install` can put `libherd.so.0.1.0` behind the usual links.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libherd.so.{major}");
}

//! Fuzzes `herd serve`'s HTTP request parser; see `checks::http_request`.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;
#[path = "../../src/bin/herd/serve/http.rs"]
#[allow(dead_code)]
mod http;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::http_request(data, |b| http::parse(b).map(|r| r.map(|r| r.len)).map_err(drop))
});

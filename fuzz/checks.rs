//! The properties the fuzz targets check, shared with the replay test that `make test` runs on
//! stable over the checked-in corpus and regressions (`src/bin/herd/fuzz_replay.rs`).

use herd::channel::{MAX_FDS, frame};

/// The channel's frame decoder, on any bytes with any descriptor count (the input's first
/// byte): it never panics, and whatever it accepts encodes back to the very same bytes.
pub fn frame(data: &[u8]) {
    let Some((&count, bytes)) = data.split_first() else { return };
    let fds = count as usize % (MAX_FDS + 2);
    let Ok(message) = frame::decode(bytes, fds) else { return };
    assert_eq!(frame::peek_kind(bytes), Some(message.kind()));
    let again = frame::encode(&message, fds).expect("a decoded message encodes");
    assert_eq!(again, bytes, "decoding then encoding {message:?} changed the frame");
}

/// `herd serve`'s request parser (`parse` returns the length of the complete request at the
/// start of its input, `None` if more is needed, or an error): it never panics, a request it
/// finds lies within the input, and the request's own bytes parse to the same request.
pub fn http_request(data: &[u8], parse: impl Fn(&[u8]) -> Result<Option<usize>, ()>) {
    if let Ok(Some(len)) = parse(data) {
        assert!(len > 0 && len <= data.len(), "request of {len} bytes in {} bytes", data.len());
        assert_eq!(parse(&data[..len]), Ok(Some(len)), "the request alone parses the same");
    }
}

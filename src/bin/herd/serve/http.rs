//! Just enough HTTP/1.1 for the demo server, on `httparse` (hyper's parser): find a request's
//! end, decide keep-alive, and refuse what it cannot serve with the right status.
//!
//! The demo answers every request the same way (but `GET /block/MS`, see [`Request::block`]),
//! so it needs the request's length (head plus `Content-Length` body), its version, its
//! `Connection` header and its path.

use std::time::Duration;

/// The most bytes a request head may take: beyond it, `431`.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines a request may have: beyond it, `431`.
pub const MAX_HEADERS: usize = 64;
/// The longest `GET /block/MS` honoured.
pub const MAX_BLOCK: Duration = Duration::from_secs(60);

/// What a complete request at the start of a buffer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes it takes in the buffer, head and body.
    pub len: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// `GET /block/MS`: block the worker this long before answering (a stand-in for a handler
    /// that computes or waits).
    pub block: Option<Duration>,
}

/// Why a buffer does not start with a request the server can answer; each has its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not an HTTP/1.x request, or a bad `Content-Length`: `400`.
    Malformed,
    /// The head is longer than [`MAX_HEAD`] or has more than [`MAX_HEADERS`] lines: `431`.
    TooLarge,
    /// A body in a form the demo does not read (`Transfer-Encoding`): `501`.
    Unsupported,
}

impl Invalid {
    /// The response that says so; the connection closes after it.
    pub fn response(self) -> &'static [u8] {
        match self {
            Invalid::Malformed => BAD_REQUEST,
            Invalid::TooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Invalid::Unsupported => b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        }
    }
}

/// Parses the request at the start of `buf`: `Ok(None)` if it is not complete yet.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, Invalid> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(Invalid::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Invalid::TooLarge),
        Err(_) => return Err(Invalid::Malformed),
    };
    if head_len > MAX_HEAD {
        return Err(Invalid::TooLarge);
    }
    let mut keep_alive = req.version == Some(1);
    let mut body = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).map_err(|_| Invalid::Malformed)?.trim();
            body = value.parse().map_err(|_| Invalid::Malformed)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Invalid::Unsupported);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let block = match (req.method, req.path.and_then(|p| p.strip_prefix("/block/"))) {
        (Some("GET"), Some(ms)) => {
            Some(Duration::from_millis(ms.parse().map_err(|_| Invalid::Malformed)?).min(MAX_BLOCK))
        }
        _ => None,
    };
    let len = head_len.checked_add(body).ok_or(Invalid::Malformed)?;
    Ok((buf.len() >= len).then_some(Request { len, keep_alive, block }))
}

/// The response to every request: `200` with `body`.
pub fn response(body: &[u8], keep_alive: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(if keep_alive { b"\r\n\r\n" as &[u8] } else { b"\r\nConnection: close\r\n\r\n" });
    out.extend_from_slice(body);
}

/// The response to a request the server cannot parse; the connection closes after it.
pub const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The response to a client that took longer than the request timeout to send its request.
pub const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let r = |s: &str| parse(s.as_bytes()).unwrap().unwrap();
        assert!(r("GET / HTTP/1.1\r\nHost: x\r\n\r\n").keep_alive);
        assert!(!r("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!r("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(r("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn incomplete_requests_wait_and_bodies_count() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let post = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(parse(post), Ok(None));
        let full = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET";
        assert_eq!(parse(full), Ok(Some(Request { len: full.len() - 3, keep_alive: true, block: None })));
    }

    #[test]
    fn pipelined_requests_are_parsed_one_at_a_time() {
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n";
        let first = parse(two).unwrap().unwrap();
        assert_eq!(first.len, 19);
        let second = parse(&two[first.len..]).unwrap().unwrap();
        assert!(!second.keep_alive);
    }

    #[test]
    fn bad_requests_get_the_status_that_says_why() {
        assert_eq!(parse(b"HELLO\r\n\r\n"), Err(Invalid::Malformed));
        assert_eq!(parse(b"GET /\r\n\r\n"), Err(Invalid::Malformed), "a request line without a version");
        assert_eq!(parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Err(Invalid::Malformed));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"), Err(Invalid::Malformed), "a NUL in a header");
        assert_eq!(parse(&[b'a'; MAX_HEAD + 1]), Err(Invalid::TooLarge), "no end of head within the limit");
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse(&huge), Err(Invalid::TooLarge), "a header longer than the limit, incomplete");
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X{i}: y\r\n")).collect();
        assert_eq!(parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), Err(Invalid::TooLarge));
        assert_eq!(parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(Invalid::Unsupported));
        let overflow = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", usize::MAX);
        assert_eq!(parse(overflow.as_bytes()), Err(Invalid::Malformed));
    }

    #[test]
    fn block_requests_name_their_duration() {
        let r = parse(b"GET /block/250 HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.block, Some(Duration::from_millis(250)));
        assert_eq!(parse(b"GET /block/x HTTP/1.1\r\n\r\n"), Err(Invalid::Malformed));
        let r = parse(b"GET /block/99999999 HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.block, Some(MAX_BLOCK));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let mut out = Vec::new();
        response(b"worker 0 pid 1\n", false, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 15\r\n") && text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nworker 0 pid 1\n"));
    }
}

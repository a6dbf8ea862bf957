//! Just enough HTTP/1.1 for the demo server: find a request's end, decide keep-alive.
//!
//! The demo answers every request the same way, so the parser only needs the request's length
//! (head plus `Content-Length` body), its version and its `Connection` header.

/// The most bytes a request head may take before the server gives up on it.
pub const MAX_HEAD: usize = 16 * 1024;

/// What a complete request at the start of a buffer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes it takes in the buffer, head and body.
    pub len: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// Why a buffer does not start with a request the server can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// The head is longer than [`MAX_HEAD`].
    TooLarge,
    /// Not an HTTP/1.x request line, or a bad `Content-Length`.
    Malformed,
}

/// Parses the request at the start of `buf`: `Ok(None)` if it is not complete yet.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, Invalid> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err(Invalid::TooLarge) } else { Ok(None) };
    };
    let head = &buf[..head_end];
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(Invalid::Malformed)?;
    let version = request_line.rsplit(|&b| b == b' ').next().ok_or(Invalid::Malformed)?;
    let mut keep_alive = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(Invalid::Malformed),
    };
    let mut body = 0usize;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { return Err(Invalid::Malformed) };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            body = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).ok_or(Invalid::Malformed)?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let len = head_end + 4 + body;
    Ok((buf.len() >= len).then_some(Request { len, keep_alive }))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &s[start..end]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
        assert_eq!(parse(full), Ok(Some(Request { len: full.len() - 3, keep_alive: true })));
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
    fn garbage_is_rejected() {
        assert_eq!(parse(b"HELLO\r\n\r\n"), Err(Invalid::Malformed));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Err(Invalid::Malformed));
        assert_eq!(parse(&[b'a'; MAX_HEAD + 1]), Err(Invalid::TooLarge));
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

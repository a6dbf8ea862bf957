//! The HTTP/1.1 we speak: one pre-built `GET` request, and an incremental response parser.
//!
//! The request bytes are built once per run and written verbatim for every request, so the hot
//! path never formats anything.
//!
//! The parser is fed whatever each `read` returned and reports where a response ends, so it copes
//! with a response split across reads at any byte and with the next response starting in the same
//! buffer (the boundary a keep-alive client must find exactly). The head is read by `httparse`
//! (hyper's parser); of it the parser uses the status, the version, `Content-Length`,
//! `Transfer-Encoding: chunked` and `Connection`, which with the no-body statuses (1xx, 204, 304)
//! say where the body ends — or, with none of them, that the server's close ends it.
//! It copies nothing on the common path, where the whole head arrives in one read; a head split
//! across reads is gathered in a small per-connection buffer ([`Pending`]). The first
//! [`SAMPLE_LEN`] bytes of the body are kept so the load generator can read the `worker <id>` the
//! herd server answers.

use std::mem::MaybeUninit;

use super::chunked::{Chunked, ChunkedError};
use super::config::Mode;
use super::url::Target;

/// The largest response head (status line plus headers) accepted, and the longest chunk-size
/// line or trailer section.
pub const MAX_HEAD: usize = 16 * 1024;

/// The most header lines a response head may have.
const MAX_HEADERS: usize = 64;

/// How many leading body bytes are kept for [`Response::worker`].
pub const SAMPLE_LEN: usize = 64;

/// The largest worker id accepted from a body, so a malformed body cannot make the report
/// allocate a huge per-worker table.
pub const MAX_WORKER_ID: usize = 65_535;

/// Builds the request written for every connection (churn) or every exchange (keep-alive).
///
/// Churn asks the server to close (`Connection: close`) so that the server closes first and the
/// `TIME_WAIT` state lands on its side; see the `socket` module for why that matters.
pub fn build_request(target: &Target, mode: Mode) -> Vec<u8> {
    let connection = match mode {
        Mode::Churn => "Connection: close\r\n",
        Mode::KeepAlive => "",
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: herd-load\r\nAccept: */*\r\n{connection}\r\n",
        target.path, target.host
    )
    .into_bytes()
}

/// What the parser learned from one complete response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Whether the server lets us send another request on this connection.
    pub reusable: bool,
    /// The id from a body containing `worker <id>` in its first [`SAMPLE_LEN`] bytes.
    pub worker: Option<usize>,
}

/// The outcome of feeding bytes to the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// All bytes were consumed and the response is not finished yet.
    Partial,
    /// A response ended after `consumed` bytes of the input; the rest belongs to the next one.
    Complete { consumed: usize, response: Response },
}

/// A response the parser cannot make sense of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The head exceeded [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines.
    HeadTooLarge,
    /// The status line is not `HTTP/1.x NNN ...`.
    StatusLine,
    /// A header line is malformed, or `Content-Length` is not a number or is repeated differently.
    Header,
    /// The chunked framing is broken.
    Chunked,
    /// The connection ended before the response did.
    Truncated,
}

impl ParseError {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::HeadTooLarge => "response head too large",
            ParseError::StatusLine => "bad status line",
            ParseError::Header => "bad header",
            ParseError::Chunked => "bad chunked encoding",
            ParseError::Truncated => "truncated response",
        }
    }
}

/// How the end of the body is found.
#[derive(Clone, Copy, Debug)]
enum Body {
    /// This many bytes remain.
    Length(u64),
    /// `Transfer-Encoding: chunked`: the parser's [`Chunked`] decoder finds the end.
    Chunked,
    /// No length given: the body ends when the server closes.
    UntilClose,
}

/// Where the parser is within a response.
#[derive(Clone, Copy, Debug)]
enum State {
    Head,
    Body(Body),
}

/// What a response head says, as far as finding the end of the response goes.
#[derive(Clone, Copy, Debug)]
struct Head {
    status: u16,
    /// The server lets us send another request on this connection (if the body's end can be
    /// found without its close).
    persistent: bool,
    length: Option<u64>,
    chunked: bool,
}

/// An incremental HTTP/1.x response parser; see the module docs.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    /// Head bytes gathered across reads, only when the head did not arrive in one piece.
    head: Pending,
    chunked: Chunked,
    status: u16,
    reusable: bool,
    sample: [u8; SAMPLE_LEN],
    sample_len: usize,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    /// A parser waiting for the first byte of a response.
    pub fn new() -> Self {
        ResponseParser {
            state: State::Head,
            head: Pending::default(),
            chunked: Chunked::new(),
            status: 0,
            reusable: false,
            sample: [0; SAMPLE_LEN],
            sample_len: 0,
        }
    }

    /// Forgets any partial response, keeping the buffers' allocations.
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.head.clear();
        self.chunked.reset();
        self.sample_len = 0;
    }

    /// Consumes bytes from `data`, up to the end of the current response.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, ParseError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Head => match self.head.parse(&data[pos..], ParseError::HeadTooLarge, parse_head)? {
                    Some((used, head)) => {
                        pos += used;
                        self.start_body(head);
                    }
                    None => return Ok(Progress::Partial),
                },
                State::Body(Body::Length(remaining)) => {
                    let take = remaining.min((data.len() - pos) as u64) as usize;
                    self.keep_sample(&data[pos..pos + take]);
                    pos += take;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        return Ok(self.complete(pos));
                    }
                    self.state = State::Body(Body::Length(remaining));
                    return Ok(Progress::Partial);
                }
                State::Body(Body::Chunked) => {
                    let mut sample = Sampler { buf: &mut self.sample, len: &mut self.sample_len };
                    match self.chunked.feed(&data[pos..], |bytes| sample.keep(bytes)) {
                        Ok((used, true)) => return Ok(self.complete(pos + used)),
                        Ok((_, false)) => return Ok(Progress::Partial),
                        Err(ChunkedError) => return Err(ParseError::Chunked),
                    }
                }
                State::Body(Body::UntilClose) => {
                    self.keep_sample(&data[pos..]);
                    return Ok(Progress::Partial);
                }
            }
        }
    }

    /// Tells the parser the server closed the connection; completes a close-delimited body.
    pub fn finish(&mut self) -> Result<Response, ParseError> {
        match self.state {
            State::Body(Body::UntilClose) => Ok(self.take_response()),
            _ => Err(ParseError::Truncated),
        }
    }

    /// Picks how the body after `head` is delimited.
    fn start_body(&mut self, head: Head) {
        self.status = head.status;
        self.reusable = head.persistent;
        self.sample_len = 0;
        self.state = match head.status {
            // Informational: another head follows (101 Switching Protocols is not expected).
            100..=199 => State::Head,
            204 | 304 => State::Body(Body::Length(0)),
            _ if head.chunked => {
                self.chunked.reset();
                State::Body(Body::Chunked)
            }
            _ => match head.length {
                Some(n) => State::Body(Body::Length(n)),
                None => {
                    self.reusable = false;
                    State::Body(Body::UntilClose)
                }
            },
        };
    }

    fn keep_sample(&mut self, bytes: &[u8]) {
        Sampler { buf: &mut self.sample, len: &mut self.sample_len }.keep(bytes);
    }

    /// Ends the current response after `consumed` input bytes.
    fn complete(&mut self, consumed: usize) -> Progress {
        Progress::Complete { consumed, response: self.take_response() }
    }

    /// Returns what was learned about the current response and gets ready for the next one.
    fn take_response(&mut self) -> Response {
        let response = Response {
            status: self.status,
            reusable: self.reusable,
            worker: parse_worker(&self.sample[..self.sample_len]),
        };
        self.state = State::Head;
        self.sample_len = 0;
        response
    }
}

/// Parses the response head at the start of `data`: `Ok(None)` while it is incomplete, else its
/// length and what it says.
fn parse_head(data: &[u8]) -> Result<Option<(usize, Head)>, ParseError> {
    // Left uninitialised: httparse writes the entries it returns, so nothing is cleared for
    // every response.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, data, &mut headers) {
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(ParseError::HeadTooLarge),
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::Version | httparse::Error::Status) => return Err(ParseError::StatusLine),
            Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadTooLarge),
            Err(_) => return Err(ParseError::Header),
        };
    let mut length: Option<u64> = None;
    let (mut chunked, mut close, mut keep_alive) = (false, false, false);
    for header in response.headers.iter() {
        let (name, value) = (header.name, header.value);
        if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(value).ok_or(ParseError::Header)?;
            if length.is_some_and(|old| old != n) {
                return Err(ParseError::Header);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked counts only as the last coding applied.
            chunked = tokens(value).next_back().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            close |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"close"));
            keep_alive |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"keep-alive"));
        }
    }
    let version_1_1 = response.version == Some(1);
    let status = response.code.expect("a complete head has a status");
    Ok(Some((len, Head { status, persistent: !close && (version_1_1 || keep_alive), length, chunked })))
}

/// The start of an HTTP element — a response head, a chunk-size line, a trailer section — that
/// arrived split across reads, kept until the rest comes.
#[derive(Debug, Default)]
pub struct Pending(Vec<u8>);

impl Pending {
    /// Runs `parse` on the element that starts at `data` (or continues there, if part of it is
    /// pending). `parse` returns the element's length once it is complete; this returns how many
    /// bytes of `data` the element took. An element longer than [`MAX_HEAD`] is `too_large`.
    pub fn parse<T, E>(
        &mut self,
        data: &[u8],
        too_large: E,
        parse: impl Fn(&[u8]) -> Result<Option<(usize, T)>, E>,
    ) -> Result<Option<(usize, T)>, E> {
        if self.0.is_empty() {
            // The common case: the whole element is in this read, so parse it in place.
            if let Some(done) = parse(data)? {
                return Ok(Some(done));
            }
            if data.len() > MAX_HEAD {
                return Err(too_large);
            }
            self.0.extend_from_slice(data);
            return Ok(None);
        }
        let old = self.0.len();
        self.0.extend_from_slice(data);
        // Every element ends with a line feed: without one in `data` it cannot have ended, and
        // skipping the parse keeps a server that sends a byte per read from costing quadratic time.
        let done = if data.contains(&b'\n') { parse(&self.0)? } else { None };
        match done {
            Some((len, value)) => {
                self.0.clear();
                Ok(Some((len - old, value)))
            }
            None if self.0.len() > MAX_HEAD => Err(too_large),
            None => Ok(None),
        }
    }

    /// Forgets the pending bytes, keeping the allocation.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Appends body bytes to the sample until it is full.
struct Sampler<'a> {
    buf: &'a mut [u8; SAMPLE_LEN],
    len: &'a mut usize,
}

impl Sampler<'_> {
    fn keep(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(SAMPLE_LEN - *self.len);
        self.buf[*self.len..*self.len + n].copy_from_slice(&bytes[..n]);
        *self.len += n;
    }
}

/// The comma-separated, trimmed tokens of a header value.
fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// A `Content-Length` value: decimal digits only (no sign), at most `u64::MAX`.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Finds `worker <id>` in a body sample, as the herd server answers `worker <id> pid <pid>\n`.
pub fn parse_worker(body: &[u8]) -> Option<usize> {
    let start = body.windows(7).position(|w| w == b"worker ")? + 7;
    let digits = body[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 5 {
        return None;
    }
    let id = body[start..start + digits].iter().fold(0usize, |n, &b| n * 10 + usize::from(b - b'0'));
    (id <= MAX_WORKER_ID).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nContent-Type: text/plain\r\n\r\nworker 3 pid 123456\n";

    fn complete(p: Progress) -> (usize, Response) {
        match p {
            Progress::Complete { consumed, response } => (consumed, response),
            Progress::Partial => panic!("expected a complete response"),
        }
    }

    #[test]
    fn builds_requests() {
        let target = Target::parse("http://127.0.0.1:8080/x?y").unwrap();
        let churn = String::from_utf8(build_request(&target, Mode::Churn)).unwrap();
        assert_eq!(
            churn,
            "GET /x?y HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: herd-load\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let keep = String::from_utf8(build_request(&target, Mode::KeepAlive)).unwrap();
        assert!(!keep.contains("Connection") && keep.ends_with("\r\n\r\n"));
    }

    #[test]
    fn parses_a_whole_response() {
        let mut p = ResponseParser::new();
        let (used, r) = complete(p.feed(OK).unwrap());
        assert_eq!(used, OK.len());
        assert_eq!(r, Response { status: 200, reusable: true, worker: Some(3) });
    }

    #[test]
    fn parses_a_response_split_at_every_byte() {
        for split in 1..OK.len() {
            let mut p = ResponseParser::new();
            assert_eq!(p.feed(&OK[..split]).unwrap(), Progress::Partial, "split at {split}");
            let (used, r) = complete(p.feed(&OK[split..]).unwrap());
            assert_eq!(used, OK.len() - split);
            assert_eq!(r.worker, Some(3), "split at {split}");
        }
    }

    #[test]
    fn parses_a_response_one_byte_at_a_time() {
        let mut p = ResponseParser::new();
        for (i, b) in OK.iter().enumerate() {
            let progress = p.feed(std::slice::from_ref(b)).unwrap();
            if i + 1 < OK.len() {
                assert_eq!(progress, Progress::Partial);
            } else {
                assert_eq!(complete(progress), (1, Response { status: 200, reusable: true, worker: Some(3) }));
            }
        }
    }

    #[test]
    fn finds_keep_alive_boundaries() {
        let second = b"HTTP/1.1 503 Busy\r\ncontent-length: 9\r\nconnection: close\r\n\r\nworker 12";
        let stream = [OK, second.as_slice()].concat();
        // Pipelined: both responses in one buffer, then split at every byte.
        let mut p = ResponseParser::new();
        let (used, first) = complete(p.feed(&stream).unwrap());
        assert_eq!((used, first.worker), (OK.len(), Some(3)));
        let (used2, r2) = complete(p.feed(&stream[used..]).unwrap());
        assert_eq!(used2, second.len());
        assert_eq!(r2, Response { status: 503, reusable: false, worker: Some(12) });
        for split in 1..stream.len() {
            let mut p = ResponseParser::new();
            let mut seen = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                let mut pos = 0;
                while pos < part.len() {
                    match p.feed(&part[pos..]).unwrap() {
                        Progress::Complete { consumed, response } => {
                            pos += consumed;
                            seen.push(response.status);
                        }
                        Progress::Partial => pos = part.len(),
                    }
                }
            }
            assert_eq!(seen, [200, 503], "split at {split}");
        }
    }

    #[test]
    fn reads_headers_and_versions() {
        let mut p = ResponseParser::new();
        let r = complete(p.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap()).1;
        assert!(!r.reusable, "HTTP/1.0 closes by default");
        let r = complete(p.feed(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n").unwrap()).1;
        assert!(r.reusable);
        let r =
            complete(p.feed(b"HTTP/1.1 200 OK\r\nConnection: upgrade, Close\r\nContent-Length: 0\r\n\r\n").unwrap()).1;
        assert!(!r.reusable);
        let r = complete(p.feed(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap()).1;
        assert_eq!((r.status, r.reusable), (204, true));
        let r = complete(p.feed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n").unwrap()).1;
        assert_eq!(r.status, 304, "304 has no body whatever Content-Length says");
        let r = complete(p.feed(b"HTTP/1.1 200\r\ncontent-length:  2 \r\n\r\nhi").unwrap()).1;
        assert_eq!(r.status, 200, "reason phrase is optional, header values are trimmed");
    }

    #[test]
    fn skips_informational_responses() {
        let mut p = ResponseParser::new();
        let data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let (used, r) = complete(p.feed(data).unwrap());
        assert_eq!((used, r.status), (data.len(), 201));
    }

    #[test]
    fn reads_chunked_bodies() {
        let data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7;ext=1\r\nworker \r\n2\r\n42\r\n0\r\nX-Trailer: t\r\n\r\nHTTP";
        for split in 1..data.len() {
            let mut p = ResponseParser::new();
            let first = p.feed(&data[..split]).unwrap();
            let (used, r) = match first {
                Progress::Complete { consumed, response } => (consumed, response),
                Progress::Partial => {
                    let (used, r) = complete(p.feed(&data[split..]).unwrap());
                    (split + used, r)
                }
            };
            assert_eq!(used, data.len() - 4, "split at {split}");
            assert_eq!(r.worker, Some(42));
        }
    }

    #[test]
    fn reads_close_delimited_bodies() {
        let mut p = ResponseParser::new();
        assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\n\r\nworker 7 pid 1").unwrap(), Progress::Partial);
        assert_eq!(p.feed(b"\n").unwrap(), Progress::Partial);
        assert_eq!(p.finish().unwrap(), Response { status: 200, reusable: false, worker: Some(7) });
    }

    #[test]
    fn reports_truncation_and_garbage() {
        let mut p = ResponseParser::new();
        assert_eq!(p.finish(), Err(ParseError::Truncated));
        assert_eq!(p.feed(&OK[..OK.len() - 1]).unwrap(), Progress::Partial);
        assert_eq!(p.finish(), Err(ParseError::Truncated));
        let bad: [&[u8]; 6] = [
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ];
        for b in bad {
            assert!(ResponseParser::new().feed(b).is_err(), "{}", String::from_utf8_lossy(b));
        }
        let chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(ResponseParser::new().feed(chunk), Err(ParseError::Chunked));
        let mut p = ResponseParser::new();
        let huge = vec![b'a'; MAX_HEAD / 2];
        assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\nX: ").unwrap(), Progress::Partial);
        assert_eq!(p.feed(&huge).unwrap(), Progress::Partial);
        assert_eq!(p.feed(&huge), Err(ParseError::HeadTooLarge));
    }

    #[test]
    fn refuses_heads_over_the_limits() {
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let head = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n");
        assert_eq!(ResponseParser::new().feed(head.as_bytes()), Err(ParseError::HeadTooLarge));
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(ResponseParser::new().feed(long.as_bytes()), Err(ParseError::HeadTooLarge), "in one read");
    }

    #[test]
    fn parses_worker_ids() {
        assert_eq!(parse_worker(b"worker 0 pid 1\n"), Some(0));
        assert_eq!(parse_worker(b"hello from worker 17\n"), Some(17));
        assert_eq!(parse_worker(b"worker x"), None);
        assert_eq!(parse_worker(b"worker "), None);
        assert_eq!(parse_worker(b"workers 3"), None);
        assert_eq!(parse_worker(b"worker 999999"), None);
        assert_eq!(parse_worker(b""), None);
    }
}

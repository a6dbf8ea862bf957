//! A resumable decoder for `Transfer-Encoding: chunked` bodies.
//!
//! It exists only to find where a chunked body ends (so a keep-alive connection can be reused)
//! and to hand the decoded bytes to a callback; it keeps no data itself. Chunk-size lines are read
//! by `httparse::parse_chunk_size` and the trailer section by `httparse::parse_headers`; either
//! may arrive split across reads, and is then gathered in a [`Pending`] buffer first. Chunk
//! extensions and trailers are skipped. Bare `\n` line ends are tolerated, as most clients do.

use super::http::Pending;

/// The most trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 64;

/// Decoder state: where in the chunk framing the next byte falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: `\r\n` must follow.
    DataCr,
    DataLf,
    /// After the last, zero-size chunk: trailer fields, then an empty line.
    Trailers,
}

/// The chunk framing is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedError;

/// A chunked-body decoder; feed it bytes until it reports the end.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// A chunk-size line or trailer section split across reads.
    pending: Pending,
}

impl Chunked {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Chunked { state: State::Size, pending: Pending::default() }
    }

    /// Gets ready for a new body, keeping the buffer's allocation.
    pub fn reset(&mut self) {
        self.state = State::Size;
        self.pending.clear();
    }

    /// Decodes from `data`, passing chunk data to `body`. Returns how many bytes were used and
    /// whether the body ended; when it did, the bytes after `used` belong to the next response.
    pub fn feed(&mut self, data: &[u8], mut body: impl FnMut(&[u8])) -> Result<(usize, bool), ChunkedError> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Size => match self.pending.parse(&data[i..], ChunkedError, size_line)? {
                    Some((used, size)) => {
                        i += used;
                        self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                    }
                    None => return Ok((data.len(), false)),
                },
                State::Data(left) => {
                    let take = left.min((data.len() - i) as u64) as usize;
                    body(&data[i..i + take]);
                    i += take;
                    self.state = if left == take as u64 { State::DataCr } else { State::Data(left - take as u64) };
                }
                State::DataCr | State::DataLf => {
                    self.state = match (self.state, data[i]) {
                        (State::DataCr, b'\r') => State::DataLf,
                        (_, b'\n') => State::Size,
                        _ => return Err(ChunkedError),
                    };
                    i += 1;
                }
                State::Trailers => match self.pending.parse(&data[i..], ChunkedError, trailers)? {
                    Some((used, ())) => {
                        self.state = State::Size;
                        return Ok((i + used, true));
                    }
                    None => return Ok((data.len(), false)),
                },
            }
        }
        Ok((i, false))
    }
}

/// Reads the chunk-size line at the start of `data`: `Ok(None)` while it is incomplete, else its
/// length and the size.
fn size_line(data: &[u8]) -> Result<Option<(usize, u64)>, ChunkedError> {
    // httparse reads a line with no digits as size 0; the grammar wants at least one.
    if data.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
        return Err(ChunkedError);
    }
    match data.iter().position(|&b| b == b'\n') {
        // httparse wants `\r\n`: a line ending in a bare `\n` is read with `\r\n` in its place.
        Some(lf) if !data[..lf].ends_with(b"\r") => {
            let line = [&data[..lf], b"\r\n"].concat();
            Ok(chunk_size(&line)?.map(|(_, size)| (lf + 1, size)))
        }
        _ => chunk_size(data),
    }
}

fn chunk_size(data: &[u8]) -> Result<Option<(usize, u64)>, ChunkedError> {
    match httparse::parse_chunk_size(data) {
        Ok(httparse::Status::Complete(line)) => Ok(Some(line)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::InvalidChunkSize) => Err(ChunkedError),
    }
}

/// Reads the trailer section at the start of `data`, up to and including the empty line that
/// ends the body: `Ok(None)` while it is incomplete, else its length.
fn trailers(data: &[u8]) -> Result<Option<(usize, ())>, ChunkedError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    match httparse::parse_headers(data, &mut fields) {
        Ok(httparse::Status::Complete((len, _))) => Ok(Some((len, ()))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(ChunkedError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(parts: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut c = Chunked::new();
        let mut out = Vec::new();
        let mut used = 0;
        for part in parts {
            let (n, done) = c.feed(part, |b| out.extend_from_slice(b))?;
            used += n;
            if done {
                return Ok((out, used, true));
            }
        }
        Ok((out, used, false))
    }

    #[test]
    fn decodes_chunks_and_stops_at_the_end() {
        let body = b"5\r\nhello\r\n1;name=value\r\n!\r\n0\r\n\r\nNEXT";
        assert_eq!(decode(&[body]).unwrap(), (b"hello!".to_vec(), body.len() - 4, true));
        for split in 1..body.len() {
            let (out, used, done) = decode(&[&body[..split], &body[split..]]).unwrap();
            assert_eq!((out.as_slice(), used, done), (b"hello!".as_slice(), body.len() - 4, true), "split {split}");
        }
    }

    #[test]
    fn skips_trailers_and_accepts_bare_newlines() {
        let body = b"A\nabcdefghij\n0\nTrailer: x\r\nOther: y\n\n";
        assert_eq!(decode(&[body]).unwrap(), (b"abcdefghij".to_vec(), body.len(), true));
    }

    #[test]
    fn reads_lines_split_across_reads() {
        let body = b"A;x=y\nabcdefghij\r\n0\nTrailer: x\r\nOther: y\n\nNEXT";
        for split in 1..body.len() {
            let (out, used, done) = decode(&[&body[..split], &body[split..]]).unwrap();
            assert_eq!((out.as_slice(), used, done), (b"abcdefghij".as_slice(), body.len() - 4, true), "split {split}");
        }
    }

    #[test]
    fn waits_for_more_input() {
        assert_eq!(decode(&[b"5\r\nhel"]).unwrap(), (b"hel".to_vec(), 6, false));
        assert_eq!(decode(&[b"0\r\n"]).unwrap(), (Vec::new(), 3, false));
    }

    #[test]
    fn refuses_broken_framing() {
        for bad in [&b"\r\n"[..], b"g\r\n", b"5\r\nhelloX", b"5\rX", b"1234567890abcdef0\r\n", b";\r\n"] {
            assert_eq!(decode(&[bad]), Err(ChunkedError), "{}", String::from_utf8_lossy(bad));
        }
    }
}

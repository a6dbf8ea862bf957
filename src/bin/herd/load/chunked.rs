//! A resumable decoder for `Transfer-Encoding: chunked` bodies.
//!
//! It exists only to find where a chunked body ends (so a keep-alive connection can be reused)
//! and to hand the decoded bytes to a callback; it keeps no data itself. Chunk extensions and
//! trailers are skipped. Bare `\n` line ends are tolerated, as most clients do.

/// Decoder state: where in the chunk framing the next byte falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` counts them to refuse sizes over 60 bits.
    Size {
        size: u64,
        digits: u8,
    },
    /// Skipping `;extension` up to the end of the size line.
    Extension {
        size: u64,
    },
    /// Saw `\r` after the size line; `\n` must follow.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: `\r\n` must follow.
    DataCr,
    DataLf,
    /// At the start of a trailer line (after the last, zero-size chunk).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw `\r` at the start of a trailer line: this is the final blank line.
    EndLf,
}

/// The chunk framing is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedError;

/// A chunked-body decoder; feed it bytes until it reports the end.
#[derive(Clone, Copy, Debug)]
pub struct Chunked {
    state: State,
}

impl Chunked {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Chunked { state: State::Size { size: 0, digits: 0 } }
    }

    /// Decodes from `data`, passing chunk data to `body`. Returns how many bytes were used and
    /// whether the body ended; when it did, the bytes after `used` belong to the next response.
    pub fn feed(&mut self, data: &[u8], mut body: impl FnMut(&[u8])) -> Result<(usize, bool), ChunkedError> {
        let mut i = 0;
        while i < data.len() {
            if let State::Data(left) = self.state {
                let take = left.min((data.len() - i) as u64) as usize;
                body(&data[i..i + take]);
                i += take;
                self.state = if left == take as u64 { State::DataCr } else { State::Data(left - take as u64) };
                continue;
            }
            let b = data[i];
            i += 1;
            self.state =
                match (self.state, b) {
                    (State::Size { size, digits }, _) if b.is_ascii_hexdigit() => {
                        if digits == 15 {
                            return Err(ChunkedError);
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        State::Size { size: size << 4 | u64::from(d), digits: digits + 1 }
                    }
                    (State::Size { digits: 0, .. }, _) => return Err(ChunkedError),
                    (State::Size { size, .. }, b';' | b' ' | b'\t') => State::Extension { size },
                    (State::Size { size, .. } | State::Extension { size }, b'\r') => State::SizeLf { size },
                    (State::Size { size, .. } | State::Extension { size } | State::SizeLf { size }, b'\n') => {
                        if size == 0 { State::TrailerStart } else { State::Data(size) }
                    }
                    (State::Extension { size }, _) => State::Extension { size },
                    (State::DataCr, b'\r') => State::DataLf,
                    (State::DataCr | State::DataLf, b'\n') => State::Size { size: 0, digits: 0 },
                    (State::TrailerStart, b'\r') => State::EndLf,
                    (State::TrailerStart | State::EndLf, b'\n') => {
                        self.state = State::Size { size: 0, digits: 0 };
                        return Ok((i, true));
                    }
                    (State::TrailerLine, b'\n') => State::TrailerStart,
                    (State::TrailerStart | State::TrailerLine, _) => State::TrailerLine,
                    _ => return Err(ChunkedError),
                };
        }
        Ok((i, false))
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

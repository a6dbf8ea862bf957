//! Upgrading the primary in place (SIGUSR2): the primary executes the binary now at its own
//! path, keeping its pid, its listeners, its workers with their channels, and its counters.
//!
//! The sequence, from the old image's side (`primary/upgrade.rs`):
//!
//! 1. **The hand-over check.** The primary forks a child that executes the new binary with
//!    `HERD_UPGRADE_CHECK` set. A program that calls [`answer_check`] first thing in `main`
//!    writes back the format of the hand-over it reads ([`FORMAT`]) and exits. A binary that is
//!    missing, does not start, crashes, says nothing within 5 s or speaks another format fails
//!    the check: the old primary keeps running and says why (an [`crate::Event::Warning`]).
//! 2. **The state** — settings, listeners, workers, lanes, queued connections, counters memfd
//!    — is written, as text lines naming descriptor numbers, into a memfd.
//! 3. Every descriptor the state names loses its close-on-exec flag, `HERD_UPGRADE_FD` names
//!    the memfd, and the primary calls `execve` on its own path with its own arguments. The
//!    pid stays; descriptor numbers stay; children stay children. If `execve` fails, the flags
//!    come back and the old image carries on.
//!
//! The new image's `main` runs from the start; instead of binding, it calls
//! [`crate::Primary::resume`] (or `resume_program`), which finds `HERD_UPGRADE_FD`, reads the
//! state and goes on supervising the same workers. A reload after that forks (or executes) the
//! new code.

use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The hand-over format this build writes and reads.
pub const FORMAT: u32 = 1;

/// The variable that names the hand-over memfd in the new image.
pub(crate) const UPGRADE_FD: &str = "HERD_UPGRADE_FD";
/// The variable that asks a binary to answer the hand-over check, on this descriptor.
pub(crate) const UPGRADE_CHECK: &str = "HERD_UPGRADE_CHECK";

/// Answers the hand-over check if this process was started to answer it: writes
/// `herd-upgrade FORMAT` to the descriptor in `HERD_UPGRADE_CHECK` and exits with 0. Returns
/// at once otherwise. Call it first thing in `main` in a program whose primary upgrades in
/// place ([`crate::Builder::upgrade_on_sigusr2`]).
pub fn answer_check() {
    let Some(fd) = std::env::var(UPGRADE_CHECK).ok().and_then(|v| v.parse::<RawFd>().ok()) else { return };
    if let Ok(fd) = crate::sys::exec::inherit_fd(fd, UPGRADE_CHECK) {
        let _ = rustix::io::write(&fd, format!("herd-upgrade {FORMAT}\n").as_bytes());
    }
    std::process::exit(0);
}

/// Whether this process is the new image of an upgrade, with a state to resume.
pub fn pending() -> bool {
    std::env::var_os(UPGRADE_FD).is_some()
}

/// What the check child answered, checked.
pub(crate) fn check_answer(answer: &str) -> Result<(), String> {
    match answer.trim().strip_prefix("herd-upgrade ").map(str::parse::<u32>) {
        Some(Ok(FORMAT)) => Ok(()),
        Some(Ok(other)) => Err(format!("it reads hand-over format {other}, this primary writes {FORMAT}")),
        _ => Err(format!("it did not answer the hand-over check (it said {answer:?})")),
    }
}

/// The state being written: lines of `kind key=value...`, and the descriptors they name.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    text: String,
    fds: Vec<RawFd>,
}

impl Writer {
    pub(crate) fn new() -> Writer {
        let mut w = Writer::default();
        let _ = writeln!(w.text, "herd-upgrade {FORMAT}");
        w
    }

    /// Starts a line of `kind`.
    pub(crate) fn line(&mut self, kind: &str) -> &mut Writer {
        if !self.text.ends_with('\n') {
            self.text.push('\n');
        }
        self.text.push_str(kind);
        self
    }

    /// Adds `key=value` (the value must not contain spaces: see [`Writer::text`]).
    pub(crate) fn kv(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Writer {
        let _ = write!(self.text, " {key}={value}");
        self
    }

    /// Adds `key=` and `value` hex-encoded (paths, addresses: anything with spaces).
    pub(crate) fn text(&mut self, key: &str, value: &str) -> &mut Writer {
        let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
        self.kv(key, if hex.is_empty() { "-".to_owned() } else { hex })
    }

    /// Adds `key=N`, `N` the number of `fd`, which the new image will find open.
    pub(crate) fn fd(&mut self, key: &str, fd: BorrowedFd<'_>) -> &mut Writer {
        self.fds.push(fd.as_raw_fd());
        self.kv(key, fd.as_raw_fd())
    }

    /// The text and the descriptors to keep across `execve`.
    pub(crate) fn finish(mut self) -> (String, Vec<RawFd>) {
        self.text.push_str("\nend\n");
        (self.text, self.fds)
    }
}

/// One line of the state.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) kind: String,
    fields: Vec<(String, String)>,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("hand-over state: {what}"))
}

impl Line {
    fn raw(&self, key: &str) -> io::Result<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| bad(format!("line {:?} has no {key}", self.kind)))
    }

    /// `key` parsed.
    pub(crate) fn get<T: std::str::FromStr>(&self, key: &str) -> io::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.raw(key)?;
        raw.parse().map_err(|e| bad(format!("{} {key}={raw}: {e}", self.kind)))
    }

    /// `key` parsed, or `None` for `-`.
    pub(crate) fn opt<T: std::str::FromStr>(&self, key: &str) -> io::Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        if self.raw(key)? == "-" { Ok(None) } else { self.get(key).map(Some) }
    }

    /// `key` as `0` or `1`.
    pub(crate) fn flag(&self, key: &str) -> io::Result<bool> {
        Ok(self.get::<u8>(key)? == 1)
    }

    /// A hex-encoded `key` (see [`Writer::text`]).
    pub(crate) fn text(&self, key: &str) -> io::Result<String> {
        let raw = self.raw(key)?;
        if raw == "-" {
            return Ok(String::new());
        }
        let bytes: Option<Vec<u8>> =
            (0..raw.len()).step_by(2).map(|i| raw.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
        bytes.and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| bad(format!("{} {key}: bad hex", self.kind)))
    }

    /// The descriptor `key` names, taken (owned from now on).
    pub(crate) fn fd(&self, key: &str) -> io::Result<OwnedFd> {
        let n: RawFd = self.get(key)?;
        crate::sys::exec::inherit_fd(n, &format!("hand-over {} {key}", self.kind))
    }

    /// The descriptor `key` names, or `None` for `-`.
    pub(crate) fn opt_fd(&self, key: &str) -> io::Result<Option<OwnedFd>> {
        if self.raw(key)? == "-" { Ok(None) } else { self.fd(key).map(Some) }
    }
}

/// Parses the state's text into lines, checking its format and its end.
pub(crate) fn parse(text: &str) -> io::Result<Vec<Line>> {
    let mut lines = text.lines();
    match lines.next().map(check_answer) {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(bad(e)),
        None => return Err(bad("empty".into())),
    }
    let mut out = Vec::new();
    for line in lines {
        if line == "end" {
            return Ok(out);
        }
        let mut words = line.split(' ');
        let kind = words.next().unwrap_or_default().to_owned();
        let fields = words
            .map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(format!("malformed line {line:?}")))?;
        out.push(Line { kind, fields });
    }
    Err(bad("truncated (no end line)".into()))
}

/// Reads the state the old image left: the memfd named by `HERD_UPGRADE_FD`, or `None` if
/// this process is not an upgrade's new image.
pub(crate) fn take_state() -> io::Result<Option<Vec<Line>>> {
    let Some(n) = std::env::var(UPGRADE_FD).ok() else { return Ok(None) };
    let n: RawFd = n.parse().map_err(|e| bad(format!("{UPGRADE_FD}={n}: {e}")))?;
    let fd = crate::sys::exec::inherit_fd(n, UPGRADE_FD)?;
    let mut text = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut offset = 0u64;
    loop {
        let got = rustix::io::pread(&fd, &mut buf, offset).map_err(|e| bad(format!("pread({UPGRADE_FD}={n}): {e}")))?;
        if got == 0 {
            break;
        }
        text.extend_from_slice(&buf[..got]);
        offset += got as u64;
    }
    let text = String::from_utf8(text).map_err(|_| bad("not UTF-8".into()))?;
    parse(&text).map(Some)
}

/// Writes `text` into a new memfd for the new image.
pub(crate) fn state_memfd(text: &str) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("herd-upgrade", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| crate::sys::context(crate::sys::from_errno(e), "memfd_create(herd-upgrade)"))?;
    let mut written = 0;
    while written < text.len() {
        written += rustix::io::write(&fd, &text.as_bytes()[written..])
            .map_err(|e| crate::sys::context(crate::sys::from_errno(e), "write(herd-upgrade memfd)"))?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_text_and_options() {
        let mut w = Writer::new();
        w.line("config").kv("workers", 4).text("listen", "unix:/tmp/a b").kv("heartbeat", "-");
        w.line("empty");
        let (text, fds) = w.finish();
        assert!(fds.is_empty());
        let lines = parse(&text).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].get::<usize>("workers").unwrap(), 4);
        assert_eq!(lines[0].text("listen").unwrap(), "unix:/tmp/a b");
        assert_eq!(lines[0].opt::<u64>("heartbeat").unwrap(), None);
        assert!(lines[0].get::<u64>("nothing").unwrap_err().to_string().contains("no nothing"));
        assert!(parse("herd-upgrade 1\nconfig a=1\n").unwrap_err().to_string().contains("truncated"));
        assert!(parse("herd-upgrade 9\nend\n").unwrap_err().to_string().contains("format 9"));
    }

    #[test]
    fn check_answers_name_the_format() {
        assert!(check_answer("herd-upgrade 1\n").is_ok());
        assert!(check_answer("herd-upgrade 2").unwrap_err().contains("format 2"));
        assert!(check_answer("").unwrap_err().contains("did not answer"));
    }
}

//! Where a cluster listens: a TCP address (IPv4 or IPv6) or a Unix-domain socket path.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// The address a cluster listens on.
///
/// Parsed from `127.0.0.1:8080`, `[::1]:8080`, `0.0.0.0:0` (port 0: the kernel picks a free port
/// and every worker gets the same one), or a Unix socket path — anything containing a `/`, or
/// prefixed with `unix:` (`unix:herd.sock`, `/run/herd.sock`, `./herd.sock`).
///
/// # Examples
/// ```
/// use herd::ListenAddr;
/// let tcp: ListenAddr = "[::1]:8080".parse().unwrap();
/// let unix: ListenAddr = "/tmp/herd.sock".parse().unwrap();
/// assert!(matches!(tcp, ListenAddr::Tcp(_)));
/// assert!(matches!(unix, ListenAddr::Unix(_)));
/// assert!("localhost".parse::<ListenAddr>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address, IPv4 or IPv6.
    Tcp(SocketAddr),
    /// A Unix-domain stream socket at this path.
    Unix(PathBuf),
}

/// Why a string is not a [`ListenAddr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrParseError {
    input: String,
}

impl fmt::Display for AddrParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid listen address {:?}: expected IP:PORT (127.0.0.1:8080, [::1]:8080) or a Unix socket path (/tmp/herd.sock, unix:herd.sock)",
            self.input
        )
    }
}

impl std::error::Error for AddrParseError {}

impl FromStr for ListenAddr {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AddrParseError { input: s.to_owned() };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if s.contains('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| err())
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_v4_v6_and_unix() {
        assert_eq!("127.0.0.1:0".parse(), Ok(ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())));
        assert_eq!("[::1]:80".parse(), Ok(ListenAddr::Tcp("[::1]:80".parse().unwrap())));
        assert_eq!("unix:h.sock".parse(), Ok(ListenAddr::Unix("h.sock".into())));
        assert_eq!("./h.sock".parse(), Ok(ListenAddr::Unix("./h.sock".into())));
    }

    #[test]
    fn rejects_bad_addresses_with_the_input_in_the_message() {
        for bad in ["", "localhost", "127.0.0.1", "127.0.0.1:99999", "::1:80", "unix:"] {
            let e = bad.parse::<ListenAddr>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}

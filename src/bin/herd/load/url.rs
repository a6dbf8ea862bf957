//! Target URLs, and the loopback-only rule.
//!
//! `herd load` is a tool for measuring a server on *this* machine, so it accepts only targets that
//! cannot leave it: an IPv4 address in `127.0.0.0/8`, the IPv6 loopback `::1`, the name
//! `localhost` (taken to mean `127.0.0.1`, without asking a resolver), or a Unix-domain socket
//! path. Every other host is refused before a single socket is opened, so a typo cannot turn the
//! load generator loose on another machine. No name resolution is ever done.
//!
//! Accepted forms:
//!
//! ```text
//! http://127.0.0.1:8080/          http://localhost/path?q=1
//! http://[::1]:8080/path          unix:/run/herd.sock
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address on the loopback interface.
    Tcp(SocketAddr),
    /// A Unix-domain stream socket at this filesystem path.
    Unix(PathBuf),
}

/// A parsed, loopback-checked target: where to connect and what to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The socket address to connect to.
    pub endpoint: Endpoint,
    /// The value sent in the `Host` header (`localhost` for Unix sockets).
    pub host: String,
    /// The request target: path plus query, always starting with `/`.
    pub path: String,
    /// The URL as given, for reports.
    pub url: String,
}

/// Why a URL was refused. Each variant renders as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlError {
    /// The scheme is not `http://` or `unix:`.
    Scheme(String),
    /// The host is well-formed but not a loopback address.
    NotLoopback(String),
    /// The host is neither an IP literal nor `localhost` (no resolver is used).
    Hostname(String),
    /// The port is missing its digits, zero or larger than 65535.
    Port(String),
    /// Something else is malformed.
    Malformed(&'static str),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme(s) => {
                write!(f, "unsupported URL scheme in {s:?}: use http://HOST[:PORT]/PATH or unix:PATH")
            }
            UrlError::NotLoopback(h) => {
                write!(f, "refusing non-loopback host {h}: only 127.0.0.0/8, [::1], localhost or unix: are allowed")
            }
            UrlError::Hostname(h) => write!(
                f,
                "refusing host name {h:?}: only IP literals in 127.0.0.0/8, [::1] and localhost are allowed (no DNS)"
            ),
            UrlError::Port(p) => write!(f, "invalid port {p:?}: expected 1..65535"),
            UrlError::Malformed(why) => write!(f, "malformed URL: {why}"),
        }
    }
}

impl std::error::Error for UrlError {}

impl Target {
    /// Parses `http://HOST[:PORT][/PATH]` or `unix:PATH`, refusing non-loopback hosts.
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        if let Some(path) = url.strip_prefix("unix:") {
            return parse_unix(url, path);
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(UrlError::Scheme(url.to_owned()));
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // A fragment never goes on the wire.
        let path = path.split('#').next().unwrap_or("");
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UrlError::Malformed("the path contains spaces or control characters"));
        }
        if authority.contains('@') {
            return Err(UrlError::Malformed("user information (user@host) is not supported"));
        }
        let (ip, port) = parse_authority(authority)?;
        if !ip.is_loopback() {
            return Err(UrlError::NotLoopback(ip.to_string()));
        }
        Ok(Target {
            endpoint: Endpoint::Tcp(SocketAddr::new(ip, port)),
            host: authority.to_owned(),
            path,
            url: url.to_owned(),
        })
    }
}

fn parse_unix(url: &str, path: &str) -> Result<Target, UrlError> {
    if path.is_empty() {
        return Err(UrlError::Malformed("unix: needs a socket path, as in unix:/run/herd.sock"));
    }
    // sockaddr_un.sun_path holds 108 bytes; the kernel needs room for the path, NUL optional.
    if path.len() > 108 || path.contains('\0') {
        return Err(UrlError::Malformed("unix socket path is longer than 108 bytes or contains NUL"));
    }
    Ok(Target {
        endpoint: Endpoint::Unix(PathBuf::from(path)),
        host: "localhost".to_owned(),
        path: "/".to_owned(),
        url: url.to_owned(),
    })
}

/// Splits `HOST[:PORT]` (with `[v6]` brackets) into an IP and a port, defaulting to port 80.
fn parse_authority(authority: &str) -> Result<(IpAddr, u16), UrlError> {
    if authority.is_empty() {
        return Err(UrlError::Malformed("missing host"));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(UrlError::Malformed("unterminated [IPv6] literal"));
        };
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UrlError::Malformed("junk after ]"))?),
        };
        let ip = v6.parse::<std::net::Ipv6Addr>().map_err(|_| UrlError::Malformed("invalid IPv6 literal"))?;
        (IpAddr::V6(ip), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
            IpAddr::V4(v4)
        } else {
            return Err(UrlError::Hostname(host.to_owned()));
        };
        (ip, port)
    };
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(UrlError::Port(p.to_owned())),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(url: &str) -> (SocketAddr, String, String) {
        let t = Target::parse(url).unwrap();
        match t.endpoint {
            Endpoint::Tcp(addr) => (addr, t.host, t.path),
            Endpoint::Unix(_) => panic!("expected tcp"),
        }
    }

    #[test]
    fn accepts_ipv4_loopback_range() {
        let (addr, host, path) = tcp("http://127.0.0.1:8080/");
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((host.as_str(), path.as_str()), ("127.0.0.1:8080", "/"));
        assert_eq!(tcp("http://127.9.8.7").0, "127.9.8.7:80".parse().unwrap());
        assert_eq!(tcp("http://127.0.0.1:1/a/b?c=d#frag").2, "/a/b?c=d");
        assert_eq!(tcp("http://127.0.0.1?x").2, "/?x");
    }

    #[test]
    fn accepts_ipv6_loopback_and_localhost() {
        let (addr, host, path) = tcp("http://[::1]:8080/path");
        assert_eq!(addr, "[::1]:8080".parse().unwrap());
        assert_eq!((host.as_str(), path.as_str()), ("[::1]:8080", "/path"));
        assert_eq!(tcp("http://[::1]").0.port(), 80);
        assert_eq!(tcp("http://localhost:9000/").0, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(tcp("http://LocalHost/").0, "127.0.0.1:80".parse().unwrap());
    }

    #[test]
    fn accepts_unix_paths() {
        let t = Target::parse("unix:/tmp/herd.sock").unwrap();
        assert_eq!(t.endpoint, Endpoint::Unix(PathBuf::from("/tmp/herd.sock")));
        assert_eq!((t.host.as_str(), t.path.as_str()), ("localhost", "/"));
        assert!(Target::parse("unix:").is_err());
        assert!(Target::parse(&format!("unix:/{}", "x".repeat(200))).is_err());
    }

    #[test]
    fn refuses_non_loopback_hosts() {
        for url in ["http://10.0.0.1/", "http://192.168.1.1:80/", "http://8.8.8.8/", "http://0.0.0.0/", "http://[::]/"]
        {
            assert!(matches!(Target::parse(url), Err(UrlError::NotLoopback(_))), "{url}");
        }
        assert!(matches!(Target::parse("http://[2001:db8::1]:80/"), Err(UrlError::NotLoopback(_))));
        // IPv4-mapped loopback is not in the accepted list either.
        assert!(matches!(Target::parse("http://[::ffff:127.0.0.1]/"), Err(UrlError::NotLoopback(_))));
        // Names other than localhost are never resolved.
        assert!(matches!(Target::parse("http://example.com/"), Err(UrlError::Hostname(_))));
        assert!(matches!(Target::parse("http://127.0.0.1.nip.io/"), Err(UrlError::Hostname(_))));
    }

    #[test]
    fn refuses_malformed_urls() {
        assert!(matches!(Target::parse("https://127.0.0.1/"), Err(UrlError::Scheme(_))));
        assert!(matches!(Target::parse("127.0.0.1:80"), Err(UrlError::Scheme(_))));
        assert!(matches!(Target::parse("http://127.0.0.1:0/"), Err(UrlError::Port(_))));
        assert!(matches!(Target::parse("http://127.0.0.1:65536/"), Err(UrlError::Port(_))));
        assert!(matches!(Target::parse("http://127.0.0.1:+80/"), Err(UrlError::Port(_))));
        assert!(matches!(Target::parse("http://127.0.0.1:/"), Err(UrlError::Port(_))));
        assert!(matches!(Target::parse("http:///"), Err(UrlError::Malformed(_))));
        assert!(matches!(Target::parse("http://[::1/"), Err(UrlError::Malformed(_))));
        assert!(matches!(Target::parse("http://u@127.0.0.1/"), Err(UrlError::Malformed(_))));
        assert!(matches!(Target::parse("http://127.0.0.1/a b"), Err(UrlError::Malformed(_))));
    }

    #[test]
    fn errors_are_one_line() {
        for url in ["ftp://x", "http://10.0.0.1/", "http://example.com/", "http://127.0.0.1:0/", "http:///"] {
            let msg = Target::parse(url).unwrap_err().to_string();
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
}

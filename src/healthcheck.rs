//! The client side of the admin listener's probes, for `mono-proxy healthcheck`: one blocking
//! HTTP/1.1 GET, its status code, nothing else (no runtime, no TLS, no dependency).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// GETs `path` from the admin listener at `addr` and returns the status code.
///
/// A wildcard address (`0.0.0.0`, `[::]`, as in the container image) is probed on loopback.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<u16> {
    if addr.port() == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "admin_listen has port 0 (chosen at start): set MONO_PROXY_ADMIN_LISTEN to a fixed port",
        ));
    }
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    };
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: mono-proxy-healthcheck\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all we need; read until it is complete (bounded).
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    status_code(&head).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the admin listener did not answer HTTP",
        )
    })
}

/// The code of an `HTTP/1.x NNN …` status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let mut parts = line.split(|b| *b == b' ');
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(parts.next()?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn nothing_listening_is_an_error_and_port_zero_says_what_to_set() {
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        assert!(probe(free, "/healthz", Duration::from_secs(1)).is_err());
        let e = probe(
            "0.0.0.0:0".parse().unwrap(),
            "/healthz",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("MONO_PROXY_ADMIN_LISTEN"));
    }
}

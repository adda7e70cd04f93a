//! What listens at an address, found with one raw TCP connection before any
//! gRPC call, so that the common mistakes fail at once with a plain answer
//! instead of an HTTP/2 protocol error after the whole `--timeout`.
//!
//! The probe connects, sends one `GET / HTTP/1.1` request and reads the
//! first bytes that come back:
//!
//! * a gRPC (HTTP/2) server sends its `SETTINGS` frame as soon as the
//!   connection opens, whatever the client sends (the request that follows
//!   is an invalid preface to it and ends the connection, nothing more);
//! * a TLS server answers the plaintext request with an alert record;
//! * an HTTP/1 server (memstore's HTTP API) answers `HTTP/1.1 ...`.

use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What answered at the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A plaintext HTTP/2 server: a node's raft (gRPC) port without TLS.
    Grpc,
    /// A TLS server (a node's raft port with TLS, or anything else on TLS).
    Tls,
    /// An HTTP/1 server, such as memstore's HTTP API.
    Http1,
    /// It closed the connection without a byte (a server over its
    /// connection cap, or one that is stopping).
    Closed,
    /// It accepted the connection but sent nothing back in time.
    Silent,
    /// Something else; its first bytes.
    Other(Vec<u8>),
}

/// Why no connection could be made.
#[derive(Debug)]
pub enum NoConnection {
    /// Nothing listens there (the connection was refused).
    Refused,
    /// The connection was not established within the time allowed.
    TimedOut,
    /// Any other failure (an unknown host, no route, ...).
    Io(io::Error),
}

/// An HTTP/2 frame header whose type is `SETTINGS` (0x4) on stream 0: what
/// an HTTP/2 server sends first.
fn is_h2_settings(b: &[u8]) -> bool {
    b.len() >= 9 && b[3] == 0x4 && b[5..9] == [0, 0, 0, 0]
}

/// A TLS record header of an alert (0x15) or handshake (0x16), version 3.x.
fn is_tls_record(b: &[u8]) -> bool {
    b.len() >= 2 && (b[0] == 0x15 || b[0] == 0x16) && b[1] == 0x03
}

/// Classifies the first bytes a server sent back.
pub fn classify(first: &[u8]) -> Found {
    if first.is_empty() {
        Found::Closed
    } else if first.starts_with(b"HTTP/1.") {
        Found::Http1
    } else if is_h2_settings(first) {
        Found::Grpc
    } else if is_tls_record(first) {
        Found::Tls
    } else {
        Found::Other(first.to_vec())
    }
}

/// Connects to `addr` (within `timeout`), sends one HTTP/1.1 request and
/// classifies the first bytes that come back (within `timeout` again).
pub async fn probe(addr: &str, timeout: Duration) -> Result<Found, NoConnection> {
    let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(NoConnection::TimedOut),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(NoConnection::Refused)
        }
        Ok(Err(e)) => return Err(NoConnection::Io(e)),
        Ok(Ok(s)) => s,
    };
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // A server that already closed may refuse the write; what it sent
    // before still tells what it is.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut buf = [0u8; 64];
    let mut got = 0;
    let read = async {
        while got < 9 {
            match stream.read(&mut buf[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            // An HTTP/1 status line or a TLS alert is recognisable at once.
            if buf[..got].starts_with(b"HTTP/1.") || is_tls_record(&buf[..got]) {
                break;
            }
        }
    };
    if tokio::time::timeout(timeout, read).await.is_err() && got == 0 {
        return Ok(Found::Silent);
    }
    Ok(classify(&buf[..got]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_are_classified() {
        assert_eq!(classify(b""), Found::Closed);
        assert_eq!(classify(b"HTTP/1.1 404 Not Found\r\n"), Found::Http1);
        // hyper's SETTINGS frame: length 18, type 4, flags 0, stream 0.
        let settings = [0, 0, 0x12, 4, 0, 0, 0, 0, 0, 0, 4];
        assert_eq!(classify(&settings), Found::Grpc);
        // rustls' alert to a plaintext request: alert, TLS 1.2, 2 bytes.
        assert_eq!(classify(&[0x15, 3, 3, 0, 2, 2, 0x32]), Found::Tls);
        assert_eq!(classify(b"SSH-2.0-x"), Found::Other(b"SSH-2.0-x".to_vec()));
    }
}

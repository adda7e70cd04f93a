//! The HTTPS side of the test client: rustls (blocking) over a TCP stream,
//! on the same rustls stack and provider as the server.

use super::{parse_response, request_bytes, Resp};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A client that trusts `ca_pem` and, with `identity` (certificate and key
/// PEM), presents it as its client certificate.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate PEM");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
    };
    Arc::new(config)
}

/// A TLS stream to `addr` for server name `localhost` (the handshake runs
/// on the first read or write).
pub fn connect(
    addr: &str,
    tls: &Arc<ClientConfig>,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let conn = ClientConnection::new(tls.clone(), name).map_err(std::io::Error::other)?;
    Ok(StreamOwned::new(conn, tcp))
}

/// One HTTPS request with `Connection: close` and extra header lines.
pub fn request_with(
    addr: &str,
    tls: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[&str],
) -> std::io::Result<Resp> {
    let mut s = connect(addr, tls)?;
    s.write_all(&request_bytes(addr, method, path, body, headers))?;
    s.flush()?;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        // A peer that closes without close_notify: what came is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_response(&out)
}

/// One HTTPS request with `Connection: close`.
pub fn request(
    addr: &str,
    tls: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Resp> {
    request_with(addr, tls, method, path, body, &[])
}

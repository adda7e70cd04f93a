//! TLS material from PEM files, and rustls server configurations for an
//! application's other servers (memstore's HTTPS API), on the same rustls
//! stack and crypto provider (ring) tonic uses for gRPC.

use crate::TlsConfig;
use raftify_core::{Error, Result};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// One or more certificates (a chain, leaf first).
    Certificates,
    /// A private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
    /// One or more CA certificates (trust roots).
    CaCertificates,
}

impl fmt::Display for PemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemKind::Certificates => "TLS certificate",
            PemKind::PrivateKey => "TLS private key",
            PemKind::CaCertificates => "TLS CA certificate",
        })
    }
}

/// Reads the PEM file at `path` and checks it holds `kind`, so a bad file
/// is reported at startup, not at the first connection. The error
/// ([`Error::InvalidConfig`]) names the file and what is wrong with it.
pub fn load_pem(path: &Path, kind: PemKind) -> Result<String> {
    let bad = |why: String| Error::InvalidConfig(format!("{kind} {}: {why}", path.display()));
    let pem = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    check_pem(&pem, kind).map_err(bad)?;
    Ok(pem)
}

/// Whether `pem` holds `kind`; the reason when not.
fn check_pem(pem: &str, kind: PemKind) -> std::result::Result<(), String> {
    match kind {
        PemKind::Certificates | PemKind::CaCertificates => certificates(pem).map(|_| ()),
        PemKind::PrivateKey => private_key(pem).map(|_| ()),
    }
}

fn certificates(pem: &str) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (BEGIN CERTIFICATE) in it".into());
    }
    Ok(certs)
}

fn private_key(pem: &str) -> std::result::Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".to_string()
        }
        e => format!("not valid PEM: {e}"),
    })
}

impl TlsConfig {
    /// A rustls server configuration from this material, for a server other
    /// than gRPC (an HTTPS API): `cert_pem` and `key_pem` are required;
    /// with `ca_pem`, every client must present a certificate signed by
    /// that CA (mutual TLS). TLS 1.2 and 1.3, the ring provider (as tonic),
    /// and `alpn` as the offered application protocols (e.g.
    /// `[b"http/1.1"]`). Errors are [`Error::InvalidConfig`].
    pub fn rustls_server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
        let bad = |m: String| Error::InvalidConfig(m);
        let (Some(cert), Some(key)) = (&self.cert_pem, &self.key_pem) else {
            return Err(bad("a TLS server needs cert_pem and key_pem".into()));
        };
        let chain = certificates(cert).map_err(|e| bad(format!("tls cert_pem: {e}")))?;
        let key = private_key(key).map_err(|e| bad(format!("tls key_pem: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("tls: {e}")))?;
        let builder = match &self.ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certificates(ca).map_err(|e| bad(format!("tls ca_pem: {e}")))? {
                    roots
                        .add(c)
                        .map_err(|e| bad(format!("tls ca_pem: not a usable CA: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| bad(format!("tls ca_pem: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| bad(format!("tls cert_pem/key_pem: {e}")))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let missing = dir.join("missing.pem");
        let e = load_pem(&missing, PemKind::Certificates).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        assert!(e.to_string().contains("cannot read"), "{e}");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a pem").unwrap();
        for kind in [PemKind::Certificates, PemKind::PrivateKey] {
            let e = load_pem(&junk, kind).unwrap_err().to_string();
            assert!(e.contains("junk.pem") && e.contains("no PEM"), "{e}");
        }
        let broken = dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let e = load_pem(&broken, PemKind::CaCertificates)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broken.pem") && e.contains("not valid PEM"),
            "{e}"
        );
        assert!(TlsConfig::default().rustls_server_config(&[]).is_err());
    }
}

//! Test certificates (feature `testkit`): a throwaway PKI generated with
//! rcgen, for tests of TLS and mutual TLS on gRPC and on applications'
//! own servers.
#![allow(clippy::expect_used)]

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// PEM material of a throwaway PKI. The node certificate is valid for
/// `localhost` and `127.0.0.1`, as server and as client.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signs `node_cert`.
    pub ca: String,
    /// A certificate signed by `ca`.
    pub node_cert: String,
    /// The private key of `node_cert`.
    pub node_key: String,
    /// An unrelated CA.
    pub other_ca: String,
    /// A certificate (same names and uses as `node_cert`) signed by
    /// `other_ca`: a stranger to `ca`.
    pub stranger_cert: String,
    /// The private key of `stranger_cert`.
    pub stranger_key: String,
}

impl TestPki {
    /// Generates a fresh PKI. Panics if rcgen fails (test code only).
    pub fn generate() -> TestPki {
        let (ca, ca_key) = make_ca("raftify test CA");
        let (other_ca, other_key) = make_ca("some other CA");
        let (node_cert, node_key) = make_leaf(&ca, &ca_key);
        let (stranger_cert, stranger_key) = make_leaf(&other_ca, &other_key);
        TestPki {
            ca: ca.pem(),
            node_cert,
            node_key,
            other_ca: other_ca.pem(),
            stranger_cert,
            stranger_key,
        }
    }
}

fn make_ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("generate a CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key).expect("self-sign the CA");
    (cert, key)
}

fn make_leaf(ca: &Certificate, ca_key: &KeyPair) -> (String, String) {
    let key = KeyPair::generate().expect("generate a key");
    let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("certificate params");
    p.distinguished_name
        .push(DnType::CommonName, "raftify node");
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, ca, ca_key).expect("sign the certificate");
    (cert.pem(), key.serialize_pem())
}

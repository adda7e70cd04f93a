//! Test certificates (feature `testkit`): a throwaway PKI generated with
//! rcgen, for tests of TLS and mutual TLS on gRPC and on applications'
//! own servers.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A throwaway certificate authority that issues server-and-client
/// certificates.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<TestCa, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key)?;
        Ok(TestCa { cert, key })
    }

    /// The CA's certificate (PEM).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), valid as
    /// server and as client: (certificate PEM, private key PEM).
    pub fn issue(&self, names: &[&str]) -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name
            .push(DnType::CommonName, "raftify node");
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

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
    /// Generates a fresh PKI.
    pub fn generate() -> Result<TestPki, rcgen::Error> {
        let ca = TestCa::new("raftify test CA")?;
        let other = TestCa::new("some other CA")?;
        let names = ["localhost", "127.0.0.1"];
        let (node_cert, node_key) = ca.issue(&names)?;
        let (stranger_cert, stranger_key) = other.issue(&names)?;
        Ok(TestPki {
            ca: ca.pem(),
            node_cert,
            node_key,
            other_ca: other.pem(),
            stranger_cert,
            stranger_key,
        })
    }
}

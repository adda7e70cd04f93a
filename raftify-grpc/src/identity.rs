//! Binding raft senders to their mutual-TLS identities.
//!
//! A peer authenticated by a client certificate is trusted only as the
//! node(s) its certificate names: a DNS subject alternative name
//! `raftify-node-<id>` (e.g. `raftify-node-3`) makes the holder node 3, and
//! every raft message or snapshot it sends must then carry `from = 3`. A
//! certificate without such a name (or a connection without a client
//! certificate: token-only clusters) carries no node identity, and its
//! messages are checked by the token and the cluster identity alone.

use std::collections::BTreeSet;
use tonic::{Request, Status};

/// The prefix of the DNS names that bind a certificate to a node id.
pub const NODE_NAME_PREFIX: &str = "raftify-node-";

/// The node ids a peer's certificate names, when it names any.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerIdentity {
    ids: BTreeSet<u64>,
}

impl PeerIdentity {
    /// The identity of the peer that sent `req` (from its TLS client
    /// certificate, if any).
    pub(crate) fn of<T>(req: &Request<T>) -> PeerIdentity {
        let Some(chain) = req.peer_certs() else {
            return PeerIdentity::default();
        };
        let Some(leaf) = chain.first() else {
            return PeerIdentity::default();
        };
        PeerIdentity {
            ids: node_ids(leaf.as_ref()),
        }
    }

    /// Refuses a message whose raft sender is not a node this peer's
    /// certificate names.
    pub(crate) fn check(&self, from: u64) -> Result<(), Status> {
        if self.ids.is_empty() || self.ids.contains(&from) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "raft message from node {from} over a connection whose certificate names node(s) \
             {:?} ({NODE_NAME_PREFIX}<id>)",
            self.ids
        )))
    }
}

/// The node ids named (`raftify-node-<id>`) by a DER certificate's DNS
/// subject alternative names; empty when it names none or does not parse.
pub(crate) fn node_ids(der: &[u8]) -> BTreeSet<u64> {
    let der = tonic::transport::CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return BTreeSet::new();
    };
    cert.valid_dns_names()
        .filter_map(|name| name.strip_prefix(NODE_NAME_PREFIX)?.parse::<u64>().ok())
        .filter(|id| *id != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Vec<u8> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(names).expect("params");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn node_names_bind_ids_and_other_names_do_not() {
        let c = cert(&["raftify-node-3", "localhost", "raftify-node-x"]);
        assert_eq!(node_ids(&c), BTreeSet::from([3]));
        let id = PeerIdentity { ids: node_ids(&c) };
        assert!(id.check(3).is_ok());
        assert_eq!(
            id.check(2).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let anonymous = PeerIdentity {
            ids: node_ids(&cert(&["localhost"])),
        };
        assert!(anonymous.check(2).is_ok());
        assert!(node_ids(b"garbage").is_empty());
    }
}

//! Configuration shared by [`GrpcTransport`](crate::GrpcTransport),
//! [`RaftGrpcServer`](crate::RaftGrpcServer) and
//! [`RaftClient`](crate::RaftClient).

use raftify_core::retry::RetryPolicy;
use raftify_core::{Error, Result};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// TLS material, PEM encoded.
///
/// * A server needs `cert_pem` and `key_pem`; with `ca_pem` it also demands
///   a client certificate signed by that CA (mutual TLS).
/// * A client (a node's transport or a [`RaftClient`](crate::RaftClient))
///   verifies servers against `ca_pem` (required: no system roots are
///   bundled) and the server name `domain` (default: the host of the
///   address it dials); with `cert_pem` and `key_pem` it presents them as
///   its client certificate.
///
/// A node usually uses the same `TlsConfig` for its server and its
/// transport: one certificate valid as server and client, one CA.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// Certificate chain presented by this side.
    pub cert_pem: Option<String>,
    /// Private key of `cert_pem`.
    pub key_pem: Option<String>,
    /// CA that signs the other side's certificates.
    pub ca_pem: Option<String>,
    /// Server name to expect in server certificates (client side); default
    /// the host part of the address dialed.
    pub domain: Option<String>,
}

impl TlsConfig {
    fn identity(&self) -> Option<Identity> {
        match (&self.cert_pem, &self.key_pem) {
            (Some(c), Some(k)) => Some(Identity::from_pem(c, k)),
            _ => None,
        }
    }

    /// The tonic server TLS configuration.
    pub(crate) fn server_config(&self) -> Result<ServerTlsConfig> {
        let identity = self.identity().ok_or_else(|| {
            Error::InvalidConfig("a TLS server needs cert_pem and key_pem".into())
        })?;
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.ca_pem {
            tls = tls
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        Ok(tls)
    }

    /// The tonic client TLS configuration for dialing `addr`.
    pub(crate) fn client_config(&self, addr: &str) -> Result<ClientTlsConfig> {
        let ca = self.ca_pem.as_ref().ok_or_else(|| {
            Error::InvalidConfig("a TLS client needs ca_pem to verify servers".into())
        })?;
        let domain = match &self.domain {
            Some(d) => d.clone(),
            None => host_of(addr).to_string(),
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(domain);
        if let Some(identity) = self.identity() {
            tls = tls.identity(identity);
        }
        Ok(tls)
    }
}

/// The host part of `host:port` (brackets of IPv6 literals removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Settings of the gRPC layer. `GrpcConfig::default()` suits a LAN.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// TLS for every connection (None: plaintext HTTP/2).
    pub tls: Option<TlsConfig>,
    /// The client token: sent by [`RaftClient`](crate::RaftClient) with
    /// every RPC (`authorization: Bearer <token>`), and required by servers
    /// on every call of the client service. None disables the check.
    pub auth_token: Option<String>,
    /// The peer token: sent by the transport to other members, and required
    /// by servers on every call of the peer service (raft messages,
    /// snapshots, forwarded requests). A call that presents the client
    /// token there is refused, and the peer token is refused on the client
    /// service. None: peers use `auth_token` (one shared secret for both).
    pub peer_token: Option<String>,
    /// Further client tokens the servers accept (never sent), for rotating
    /// the client token without a window of refusals: every node first
    /// accepts the new token besides the current one, clients move to it,
    /// then the nodes make it their `auth_token` and accept the old one
    /// until every node has; see docs/SECURITY.md. Needs `auth_token`.
    /// Without a `peer_token` peers share the client token, and the peer
    /// service accepts these too.
    pub accept_tokens: Vec<String>,
    /// Further peer tokens the peer service accepts (never sent), for
    /// rotating the peer token (or moving to one) without a member being
    /// cut off while the others still present the old one. While a
    /// `peer_token` is set, each must differ from every client token but
    /// `auth_token`, which it may name while a cluster that shared its
    /// client token moves to a peer token (docs/SECURITY.md).
    pub accept_peer_tokens: Vec<String>,
    /// Time allowed to establish a connection. Default 2 s.
    pub connect_timeout: Duration,
    /// Timeout of one batch of raft messages. Default 5 s.
    pub message_timeout: Duration,
    /// Timeout of one cluster request or client RPC. Default 30 s (longer
    /// than the node's own proposal and membership timeouts).
    pub request_timeout: Duration,
    /// Timeout of streaming one snapshot. Default 5 min.
    pub snapshot_timeout: Duration,
    /// Size of one snapshot chunk. Default 1 MiB.
    pub snapshot_chunk_size: usize,
    /// Largest gRPC message accepted or sent. Default 64 MiB.
    pub max_message_size: usize,
    /// Largest snapshot a server accepts (the announced size is checked
    /// before anything is received). Default 1 GiB.
    pub max_snapshot_size: u64,
    /// Snapshot installs a server receives at once; more are refused with
    /// `RESOURCE_EXHAUSTED` (the leader retries later). Default 2.
    pub max_concurrent_snapshot_installs: usize,
    /// Snapshot downloads (`DownloadSnapshot`, backups) a server serves at
    /// once; more are refused with `RESOURCE_EXHAUSTED`. Each is cut off
    /// when its client takes no chunk for `snapshot_idle_timeout`, or after
    /// `snapshot_timeout` in all. Default 2.
    pub max_concurrent_snapshot_downloads: usize,
    /// Longest wait for the next chunk of a snapshot being received; a
    /// stalled stream is cut off. Default 30 s.
    pub snapshot_idle_timeout: Duration,
    /// Where incoming snapshots are spooled while they arrive (streamed to
    /// disk, then handed to raft as a mapped file): a node's memory does
    /// not grow with the snapshots it receives. The launcher sets it to
    /// `<data dir>/incoming-snapshots`. `None`: received in memory.
    pub snapshot_spool_dir: Option<std::path::PathBuf>,
    /// Raft message batches queued per peer before new ones are dropped
    /// (and the peer reported unreachable). Default 1024.
    pub peer_queue_capacity: usize,
    /// Encoded bytes of raft messages packed into one RPC. Default 4 MiB.
    pub max_batch_bytes: usize,
    /// First delay before retrying an unreachable peer (doubles, jittered).
    /// Default 50 ms.
    pub backoff_base: Duration,
    /// Longest delay between retries. Default 500 ms: below the election
    /// timeout, so a peer that comes back is heard from before it starts an
    /// election.
    pub backoff_max: Duration,
    /// Connections a server serves at once; beyond, new ones are closed at
    /// accept. Default 4096.
    pub max_connections: usize,
    /// Time a new connection has to send the HTTP/2 preface (or a TLS
    /// handshake's first bytes) before the server closes it. Default 10 s.
    pub preface_timeout: Duration,
    /// HTTP/2 keep-alive ping interval on client connections. Default 10 s.
    pub keepalive_interval: Option<Duration>,
    /// Whether [`RaftClient::propose`](crate::RaftClient::propose) writes
    /// in the client's own session (opened on its first write): a write
    /// whose outcome is unknown is then sent again and still applied once.
    /// Off, it is sent once and such a failure is an `OutcomeUnknown`
    /// error. Default on.
    pub client_session: bool,
    /// How often the transport probes the process of a peer that a
    /// sleeping replica's leader lives in (see
    /// [`raftify_core::Config::hibernate`]): one probe per peer process,
    /// whatever the number of groups sleeping under it. Default 200 ms.
    pub probe_interval: Duration,
    /// A peer process that has not answered a probe for this long is
    /// reported down, and the replicas sleeping under it wake and elect.
    /// Keep it near the raft election timeout. Default 1 s.
    pub peer_down_after: Duration,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            tls: None,
            auth_token: None,
            peer_token: None,
            accept_tokens: Vec::new(),
            accept_peer_tokens: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            message_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            snapshot_timeout: Duration::from_secs(300),
            snapshot_chunk_size: 1024 * 1024,
            max_message_size: 64 * 1024 * 1024,
            max_snapshot_size: 1024 * 1024 * 1024,
            max_concurrent_snapshot_installs: 2,
            max_concurrent_snapshot_downloads: 2,
            snapshot_idle_timeout: Duration::from_secs(30),
            snapshot_spool_dir: None,
            peer_queue_capacity: 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            keepalive_interval: Some(Duration::from_secs(10)),
            max_connections: 4096,
            preface_timeout: Duration::from_secs(10),
            client_session: true,
            probe_interval: Duration::from_millis(200),
            peer_down_after: Duration::from_secs(1),
        }
    }
}

impl GrpcConfig {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidConfig(m.to_string()));
        if self.snapshot_chunk_size == 0 {
            return bad("snapshot_chunk_size must be positive");
        }
        if self.snapshot_chunk_size + 4096 > self.max_message_size {
            return bad("snapshot_chunk_size must be well below max_message_size");
        }
        if self.max_connections == 0 {
            return bad("max_connections must be positive");
        }
        if self.max_concurrent_snapshot_installs == 0 {
            return bad("max_concurrent_snapshot_installs must be positive");
        }
        if self.max_concurrent_snapshot_downloads == 0 {
            return bad("max_concurrent_snapshot_downloads must be positive");
        }
        if self.max_snapshot_size == 0 {
            return bad("max_snapshot_size must be positive");
        }
        if self.peer_queue_capacity == 0 {
            return bad("peer_queue_capacity must be positive");
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > self.max_message_size {
            return bad("max_batch_bytes must be positive and at most max_message_size");
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("message_timeout", self.message_timeout),
            ("request_timeout", self.request_timeout),
            ("snapshot_timeout", self.snapshot_timeout),
            ("snapshot_idle_timeout", self.snapshot_idle_timeout),
            ("backoff_base", self.backoff_base),
            ("preface_timeout", self.preface_timeout),
            ("probe_interval", self.probe_interval),
        ] {
            if d.is_zero() {
                return Err(Error::InvalidConfig(format!("{name} must be positive")));
            }
        }
        if self.peer_down_after <= self.probe_interval {
            return bad("peer_down_after must be longer than probe_interval");
        }
        if self.backoff_max < self.backoff_base {
            return bad("backoff_max must be at least backoff_base");
        }
        let named = [
            ("auth_token", self.auth_token.iter().collect::<Vec<_>>()),
            ("peer_token", self.peer_token.iter().collect()),
            ("accept_tokens", self.accept_tokens.iter().collect()),
            (
                "accept_peer_tokens",
                self.accept_peer_tokens.iter().collect(),
            ),
        ];
        for (name, tokens) in named {
            for token in tokens {
                if token.is_empty() || !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                    return Err(Error::InvalidConfig(format!(
                        "{name} must be non-empty visible ASCII"
                    )));
                }
            }
        }
        if !self.accept_tokens.is_empty() && self.auth_token.is_none() {
            return bad("accept_tokens needs auth_token (without it no token is asked for)");
        }
        if !self.accept_peer_tokens.is_empty() && self.peer_credential().is_none() {
            return bad("accept_peer_tokens needs peer_token or auth_token");
        }
        if let Some(peer) = self.peer_token.as_deref() {
            // The peer service must not open to a client token. One
            // exception, while a cluster that shared its client token moves
            // to a peer token of its own: `accept_peer_tokens` may name the
            // current `auth_token` (what the members not yet moved present),
            // which opens nothing the shared token did not open before.
            let client = self.client_tokens();
            let accepted = self.accept_peer_tokens.iter().map(String::as_str);
            let shared = self.auth_token.as_deref();
            if client.contains(&peer)
                || accepted
                    .filter(|&t| Some(t) != shared)
                    .any(|t| client.contains(&t))
            {
                return bad(
                    "peer_token must differ from auth_token (or be left unset to share it), \
                     and the peer tokens accepted from every client token (but auth_token, \
                     while moving from a shared token to a peer token)",
                );
            }
        }
        if let Some(tls) = &self.tls {
            if tls.cert_pem.is_some() != tls.key_pem.is_some() {
                return bad("tls cert_pem and key_pem go together");
            }
        }
        Ok(())
    }

    /// The token peers present to each other.
    pub(crate) fn peer_credential(&self) -> Option<&str> {
        self.peer_token.as_deref().or(self.auth_token.as_deref())
    }

    /// Every token the client service accepts: `auth_token`, then
    /// `accept_tokens` (empty: no check).
    pub fn client_tokens(&self) -> Vec<&str> {
        let Some(current) = self.auth_token.as_deref() else {
            return Vec::new();
        };
        std::iter::once(current)
            .chain(self.accept_tokens.iter().map(String::as_str))
            .collect()
    }

    /// Every token the peer service accepts: the peer credential and
    /// `accept_peer_tokens`, and `accept_tokens` when peers share the
    /// client token (empty: no check).
    pub fn peer_tokens(&self) -> Vec<&str> {
        let Some(current) = self.peer_credential() else {
            return Vec::new();
        };
        let shared = if self.peer_token.is_none() {
            &self.accept_tokens[..]
        } else {
            &[]
        };
        std::iter::once(current)
            .chain(shared.iter().map(String::as_str))
            .chain(self.accept_peer_tokens.iter().map(String::as_str))
            .collect()
    }

    /// The scheme to dial with.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

impl GrpcConfig {
    /// The retry policy of this layer: [`GrpcConfig::request_timeout`]
    /// overall, pauses from [`GrpcConfig::backoff_base`] to
    /// [`GrpcConfig::backoff_max`].
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            timeout: self.request_timeout,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            ..RetryPolicy::default()
        }
    }
}

/// The pause before retrying an unreachable peer (`attempt` from 0).
pub(crate) fn backoff(config: &GrpcConfig, attempt: u32) -> Duration {
    config.retry_policy().backoff(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_backoff_is_bounded() {
        let c = GrpcConfig::default();
        c.validate().unwrap();
        for attempt in 0..40 {
            let d = backoff(&c, attempt);
            assert!(d <= c.backoff_max, "{d:?}");
        }
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("localhost:80"), "localhost");
        let bad = GrpcConfig {
            auth_token: Some("with space".into()),
            ..GrpcConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    fn tokens(
        auth: Option<&str>,
        peer: Option<&str>,
        accept: &[&str],
        accept_peer: &[&str],
    ) -> GrpcConfig {
        GrpcConfig {
            auth_token: auth.map(Into::into),
            peer_token: peer.map(Into::into),
            accept_tokens: accept.iter().map(|&t| t.into()).collect(),
            accept_peer_tokens: accept_peer.iter().map(|&t| t.into()).collect(),
            ..GrpcConfig::default()
        }
    }

    #[test]
    fn each_service_accepts_its_tokens_during_a_rotation() {
        // Shared: peers accept what clients may present.
        let c = tokens(Some("new"), None, &["old"], &[]);
        c.validate().unwrap();
        assert_eq!(c.client_tokens(), ["new", "old"]);
        assert_eq!(c.peer_tokens(), ["new", "old"]);
        // Separate: each service its own.
        let c = tokens(Some("client"), Some("peer2"), &["client0"], &["peer1"]);
        c.validate().unwrap();
        assert_eq!(c.client_tokens(), ["client", "client0"]);
        assert_eq!(c.peer_tokens(), ["peer2", "peer1"]);
        // Moving from a shared token to a peer token of its own: first the
        // peer token accepted, then sent with the shared one accepted.
        let c = tokens(Some("client"), None, &[], &["peer"]);
        c.validate().unwrap();
        assert_eq!(c.peer_tokens(), ["client", "peer"]);
        let c = tokens(Some("client"), Some("peer"), &[], &["client"]);
        c.validate().unwrap();
        assert_eq!(c.client_tokens(), ["client"]);
        assert_eq!(c.peer_tokens(), ["peer", "client"]);
        assert!(tokens(None, None, &[], &[]).client_tokens().is_empty());
        assert!(tokens(None, None, &[], &[]).peer_tokens().is_empty());
    }

    #[test]
    fn rotation_tokens_that_would_weaken_a_check_are_refused() {
        for (c, why) in [
            (tokens(None, None, &["old"], &[]), "needs auth_token"),
            (tokens(None, None, &[], &["old"]), "needs peer_token"),
            (tokens(Some("a"), Some("p"), &["p"], &[]), "must differ"),
            (tokens(Some("a"), Some("p"), &["b"], &["b"]), "must differ"),
            (tokens(Some("a"), Some("b"), &["b"], &[]), "must differ"),
            (
                tokens(Some("a"), None, &["with space"], &[]),
                "visible ASCII",
            ),
            (tokens(Some("a"), None, &[], &[""]), "visible ASCII"),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}

//! Client-side plumbing shared by the transport and [`RaftClient`]: a pool
//! of HTTP/2 channels by address with the credential each presents, and
//! [`PeerNode`], a member's peer service as a typed [`ClusterApi`] (one RPC
//! per call).
//!
//! [`RaftClient`]: crate::RaftClient

use crate::config::GrpcConfig;
use crate::convert::{change_to_pb, members_from_pb, session_write_to_pb, ticket_from_pb};
use crate::error::status_to_error;
use crate::groups::{group_value, GROUP_HEADER};
use crate::pb;
use crate::pb::raft_client_client::RaftClientClient;
use crate::pb::raft_peer_client::RaftPeerClient;
use async_trait::async_trait;
use raftify_core::{
    ClusterApi, Error, ErrorInfo, JoinTicket, Membership, MembershipChange, Outcome, Result,
    SessionWrite,
};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The request header naming the sender's cluster on node-to-node calls
/// (16 hex digits; absent while the sender knows none).
pub(crate) const CLUSTER_HEADER: &str = "raftify-cluster-uid";

/// Adds `authorization: Bearer <token>` to every outgoing request, and on
/// a node's own calls the cluster it belongs to ([`CLUSTER_HEADER`]).
#[derive(Clone)]
pub(crate) struct AuthInterceptor {
    token: Option<MetadataValue<Ascii>>,
    /// The Raft group every request is for ([`GROUP_HEADER`]; None: 0).
    group: Option<MetadataValue<Ascii>>,
    cluster_uid: Arc<AtomicU64>,
    /// The header of the last identity seen: formatted once, not per call.
    cluster_header: Arc<Mutex<Option<CachedHeader>>>,
}

/// A cluster identity and its formatted [`CLUSTER_HEADER`] value.
type CachedHeader = (u64, MetadataValue<Ascii>);

impl AuthInterceptor {
    /// The [`CLUSTER_HEADER`] value of the current identity (None: unknown).
    fn cluster_value(&self) -> Option<MetadataValue<Ascii>> {
        let uid = self.cluster_uid.load(Ordering::Relaxed);
        if uid == 0 {
            return None;
        }
        let mut cached = self
            .cluster_header
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((at, v)) if *at == uid => Some(v.clone()),
            _ => {
                let v = MetadataValue::try_from(format!("{uid:016x}")).ok()?;
                *cached = Some((uid, v.clone()));
                Some(v)
            }
        }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        if let Some(v) = self.cluster_value() {
            req.metadata_mut().insert(CLUSTER_HEADER, v);
        }
        if let Some(g) = &self.group {
            req.metadata_mut().insert(GROUP_HEADER, g.clone());
        }
        Ok(req)
    }
}

/// The cluster a request's [`CLUSTER_HEADER`] names (0: none, or not
/// readable).
pub(crate) fn cluster_of<T>(req: &Request<T>) -> u64 {
    req.metadata()
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}

/// An authenticated channel.
type Authed = InterceptedService<Channel, AuthInterceptor>;
/// The generated client of the peer service, with the peer credential.
pub(crate) type PeerClient = RaftPeerClient<Authed>;
/// The generated client of the client service, with the client credential.
pub(crate) type ApiClient = RaftClientClient<Authed>;

/// Long-lived channels by address; a channel multiplexes every RPC to its
/// address over one HTTP/2 connection and reconnects on its own. Every
/// request carries the pool's credential (and its Raft group, see
/// [`ChannelPool::for_group`]).
pub(crate) struct ChannelPool {
    config: GrpcConfig,
    auth: AuthInterceptor,
    /// Shared by the pools of every group of a process.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Which credential a pool presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential {
    /// The peer token (a node's transport).
    Peer,
    /// The client token (applications, the CLI).
    Client,
}

impl ChannelPool {
    pub(crate) fn new(config: GrpcConfig, credential: Credential) -> Result<Self> {
        config.validate()?;
        let secret = match credential {
            Credential::Peer => config.peer_credential(),
            Credential::Client => config.auth_token.as_deref(),
        };
        let token = match secret {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| Error::InvalidConfig("a token is not valid ASCII".into()))?,
            ),
            None => None,
        };
        Ok(ChannelPool {
            config,
            auth: AuthInterceptor {
                token,
                group: None,
                cluster_uid: Arc::new(AtomicU64::new(0)),
                cluster_header: Arc::new(Mutex::new(None)),
            },
            channels: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// A pool for Raft group `group` over this pool's connections: the
    /// same credential, requests naming the group, and its own cluster
    /// identity (each group has one).
    pub(crate) fn for_group(&self, group: u64) -> Self {
        ChannelPool {
            config: self.config.clone(),
            auth: AuthInterceptor {
                token: self.auth.token.clone(),
                group: group_value(group),
                cluster_uid: Arc::new(AtomicU64::new(0)),
                cluster_header: Arc::new(Mutex::new(None)),
            },
            channels: self.channels.clone(),
        }
    }

    pub(crate) fn config(&self) -> &GrpcConfig {
        &self.config
    }

    /// The cluster identity this pool's requests carry (a node's
    /// transport sets it; client pools leave it 0).
    pub(crate) fn cluster_uid(&self) -> &Arc<AtomicU64> {
        &self.auth.cluster_uid
    }

    fn channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = &self.config;
        let uri = format!("{}://{addr}", c.scheme());
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Error::InvalidArgument(format!("address {addr:?}: {e}")))?
            .connect_timeout(c.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(c.keepalive_interval.unwrap_or(Duration::from_secs(3600)))
            .keep_alive_timeout(c.connect_timeout.max(Duration::from_secs(5)))
            .keep_alive_while_idle(c.keepalive_interval.is_some());
        if let Some(tls) = &c.tls {
            endpoint = endpoint
                .tls_config(tls.client_config(addr)?)
                .map_err(|e| Error::InvalidConfig(format!("tls: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A peer-service client for `addr` on the pooled channel.
    pub(crate) fn peer(&self, addr: &str) -> Result<PeerClient> {
        let n = self.config.max_message_size;
        Ok(
            RaftPeerClient::with_interceptor(self.channel(addr)?, self.auth.clone())
                .max_decoding_message_size(n)
                .max_encoding_message_size(n),
        )
    }

    /// A client-service client for `addr` on the pooled channel.
    pub(crate) fn api(&self, addr: &str) -> Result<ApiClient> {
        let n = self.config.max_message_size;
        Ok(
            RaftClientClient::with_interceptor(self.channel(addr)?, self.auth.clone())
                .max_decoding_message_size(n)
                .max_encoding_message_size(n),
        )
    }

    /// Drops the pooled channel of `addr` (its connection closes when the
    /// last clone is gone).
    pub(crate) fn forget(&self, addr: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(addr);
    }
}

/// A request with a deadline.
pub(crate) fn request<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    req
}

/// Maps a failed RPC to a core error; a deadline without raftify metadata
/// becomes `Timeout(timeout)`.
pub(crate) fn rpc_error(status: Status, timeout: Duration) -> Error {
    match status_to_error(&status) {
        Error::Timeout(d) if d.is_zero() && status.code() == Code::DeadlineExceeded => {
            Error::Timeout(timeout)
        }
        e => e,
    }
}

/// One entry's outcome of a `ProposeBatch`, from the wire.
fn outcome_from_pb(o: pb::ProposeOutcome) -> std::result::Result<Vec<u8>, ErrorInfo> {
    match o.error {
        None => Ok(o.output),
        Some(e) => Err(ErrorInfo {
            kind: e.kind,
            message: e.message,
            leader_id: e.leader_id,
            leader_addr: (!e.leader_addr.is_empty()).then_some(e.leader_addr),
            number: e.number,
        }),
    }
}

/// One entry's outcome of a `ProposeBatch`, to the wire.
pub(crate) fn outcome_to_pb(o: std::result::Result<Vec<u8>, ErrorInfo>) -> pb::ProposeOutcome {
    match o {
        Ok(output) => pb::ProposeOutcome {
            output,
            error: None,
        },
        Err(e) => pb::ProposeOutcome {
            output: Vec::new(),
            error: Some(pb::ErrorDetail {
                kind: e.kind,
                message: e.message,
                leader_id: e.leader_id,
                leader_addr: e.leader_addr.unwrap_or_default(),
                number: e.number,
            }),
        },
    }
}

/// Runs one RPC with a deadline: the gRPC deadline covers the server; this
/// also bounds connecting.
pub(crate) async fn rpc<T>(
    timeout: Duration,
    call: impl Future<Output = std::result::Result<tonic::Response<T>, Status>>,
) -> Result<T> {
    match tokio::time::timeout(timeout + Duration::from_millis(500), call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(rpc_error(status, timeout)),
        Err(_) => Err(Error::Timeout(timeout)),
    }
}

/// A member's peer service as a [`ClusterApi`]: what a node's transport
/// gives for an address. Requests run on that member; it does not forward
/// them again.
pub(crate) struct PeerNode {
    pub(crate) client: PeerClient,
    pub(crate) timeout: Duration,
}

impl PeerNode {
    fn req<T>(&self, msg: T) -> Request<T> {
        request(msg, self.timeout)
    }

    async fn rpc<T>(
        &self,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    ) -> Result<T> {
        rpc(self.timeout, call).await
    }
}

#[async_trait]
impl ClusterApi for PeerNode {
    async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        let mut c = self.client.clone();
        let r = self
            .rpc(c.propose(self.req(pb::ProposeRequest { data })))
            .await?;
        Ok(r.output)
    }

    async fn propose_batch(&self, entries: Vec<Vec<u8>>) -> Result<Vec<Outcome>> {
        let mut c = self.client.clone();
        let r = self
            .rpc(c.propose_batch(self.req(pb::ProposeBatchRequest { entries })))
            .await?;
        Ok(r.outcomes.into_iter().map(outcome_from_pb).collect())
    }

    async fn read_index(&self) -> Result<u64> {
        let mut c = self.client.clone();
        Ok(self.rpc(c.read_index(self.req(pb::Empty {}))).await?.index)
    }

    async fn request_id(&self, addr: String) -> Result<JoinTicket> {
        let mut c = self.client.clone();
        let r = self
            .rpc(c.request_id(self.req(pb::RequestIdRequest { addr })))
            .await?;
        Ok(ticket_from_pb(r))
    }

    async fn change_membership(&self, changes: Vec<MembershipChange>) -> Result<Membership> {
        let msg = pb::ChangeConfigRequest {
            changes: changes.iter().map(change_to_pb).collect(),
        };
        let mut c = self.client.clone();
        let r = self.rpc(c.change_config(self.req(msg))).await?;
        Ok(members_from_pb(&r))
    }

    async fn transfer_leader(&self, to: u64) -> Result<()> {
        let mut c = self.client.clone();
        self.rpc(c.transfer_leader(self.req(pb::TransferLeaderRequest { to })))
            .await?;
        Ok(())
    }

    async fn members(&self) -> Result<Membership> {
        let mut c = self.client.clone();
        let r = self.rpc(c.members(self.req(pb::Empty {}))).await?;
        Ok(members_from_pb(&r))
    }

    async fn open_session(&self) -> Result<u64> {
        let mut c = self.client.clone();
        Ok(self
            .rpc(c.open_session(self.req(pb::Empty {})))
            .await?
            .session)
    }

    async fn propose_in_session(&self, w: SessionWrite, data: Vec<u8>) -> Result<Vec<u8>> {
        let msg = session_write_to_pb(w, data);
        let mut c = self.client.clone();
        Ok(self.rpc(c.propose_in_session(self.req(msg))).await?.output)
    }

    async fn propose_with_key(&self, key: String, data: Vec<u8>) -> Result<Vec<u8>> {
        let msg = pb::KeyedProposeRequest { key, data };
        let mut c = self.client.clone();
        Ok(self.rpc(c.propose_with_key(self.req(msg))).await?.output)
    }

    async fn propose_session_batch(
        &self,
        writes: Vec<(SessionWrite, Vec<u8>)>,
    ) -> Result<Vec<Outcome>> {
        let writes = writes
            .into_iter()
            .map(|(w, data)| session_write_to_pb(w, data))
            .collect();
        let mut c = self.client.clone();
        let r = self
            .rpc(c.propose_session_batch(self.req(pb::SessionBatchRequest { writes })))
            .await?;
        Ok(r.outcomes.into_iter().map(outcome_from_pb).collect())
    }
}

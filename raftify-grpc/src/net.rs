//! Client-side plumbing shared by the transport and [`RaftClient`]: a pool
//! of HTTP/2 channels by address, the auth interceptor, and [`GrpcNode`],
//! the typed [`ClusterApi`] of a remote node (one RPC per call).
//!
//! [`RaftClient`]: crate::RaftClient

use crate::config::GrpcConfig;
use crate::convert::{change_to_pb, members_from_pb, ticket_from_pb};
use crate::error::status_to_error;
use crate::pb;
use crate::pb::raft_service_client::RaftServiceClient;
use async_trait::async_trait;
use raftify_core::{
    ClusterApi, Error, ErrorInfo, JoinTicket, Membership, MembershipChange, Outcome, Result,
};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Metadata key marking a request a node sends on behalf of another
/// (forwarded or `call_cluster`): the receiver executes it locally and does
/// not forward it again.
pub(crate) const FORWARDED: &str = "x-raftify-forwarded";

/// Adds `authorization: Bearer <token>` to every outgoing request.
#[derive(Clone)]
pub(crate) struct AuthInterceptor {
    token: Option<MetadataValue<Ascii>>,
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

/// The generated client, authenticated.
pub(crate) type Client = RaftServiceClient<InterceptedService<Channel, AuthInterceptor>>;

/// Long-lived channels by address; a channel multiplexes every RPC to its
/// address over one HTTP/2 connection and reconnects on its own.
pub(crate) struct ChannelPool {
    config: GrpcConfig,
    auth: AuthInterceptor,
    channels: Mutex<HashMap<String, Channel>>,
}

impl ChannelPool {
    pub(crate) fn new(config: GrpcConfig) -> Result<Self> {
        config.validate()?;
        let token = match &config.auth_token {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| Error::InvalidConfig("auth_token is not valid ASCII".into()))?,
            ),
            None => None,
        };
        Ok(ChannelPool {
            config,
            auth: AuthInterceptor { token },
            channels: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn config(&self) -> &GrpcConfig {
        &self.config
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

    /// A client for `addr` on the pooled channel (created lazily).
    pub(crate) fn client(&self, addr: &str) -> Result<Client> {
        let n = self.config.max_message_size;
        Ok(
            RaftServiceClient::with_interceptor(self.channel(addr)?, self.auth.clone())
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

/// A request with a deadline, optionally marked as forwarded.
pub(crate) fn request<T>(msg: T, timeout: Duration, forwarded: bool) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    if forwarded {
        req.metadata_mut()
            .insert(FORWARDED, MetadataValue::from_static("1"));
    }
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

/// The cluster API of the node behind `client`, one RPC per call. With
/// `forwarded`, requests are marked as a node's on behalf of another: the
/// receiver runs them and does not forward them again.
pub(crate) struct GrpcNode {
    pub(crate) client: Client,
    pub(crate) timeout: Duration,
    pub(crate) forwarded: bool,
}

impl GrpcNode {
    fn req<T>(&self, msg: T) -> Request<T> {
        request(msg, self.timeout, self.forwarded)
    }

    /// Runs one RPC; the gRPC deadline covers the server, this also bounds
    /// connecting.
    async fn rpc<T>(
        &self,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout + Duration::from_millis(500), call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(rpc_error(status, self.timeout)),
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }
}

#[async_trait]
impl ClusterApi for GrpcNode {
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
}

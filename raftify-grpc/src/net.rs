//! Client-side plumbing shared by the transport and [`RaftClient`]: a pool
//! of HTTP/2 channels by address, the auth interceptor, and the mapping of
//! [`ClusterRequest`]s onto RPCs.
//!
//! [`RaftClient`]: crate::RaftClient

use crate::config::GrpcConfig;
use crate::convert::{change_to_pb, members_from_pb, ticket_from_pb};
use crate::error::status_to_error;
use crate::pb;
use crate::pb::raft_service_client::RaftServiceClient;
use raftify_core::{ClusterRequest, ClusterResponse, Error, ErrorInfo, Result};
use std::collections::HashMap;
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

/// Performs a cluster request as one RPC.
pub(crate) async fn perform(
    client: &mut Client,
    req: ClusterRequest,
    timeout: Duration,
    forwarded: bool,
) -> Result<ClusterResponse> {
    let fut = async {
        let err = |s: Status| rpc_error(s, timeout);
        Ok(match req {
            ClusterRequest::Propose(data) => {
                let r = client
                    .propose(request(pb::ProposeRequest { data }, timeout, forwarded))
                    .await
                    .map_err(err)?;
                ClusterResponse::Output(r.into_inner().output)
            }
            ClusterRequest::ProposeBatch(entries) => {
                let r = client
                    .propose_batch(request(
                        pb::ProposeBatchRequest { entries },
                        timeout,
                        forwarded,
                    ))
                    .await
                    .map_err(err)?;
                ClusterResponse::Outputs(
                    r.into_inner()
                        .outcomes
                        .into_iter()
                        .map(outcome_from_pb)
                        .collect(),
                )
            }
            ClusterRequest::ReadIndex => {
                let r = client
                    .read_index(request(pb::Empty {}, timeout, forwarded))
                    .await
                    .map_err(err)?;
                ClusterResponse::ReadIndex(r.into_inner().index)
            }
            ClusterRequest::RequestId { addr } => {
                let r = client
                    .request_id(request(pb::RequestIdRequest { addr }, timeout, forwarded))
                    .await
                    .map_err(err)?;
                ClusterResponse::Ticket(ticket_from_pb(r.into_inner()))
            }
            ClusterRequest::ChangeMembership(changes) => {
                let msg = pb::ChangeConfigRequest {
                    changes: changes.iter().map(change_to_pb).collect(),
                };
                let r = client
                    .change_config(request(msg, timeout, forwarded))
                    .await
                    .map_err(err)?;
                let (leader_id, members) = members_from_pb(r.get_ref());
                ClusterResponse::Members { leader_id, members }
            }
            ClusterRequest::TransferLeader(to) => {
                client
                    .transfer_leader(request(
                        pb::TransferLeaderRequest { to },
                        timeout,
                        forwarded,
                    ))
                    .await
                    .map_err(err)?;
                ClusterResponse::Done
            }
            ClusterRequest::Members => {
                let r = client
                    .members(request(pb::Empty {}, timeout, forwarded))
                    .await
                    .map_err(err)?;
                let (leader_id, members) = members_from_pb(r.get_ref());
                ClusterResponse::Members { leader_id, members }
            }
        })
    };
    // The gRPC deadline covers the server; this also bounds connecting.
    match tokio::time::timeout(timeout + Duration::from_millis(500), fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(timeout)),
    }
}

//! [`RaftGrpcServer`]: serves a node's [`RaftHandle`] over gRPC.

use crate::config::GrpcConfig;
use crate::convert::{change_from_pb, decode_msg, members_to_pb, ticket_to_pb};
use crate::error::error_to_status;
use crate::net::{outcome_to_pb, FORWARDED};
use crate::pb;
use crate::pb::raft_service_server::{RaftService, RaftServiceServer};
use async_trait::async_trait;
use raftify_core::membership::validate_addr;
use raftify_core::raft::eraftpb::MessageType;
use raftify_core::{
    AbstractLogEntry, AbstractStateMachine, BoxError, Error, Inbound, Membership, RaftHandle,
    Result,
};
use slog::{debug, info, o, warn, Logger};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

/// How long [`ServerHandle::shutdown`] waits for in-flight RPCs before it
/// drops the remaining connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Answers `Read` RPCs: runs an application query on the local state
/// machine, after the server has confirmed a linearizable read index.
#[async_trait]
pub trait ReadHandler: Send + Sync + 'static {
    /// Executes `query` on the local state machine.
    async fn read(&self, query: &[u8]) -> std::result::Result<Vec<u8>, BoxError>;
}

struct SmReader<E, SM, F> {
    raft: raftify_core::Raft<E, SM>,
    f: F,
}

#[async_trait]
impl<E, SM, F> ReadHandler for SmReader<E, SM, F>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
    F: Fn(&SM, &[u8]) -> std::result::Result<Vec<u8>, BoxError> + Send + Sync + 'static,
{
    async fn read(&self, query: &[u8]) -> std::result::Result<Vec<u8>, BoxError> {
        self.raft.stale_read(|sm| (self.f)(sm, query)).await
    }
}

/// A [`ReadHandler`] that runs `f` on the state machine of `raft`.
pub fn state_machine_reader<E, SM, F>(
    raft: &raftify_core::Raft<E, SM>,
    f: F,
) -> Arc<dyn ReadHandler>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
    F: Fn(&SM, &[u8]) -> std::result::Result<Vec<u8>, BoxError> + Send + Sync + 'static,
{
    Arc::new(SmReader {
        raft: raft.clone(),
        f,
    })
}

/// Checks the shared auth token on every RPC, in constant time.
#[derive(Clone)]
struct AuthCheck {
    expected: Option<Arc<Vec<u8>>>,
    logger: Logger,
}

impl Interceptor for AuthCheck {
    fn call(&mut self, req: Request<()>) -> std::result::Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let ok = match req.metadata().get("authorization") {
            Some(got) => bool::from(got.as_bytes().ct_eq(expected.as_slice())),
            None => false,
        };
        if ok {
            Ok(req)
        } else {
            warn!(self.logger, "rejected an RPC with a missing or wrong auth token"; "remote" => ?req.remote_addr());
            Err(Status::unauthenticated("missing or invalid auth token"))
        }
    }
}

struct Service {
    handle: RaftHandle,
    /// Runs requests here, for those another node forwarded.
    inbound: Arc<dyn Inbound>,
    config: GrpcConfig,
    reader: Option<Arc<dyn ReadHandler>>,
    logger: Logger,
    /// Turns true when the server shuts down: long-lived message streams
    /// end then, instead of holding the graceful shutdown up.
    stopping: watch::Receiver<bool>,
}

fn st(e: Error) -> Status {
    error_to_status(&e)
}

/// Whether a request is one node's on behalf of another (see `FORWARDED`).
fn forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().get(FORWARDED).is_some()
}

impl Service {
    /// Decodes a batch of raft messages and hands it to the node.
    fn step_batch(&self, batch: pb::MessageBatch) -> Result<()> {
        let msgs = batch
            .messages
            .iter()
            .map(|b| decode_msg(b))
            .collect::<Result<Vec<_>>>()?;
        if msgs.is_empty() {
            return Ok(());
        }
        let from_addr = validate_addr(&batch.from_addr)
            .is_ok()
            .then_some(batch.from_addr);
        self.inbound.step_from(from_addr, msgs)
    }
}

#[async_trait]
impl RaftService for Service {
    async fn send_messages(
        &self,
        req: Request<pb::MessageBatch>,
    ) -> std::result::Result<Response<pb::Ack>, Status> {
        self.step_batch(req.into_inner()).map_err(st)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn message_stream(
        &self,
        req: Request<Streaming<pb::MessageBatch>>,
    ) -> std::result::Result<Response<pb::Ack>, Status> {
        let mut stream = req.into_inner();
        let mut stopping = self.stopping.clone();
        // A frame that does not decode ends the stream with its error; the
        // sender opens a new one.
        loop {
            let batch = tokio::select! {
                m = stream.message() => match m? {
                    Some(batch) => batch,
                    None => break,
                },
                _ = stopping.wait_for(|s| *s) => break,
            };
            match self.step_batch(batch) {
                Ok(()) => {}
                // A full inbox drops this batch, as the network could:
                // raft sends again. The stream stays open.
                Err(Error::Overloaded(n)) => {
                    debug!(self.logger, "inbox full, raft messages dropped"; "capacity" => n)
                }
                Err(e) => return Err(st(e)),
            }
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> std::result::Result<Response<pb::Ack>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let mut msg = decode_msg(&first.header).map_err(st)?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "the first chunk is not a snapshot message",
            ));
        }
        let total = first.total_size;
        if total > self.config.max_snapshot_size {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {total} bytes exceeds the limit of {}",
                self.config.max_snapshot_size
            )));
        }
        let cap =
            usize::try_from(total).map_err(|_| Status::resource_exhausted("snapshot too large"))?;
        let mut data = Vec::with_capacity(cap.min(64 * 1024 * 1024));
        data.extend_from_slice(&first.data);
        while let Some(chunk) = stream.message().await? {
            if data.len() + chunk.data.len() > cap {
                return Err(Status::invalid_argument(
                    "snapshot data exceeds its announced size",
                ));
            }
            data.extend_from_slice(&chunk.data);
        }
        if data.len() != cap {
            return Err(Status::invalid_argument(format!(
                "truncated snapshot: {} of {cap} bytes",
                data.len()
            )));
        }
        msg.mut_snapshot().data = data.into();
        let from_addr = validate_addr(&first.from_addr)
            .is_ok()
            .then_some(first.from_addr);
        info!(self.logger, "snapshot received"; "from" => first.from_id, "bytes" => cap);
        self.inbound.step_from(from_addr, vec![msg]).map_err(st)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn request_id(
        &self,
        req: Request<pb::RequestIdRequest>,
    ) -> std::result::Result<Response<pb::JoinTicketReply>, Status> {
        let forwarded = forwarded(&req);
        let addr = req.into_inner().addr;
        let ticket = if forwarded {
            self.inbound.request_id(addr).await
        } else {
            self.handle.request_id(&addr).await
        };
        Ok(Response::new(ticket_to_pb(&ticket.map_err(st)?)))
    }

    async fn change_config(
        &self,
        req: Request<pb::ChangeConfigRequest>,
    ) -> std::result::Result<Response<pb::MembersReply>, Status> {
        let changes = req
            .get_ref()
            .changes
            .iter()
            .map(change_from_pb)
            .collect::<Result<Vec<_>>>()
            .map_err(st)?;
        let membership = if forwarded(&req) {
            self.inbound.change_membership(changes).await
        } else {
            self.handle
                .change_membership(changes)
                .await
                .map(|members| Membership {
                    leader_id: self.handle.leader_id().unwrap_or(0),
                    members,
                })
        };
        Ok(Response::new(members_to_pb(&membership.map_err(st)?)))
    }

    async fn leave(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::Empty>, Status> {
        self.handle.leave().await.map_err(st)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> std::result::Result<Response<pb::Empty>, Status> {
        let to = req.get_ref().to;
        if forwarded(&req) {
            self.inbound.transfer_leader(to).await
        } else {
            self.handle.transfer_leader(to).await
        }
        .map_err(st)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn propose(
        &self,
        req: Request<pb::ProposeRequest>,
    ) -> std::result::Result<Response<pb::ProposeReply>, Status> {
        let forwarded = forwarded(&req);
        let data = req.into_inner().data;
        let output = if forwarded {
            self.inbound.propose(data).await
        } else {
            self.handle.propose(data).await
        };
        Ok(Response::new(pb::ProposeReply {
            output: output.map_err(st)?,
        }))
    }

    async fn propose_batch(
        &self,
        req: Request<pb::ProposeBatchRequest>,
    ) -> std::result::Result<Response<pb::ProposeBatchReply>, Status> {
        // Never forwarded again: the sender chose this node as the leader.
        let entries = req.into_inner().entries;
        let outcomes = self.inbound.propose_batch(entries).await.map_err(st)?;
        Ok(Response::new(pb::ProposeBatchReply {
            outcomes: outcomes.into_iter().map(outcome_to_pb).collect(),
        }))
    }

    async fn read_index(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::ReadIndexReply>, Status> {
        let index = self.handle.read_index().await.map_err(st)?;
        Ok(Response::new(pb::ReadIndexReply { index }))
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> std::result::Result<Response<pb::ReadReply>, Status> {
        let Some(reader) = &self.reader else {
            return Err(Status::unimplemented("this server has no read handler"));
        };
        if !req.get_ref().stale {
            self.handle.read_index().await.map_err(st)?;
        }
        let data = reader
            .read(&req.get_ref().query)
            .await
            .map_err(|e| st(Error::StateMachine(format!("read: {e}"))))?;
        Ok(Response::new(pb::ReadReply { data }))
    }

    async fn members(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::MembersReply>, Status> {
        let membership = self.inbound.members().await.map_err(st)?;
        Ok(Response::new(members_to_pb(&membership)))
    }

    async fn get_leader(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::LeaderReply>, Status> {
        let state = self.handle.state();
        Ok(Response::new(pb::LeaderReply {
            leader_id: state.leader_id,
            leader_addr: state.leader_addr.unwrap_or_default(),
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::StatusReply>, Status> {
        let status = self.handle.status().await.map_err(st)?;
        let json = |v: std::result::Result<String, serde_json::Error>| {
            v.map_err(|e| Status::internal(format!("status to JSON: {e}")))
        };
        Ok(Response::new(pb::StatusReply {
            id: status.id,
            role: status.role.as_str().to_string(),
            term: status.term,
            leader_id: status.leader_id,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            status_json: json(serde_json::to_string(&status))?,
            metrics_json: json(serde_json::to_string(&self.handle.metrics()))?,
        }))
    }

    async fn create_snapshot(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::CreateSnapshotReply>, Status> {
        let index = self.handle.snapshot().await.map_err(st)?;
        Ok(Response::new(pb::CreateSnapshotReply { index }))
    }
}

/// Serves a node over gRPC: raft traffic from peers, cluster requests from
/// peers, and the client API (see [`RaftClient`](crate::RaftClient)).
///
/// Every RPC is checked against [`GrpcConfig::auth_token`]; TLS (and mutual
/// TLS when [`TlsConfig::ca_pem`](crate::TlsConfig::ca_pem) is set) comes
/// from [`GrpcConfig::tls`]; messages are limited to
/// [`GrpcConfig::max_message_size`].
pub struct RaftGrpcServer {
    handle: RaftHandle,
    config: GrpcConfig,
    reader: Option<Arc<dyn ReadHandler>>,
    logger: Logger,
}

impl RaftGrpcServer {
    /// A server for the node behind `handle`.
    pub fn new(handle: RaftHandle, config: GrpcConfig) -> Self {
        RaftGrpcServer {
            handle,
            config,
            reader: None,
            logger: raftify_core::discard_logger(),
        }
    }

    /// Logs rejected RPCs and received snapshots to `logger`.
    pub fn logger(mut self, logger: Logger) -> Self {
        self.logger = logger.new(o!("component" => "grpc-server"));
        self
    }

    /// Serves `Read` RPCs with `reader` (see [`state_machine_reader`]).
    pub fn reader(mut self, reader: Arc<dyn ReadHandler>) -> Self {
        self.reader = Some(reader);
        self
    }

    /// Binds `addr` and serves in a background task.
    pub async fn bind(self, addr: SocketAddr) -> Result<ServerHandle> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Transport(format!("cannot bind {addr}: {e}")))?;
        self.spawn(listener)
    }

    /// Serves on an already bound listener in a background task (bind
    /// `127.0.0.1:0` first to learn an ephemeral port).
    pub fn spawn(self, listener: TcpListener) -> Result<ServerHandle> {
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::Transport(format!("listener address: {e}")))?;
        let (tx, rx) = oneshot::channel::<()>();
        let logger = self.logger.clone();
        let (router, stopping) = self.router()?;
        let task = tokio::spawn(async move {
            let incoming = nodelay(listener);
            let signal = async move {
                let _ = rx.await;
                let _ = stopping.send(true);
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                warn!(logger, "gRPC server stopped with an error"; "error" => %e);
            }
        });
        Ok(ServerHandle {
            local_addr,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Serves on `listener` until `signal` completes, then shuts down
    /// gracefully (in-flight RPCs finish).
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let (router, stopping) = self.router()?;
        let signal = async move {
            signal.await;
            let _ = stopping.send(true);
        };
        router
            .serve_with_incoming_shutdown(nodelay(listener), signal)
            .await
            .map_err(|e| Error::Transport(format!("gRPC server: {e}")))
    }

    fn router(self) -> Result<(tonic::transport::server::Router, watch::Sender<bool>)> {
        self.config.validate()?;
        let (stopping_tx, stopping) = watch::channel(false);
        let config = self.config.clone();
        let n = config.max_message_size;
        let expected = config
            .auth_token
            .as_ref()
            .map(|t| Arc::new(format!("Bearer {t}").into_bytes()));
        let auth = AuthCheck {
            expected,
            logger: self.logger.clone(),
        };
        let service = RaftServiceServer::new(Service {
            inbound: self.handle.inbound(),
            handle: self.handle,
            config: self.config,
            reader: self.reader,
            logger: self.logger,
            stopping,
        })
        .max_decoding_message_size(n)
        .max_encoding_message_size(n);
        let mut builder = Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(config.keepalive_interval)
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        if let Some(tls) = &config.tls {
            builder = builder
                .tls_config(tls.server_config()?)
                .map_err(|e| Error::InvalidConfig(format!("tls: {e}")))?;
        }
        Ok((
            builder.add_service(InterceptedService::new(service, auth)),
            stopping_tx,
        ))
    }
}

/// Accepted connections with TCP_NODELAY set: tonic ignores its own
/// `tcp_nodelay` setting for listeners it did not bind, and Nagle's
/// algorithm meeting delayed ACKs stalls small replies by ~40 ms.
fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// A server running in the background.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, lets in-flight RPCs finish (up to
    /// [`SHUTDOWN_GRACE`]) and closes every connection.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

//! [`RaftGrpcServer`]: serves a node over gRPC — the peer service and the
//! client service on one port, each behind its own credential.

use crate::auth::{AuthCheck, RefusalLog};
use crate::client_service::ClientService;
use crate::config::GrpcConfig;
use crate::conn::guarded;
use crate::groups::Groups;
use crate::pb::raft_client_server::RaftClientServer;
use crate::pb::raft_peer_server::RaftPeerServer;
use crate::peer_service::PeerService;
use crate::read::ReadHandler;
use raftify_core::metrics::ServerMetrics;
use raftify_core::{Error, RaftHandle, Result};
use slog::{o, warn, Logger};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

/// How long [`ServerHandle::shutdown`] waits for in-flight RPCs before it
/// drops the remaining connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves a node over gRPC: the peer service (raft messages, snapshots,
/// requests members make of each other) and the client service (see
/// [`RaftClient`](crate::RaftClient)).
///
/// The peer service requires the peer token ([`GrpcConfig::peer_token`],
/// or the shared [`GrpcConfig::auth_token`] when there is none), the client
/// service the client token ([`GrpcConfig::auth_token`]); one is refused
/// where the other is required. TLS (and mutual TLS when
/// [`TlsConfig::ca_pem`](crate::TlsConfig::ca_pem) is set) comes from
/// [`GrpcConfig::tls`]; messages are limited to
/// [`GrpcConfig::max_message_size`].
///
/// One server serves one node ([`RaftGrpcServer::new`]), or the replicas of
/// many Raft groups that one process hosts ([`RaftGrpcServer::for_groups`]):
/// each request names its group ([`GROUP_HEADER`](crate::GROUP_HEADER)).
pub struct RaftGrpcServer {
    groups: Groups,
    /// The single node of [`RaftGrpcServer::new`], served as group 0.
    single: Option<RaftHandle>,
    metrics: ServerMetrics,
    config: GrpcConfig,
    reader: Option<Arc<dyn ReadHandler>>,
    logger: Logger,
}

impl RaftGrpcServer {
    /// A server for the node behind `handle` (group 0).
    pub fn new(handle: RaftHandle, config: GrpcConfig) -> Self {
        RaftGrpcServer {
            groups: Groups::new(),
            metrics: handle.server_metrics("grpc"),
            single: Some(handle),
            config,
            reader: None,
            logger: raftify_core::discard_logger(),
        }
    }

    /// A server for every group in `groups`, as they come and go; its
    /// connection metrics are counted in `metrics` (a node's
    /// [`RaftHandle::server_metrics`], for example the process's first
    /// group's).
    pub fn for_groups(groups: Groups, metrics: ServerMetrics, config: GrpcConfig) -> Self {
        RaftGrpcServer {
            groups,
            single: None,
            metrics,
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

    /// Serves the single node's `Read` RPCs with `reader` (see
    /// [`state_machine_reader`]; each group of
    /// [`RaftGrpcServer::for_groups`] has its own, given to
    /// [`Groups::insert`]).
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
        let (max, preface) = (self.config.max_connections, self.config.preface_timeout);
        let metrics = self.metrics.clone();
        let (router, stopping) = self.router()?;
        let incoming = guarded(listener, max, preface, stopping.subscribe(), metrics);
        let task = tokio::spawn(async move {
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
        let (max, preface) = (self.config.max_connections, self.config.preface_timeout);
        let metrics = self.metrics.clone();
        let (router, stopping) = self.router()?;
        let incoming = guarded(listener, max, preface, stopping.subscribe(), metrics);
        let signal = async move {
            signal.await;
            let _ = stopping.send(true);
        };
        router
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .map_err(|e| Error::Transport(format!("gRPC server: {e}")))
    }

    fn router(mut self) -> Result<(tonic::transport::server::Router, watch::Sender<bool>)> {
        self.config.validate()?;
        let (stopping_tx, stopping) = watch::channel(false);
        let config = self.config.clone();
        let n = config.max_message_size;
        let refusals = Arc::new(RefusalLog::new(self.logger.clone()));
        let metrics = self.metrics.clone();
        if let Some(handle) = self.single.take() {
            self.groups.insert(0, handle, self.reader.take());
        }
        let peer_auth = AuthCheck::new(config.peer_tokens(), "peer", &refusals, &metrics);
        let client_auth = AuthCheck::new(config.client_tokens(), "client", &refusals, &metrics);
        let peers = RaftPeerServer::new(PeerService {
            groups: self.groups.clone(),
            refusals: refusals.clone(),
            installs: Arc::new(tokio::sync::Semaphore::new(
                self.config.max_concurrent_snapshot_installs,
            )),
            config: self.config,
            logger: self.logger,
            stopping,
        })
        .max_decoding_message_size(n)
        .max_encoding_message_size(n);
        let clients = RaftClientServer::new(ClientService {
            groups: self.groups,
            downloads: crate::backup::Downloads::new(&config),
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
        let router = builder
            .add_service(InterceptedService::new(peers, peer_auth))
            .add_service(InterceptedService::new(clients, client_auth));
        Ok((router, stopping_tx))
    }
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

//! # raftify-grpc
//!
//! gRPC for [raftify](raftify_core): a [`GrpcTransport`] that carries raft
//! messages and cluster requests between nodes, a [`RaftGrpcServer`] that
//! serves a node's [`RaftHandle`](raftify_core::RaftHandle), and a
//! [`RaftClient`] for applications. Built on tonic, prost and rustls; the
//! `.proto` is compiled at build time by a pure-Rust compiler (no `protoc`).
//!
//! * raft messages travel in per-peer batches on long-lived HTTP/2
//!   connections, one bounded queue and sender task per peer; the batches
//!   are frames of one long-lived `MessageStream` call per peer (peers
//!   without it get unary `SendMessages` calls); snapshots are streamed in
//!   chunks.
//! * Followers forward client writes to the leader, the writes that arrive
//!   together in one `ProposeBatch` call; errors keep their
//!   meaning across the wire ([`Error::NotLeader`](raftify_core::Error)
//!   still names the leader, see [`error_to_status`]).
//! * TLS and mutual TLS ([`TlsConfig`]), a shared auth token checked on
//!   every RPC, message size limits ([`GrpcConfig`]); [`tls`] loads PEM
//!   files (errors naming the file) and builds rustls server configs for
//!   an application's other servers on the same TLS stack.
//!
//! ## Wiring a node
//!
//! Create the transport, start the node with it, serve its handle:
//!
//! ```
//! use raftify_core::testkit::{KvCmd, KvStore};
//! use raftify_core::{AbstractLogEntry, Bootstrap, Config, MemStore, Raft};
//! use raftify_grpc::{GrpcConfig, GrpcTransport, RaftClient, RaftGrpcServer};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), raftify_core::BoxError> {
//! let grpc = GrpcConfig::default();
//! // 1. Bind first (port 0: any free port), so the node knows its address.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?.to_string();
//! // 2. The transport, then the node.
//! let transport = GrpcTransport::new(addr.clone(), grpc.clone())?;
//! let raft = Raft::builder(Config::new(1), KvStore::default())
//!     .storage(Arc::new(MemStore::new()))
//!     .transport(Arc::new(transport))
//!     .bootstrap(Bootstrap::Single { addr: addr.clone() })
//!     .logger(raftify_core::discard_logger())
//!     .start()
//!     .await?;
//! // 3. Serve the node's handle.
//! let server = RaftGrpcServer::new(raft.handle().clone(), grpc.clone()).spawn(listener)?;
//! raft.handle().wait_for_leader(std::time::Duration::from_secs(5)).await?;
//!
//! // An application talks to the cluster through a client.
//! let client = RaftClient::new([addr], grpc)?;
//! let put = KvCmd::Put { key: "k".into(), value: "v".into() };
//! let previous = client.propose(put.encode()?).await?;
//! assert_eq!(previous, b"");
//!
//! server.shutdown().await;
//! raft.handle().shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! A cluster: every initial node gets [`Bootstrap::Members`] with all the
//! addresses; a new node asks any member for a ticket
//! ([`raftify_core::request_join_ticket`] with its transport, or
//! [`RaftClient::request_id`]), starts with the ticket's id and calls
//! [`RaftHandle::join_cluster`](raftify_core::RaftHandle::join_cluster).
//!
//! [`Bootstrap::Members`]: raftify_core::Bootstrap::Members
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod auth;
mod backup;
mod calls;
mod client;
mod client_service;
mod config;
mod conn;
mod convert;
mod error;
mod groups;
mod identity;
mod liveness;
mod net;
mod peer_service;
mod read;
mod server;
mod snapshot_rx;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
mod transport;

/// The generated protobuf messages and tonic service (package
/// `raftify.v1`, from `proto/raftify.proto`).
#[allow(
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod pb {
    tonic::include_proto!("raftify.v1");
}

pub use auth::BearerTokens;
pub use backup::SavedSnapshot;
pub use client::{LeaderInfo, RaftClient};
pub use config::{GrpcConfig, TlsConfig};
pub use error::{error_to_status, status_to_error};
pub use groups::{Groups, ReplicaFactory, GROUP_HEADER};
pub use identity::NODE_NAME_PREFIX;
pub use read::{state_machine_reader, ReadHandler};
pub use server::{RaftGrpcServer, ServerHandle, SHUTDOWN_GRACE};
pub use transport::GrpcTransport;

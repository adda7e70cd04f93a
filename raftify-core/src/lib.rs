//! # raftify-core
//!
//! A replicated, fault-tolerant service in two traits: implement
//! [`AbstractLogEntry`] (how a command becomes bytes) and
//! [`AbstractStateMachine`] (apply, snapshot, restore), and raftify runs
//! tikv's [`raft`] crate for you — elections, replication, membership,
//! linearizable reads, snapshots and log compaction.
//!
//! The core knows no network and no disk: storage is a [`LogStore`]
//! ([`MemStore`] here, LMDB in `raftify-storage`) and the network a
//! [`Transport`] ([`InProcNetwork`] here, gRPC in `raftify-grpc`).
//!
//! ## The usage contract
//!
//! * `apply` is called once per committed entry, in log order, on every
//!   node; it must be deterministic. Its output goes back to the proposer.
//! * [`Raft::propose`] resolves after the entry is committed **and applied
//!   on the leader**, with the state machine's output; on a follower the
//!   entry is forwarded to the leader ([`Raft::propose_local`] refuses with
//!   [`Error::NotLeader`] instead).
//! * [`Raft::stale_read`] reads the local state machine (maybe stale);
//!   [`Raft::linearizable_read`] first confirms the read index with a quorum.
//!   The state machine only ever changes through the log.
//! * Every error has an [`ErrorClass`] that says what to do: go to the
//!   leader, retry later, outcome unknown (read back before retrying a
//!   write), rejected, or this node is dead. [`retry`] holds the one
//!   retry loop, which never resends a write whose outcome is unknown.
//! * Membership, status, leadership and shutdown are on the untyped
//!   [`RaftHandle`] ([`Raft::handle`]).
//!
//! ## A replicated hash map
//!
//! ```
//! use raftify_core::{
//!     AbstractLogEntry, AbstractStateMachine, Bootstrap, BoxError, Config, InProcNetwork,
//!     MemStore, Raft,
//! };
//! use std::collections::HashMap;
//! use std::sync::Arc;
//!
//! // 1. The command: how it travels through the log.
//! enum Put { Set(String, String) }
//! impl AbstractLogEntry for Put {
//!     fn encode(&self) -> Result<Vec<u8>, BoxError> {
//!         let Put::Set(k, v) = self;
//!         Ok(format!("{k}\n{v}").into_bytes())
//!     }
//!     fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
//!         let (k, v) = std::str::from_utf8(bytes)?.split_once('\n').ok_or("bad entry")?;
//!         Ok(Put::Set(k.into(), v.into()))
//!     }
//! }
//!
//! // 2. The state: apply, snapshot, restore.
//! #[derive(Default)]
//! struct HashStore(HashMap<String, String>);
//! #[async_trait::async_trait]
//! impl AbstractStateMachine<Put> for HashStore {
//!     type Output = Option<String>; // the previous value
//!     async fn apply(&mut self, entry: Put) -> Result<Option<String>, BoxError> {
//!         let Put::Set(k, v) = entry;
//!         Ok(self.0.insert(k, v))
//!     }
//!     async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
//!         Ok(serde_json::to_vec(&self.0)?)
//!     }
//!     async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError> {
//!         self.0 = serde_json::from_slice(&snapshot)?;
//!         Ok(())
//!     }
//! }
//!
//! // 3. Run it: here a single node on the in-process network.
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = InProcNetwork::new(1);
//! let raft = Raft::builder(Config::new(1), HashStore::default())
//!     .storage(Arc::new(MemStore::new()))
//!     .transport(net.transport(1))
//!     .bootstrap(Bootstrap::Single { addr: net.addr_of(1) })
//!     .logger(raftify_core::discard_logger())
//!     .start()
//!     .await?;
//! net.register(1, raft.handle().inbound());
//! raft.handle().wait_for_leader(std::time::Duration::from_secs(5)).await?;
//!
//! raft.propose(&Put::Set("k".into(), "v1".into())).await?;
//! let previous = raft.propose(&Put::Set("k".into(), "v2".into())).await?;
//! assert_eq!(previous.as_deref(), Some("v1"));
//! let value = raft.linearizable_read(|s| s.0.get("k").cloned()).await?;
//! assert_eq!(value.as_deref(), Some("v2"));
//! raft.handle().shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! A cluster is the same with [`Bootstrap::Members`] on every initial node,
//! or [`request_join_ticket`] + [`RaftHandle::join_cluster`] to grow one.
#![deny(missing_docs)]
// rust-protobuf messages are built field by field, as raft-rs itself does.
#![allow(clippy::field_reassign_with_default)]

pub mod client_session;
pub mod codec;
mod config;
mod error;
mod error_info;
pub mod membership;
pub mod metrics;
mod node;
mod raft_loop;
pub mod retry;
pub mod sessions;
mod state_machine;
pub mod status;
pub mod storage;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;

pub use client_session::{cluster_session, LazySession, Session, SessionTarget};
pub use config::{Config, ReadMode};
pub use error::{Error, ErrorClass, Rejection, Result};
pub use error_info::ErrorInfo;
pub use membership::{JoinTicket, Member, MemberRole, MembershipChange};
pub use node::{
    default_logger, discard_logger, stderr_logger, stderr_logger_as, Bootstrap, LogFormat, Raft,
    RaftBuilder, RaftHandle,
};
pub use sessions::SessionWrite;
pub use state_machine::{AbstractLogEntry, AbstractStateMachine, BoxError, Payload, SnapshotView};
pub use status::{unix_ms, Event, MetricsSnapshot, NodeState, Role, Status};
pub use storage::{
    LogStore, MemStore, SnapshotInfo, SnapshotWriter, StorageError, WriteBatch, WriteSnapshot,
};
pub use transport::{
    call_cluster, request_join_ticket, ClusterApi, Feedback, InProcNetwork, InProcTransport,
    Inbound, Membership, Outcome, PeerLiveness, Transport,
};

/// The protobuf runtime raft-rs's messages are built on.
pub use prometheus_client;
pub use protobuf;
/// raft-rs, re-exported so users and backends use the same version.
pub use raft;

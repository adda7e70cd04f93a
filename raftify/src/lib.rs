//! # raftify
//!
//! A replicated, fault-tolerant service in two traits: implement
//! [`AbstractLogEntry`] and [`AbstractStateMachine`], describe the node in a
//! [`NodeSpec`], and [`launch`] it — LMDB storage, gRPC between nodes and
//! for clients, bootstrap, join, resume and restore are handled the same
//! way for every front-end.
//!
//! This crate re-exports what users touch from `raftify-core`,
//! `raftify-storage` and `raftify-grpc`, so an application depends on one
//! crate.
//!
//! ```no_run
//! use raftify::{launch, NodeSpec, Start, Storage};
//! # use raftify_core::testkit::{KvCmd, KvStore}; // any entry + state machine
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut spec = NodeSpec::new();
//! spec.default_id = Some(1);
//! spec.raft_addr = Some("127.0.0.1:60061".into());
//! spec.storage = Storage::PerNode("data".into());
//! spec.start = Start::Single;
//! let node = launch::<KvCmd, _>(spec, KvStore::default(), None).await?;
//! let out = node.raft.propose(&KvCmd::Put { key: "k".into(), value: "v".into() }).await?;
//! node.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cli;
pub mod dashboard;
#[cfg(feature = "http")]
pub mod http;
mod launch;
mod members;
mod spec;

pub use launch::{
    holds_data, launch, launch_group, lmdb_options, served_grpc, GroupHost, LaunchError, Launched,
    LaunchedGroup, ReadFn,
};
pub use members::parse_members;
pub use spec::{NodeSpec, Restore, Start, Storage};

pub use raftify_core::{
    retry, AbstractLogEntry, AbstractStateMachine, Bootstrap, BoxError, Config, Error, ErrorClass,
    JoinTicket, Member, MemberRole, MembershipChange, NodeState, Raft, RaftHandle, ReadMode,
    Rejection, Result, Role, Status,
};
pub use raftify_grpc::{GrpcConfig, RaftClient, TlsConfig};
pub use raftify_storage::{JournalStats, LmdbEnv, LmdbError, LmdbOptions, LmdbStore};

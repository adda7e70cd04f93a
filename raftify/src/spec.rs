//! [`NodeSpec`]: what a front-end asks the launcher for.

use raftify_core::Config;
use raftify_grpc::GrpcConfig;
use raftify_storage::LmdbEnv;
use slog::Logger;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a node keeps its log.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In memory: gone when the process ends (tests, caches that may
    /// start empty).
    Memory,
    /// LMDB in this directory.
    Dir(PathBuf),
    /// LMDB in `<root>/node-<id>`, once the id is known (for a joining
    /// node, after the cluster reserved it).
    PerNode(PathBuf),
    /// LMDB in `<root>/<name>-<id>`, once the id is known (as `PerNode`,
    /// for a front-end that names its data dirs after itself).
    PerNodeNamed(PathBuf, String),
    /// This group's log in a shared environment (one LMDB environment and
    /// journal for many groups: a sharded node's replicas), opened with
    /// its own options; `NodeSpec::no_sync`/`journal` do not apply.
    Shared(Arc<LmdbEnv>, u64),
}

/// How a node whose storage is empty gets its membership. A node whose
/// storage holds a log always resumes from it.
#[derive(Debug, Clone)]
pub enum Start {
    /// A one-node cluster of this node.
    Single,
    /// A new cluster of these voters (id → raft address); every initial
    /// member is given the same list.
    Members(BTreeMap<u64, String>),
    /// `Members` when the map is not empty, else `Single`.
    Auto(BTreeMap<u64, String>),
    /// Join a running cluster through any of these member addresses: the
    /// cluster reserves this node's id, then adds it (as a learner when
    /// `as_learner`).
    Join {
        /// Raft addresses of some members.
        via: Vec<String>,
        /// Join as a non-voting learner.
        as_learner: bool,
    },
    /// No membership: wait to be added by a leader.
    Wait,
}

/// Rebuild an empty data dir before starting.
#[derive(Debug, Clone)]
pub enum Restore {
    /// From a copy of another node's WAL directory (read-only: it may be a
    /// running node's).
    WalFrom(PathBuf),
    /// From a snapshot file, or a data dir's latest snapshot.
    SnapshotFrom(PathBuf),
}

/// Everything the launcher needs to start one node. Fill the fields the
/// front-end knows; [`NodeSpec::new`] has the defaults.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// This node's id. `None`: the id stored in the data dir, the one the
    /// cluster reserves when joining, or else `default_id`.
    pub id: Option<u64>,
    /// The id of a new node that was given none (`None`: an id is
    /// required).
    pub default_id: Option<u64>,
    /// The address peers reach this node's raft (gRPC) service at. `None`:
    /// this node's entry in the initial members, the address recorded in
    /// its data, or else `fallback_raft_addr`. Port 0 takes the port bound.
    pub raft_addr: Option<String>,
    /// The raft address used when nothing else gives one.
    pub fallback_raft_addr: Option<String>,
    /// The address to bind, when it differs from the raft address (e.g.
    /// `0.0.0.0:60061` in a container). Default: the raft address.
    pub listen_addr: Option<String>,
    /// Where the log is kept.
    pub storage: Storage,
    /// Do not fsync the log (an OS crash can lose acknowledged writes).
    pub no_sync: bool,
    /// With fsync on: write the log through the storage journal, one
    /// `fdatasync` per write (default true); false makes every write an
    /// LMDB commit (two). See `raftify_storage::LmdbOptions::journal`.
    pub journal: bool,
    /// Size of one journal segment file (`None`: the store's default,
    /// 16 MiB; see `raftify_storage::LmdbOptions::journal_segment_size`).
    /// A store keeps two or three, zero-filled: a process hosting many
    /// groups (a sharded node) gives each a smaller one.
    pub journal_segment_size: Option<usize>,
    /// How an empty node starts.
    pub start: Start,
    /// Rebuild the (empty) data dir first. A data dir that already holds a
    /// log is resumed and the restore skipped, with a note: restarting with
    /// the same command line after a restore is not an error.
    pub restore: Option<Restore>,
    /// raft settings; its `id` is set by the launcher.
    pub config: Config,
    /// gRPC settings (TLS, tokens, limits) of the server and the transport.
    pub grpc: GrpcConfig,
    /// Where the node, its server and transport log.
    pub logger: Logger,
}

impl NodeSpec {
    /// A spec with defaults: a single node in memory, no id given, raft
    /// settings from [`Config::new`], default gRPC settings, raftify's
    /// default logger.
    pub fn new() -> Self {
        NodeSpec {
            id: None,
            default_id: None,
            raft_addr: None,
            fallback_raft_addr: None,
            listen_addr: None,
            storage: Storage::Memory,
            no_sync: false,
            journal: true,
            journal_segment_size: None,
            start: Start::Single,
            restore: None,
            config: Config::new(1),
            grpc: GrpcConfig::default(),
            logger: raftify_core::default_logger(),
        }
    }

    /// The initial members this spec bootstraps with, if any.
    pub(crate) fn initial_members(&self) -> Option<&BTreeMap<u64, String>> {
        match &self.start {
            Start::Members(m) => Some(m),
            Start::Auto(m) if !m.is_empty() => Some(m),
            _ => None,
        }
    }
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self::new()
    }
}

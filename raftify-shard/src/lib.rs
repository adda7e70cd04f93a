//! # raftify-shard
//!
//! Sharding for raftify: many Raft groups, keys placed by Redis Cluster's
//! hash slots, and the map of which group owns which slots replicated by
//! a Raft group of its own.
//!
//! * [`slots`]: the 16,384 slots, [`key_slot`] (CRC16 with hash tags, as
//!   Redis computes it) and [`SlotRange`].
//! * [`Placement`]: slot → group, group → replicas, the member nodes and
//!   the slot move in progress; changed only by checked [`Change`]s, each
//!   bumping its version, so that every slot has exactly one owner at
//!   every version.
//! * [`MetaStore`]: the placement as the state machine of the metadata
//!   group ([`META_GROUP`]), whose log holds [`MetaEntry`]s (placement
//!   changes, broadcasts every node receives in one order, and commands of
//!   the application's cluster-wide [`SharedState`]); every node follows
//!   the placement through a watch.
//! * [`plan`]: the rebalance planner, a pure function from the committed
//!   placement (and the groups' leaders) to the next [`Step`]: replicas
//!   onto new nodes and off leaving ones, new groups, slot moves, leader
//!   transfers, until every node holds and leads its share.
//! * [`Rebalancing`]: one step carried out (replica added, slots moved
//!   with the application's [`SlotMover`], ...) over a [`GroupTransport`]
//!   — gRPC in a [`ShardHost`], the in-process network in the seeded
//!   simulation.
//! * [`report`]: the cluster as one node sees it (groups, ranges,
//!   leaders, each replica's lag, sleep and size), for the CLI and the
//!   status page ([`page`]).
//!
//! * [`ShardHost`]: one process of a sharded cluster — the metadata group,
//!   the data replicas the placement gives it, the rebalancer that carries
//!   the planner's steps out, and [`ShardHost::broadcast`].
//!
//! Transport and serving of many groups in one process are in
//! `raftify-grpc` (`GrpcTransport::for_group`, `Groups`); the design, and
//! what is still to come, is in `docs/ARCHITECTURE.md`.
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod admin;
mod change;
mod host;
mod meta;
mod metrics;
mod mover;
pub mod page;
mod placement;
mod plan;
mod reach;
mod rebalance;
pub mod report;
pub mod slots;
mod step;
mod storage;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use host::{MakeState, ShardError, ShardHost, ShardSpec, PLACEMENT_QUERY};
pub use metrics::GroupLabel;
pub use mover::SlotMover;
pub use reach::GroupTransport;
pub use step::Rebalancing;

pub use meta::{
    BroadcastHook, MetaCommand, MetaEntry, MetaOutcome, MetaStore, PlacementHook, SharedState,
    BROADCAST_TAG, SHARED_TAG,
};
pub use placement::{
    Change, GroupId, GroupInfo, NodeId, NodeInfo, Placement, PlacementError, Settings, SlotMove,
    MAX_GROUPS_PER_NODE, MAX_REPLICAS, META_GROUP,
};
pub use plan::{plan, Observed, Step};
pub use report::{
    gather, rebalance_summary, ClusterReport, GroupReport, NodeReport, RebalanceState,
    ReplicaReport,
};
pub use slots::{key_slot, SlotRange, SLOTS};

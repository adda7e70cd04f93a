//! [`Change`]: the changes a [`Placement`](crate::Placement) accepts, and
//! [`PlacementError`]: why one is refused.

use crate::placement::{GroupId, NodeId, NodeInfo, Settings, SlotMove};
use crate::slots::SlotRange;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One change to the placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The first node: data group 1 on it owns every slot.
    Bootstrap {
        /// The node.
        node: NodeId,
        /// Its addresses.
        info: NodeInfo,
        /// The targets.
        settings: Settings,
    },
    /// A node joins (or, already a member, updates its addresses).
    AddNode {
        /// The node.
        node: NodeId,
        /// Its addresses.
        info: NodeInfo,
    },
    /// Marks a node to leave (or not).
    SetLeaving {
        /// The node.
        node: NodeId,
        /// Whether it leaves.
        leaving: bool,
    },
    /// Marks a node down (not heard from) or up again.
    SetDown {
        /// The node.
        node: NodeId,
        /// Whether it is down.
        down: bool,
    },
    /// Removes a node that hosts no replica.
    RemoveNode {
        /// The node.
        node: NodeId,
    },
    /// A new data group, owning no slots yet; `group` must be
    /// [`Placement::next_group`](crate::Placement::next_group).
    CreateGroup {
        /// The new group's id.
        group: GroupId,
        /// Its replicas.
        replicas: BTreeSet<NodeId>,
    },
    /// Records a group's replicas after its membership changed (a node
    /// that became a voter stops being a learner).
    SetReplicas {
        /// The group.
        group: GroupId,
        /// Its replicas now.
        replicas: BTreeSet<NodeId>,
    },
    /// Records the nodes being given a replica of a group (before the
    /// group adds them as learners).
    SetLearners {
        /// The group.
        group: GroupId,
        /// The learners now.
        learners: BTreeSet<NodeId>,
    },
    /// Removes a data group that owns no slots.
    DeleteGroup {
        /// The group.
        group: GroupId,
    },
    /// Starts moving slots (one move at a time).
    BeginMove(SlotMove),
    /// Ends the move in progress: the slots belong to its target.
    CommitMove(SlotMove),
    /// Abandons the move in progress: the slots stay with its source.
    AbortMove(SlotMove),
    /// The source of a committed move no longer holds the moved data.
    Purged(SlotMove),
    /// Changes the targets.
    SetSettings(Settings),
    /// Asks for a rebalance. Any node may propose it (the request is in
    /// the placement, so the metadata leader sees it, now or after a
    /// leader change).
    AskRebalance,
    /// The metadata leader found nothing left to do for the rebalances
    /// asked so far.
    RebalanceDone {
        /// [`Placement::rebalances_asked`](crate::Placement::rebalances_asked)
        /// when it planned (a request made since stays pending).
        asked: u64,
    },
}

/// Why a change was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PlacementError {
    /// The change was planned against another version.
    #[error("the placement is at version {actual}, not {expected}: plan again")]
    Stale {
        /// The version the change was planned against.
        expected: u64,
        /// The current version.
        actual: u64,
    },
    /// `Bootstrap` on a placement that has nodes.
    #[error("the placement is already bootstrapped")]
    AlreadyBootstrapped,
    /// A change other than `Bootstrap` on an empty placement.
    #[error("the placement is not bootstrapped yet")]
    NotBootstrapped,
    /// No such node.
    #[error("node {0} is not a member")]
    UnknownNode(NodeId),
    /// No such group.
    #[error("group {0} does not exist")]
    UnknownGroup(GroupId),
    /// A node that still hosts replicas cannot be removed.
    #[error("node {node} still hosts replicas of groups {groups:?}")]
    NodeInUse {
        /// The node.
        node: NodeId,
        /// The groups it hosts.
        groups: Vec<GroupId>,
    },
    /// A group that owns slots (or takes part in a move) cannot be deleted.
    #[error("group {group} still owns {slots} slots or takes part in a move")]
    GroupInUse {
        /// The group.
        group: GroupId,
        /// How many slots it owns.
        slots: usize,
    },
    /// `CreateGroup` with an id other than the next one.
    #[error("group id {given} is not the next one ({next})")]
    WrongGroupId {
        /// The id given.
        given: GroupId,
        /// The next id.
        next: GroupId,
    },
    /// The slots of a move are not all owned by its source.
    #[error("slots {slots} are not all owned by group {group}")]
    NotOwner {
        /// The slots.
        slots: SlotRange,
        /// The group.
        group: GroupId,
    },
    /// Another move is in progress.
    #[error("a move is in progress: {0}")]
    MoveInProgress(SlotMove),
    /// `CommitMove`/`AbortMove` of a move that is not the one in progress.
    #[error("that move is not in progress")]
    NoSuchMove,
    /// Anything else wrong with the change.
    #[error("invalid change: {0}")]
    Invalid(String),
}

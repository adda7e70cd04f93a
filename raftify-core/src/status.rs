//! What a node reports about itself: role changes (a `watch` channel),
//! a full status, and counters for metrics.

use crate::membership::{Member, MemberRole};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node's role in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Accepts proposals and replicates the log.
    Leader,
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for votes.
    Candidate,
    /// Asking whether it could win an election (pre-vote).
    PreCandidate,
    /// Stopped (shut down or after a fatal storage error).
    Stopped,
}

impl Role {
    pub(crate) fn from_raft(r: raft::StateRole) -> Self {
        match r {
            raft::StateRole::Leader => Role::Leader,
            raft::StateRole::Follower => Role::Follower,
            raft::StateRole::Candidate => Role::Candidate,
            raft::StateRole::PreCandidate => Role::PreCandidate,
        }
    }

    /// Lower-case name (`"leader"`, `"follower"`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre_candidate",
            Role::Stopped => "stopped",
        }
    }
}

/// The part of a node's state that changes on elections, published through
/// [`RaftHandle::subscribe`](crate::RaftHandle::subscribe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// This node's role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The known leader, 0 when none.
    pub leader_id: u64,
    /// The leader's raft address, when known.
    pub leader_addr: Option<String>,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// The cluster's identity (0 while unknown: a new node before its first
    /// snapshot from the leader).
    #[serde(default)]
    pub cluster_uid: u64,
    /// Why the node stopped, after a fatal error.
    pub fatal: Option<String>,
}

impl NodeState {
    /// Whether `other` differs from this state in its applied index at most.
    pub fn same_role(&self, other: &NodeState) -> bool {
        self.role == other.role
            && self.term == other.term
            && self.leader_id == other.leader_id
            && self.leader_addr == other.leader_addr
            && self.cluster_uid == other.cluster_uid
            && self.fatal == other.fatal
    }
}

/// Replication progress of one peer, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProgress {
    /// Highest index known to be replicated on the peer.
    pub matched: u64,
    /// Next index to send.
    pub next_index: u64,
    /// `probe`, `replicate` or `snapshot`.
    pub state: String,
    /// Whether the peer responded recently.
    pub recent_active: bool,
}

/// Something that happened to a node (leader changes, snapshots), kept
/// in [`Status::events`] for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What, in words.
    pub what: String,
}

/// How many events a node keeps.
pub const EVENTS_KEPT: usize = 32;

/// A full picture of a node, for `status` endpoints and debugging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's id.
    pub id: u64,
    /// The cluster it belongs to.
    pub cluster_id: String,
    /// The cluster's identity (see [`NodeState::cluster_uid`]).
    #[serde(default)]
    pub cluster_uid: u64,
    /// Its role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The node voted for in this term, 0 for none.
    pub vote: u64,
    /// The known leader, 0 when none.
    pub leader_id: u64,
    /// Highest committed index known here.
    pub commit_index: u64,
    /// Highest applied index.
    pub applied_index: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// Voters and learners with their addresses.
    pub members: Vec<Member>,
    /// True while a joint configuration is in effect.
    pub joint: bool,
    /// Per-peer progress (on the leader only).
    pub progress: BTreeMap<u64, PeerProgress>,
    /// The node's recent events, oldest first (at most [`EVENTS_KEPT`]).
    #[serde(default)]
    pub events: Vec<Event>,
    /// When this status was taken, in milliseconds since the Unix epoch
    /// (the node's clock: rates drawn from successive statuses do not
    /// depend on the reader's timers).
    #[serde(default)]
    pub at_ms: u64,
    /// Whether the replica sleeps: its group was idle and it stopped
    /// ticking ([`Config::hibernate`](crate::Config::hibernate)).
    #[serde(default)]
    pub hibernating: bool,
    /// About how many bytes the state machine holds, when it says
    /// ([`AbstractStateMachine::size_bytes`](crate::AbstractStateMachine::size_bytes);
    /// `None` also while it is being written to).
    #[serde(default)]
    pub state_bytes: Option<u64>,
}

impl Status {
    /// Ids of the voters.
    pub fn voters(&self) -> Vec<u64> {
        self.members_with(MemberRole::Voter)
    }

    /// Ids of the learners.
    pub fn learners(&self) -> Vec<u64> {
        self.members_with(MemberRole::Learner)
    }

    fn members_with(&self, role: MemberRole) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| m.role == role)
            .map(|m| m.id)
            .collect()
    }
}

pub use crate::metrics::Metrics;

/// A point-in-time copy of [`Metrics`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Proposals accepted into the log by this node as leader.
    pub proposals: u64,
    /// Proposals that failed (not leader, dropped, lost leadership, ...).
    pub proposals_failed: u64,
    /// Entries applied to the state machine.
    pub applied_entries: u64,
    /// Times the known leader changed.
    pub leader_changes: u64,
    /// raft `Ready`s handled.
    pub readys: u64,
    /// Storage write batches (group commits).
    pub storage_writes: u64,
    /// Syncs the storage writer asked for on their own, to make a write
    /// durable that no later write followed (see
    /// [`Durability`](crate::storage::Durability)); always 0 on a store
    /// whose writes are durable at once.
    #[serde(default)]
    pub storage_syncs: u64,
    /// Entries persisted.
    pub persisted_entries: u64,
    /// Raft messages sent.
    pub messages_sent: u64,
    /// Raft messages received.
    pub messages_received: u64,
    /// Snapshots taken locally.
    pub snapshots_created: u64,
    /// Snapshots installed from the leader.
    pub snapshots_installed: u64,
    /// Read-index rounds issued (each may serve many reads).
    pub read_index_requests: u64,
    /// Proposals this node forwarded to the leader (as a follower).
    #[serde(default)]
    pub forwarded_proposals: u64,
    /// Requests that carried them (several proposals share one).
    #[serde(default)]
    pub forward_batches: u64,
}

impl Metrics {
    /// Copies the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &prometheus_client::metrics::counter::Counter| c.get();
        MetricsSnapshot {
            proposals: g(&self.proposals),
            proposals_failed: g(&self.proposals_failed),
            applied_entries: g(&self.applied_entries),
            leader_changes: g(&self.leader_changes),
            readys: g(&self.readys),
            storage_writes: g(&self.storage_writes),
            storage_syncs: g(&self.storage_syncs),
            persisted_entries: g(&self.persisted_entries),
            messages_sent: g(&self.messages_sent),
            messages_received: g(&self.messages_received),
            snapshots_created: g(&self.snapshots_created),
            snapshots_installed: g(&self.snapshots_installed),
            read_index_requests: g(&self.read_index_requests),
            forwarded_proposals: g(&self.forwarded_proposals),
            forward_batches: g(&self.forward_batches),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it): the
/// time of events, statuses and session writes.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

//! What a sharded cluster looks like now: the placement as a node applied
//! it, each group's leader, and each replica's progress as its own node
//! reports it. The one report behind `raftify-cli shards`, raftify-redis's
//! `GET /cluster` and its status page (see [`crate::page`]).
//!
//! Gathering asks every replica for its status over gRPC (one call per
//! replica, each bounded by the client's timeout): a replica that does not
//! answer is reported with its progress unknown (`null`), not left out.

use crate::placement::{GroupId, NodeId, Placement, Settings, SlotMove};
use crate::slots::SlotRange;
use raftify_grpc::RaftClient;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a rebalance stands as the placement records it (the metadata
/// leader, which carries it out, knows its current step besides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceState {
    /// A slot move in progress.
    Moving(SlotMove),
    /// Asked for, not carried out yet.
    Requested,
    /// Nothing to do, at this placement version.
    Done(u64),
}

impl RebalanceState {
    /// The state of `p`.
    pub fn of(p: &Placement) -> RebalanceState {
        match p.moving() {
            Some(m) => RebalanceState::Moving(m),
            None if p.rebalance_pending() => RebalanceState::Requested,
            None => RebalanceState::Done(p.version()),
        }
    }
}

/// `moving: <the move>`, `requested`, or `done (placement version N)`.
impl std::fmt::Display for RebalanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RebalanceState::Moving(m) => write!(f, "moving: {m}"),
            RebalanceState::Requested => write!(f, "requested"),
            RebalanceState::Done(v) => write!(f, "done (placement version {v})"),
        }
    }
}

/// [`RebalanceState::of`] as text.
pub fn rebalance_summary(p: &Placement) -> String {
    RebalanceState::of(p).to_string()
}

/// The cluster at one placement version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The placement's version.
    pub version: u64,
    /// What the placement aims for.
    pub settings: Settings,
    /// The slot move in progress.
    pub moving: Option<SlotMove>,
    /// Moves committed whose source still holds the keys.
    pub purging: Vec<SlotMove>,
    /// The member nodes.
    pub nodes: Vec<NodeReport>,
    /// The groups, by id.
    pub groups: Vec<GroupReport>,
    /// Where a rebalance stands (starts with `done` when nothing is to
    /// move): [`rebalance_summary`], or the rebalancer's own status on a
    /// node that carries it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<String>,
}

/// One member node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Its id.
    pub id: NodeId,
    /// Its Raft (gRPC) address.
    pub raft_addr: String,
    /// The address clients are sent to.
    pub client_addr: String,
    /// Being removed (its replicas move elsewhere first).
    pub leaving: bool,
    /// Marked down (not heard from for the placement's `dead_after`).
    pub down: bool,
    /// Slots of the groups it leads.
    pub slots_led: usize,
}

/// One group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    /// Its id.
    pub id: GroupId,
    /// How many slots it owns.
    pub slots: usize,
    /// Its slot ranges (`first-last`).
    pub ranges: Vec<String>,
    /// Its leader, when one is known.
    pub leader: Option<NodeId>,
    /// Its voters, then its learners.
    pub replicas: Vec<ReplicaReport>,
}

/// One replica of a group, as its node reports it (`None`: it did not
/// answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// The node hosting it.
    pub node: NodeId,
    /// A learner (catching up), not a voter.
    pub learner: bool,
    /// Its last applied index.
    pub applied_index: Option<u64>,
    /// Entries its apply is behind its leader's commit.
    pub lag: Option<u64>,
    /// Sleeping (an idle group: no ticks, no heartbeats).
    pub asleep: Option<bool>,
    /// Entries in its log.
    pub log_entries: Option<u64>,
    /// Its state's size in bytes, when the state machine reports one.
    pub state_bytes: Option<u64>,
}

impl GroupReport {
    /// The leader's replica, when the leader is known and answered.
    pub fn leader_replica(&self) -> Option<&ReplicaReport> {
        let leader = self.leader?;
        self.replicas.iter().find(|r| r.node == leader)
    }
}

/// Builds the report of `placement`, asking each replica for its status
/// through `client`.
pub async fn gather(client: &RaftClient, placement: &Placement) -> ClusterReport {
    let p = placement;
    let ranges = p.ranges();
    let mut groups = Vec::new();
    for (&g, info) in p.groups() {
        let c = client.for_group(g);
        let mut statuses = Vec::new();
        for &n in info.replicas.iter().chain(&info.learners) {
            let status = match p.nodes().get(&n) {
                Some(node) => c.status(&node.raft_addr).await.ok(),
                None => None,
            };
            statuses.push((n, status));
        }
        // The replica that says it leads; else the leader the others
        // follow (asked of the replicas themselves: the node making the
        // report may host none).
        let says = |pick: &dyn Fn(&raftify_core::Status) -> Option<NodeId>| {
            statuses.iter().find_map(|(_, s)| s.as_ref().and_then(pick))
        };
        let leader = says(&|s| (s.role == raftify_core::Role::Leader).then_some(s.id))
            .or_else(|| says(&|s| (s.leader_id != 0).then_some(s.leader_id)));
        let leader_commit = statuses
            .iter()
            .find(|(n, _)| Some(*n) == leader)
            .and_then(|(_, s)| s.as_ref().map(|s| s.commit_index));
        let replicas = statuses
            .into_iter()
            .map(|(n, s)| ReplicaReport {
                node: n,
                learner: info.learners.contains(&n),
                applied_index: s.as_ref().map(|s| s.applied_index),
                lag: leader_commit
                    .zip(s.as_ref().map(|s| s.applied_index))
                    .map(|(c, a)| c.saturating_sub(a)),
                asleep: s.as_ref().map(|s| s.hibernating),
                log_entries: s
                    .as_ref()
                    .map(|s| (s.last_index + 1).saturating_sub(s.first_index)),
                state_bytes: s.as_ref().and_then(|s| s.state_bytes),
            })
            .collect();
        let own: Vec<SlotRange> = ranges
            .iter()
            .filter(|(_, o)| *o == g)
            .map(|(r, _)| *r)
            .collect();
        groups.push(GroupReport {
            id: g,
            slots: own.iter().map(|r| r.len()).sum(),
            ranges: own.iter().map(|r| r.to_string()).collect(),
            leader,
            replicas,
        });
    }
    let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
    for g in &groups {
        if let Some(l) = g.leader {
            *led.entry(l).or_default() += g.slots;
        }
    }
    ClusterReport {
        version: p.version(),
        settings: p.settings(),
        moving: p.moving(),
        purging: p.purging().to_vec(),
        nodes: p
            .nodes()
            .iter()
            .map(|(&id, n)| NodeReport {
                id,
                raft_addr: n.raft_addr.clone(),
                client_addr: n.client_addr.clone(),
                leaving: n.leaving,
                down: n.down,
                slots_led: led.get(&id).copied().unwrap_or(0),
            })
            .collect(),
        groups,
        rebalance: Some(rebalance_summary(p)),
    }
}

//! [`Placement`]: which Raft group owns each slot, which nodes host a
//! replica of each group, and the slot move in progress.
//!
//! The placement is a value changed only by [`Placement::apply`]: every
//! [`Change`] is checked first and then applied whole (or refused with a
//! [`PlacementError`] and nothing changed), and every applied change bumps
//! [`Placement::version`]. It is replicated as the state machine of the
//! metadata group ([`crate::MetaStore`]), so every node agrees on it: by
//! construction each slot has exactly one owner at every version.

pub use crate::change::{Change, PlacementError};
use crate::slots::{runs, Slot, SlotRange, SLOTS};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A Raft group's id. Data groups are numbered from 1;
/// [`META_GROUP`] is the metadata group.
pub type GroupId = u64;

/// A node's id: one per process, the same in every group it hosts.
pub type NodeId = u64;

/// The metadata group, which replicates the placement itself.
pub const META_GROUP: GroupId = 0;

/// Most replicas a group may be asked to have.
pub const MAX_REPLICAS: usize = 7;

/// Most data groups per node a placement may be asked to spread.
pub const MAX_GROUPS_PER_NODE: usize = 64;

/// A member node: where its peers and its clients reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its raft (gRPC) address, `host:port`.
    pub raft_addr: String,
    /// The address clients are sent to (`MOVED`, `CLUSTER SLOTS`).
    pub client_addr: String,
    /// Marked to leave: its replicas are moved elsewhere, then it is
    /// removed.
    #[serde(default)]
    pub leaving: bool,
    /// Marked down by the metadata leader: not heard from for the
    /// configured time (`ShardSpec::dead_after`). Its replicas are
    /// replaced on other nodes where there is room, and it is given no
    /// new ones; it stays a member and is marked up when heard again.
    #[serde(default)]
    pub down: bool,
}

/// A data group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The nodes that host a voting replica of it (as its own membership
    /// last changed).
    pub replicas: BTreeSet<NodeId>,
    /// Nodes being given a replica: recorded before the group adds them
    /// as learners, so that a node creates a replica only of a group it is
    /// being given; promoted into `replicas` once caught up.
    #[serde(default)]
    pub learners: BTreeSet<NodeId>,
    /// The replicas it was created with: the only nodes that may
    /// bootstrap it (with exactly these members), and only while its
    /// replicas are still these.
    #[serde(default)]
    pub initial: BTreeSet<NodeId>,
}

impl GroupInfo {
    /// Whether `node` hosts (or is being given) a replica.
    pub fn hosts(&self, node: NodeId) -> bool {
        self.replicas.contains(&node) || self.learners.contains(&node)
    }
}

/// A move of slots from one group to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMove {
    /// The slots that move.
    pub slots: SlotRange,
    /// The group that owns them until the move commits.
    pub from: GroupId,
    /// The group that owns them after.
    pub to: GroupId,
}

impl fmt::Display for SlotMove {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "slots {} from group {} to group {}",
            self.slots, self.from, self.to
        )
    }
}

/// What the placement aims for (the planner's targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Replicas per group (fewer while there are fewer nodes).
    pub replicas: usize,
    /// Data groups per node: the cluster aims for `nodes × this` groups.
    pub groups_per_node: usize,
    /// A size limit per group, in bytes of state (what replicas report,
    /// [`raftify_core::Status::state_bytes`]): while the groups hold more
    /// than this each on average, the cluster aims for more groups (up
    /// to `nodes × MAX_GROUPS_PER_NODE`), so slots spread over them; it
    /// aims for fewer again only once they would hold under half of it.
    /// 0: no limit.
    #[serde(default)]
    pub max_group_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            replicas: 3,
            groups_per_node: 1,
            max_group_bytes: 0,
        }
    }
}

impl Settings {
    fn validate(&self) -> Result<(), PlacementError> {
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(PlacementError::Invalid(format!(
                "replicas must be 1 to {MAX_REPLICAS}, not {}",
                self.replicas
            )));
        }
        if !(1..=MAX_GROUPS_PER_NODE).contains(&self.groups_per_node) {
            return Err(PlacementError::Invalid(format!(
                "groups per node must be 1 to {MAX_GROUPS_PER_NODE}, not {}",
                self.groups_per_node
            )));
        }
        Ok(())
    }
}

/// The placement: slot owners, groups, nodes, the move in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Repr", into = "Repr")]
pub struct Placement {
    version: u64,
    /// The owner of each slot (index = slot); 0 before bootstrap.
    owners: Vec<GroupId>,
    groups: BTreeMap<GroupId, GroupInfo>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    moving: Option<SlotMove>,
    /// Committed moves whose source still holds the slots' data.
    purging: Vec<SlotMove>,
    next_group: GroupId,
    settings: Settings,
    /// Rebalances asked for ([`Change::AskRebalance`]), and how many of
    /// them the metadata leader carried out.
    rebalances_asked: u64,
    rebalances_done: u64,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            version: 0,
            owners: vec![0; usize::from(SLOTS)],
            groups: BTreeMap::new(),
            nodes: BTreeMap::new(),
            moving: None,
            purging: Vec::new(),
            next_group: 1,
            settings: Settings::default(),
            rebalances_asked: 0,
            rebalances_done: 0,
        }
    }
}

impl Placement {
    /// A member's entry, to change it.
    fn node_mut(&mut self, node: NodeId) -> Result<&mut NodeInfo, PlacementError> {
        self.nodes
            .get_mut(&node)
            .ok_or(PlacementError::UnknownNode(node))
    }

    /// Bumped by every change applied; 0 before bootstrap.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether it has been bootstrapped.
    pub fn is_bootstrapped(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The targets.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The member nodes.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.nodes
    }

    /// The data groups.
    pub fn groups(&self) -> &BTreeMap<GroupId, GroupInfo> {
        &self.groups
    }

    /// The move in progress.
    pub fn moving(&self) -> Option<SlotMove> {
        self.moving
    }

    /// Rebalances asked for so far ([`Change::AskRebalance`]).
    pub fn rebalances_asked(&self) -> u64 {
        self.rebalances_asked
    }

    /// Whether a rebalance was asked for that the metadata leader has not
    /// carried out yet.
    pub fn rebalance_pending(&self) -> bool {
        self.rebalances_done < self.rebalances_asked
    }

    /// Committed moves whose source group still holds the moved slots'
    /// data (to be purged, then recorded with [`Change::Purged`]).
    pub fn purging(&self) -> &[SlotMove] {
        &self.purging
    }

    /// The id the next `CreateGroup` must use.
    pub fn next_group(&self) -> GroupId {
        self.next_group
    }

    /// The raft addresses of the nodes hosting `group` (replicas and
    /// learners); none for a group not in the placement.
    pub fn group_addrs(&self, group: GroupId) -> Vec<String> {
        self.groups
            .get(&group)
            .map(|g| {
                g.replicas
                    .iter()
                    .chain(&g.learners)
                    .filter_map(|n| self.nodes.get(n).map(|i| i.raft_addr.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The group that owns `slot` (0 before bootstrap). During a move the
    /// source owns the moving slots until the move commits.
    pub fn owner(&self, slot: Slot) -> GroupId {
        self.owners.get(usize::from(slot)).copied().unwrap_or(0)
    }

    /// Each maximal run of slots and its owner, in slot order.
    pub fn ranges(&self) -> Vec<(SlotRange, GroupId)> {
        runs(&self.owners)
    }

    /// How many slots `group` owns.
    pub fn slot_count(&self, group: GroupId) -> usize {
        self.owners.iter().filter(|&&g| g == group).count()
    }

    /// Slots owned per group (every group listed, 0 included).
    pub fn slot_counts(&self) -> BTreeMap<GroupId, usize> {
        let mut counts: BTreeMap<GroupId, usize> = self.groups.keys().map(|&g| (g, 0)).collect();
        for g in &self.owners {
            if let Some(c) = counts.get_mut(g) {
                *c += 1;
            }
        }
        counts
    }

    /// The groups `node` hosts (or is being given) a replica of.
    pub fn groups_of(&self, node: NodeId) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, g)| g.hosts(node))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Applies `change` if `expect_version` (when given) is the current
    /// version and the change is valid; the new version. A change that
    /// changes nothing (a node added again with the same addresses) keeps
    /// the version.
    pub fn apply(
        &mut self,
        expect_version: Option<u64>,
        change: Change,
    ) -> Result<u64, PlacementError> {
        if let Some(expected) = expect_version {
            if expected != self.version {
                return Err(PlacementError::Stale {
                    expected,
                    actual: self.version,
                });
            }
        }
        if !self.is_bootstrapped() && !matches!(change, Change::Bootstrap { .. }) {
            return Err(PlacementError::NotBootstrapped);
        }
        if self.change(change)? {
            self.version += 1;
        }
        Ok(self.version)
    }

    /// Checks and applies one change; whether anything changed.
    fn change(&mut self, change: Change) -> Result<bool, PlacementError> {
        match change {
            Change::Bootstrap {
                node,
                info,
                settings,
            } => {
                if self.is_bootstrapped() {
                    return Err(PlacementError::AlreadyBootstrapped);
                }
                settings.validate()?;
                check_node(node, &info)?;
                self.nodes.insert(node, info);
                self.settings = settings;
                self.groups.insert(
                    1,
                    GroupInfo {
                        replicas: BTreeSet::from([node]),
                        learners: BTreeSet::new(),
                        initial: BTreeSet::from([node]),
                    },
                );
                self.owners.iter_mut().for_each(|o| *o = 1);
                self.next_group = 2;
            }
            Change::AddNode { node, info } => {
                check_node(node, &info)?;
                let info = NodeInfo {
                    leaving: self.nodes.get(&node).is_some_and(|n| n.leaving),
                    down: self.nodes.get(&node).is_some_and(|n| n.down),
                    ..info
                };
                if self.nodes.get(&node) == Some(&info) {
                    return Ok(false);
                }
                self.nodes.insert(node, info);
            }
            Change::SetLeaving { node, leaving } => {
                let n = self.node_mut(node)?;
                if std::mem::replace(&mut n.leaving, leaving) == leaving {
                    return Ok(false);
                }
            }
            Change::SetDown { node, down } => {
                let n = self.node_mut(node)?;
                if std::mem::replace(&mut n.down, down) == down {
                    return Ok(false);
                }
            }
            Change::RemoveNode { node } => {
                if !self.nodes.contains_key(&node) {
                    return Ok(false);
                }
                let groups = self.groups_of(node);
                if !groups.is_empty() {
                    return Err(PlacementError::NodeInUse { node, groups });
                }
                self.nodes.remove(&node);
            }
            Change::CreateGroup { group, replicas } => {
                if group != self.next_group {
                    return Err(PlacementError::WrongGroupId {
                        given: group,
                        next: self.next_group,
                    });
                }
                self.check_replicas(&replicas, &BTreeSet::new())?;
                self.groups.insert(
                    group,
                    GroupInfo {
                        initial: replicas.clone(),
                        replicas,
                        learners: BTreeSet::new(),
                    },
                );
                self.next_group += 1;
            }
            Change::SetReplicas { group, replicas } => {
                let current = self
                    .groups
                    .get(&group)
                    .ok_or(PlacementError::UnknownGroup(group))?;
                if current.replicas == replicas {
                    return Ok(false);
                }
                let hosting: BTreeSet<NodeId> =
                    current.replicas.union(&current.learners).copied().collect();
                self.check_replicas(&replicas, &hosting)?;
                if let Some(g) = self.groups.get_mut(&group) {
                    g.learners.retain(|n| !replicas.contains(n));
                    g.replicas = replicas;
                }
            }
            Change::SetLearners { group, learners } => {
                let current = self
                    .groups
                    .get(&group)
                    .ok_or(PlacementError::UnknownGroup(group))?;
                if current.learners == learners {
                    return Ok(false);
                }
                if let Some(n) = learners.iter().find(|n| current.replicas.contains(n)) {
                    return Err(PlacementError::Invalid(format!(
                        "node {n} already hosts a voting replica of group {group}"
                    )));
                }
                for n in &learners {
                    let info = self.nodes.get(n).ok_or(PlacementError::UnknownNode(*n))?;
                    if info.leaving && !current.learners.contains(n) {
                        return Err(PlacementError::Invalid(format!(
                            "node {n} is leaving: no new replicas on it"
                        )));
                    }
                }
                if let Some(g) = self.groups.get_mut(&group) {
                    g.learners = learners;
                }
            }
            Change::DeleteGroup { group } => {
                if !self.groups.contains_key(&group) {
                    return Ok(false);
                }
                let slots = self.slot_count(group);
                let in_move = self
                    .moving
                    .iter()
                    .chain(&self.purging)
                    .any(|m| m.from == group || m.to == group);
                if slots > 0 || in_move {
                    return Err(PlacementError::GroupInUse { group, slots });
                }
                self.groups.remove(&group);
            }
            Change::BeginMove(m) => {
                if let Some(current) = self.moving {
                    if current == m {
                        return Ok(false);
                    }
                    return Err(PlacementError::MoveInProgress(current));
                }
                if !m.slots.is_valid() {
                    return Err(PlacementError::Invalid(format!("{m}: not a slot range")));
                }
                if m.from == m.to {
                    return Err(PlacementError::Invalid(format!("{m}: to itself")));
                }
                for g in [m.from, m.to] {
                    if !self.groups.contains_key(&g) {
                        return Err(PlacementError::UnknownGroup(g));
                    }
                }
                if m.slots.slots().any(|s| self.owner(s) != m.from) {
                    return Err(PlacementError::NotOwner {
                        slots: m.slots,
                        group: m.from,
                    });
                }
                self.moving = Some(m);
            }
            Change::CommitMove(m) => {
                if self.moving != Some(m) {
                    return Err(PlacementError::NoSuchMove);
                }
                for s in m.slots.slots() {
                    self.owners[usize::from(s)] = m.to;
                }
                self.moving = None;
                self.purging.push(m);
            }
            Change::Purged(m) => {
                let before = self.purging.len();
                self.purging.retain(|p| *p != m);
                if self.purging.len() == before {
                    return Ok(false);
                }
            }
            Change::AbortMove(m) => {
                if self.moving != Some(m) {
                    return Err(PlacementError::NoSuchMove);
                }
                self.moving = None;
            }
            Change::SetSettings(settings) => {
                settings.validate()?;
                if settings == self.settings {
                    return Ok(false);
                }
                self.settings = settings;
            }
            Change::AskRebalance => self.rebalances_asked += 1,
            Change::RebalanceDone { asked } => {
                let upto = asked.min(self.rebalances_asked);
                if upto <= self.rebalances_done {
                    return Ok(false);
                }
                self.rebalances_done = upto;
            }
        }
        Ok(true)
    }

    /// A group's replica set: not empty, known nodes, no node that leaves
    /// unless it already hosts the group (`current`).
    fn check_replicas(
        &self,
        replicas: &BTreeSet<NodeId>,
        current: &BTreeSet<NodeId>,
    ) -> Result<(), PlacementError> {
        if replicas.is_empty() {
            return Err(PlacementError::Invalid(
                "a group needs at least one replica".into(),
            ));
        }
        for n in replicas {
            let info = self.nodes.get(n).ok_or(PlacementError::UnknownNode(*n))?;
            if info.leaving && !current.contains(n) {
                return Err(PlacementError::Invalid(format!(
                    "node {n} is leaving: no new replicas on it"
                )));
            }
        }
        Ok(())
    }

    /// Checks the invariants (what a placement read from elsewhere must
    /// satisfy): every slot owned by an existing group, every group with
    /// at least one replica on member nodes, the move consistent.
    pub fn check(&self) -> Result<(), String> {
        if self.rebalances_done > self.rebalances_asked {
            return Err("more rebalances done than asked".into());
        }
        if !self.is_bootstrapped() {
            return if self.groups.is_empty() && self.owners.iter().all(|&o| o == 0) {
                Ok(())
            } else {
                Err("groups or owners without nodes".into())
            };
        }
        if self.owners.len() != usize::from(SLOTS) {
            return Err(format!("{} slot owners", self.owners.len()));
        }
        if let Some(s) = self
            .owners
            .iter()
            .position(|g| !self.groups.contains_key(g))
        {
            return Err(format!(
                "slot {s} owned by missing group {}",
                self.owners[s]
            ));
        }
        for (id, g) in &self.groups {
            if *id == META_GROUP || *id >= self.next_group {
                return Err(format!("group id {id} out of range"));
            }
            if g.replicas.is_empty() {
                return Err(format!("group {id} has no replicas"));
            }
            if let Some(n) = g
                .replicas
                .iter()
                .chain(&g.learners)
                .find(|n| !self.nodes.contains_key(n))
            {
                return Err(format!("group {id} on missing node {n}"));
            }
            if g.learners.iter().any(|n| g.replicas.contains(n)) {
                return Err(format!("group {id}: a node both voter and learner"));
            }
        }
        if let Some(m) = self.purging.iter().find(|m| {
            !self.groups.contains_key(&m.from) || !m.slots.slots().all(|s| self.owner(s) != m.from)
        }) {
            return Err(format!("inconsistent purge: {m}"));
        }
        if let Some(m) = self.moving {
            let ok = m.slots.is_valid()
                && m.from != m.to
                && self.groups.contains_key(&m.to)
                && m.slots.slots().all(|s| self.owner(s) == m.from);
            if !ok {
                return Err(format!("inconsistent move: {m}"));
            }
        }
        self.settings
            .validate()
            .map_err(|e| format!("settings: {e}"))
    }
}

fn check_node(node: NodeId, info: &NodeInfo) -> Result<(), PlacementError> {
    if node == 0 {
        return Err(PlacementError::Invalid("node id 0".into()));
    }
    if info.raft_addr.is_empty() || info.client_addr.is_empty() {
        return Err(PlacementError::Invalid(format!(
            "node {node}: an address is empty"
        )));
    }
    Ok(())
}

/// The placement as stored: slot owners as runs.
#[derive(Serialize, Deserialize)]
struct Repr {
    version: u64,
    owners: Vec<(SlotRange, GroupId)>,
    groups: BTreeMap<GroupId, GroupInfo>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    moving: Option<SlotMove>,
    #[serde(default)]
    purging: Vec<SlotMove>,
    next_group: GroupId,
    settings: Settings,
    #[serde(default)]
    rebalances_asked: u64,
    #[serde(default)]
    rebalances_done: u64,
}

impl From<Placement> for Repr {
    fn from(p: Placement) -> Self {
        Repr {
            version: p.version,
            owners: runs(&p.owners),
            groups: p.groups,
            nodes: p.nodes,
            moving: p.moving,
            purging: p.purging,
            next_group: p.next_group,
            settings: p.settings,
            rebalances_asked: p.rebalances_asked,
            rebalances_done: p.rebalances_done,
        }
    }
}

impl TryFrom<Repr> for Placement {
    type Error = String;

    fn try_from(r: Repr) -> Result<Self, String> {
        let mut owners = vec![0; usize::from(SLOTS)];
        let mut covered = 0usize;
        for (range, g) in &r.owners {
            if !range.is_valid() {
                return Err(format!("invalid slot range {range:?}"));
            }
            for s in range.slots() {
                owners[usize::from(s)] = *g;
            }
            covered += range.len();
        }
        if covered != usize::from(SLOTS) && !r.nodes.is_empty() {
            return Err(format!("slot runs cover {covered} slots, not {SLOTS}"));
        }
        let p = Placement {
            version: r.version,
            owners,
            groups: r.groups,
            nodes: r.nodes,
            moving: r.moving,
            purging: r.purging,
            next_group: r.next_group,
            settings: r.settings,
            rebalances_asked: r.rebalances_asked,
            rebalances_done: r.rebalances_done,
        };
        p.check()?;
        Ok(p)
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;

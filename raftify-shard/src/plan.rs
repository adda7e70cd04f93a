//! The rebalance planner: the next [`Step`] from a placement to a balanced
//! one.
//!
//! [`plan`] is a pure function of the committed [`Placement`] and what is
//! observed of the groups (their leaders). A rebalancer runs one step,
//! waits until the placement records it, and asks again; after a crash it
//! simply asks again, so an interrupted rebalance resumes from whatever was
//! committed (a move in progress is always finished or abandoned first).
//!
//! In order, the first thing that applies:
//!
//! 1. a committed move whose source still holds the data, a slot move in
//!    progress, or a replica being added: finish it;
//! 2. a node that leaves: give its groups a replica elsewhere, then remove
//!    its replica; once it hosts none, remove it;
//! 3. a node marked down: where another node has room, give its groups a
//!    replica there, then remove its replica (it stays a member, and is
//!    used again once marked up); [`repair`] is this rule alone;
//! 4. replica counts: `min(settings.replicas, nodes)` per group, added on
//!    the node that hosts the fewest replicas, removed from the one that
//!    hosts the most (of equals, not the leader);
//! 5. group count: `nodes × settings.groups_per_node` groups (a new group
//!    on the least loaded nodes; a surplus group empties and is deleted);
//! 6. slots: with a size limit, a group over it whose bytes sit in part
//!    of its slots gives the part holding about half the difference
//!    between it and the group holding the fewest bytes to that group ([`plan_bytes`](self) `hot_split`);
//!    then every group owns `16384 / groups` slots (±1), moved as a
//!    contiguous range from the group with the largest surplus to the one
//!    with the largest deficit, unless the move would take the taker over
//!    the size limit;
//! 7. replicas per node within one of each other;
//! 8. leaders per node within one of each other (a leadership transfer).
//!
//! Nodes that leave are not counted; nodes that are down are counted for
//! the targets (replicas per group, groups), so that a node failing does
//! not shrink groups or empty one, but are given nothing new.

use crate::placement::{GroupId, GroupInfo, NodeId, Placement, SlotMove};
use crate::slots::{SlotRange, SLOTS};
use std::collections::{BTreeMap, BTreeSet};

/// What is known of the groups beyond the placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Each group's current leader, where known.
    pub leaders: BTreeMap<GroupId, NodeId>,
    /// Each group's size in bytes of state (its leader's
    /// [`raftify_core::Status::state_bytes`]), where known.
    pub sizes: BTreeMap<GroupId, u64>,
    /// Each group's bytes per slot (slot, bytes; in slot order, slots
    /// holding nothing left out), where weighed ([`crate::SlotMover::weigh`];
    /// with a size limit only).
    pub weights: BTreeMap<GroupId, Vec<(u16, u64)>>,
}

/// One step of a rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Add a replica of `group` on `node` (as a learner, caught up, then
    /// promoted), then record it.
    AddReplica {
        /// The group.
        group: GroupId,
        /// The node.
        node: NodeId,
    },
    /// Remove `node`'s replica of `group` (moving leadership away first),
    /// then record it.
    RemoveReplica {
        /// The group.
        group: GroupId,
        /// The node.
        node: NodeId,
    },
    /// Create a data group with these replicas (it owns no slots yet).
    CreateGroup {
        /// Its id ([`Placement::next_group`](crate::Placement::next_group)).
        group: GroupId,
        /// Its replicas.
        replicas: BTreeSet<NodeId>,
    },
    /// Move slots between groups (begun, keys copied, committed).
    MoveSlots(SlotMove),
    /// Delete a committed move's data from its source, then record it.
    Purge(SlotMove),
    /// Delete a group that owns no slots.
    DeleteGroup {
        /// The group.
        group: GroupId,
    },
    /// Move `group`'s leadership to `to`.
    TransferLeader {
        /// The group.
        group: GroupId,
        /// The new leader.
        to: NodeId,
    },
    /// Remove a node that left and hosts no replica.
    RemoveNode {
        /// The node.
        node: NodeId,
    },
}

/// The next step, or `None` when the placement is balanced.
pub fn plan(p: &Placement, observed: &Observed) -> Option<Step> {
    if !p.is_bootstrapped() {
        return None;
    }
    if let Some(&m) = p.purging().first() {
        return Some(Step::Purge(m));
    }
    if let Some(m) = p.moving() {
        return Some(Step::MoveSlots(m));
    }
    // A replica being added is finished (unless its node leaves or is
    // down, or the group has no live quorum).
    for (&group, g) in p.groups().iter().filter(|(_, g)| live(p, g)) {
        if let Some(&node) = g
            .learners
            .iter()
            .find(|n| p.nodes().get(n).is_some_and(|i| !i.leaving && !i.down))
        {
            return Some(Step::AddReplica { group, node });
        }
    }
    let (members, active) = members_and_active(p);
    if active.is_empty() {
        return None;
    }
    leaving(p, &members, &active)
        .or_else(|| down(p, &members, &active))
        .or_else(|| replica_counts(p, &members, &active, observed))
        .or_else(|| group_count(p, &members, &active, observed))
        .or_else(|| slot_balance(p, observed))
        .or_else(|| replica_spread(p, &active))
        .or_else(|| leader_spread(p, &active, observed))
}

/// The repair step alone (rule 3): what runs when a node is down even
/// while rebalancing is not asked for, so that a failed node's groups
/// regain their replica count.
pub fn repair(p: &Placement) -> Option<Step> {
    if !p.is_bootstrapped() || p.moving().is_some() {
        return None;
    }
    let (members, active) = members_and_active(p);
    // A replacement being added for a down node is finished first.
    for (&group, g) in p.groups() {
        let for_down = hosts(g)
            .iter()
            .any(|n| p.nodes().get(n).is_some_and(|i| i.down));
        if let Some(&node) = g
            .learners
            .iter()
            .find(|n| p.nodes().get(n).is_some_and(|i| !i.leaving && !i.down))
        {
            if for_down {
                return Some(Step::AddReplica { group, node });
            }
        }
    }
    down(p, &members, &active)
}

/// The nodes that stay (not leaving), and of those the ones that are up.
fn members_and_active(p: &Placement) -> (Vec<NodeId>, Vec<NodeId>) {
    let members: Vec<NodeId> = p
        .nodes()
        .iter()
        .filter(|(_, n)| !n.leaving)
        .map(|(&id, _)| id)
        .collect();
    let active = members
        .iter()
        .copied()
        .filter(|id| p.nodes().get(id).is_some_and(|n| !n.down))
        .collect();
    (members, active)
}

/// Replicas hosted per active node.
fn load(p: &Placement, active: &[NodeId]) -> BTreeMap<NodeId, usize> {
    let mut load: BTreeMap<NodeId, usize> = active.iter().map(|&n| (n, 0)).collect();
    for g in p.groups().values() {
        for n in g.replicas.iter().chain(&g.learners) {
            if let Some(c) = load.get_mut(n) {
                *c += 1;
            }
        }
    }
    load
}

/// Whether a majority of the group's voters are on nodes not down (else
/// no membership change or slot move of it can commit).
fn live(p: &Placement, g: &GroupInfo) -> bool {
    let up = g
        .replicas
        .iter()
        .filter(|n| p.nodes().get(n).is_some_and(|i| !i.down))
        .count();
    up * 2 > g.replicas.len()
}

/// Whether every group has a live quorum (slots move only then).
fn all_live(p: &Placement) -> bool {
    p.groups().values().all(|g| live(p, g))
}

/// The nodes that host (or are being given) a replica of a group.
fn hosts(g: &GroupInfo) -> BTreeSet<NodeId> {
    g.replicas.union(&g.learners).copied().collect()
}

/// The active node hosting the fewest replicas that is not in `exclude`
/// (lowest id on a tie).
fn least_loaded(load: &BTreeMap<NodeId, usize>, exclude: &BTreeSet<NodeId>) -> Option<NodeId> {
    load.iter()
        .filter(|(n, _)| !exclude.contains(n))
        .min_by_key(|(&n, &c)| (c, n))
        .map(|(&n, _)| n)
}

fn target_replicas(p: &Placement, members: &[NodeId]) -> usize {
    p.settings().replicas.min(members.len()).max(1)
}

fn leaving(p: &Placement, members: &[NodeId], active: &[NodeId]) -> Option<Step> {
    let load = load(p, active);
    let r = target_replicas(p, members);
    for (&node, info) in p.nodes() {
        if !info.leaving {
            continue;
        }
        for group in p.groups_of(node) {
            let g = &p.groups()[&group];
            if !live(p, g) {
                continue;
            }
            let staying = g.replicas.iter().filter(|n| **n != node).count();
            if staying < r {
                if let Some(to) = least_loaded(&load, &hosts(g)) {
                    return Some(Step::AddReplica { group, node: to });
                }
            }
            if staying >= 1 {
                return Some(Step::RemoveReplica { group, node });
            }
        }
        if p.groups_of(node).is_empty() {
            return Some(Step::RemoveNode { node });
        }
    }
    None
}

/// Rule 3: replicas on down nodes are replaced where an up node does not
/// host the group yet; a group keeps its down replica while there is no
/// such node (it catches up when its node comes back).
fn down(p: &Placement, members: &[NodeId], active: &[NodeId]) -> Option<Step> {
    let load = load(p, active);
    let r = target_replicas(p, members);
    for (&node, info) in p.nodes() {
        if !info.down || info.leaving {
            continue;
        }
        for group in p.groups_of(node) {
            let g = &p.groups()[&group];
            let up = g.replicas.iter().filter(|n| active.contains(n)).count();
            if !live(p, g) {
                // No live quorum: no membership change can commit.
                continue;
            }
            if up < r {
                if let Some(to) = least_loaded(&load, &hosts(g)) {
                    return Some(Step::AddReplica { group, node: to });
                }
                if !g.learners.contains(&node) {
                    // No room: keep it.
                    continue;
                }
            }
            // Enough up replicas without it (or it is only a learner).
            return Some(Step::RemoveReplica { group, node });
        }
    }
    None
}

fn replica_counts(
    p: &Placement,
    members: &[NodeId],
    active: &[NodeId],
    observed: &Observed,
) -> Option<Step> {
    let load = load(p, active);
    let r = target_replicas(p, members);
    for (&group, g) in p.groups().iter().filter(|(_, g)| live(p, g)) {
        if g.replicas.len() < r {
            if let Some(node) = least_loaded(&load, &hosts(g)) {
                return Some(Step::AddReplica { group, node });
            }
        }
        if g.replicas.len() > r {
            let leader = observed.leaders.get(&group).copied();
            let node = g
                .replicas
                .iter()
                .max_by_key(|&&n| {
                    (
                        load.get(&n).copied().unwrap_or(usize::MAX),
                        Some(n) != leader,
                        n,
                    )
                })
                .copied()?;
            return Some(Step::RemoveReplica { group, node });
        }
    }
    None
}

/// The group count the sizes call for: `(grow, keep)` — at least `grow`
/// groups (the state over `max_group_bytes` each), and no fewer than
/// `keep` (under half of it each), capped at `cap`. With no limit or a
/// size unknown: `(0, 0)` and `(0, usize::MAX)` (no shrinking on
/// guesses).
fn size_targets(p: &Placement, observed: &Observed, cap: usize) -> (usize, usize) {
    let max = p.settings().max_group_bytes;
    if max == 0 {
        return (0, 0);
    }
    if p.groups().keys().any(|g| !observed.sizes.contains_key(g)) {
        return (0, usize::MAX);
    }
    let total: u64 = observed.sizes.values().sum();
    let need = |per: u64| usize::try_from(total.div_ceil(per.max(1))).unwrap_or(usize::MAX);
    (need(max).min(cap), need(max / 2).min(cap))
}

fn group_count(
    p: &Placement,
    members: &[NodeId],
    active: &[NodeId],
    observed: &Observed,
) -> Option<Step> {
    let base = (members.len() * p.settings().groups_per_node).max(1);
    let cap = (members.len() * crate::placement::MAX_GROUPS_PER_NODE).max(base);
    let (grow, keep) = size_targets(p, observed, cap);
    let groups = p.groups().len();
    let target = if groups < base.max(grow) {
        base.max(grow)
    } else {
        base.max(keep.min(groups))
    };
    if groups < target {
        let load = load(p, active);
        let mut replicas = BTreeSet::new();
        for _ in 0..target_replicas(p, members).min(active.len()) {
            let n = least_loaded(&load, &replicas)?;
            replicas.insert(n);
        }
        return Some(Step::CreateGroup {
            group: p.next_group(),
            replicas,
        });
    }
    if groups > target && all_live(p) {
        // The surplus group with the fewest slots (the highest id on a tie)
        // empties into the others, then goes.
        let counts = p.slot_counts();
        let (&victim, &slots) = counts.iter().min_by_key(|(&g, &c)| (c, u64::MAX - g))?;
        if slots == 0 {
            return Some(Step::DeleteGroup { group: victim });
        }
        let (&to, _) = counts
            .iter()
            .filter(|(&g, _)| g != victim)
            .min_by_key(|(&g, &c)| (c, g))?;
        let (range, _) = p.ranges().into_iter().find(|(_, g)| *g == victim)?;
        let m = SlotMove {
            slots: range,
            from: victim,
            to,
        };
        return bytes::fits(p, observed, &m).then_some(Step::MoveSlots(m));
    }
    None
}

/// Each group's slot target: `SLOTS / groups`, the lowest ids one more
/// while the remainder lasts.
fn slot_targets(groups: &[GroupId]) -> BTreeMap<GroupId, usize> {
    let n = groups.len().max(1);
    let (base, extra) = (usize::from(SLOTS) / n, usize::from(SLOTS) % n);
    groups
        .iter()
        .enumerate()
        .map(|(i, &g)| (g, base + usize::from(i < extra)))
        .collect()
}

fn slot_balance(p: &Placement, observed: &Observed) -> Option<Step> {
    if !all_live(p) {
        return None;
    }
    // Bytes first: a group over the size limit is split where they are.
    if let Some(step) = bytes::hot_split(p, observed) {
        return Some(step);
    }
    let counts = p.slot_counts();
    let ids: Vec<GroupId> = counts.keys().copied().collect();
    let targets = slot_targets(&ids);
    let diff = |g: &GroupId| counts[g] as i64 - targets[g] as i64;
    let donor = ids
        .iter()
        .max_by_key(|g| (diff(g), u64::MAX - **g))
        .copied()?;
    let taker = ids.iter().min_by_key(|g| (diff(g), **g)).copied()?;
    let (surplus, deficit) = (diff(&donor), -diff(&taker));
    if surplus <= 0 || deficit <= 0 {
        return None;
    }
    // From the end of the donor's last run: the donor stays contiguous.
    let (run, _) = p.ranges().into_iter().rev().find(|(_, g)| *g == donor)?;
    let n = (surplus.min(deficit) as usize).min(run.len());
    let start = run.end - (n as u16 - 1); // 1 <= n <= run.len()
    let m = SlotMove {
        slots: SlotRange::new(start, run.end)?,
        from: donor,
        to: taker,
    };
    bytes::fits(p, observed, &m).then_some(Step::MoveSlots(m))
}

fn replica_spread(p: &Placement, active: &[NodeId]) -> Option<Step> {
    let load = load(p, active);
    let (&heavy, &most) = load.iter().max_by_key(|(&n, &c)| (c, u64::MAX - n))?;
    let (&light, &fewest) = load.iter().min_by_key(|(&n, &c)| (c, n))?;
    if most <= fewest + 1 {
        return None;
    }
    // A group on the heavy node and not on the light one gains a replica
    // on the light one; the replica count rule then removes the heavy
    // node's.
    let group = p
        .groups()
        .iter()
        .find(|(_, g)| g.replicas.contains(&heavy) && !g.hosts(light) && live(p, g))
        .map(|(&id, _)| id)?;
    Some(Step::AddReplica { group, node: light })
}

fn leader_spread(p: &Placement, active: &[NodeId], observed: &Observed) -> Option<Step> {
    let mut leads: BTreeMap<NodeId, usize> = active.iter().map(|&n| (n, 0)).collect();
    for (g, leader) in &observed.leaders {
        if p.groups().contains_key(g) {
            if let Some(c) = leads.get_mut(leader) {
                *c += 1;
            }
        }
    }
    let (&light, &fewest) = leads.iter().min_by_key(|(&n, &c)| (c, n))?;
    if leads.values().all(|&c| c <= fewest + 1) {
        return None;
    }
    // A leader moves only to a node that hosts the group. Search from the
    // node leading the fewest, breadth first, back along "hosts a group
    // led by" to the nearest node leading at least two more; move one
    // group from there one hop towards the light node. Each such step
    // brings the nearest heavy node a hop closer without making anything
    // worse, until the last hop gives the light node a group.
    let mut seen = BTreeSet::from([light]);
    let mut frontier = vec![light];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for b in frontier {
            for (&group, g) in p.groups() {
                let Some(&a) = observed.leaders.get(&group) else {
                    continue;
                };
                if a == b || !g.replicas.contains(&b) || !seen.insert(a) {
                    continue;
                }
                if leads.get(&a).is_some_and(|&c| c >= fewest + 2) {
                    return Some(Step::TransferLeader { group, to: b });
                }
                next.push(a);
            }
        }
        frontier = next;
    }
    None
}

#[path = "plan_bytes.rs"]
mod bytes;

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

//! Carrying out one rebalance step ([`Step`]) through a [`Rebalancing`]:
//! the metadata group's replica on the node running it, and a transport
//! to every group. The host's rebalancer runs these over gRPC; a
//! simulation may run them on its own network.
//!
//! Each step is written so that running it again after a crash half-way
//! is harmless (see [`crate::plan`]).

use crate::host::ShardError;
use crate::meta::{MetaCommand, MetaEntry, MetaOutcome, MetaStore};
use crate::mover::SlotMover;
use crate::placement::{Change, GroupId, NodeId, Placement, SlotMove, META_GROUP};
use crate::plan::Step;
use crate::reach::GroupTransport;
use raftify_core::retry::Idempotence;
use raftify_core::{call_cluster, MemberRole, Membership, MembershipChange, Raft};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// How long one call to a group may take, elections included.
pub(crate) const CALL: Duration = Duration::from_secs(10);
/// How long a new replica may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(60);
/// Between checks while waiting for a group.
const POLL: Duration = Duration::from_millis(100);

/// What rebalance steps act through, on the node that runs them.
pub struct Rebalancing<'a> {
    /// This node's replica of the metadata group: placement changes are
    /// proposed through it (it forwards to the leader).
    pub meta: &'a Raft<MetaEntry, MetaStore>,
    /// The placement as that replica applies it.
    pub placement: &'a watch::Receiver<Placement>,
    /// The replicas of every group.
    pub net: &'a dyn GroupTransport,
}

impl Rebalancing<'_> {
    /// Proposes a placement change (refused unless the placement is at
    /// `expect_version`, when given); the placement's new version.
    pub async fn change(
        &self,
        expect_version: Option<u64>,
        change: Change,
    ) -> Result<u64, ShardError> {
        let cmd = MetaCommand {
            expect_version,
            change,
        };
        match self.meta.propose(&MetaEntry::Change(cmd)).await? {
            MetaOutcome::Change(outcome) => Ok(outcome?),
            _ => Err(ShardError::Mismatch(
                "the metadata group answered a change as another kind",
            )),
        }
    }

    /// Carries `step` out (planned from `p`), moving slots' data with
    /// `mover`. Safe to run again after it failed or was cut short.
    pub async fn execute(
        &self,
        mover: Option<&dyn SlotMover>,
        p: &Placement,
        step: Step,
    ) -> Result<(), ShardError> {
        execute(self, mover, p, step).await
    }

    /// Each group's leader, as its replicas answer (groups whose leader
    /// is not known left out).
    pub async fn leaders(&self, p: &Placement) -> BTreeMap<GroupId, NodeId> {
        let mut out = BTreeMap::new();
        for &g in p.groups().keys() {
            if let Ok(m) = members(self, p, g).await {
                if m.leader_id != 0 {
                    out.insert(g, m.leader_id);
                }
            }
        }
        out
    }
}

/// Asks `group`'s leader, found through its replicas' addresses (the
/// metadata group's: every node's), to hand leadership to `to`.
pub(crate) async fn transfer_leader(
    transport: &dyn GroupTransport,
    p: &Placement,
    group: GroupId,
    to: NodeId,
) -> Result<(), ShardError> {
    let a = match group {
        META_GROUP => p.nodes().values().map(|n| n.raft_addr.clone()).collect(),
        g => p.group_addrs(g),
    };
    let t = transport.group(group);
    call_cluster(
        t.as_ref(),
        &a,
        CALL,
        Idempotence::Idempotent,
        |n| async move { n.transfer_leader(to).await },
    )
    .await?;
    Ok(())
}

fn addr_of(p: &Placement, node: NodeId) -> Result<String, ShardError> {
    p.nodes()
        .get(&node)
        .map(|i| i.raft_addr.clone())
        .ok_or_else(|| ShardError::Rebalance(format!("node {node} is not a member")))
}

async fn members(
    ctx: &Rebalancing<'_>,
    p: &Placement,
    group: GroupId,
) -> Result<Membership, ShardError> {
    let t = ctx.net.group(group);
    let a = p.group_addrs(group);
    Ok(call_cluster(
        t.as_ref(),
        &a,
        CALL,
        Idempotence::Idempotent,
        |n| async move { n.members().await },
    )
    .await?)
}

async fn change_group(
    ctx: &Rebalancing<'_>,
    p: &Placement,
    group: GroupId,
    change: MembershipChange,
) -> Result<(), ShardError> {
    let t = ctx.net.group(group);
    let a = p.group_addrs(group);
    // A membership change whose outcome is unknown is checked by the next
    // plan (it reads the members again), so it is not sent twice here.
    call_cluster(t.as_ref(), &a, CALL, Idempotence::NotIdempotent, |n| {
        let c = change.clone();
        async move { n.change_membership(vec![c]).await }
    })
    .await?;
    Ok(())
}

/// Takes `node` out of `group`: out of its membership, then out of the
/// placement's learners or replicas.
async fn remove_replica(
    ctx: &Rebalancing<'_>,
    p: &Placement,
    group: GroupId,
    node: NodeId,
) -> Result<(), ShardError> {
    let m = members(ctx, p, group).await?;
    if m.members.iter().any(|m| m.id == node) {
        change_group(ctx, p, group, MembershipChange::Remove { id: node }).await?;
    }
    let g = group_info(p, group)?;
    let change = if g.learners.contains(&node) {
        let mut learners = g.learners.clone();
        learners.remove(&node);
        Change::SetLearners { group, learners }
    } else {
        let mut replicas = g.replicas.clone();
        replicas.remove(&node);
        Change::SetReplicas { group, replicas }
    };
    ctx.change(None, change).await?;
    Ok(())
}

/// `group` of `p` (a step handed to [`Rebalancing::execute`] may name a
/// group its placement no longer has).
fn group_info(p: &Placement, group: GroupId) -> Result<&crate::placement::GroupInfo, ShardError> {
    p.groups()
        .get(&group)
        .ok_or_else(|| ShardError::Rebalance(format!("group {group} is not in the placement")))
}

async fn execute(
    ctx: &Rebalancing<'_>,
    mover: Option<&dyn SlotMover>,
    p: &Placement,
    step: Step,
) -> Result<(), ShardError> {
    let version = Some(p.version());
    match step {
        Step::AddReplica { group, node } => {
            let g = group_info(p, group)?;
            let mut p = p.clone();
            if !g.learners.contains(&node) {
                let mut learners = g.learners.clone();
                learners.insert(node);
                ctx.change(version, Change::SetLearners { group, learners })
                    .await?;
                p = ctx.placement.borrow().clone();
            }
            let addr = addr_of(&p, node)?;
            let m = members(ctx, &p, group).await?;
            let role = m.members.iter().find(|m| m.id == node).map(|m| m.role);
            if role.is_none() {
                let add = MembershipChange::AddLearner {
                    id: node,
                    addr: addr.clone(),
                };
                change_group(ctx, &p, group, add).await?;
            }
            // Caught up enough once the new replica has applied its own
            // addition (it came with the leader's log or snapshot).
            if let Err(e) = wait_caught_up(ctx, group, node, &addr).await {
                // A replica that does not catch up may have lost what it
                // had acknowledged (a data dir wiped or not synced), which
                // the leader still counts and raft never resends. It
                // leaves the group and the placement; the next plan adds
                // it afresh (a new learner starts from the leader's
                // snapshot).
                remove_replica(ctx, &p, group, node).await?;
                return Err(e);
            }
            if role != Some(MemberRole::Voter) {
                change_group(
                    ctx,
                    &p,
                    group,
                    MembershipChange::AddVoter { id: node, addr },
                )
                .await?;
            }
            let mut replicas = group_info(&p, group)?.replicas.clone();
            replicas.insert(node);
            ctx.change(None, Change::SetReplicas { group, replicas })
                .await?;
        }
        Step::RemoveReplica { group, node } => remove_replica(ctx, p, group, node).await?,
        Step::CreateGroup { group, replicas } => {
            ctx.change(version, Change::CreateGroup { group, replicas })
                .await?;
            // Its replicas bootstrap it as they apply the change.
            let p = ctx.placement.borrow().clone();
            let deadline = tokio::time::Instant::now() + CATCH_UP;
            while members(ctx, &p, group)
                .await
                .map(|m| m.leader_id)
                .unwrap_or(0)
                == 0
            {
                if tokio::time::Instant::now() > deadline {
                    return Err(ShardError::Rebalance(format!(
                        "group {group} elected no leader"
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Step::MoveSlots(m) => move_slots(ctx, mover, p, m).await?,
        Step::Purge(m) => {
            let mover = mover.ok_or_else(|| {
                ShardError::Rebalance("this node has no slot mover; cannot purge".into())
            })?;
            let from = (m.from, p.group_addrs(m.from));
            mover
                .purge(ctx.net, from, m.slots)
                .await
                .map_err(|e| ShardError::Rebalance(format!("purging {m} from its source: {e}")))?;
            ctx.change(None, Change::Purged(m)).await?;
        }
        Step::DeleteGroup { group } => {
            ctx.change(version, Change::DeleteGroup { group }).await?;
        }
        Step::TransferLeader { group, to } => {
            transfer_leader(ctx.net, p, group, to).await?;
        }
        Step::RemoveNode { node } => {
            ctx.change(version, Change::RemoveNode { node }).await?;
            let meta = ctx.meta.handle();
            let m = meta.members().await?;
            if m.members.iter().any(|m| m.id == node) {
                meta.change_membership(vec![MembershipChange::Remove { id: node }])
                    .await?;
            }
        }
    }
    Ok(())
}

async fn wait_caught_up(
    ctx: &Rebalancing<'_>,
    group: GroupId,
    node: NodeId,
    addr: &str,
) -> Result<(), ShardError> {
    let t = ctx.net.group(group);
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let seen = match t.node(addr) {
            Ok(n) => n.members().await.ok(),
            Err(_) => None,
        };
        if seen.is_some_and(|m| m.members.iter().any(|m| m.id == node)) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ShardError::Rebalance(format!(
                "node {node}'s replica of group {group} did not catch up in {CATCH_UP:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn move_slots(
    ctx: &Rebalancing<'_>,
    mover: Option<&dyn SlotMover>,
    p: &Placement,
    m: SlotMove,
) -> Result<(), ShardError> {
    let Some(mover) = mover else {
        // Without a mover the move cannot carry data: abandon it.
        if p.moving() == Some(m) {
            ctx.change(None, Change::AbortMove(m)).await?;
        }
        return Err(ShardError::Rebalance(
            "this node has no slot mover; slots cannot move".into(),
        ));
    };
    if p.moving() != Some(m) {
        ctx.change(Some(p.version()), Change::BeginMove(m)).await?;
    }
    let t = ctx.net;
    let from = (m.from, p.group_addrs(m.from));
    let to = (m.to, p.group_addrs(m.to));
    mover
        .copy(t, from, to, m.slots)
        .await
        .map_err(|e| ShardError::Rebalance(format!("copying {m}: {e}")))?;
    // The purge is a step of its own (the placement remembers it), so a
    // crash right after the commit still gets the source purged.
    ctx.change(None, Change::CommitMove(m)).await?;
    Ok(())
}

//! The rebalancer: carries out [`plan`]'s steps, one at a time, on the
//! node that leads the metadata group.
//!
//! Each step is written so that running it again after a crash half-way
//! is harmless, and the plan is recomputed from the committed placement
//! after every step; so a rebalance interrupted anywhere (this node
//! killed, leadership of the metadata group moving) resumes where the
//! placement says it is, on whichever node leads next.

use crate::host::{Inner, ShardError};
use crate::placement::{Change, GroupId, NodeId, Placement, SlotMove, META_GROUP};
use crate::plan::{plan, repair, Observed, Step};
use crate::slots::SlotRange;
use async_trait::async_trait;
use raftify_core::retry::Idempotence;
use raftify_core::{
    call_cluster, AbstractLogEntry, AbstractStateMachine, BoxError, MemberRole, Membership,
    MembershipChange, Transport,
};
use raftify_grpc::{GrpcTransport, RaftClient};
use slog::{info, warn};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Moves the data of slots between two groups (what a slot move needs
/// besides the placement change): the application's, since only it knows
/// its state machine.
#[async_trait]
pub trait SlotMover: Send + Sync + 'static {
    /// Copies every key of `slots` from group `from` to group `to` (through
    /// their leaders, with `transport`'s views of them). Called with the
    /// move begun; may be called again for the same move after a crash.
    async fn copy(
        &self,
        transport: &GrpcTransport,
        from: (GroupId, Vec<String>),
        to: (GroupId, Vec<String>),
        slots: SlotRange,
    ) -> Result<(), BoxError>;

    /// Deletes the keys of `slots` from group `from`, once the move
    /// committed (they belong to the target now).
    async fn purge(
        &self,
        transport: &GrpcTransport,
        from: (GroupId, Vec<String>),
        slots: SlotRange,
    ) -> Result<(), BoxError>;

    /// How many bytes each slot of a group holds (slot, bytes; in slot
    /// order, slots holding nothing left out), asked of the group's
    /// leader at `leader` through `client` (the group's view; a stale
    /// read is enough). Asked with a size limit
    /// ([`crate::Settings::max_group_bytes`]) only, so that a group whose
    /// bytes sit in few slots (hash tags) is split where its bytes are,
    /// not by slot count. `Ok(None)`, the default: this mover cannot
    /// tell, and groups are split by slot count alone.
    async fn weigh(
        &self,
        client: &RaftClient,
        leader: &str,
    ) -> Result<Option<Vec<(u16, u64)>>, BoxError> {
        let _ = (client, leader);
        Ok(None)
    }
}

/// How long one call to a group may take, elections included.
const CALL: Duration = Duration::from_secs(10);
/// How long a new replica may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(60);
/// Pause after a failed step, and between checks when idle.
const PAUSE: Duration = Duration::from_millis(500);

/// The rebalancer's task and its controls.
pub(crate) struct Rebalancer {
    wake: Arc<Notify>,
    status: Arc<Mutex<String>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Rebalancer {
    pub(crate) fn start<E, SM>(
        inner: Arc<Inner<E, SM>>,
        mover: Option<Arc<dyn SlotMover>>,
        auto: bool,
        dead_after: Option<Duration>,
    ) -> Self
    where
        E: AbstractLogEntry,
        SM: AbstractStateMachine<E>,
    {
        let wake = Arc::new(Notify::new());
        let status = Arc::new(Mutex::new("done".to_string()));
        let task = tokio::spawn(run(
            inner,
            mover,
            Modes { auto, dead_after },
            wake.clone(),
            status.clone(),
        ));
        Rebalancer {
            wake,
            status,
            task: Mutex::new(Some(task)),
        }
    }

    pub(crate) fn trigger(&self) {
        if let Ok(mut s) = self.status.lock() {
            if s.starts_with("done") {
                *s = "requested".into();
            }
        }
        self.wake.notify_one();
    }

    pub(crate) fn status(&self) -> String {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(crate) async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

fn set(status: &Mutex<String>, s: String) {
    *status.lock().unwrap_or_else(|p| p.into_inner()) = s;
}

/// What the rebalancer does unasked.
struct Modes {
    /// Rebalance whenever the placement is off balance.
    auto: bool,
    /// Mark nodes not heard from for this long down, and replace their
    /// replicas (even when not rebalancing).
    dead_after: Option<Duration>,
}

async fn run<E, SM>(
    inner: Arc<Inner<E, SM>>,
    mover: Option<Arc<dyn SlotMover>>,
    modes: Modes,
    wake: Arc<Notify>,
    status: Arc<Mutex<String>>,
) where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    let Modes { auto, dead_after } = modes;
    let mut requested = false;
    // When each node was last heard from (by this node, as metadata leader).
    let mut heard: BTreeMap<NodeId, Instant> = BTreeMap::new();
    // A repair step ran: look for the next one at once.
    let mut repairing = false;
    loop {
        // A rebalance asked for on any node is in the placement.
        requested |= inner.placement.borrow().rebalance_pending();
        if !requested && !auto {
            let mut placement = inner.placement.clone();
            let asked = async move {
                if placement.wait_for(|p| p.rebalance_pending()).await.is_err() {
                    // The node is stopping: nothing will be asked.
                    std::future::pending::<()>().await;
                }
            };
            if dead_after.is_none() {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = asked => {}
                }
                requested = true;
            } else if !repairing {
                requested = tokio::select! {
                    _ = wake.notified() => true,
                    _ = asked => true,
                    _ = tokio::time::sleep(PAUSE * 2) => false,
                };
            }
        }
        repairing = false;
        if !inner.meta.handle().is_leader() {
            // Only the metadata leader rebalances; a request made elsewhere
            // waits here until this node leads (or is asked again).
            heard.clear();
            let _ = tokio::time::timeout(PAUSE, wake.notified()).await;
            continue;
        }
        if let Some(after) = dead_after {
            match mark_down(&inner, &mut heard, after).await {
                Ok(false) => {}
                Ok(true) => continue,
                Err(e) => {
                    warn!(inner.logger, "cannot mark a node down or up"; "error" => %e);
                    tokio::time::sleep(PAUSE).await;
                    continue;
                }
            }
        }
        let placement = inner.placement.borrow().clone();
        let asked = requested || auto;
        let step = if asked {
            let observed = observe(&inner, mover.as_deref(), &placement).await;
            plan(&placement, &observed)
        } else {
            repair(&placement)
        };
        let Some(step) = step else {
            if asked {
                if placement.rebalance_pending() {
                    let done = Change::RebalanceDone {
                        asked: placement.rebalances_asked(),
                    };
                    if let Err(e) = inner.change(None, done).await {
                        warn!(inner.logger, "cannot record the rebalance done"; "error" => %e);
                        tokio::time::sleep(PAUSE).await;
                        continue;
                    }
                }
                set(
                    &status,
                    format!("done (placement version {})", placement.version()),
                );
                requested = false;
                if auto {
                    let _ = tokio::time::timeout(PAUSE * 4, wake.notified()).await;
                }
            }
            continue;
        };
        repairing = !asked;
        let doing = if asked { "moving" } else { "repairing" };
        set(&status, format!("{doing}: {step:?}"));
        info!(inner.logger, "rebalance step"; "step" => ?step);
        // A step is abandoned when this node stops leading the metadata
        // group (cut off, say): the new leader plans again from the
        // committed placement, and every step is safe to repeat; a step
        // left waiting here would keep this node from rebalancing when it
        // leads again.
        let mut role = inner.meta.handle().subscribe_role();
        let deposed = role.wait_for(|s| s.role != raftify_core::Role::Leader);
        let outcome = tokio::select! {
            r = execute(&inner, mover.as_deref(), &placement, step.clone()) => Some(r),
            _ = deposed => None,
        };
        match outcome {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                warn!(inner.logger, "rebalance step failed; planning again"; "step" => ?step, "error" => %e);
                set(&status, format!("retrying: {step:?}: {e}"));
                tokio::time::sleep(PAUSE).await;
            }
            None => {
                warn!(inner.logger, "rebalance step abandoned: this node no longer leads the metadata group"; "step" => ?step);
                set(
                    &status,
                    format!("interrupted: {step:?} (no longer the metadata leader)"),
                );
            }
        }
    }
}

/// Marks down the nodes the metadata group has not heard from for
/// `after`, and up again those it hears from (one change per call;
/// whether one was made). `heard` is when each was last heard from by
/// this leader (a new leader starts counting afresh, keeping nodes
/// already marked down as they are until they are heard).
async fn mark_down<E, SM>(
    inner: &Inner<E, SM>,
    heard: &mut BTreeMap<NodeId, Instant>,
    after: Duration,
) -> Result<bool, ShardError>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    let status = inner.meta.handle().status().await?;
    let p = inner.placement.borrow().clone();
    let now = Instant::now();
    heard.retain(|n, _| p.nodes().contains_key(n));
    for (&node, info) in p.nodes() {
        let answering = node == inner.id
            || status
                .progress
                .get(&node)
                .is_some_and(|pr| pr.recent_active);
        let last = heard.entry(node).or_insert(now);
        if answering {
            *last = now;
        }
        let down = !answering && (info.down || now.duration_since(*last) >= after);
        if down != info.down {
            info!(inner.logger, "marking a node"; "node" => node, "down" => down,
                "silent_for" => ?now.duration_since(*last));
            inner
                .change(Some(p.version()), Change::SetDown { node, down })
                .await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Each group's leader, as its replicas answer, and (when the placement
/// limits group sizes) the size its leader reports and, for a group
/// holding anything, its bytes per slot (as `mover` weighs them).
async fn observe<E, SM>(
    inner: &Inner<E, SM>,
    mover: Option<&dyn SlotMover>,
    p: &Placement,
) -> Observed
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    let mut observed = Observed::default();
    let sizes = if p.settings().max_group_bytes > 0 {
        // Statuses are asked of each leader by address (the client API:
        // the node's client token).
        let me = p.nodes().get(&inner.id).map(|n| n.raft_addr.clone());
        me.and_then(|a| RaftClient::new([a], inner.template.grpc.clone()).ok())
    } else {
        None
    };
    for &g in p.groups().keys() {
        let Ok(m) = members(inner, p, g).await else {
            continue;
        };
        if m.leader_id == 0 {
            continue;
        }
        observed.leaders.insert(g, m.leader_id);
        let (Some(client), Some(leader)) = (&sizes, p.nodes().get(&m.leader_id)) else {
            continue;
        };
        let group = client.for_group(g);
        let status = tokio::time::timeout(CALL, group.status(&leader.raft_addr));
        let Some(bytes) = status.await.ok().and_then(|s| s.ok()?.state_bytes) else {
            continue;
        };
        observed.sizes.insert(g, bytes);
        let Some(mover) = mover.filter(|_| bytes > 0) else {
            continue;
        };
        match tokio::time::timeout(CALL, mover.weigh(&group, &leader.raft_addr)).await {
            Ok(Ok(Some(w))) => {
                observed.weights.insert(g, w);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                warn!(inner.logger, "cannot weigh a group's slots"; "group" => g, "error" => %e)
            }
            Err(_) => warn!(inner.logger, "weighing a group's slots timed out"; "group" => g),
        }
    }
    observed
}

/// Asks `group`'s leader, found through its replicas' addresses (the
/// metadata group's: every node's), to hand leadership to `to`.
pub(crate) async fn transfer_leader(
    transport: &GrpcTransport,
    p: &Placement,
    group: GroupId,
    to: NodeId,
) -> Result<(), ShardError> {
    let a = match group {
        META_GROUP => p.nodes().values().map(|n| n.raft_addr.clone()).collect(),
        g => addrs(p, g),
    };
    let t = transport.for_group(group);
    call_cluster(&t, &a, CALL, Idempotence::Idempotent, |n| async move {
        n.transfer_leader(to).await
    })
    .await?;
    Ok(())
}

/// The raft addresses of the nodes hosting `group`.
fn addrs(p: &Placement, group: GroupId) -> Vec<String> {
    p.groups()
        .get(&group)
        .map(|g| {
            g.replicas
                .iter()
                .chain(&g.learners)
                .filter_map(|n| p.nodes().get(n).map(|i| i.raft_addr.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn addr_of(p: &Placement, node: NodeId) -> Result<String, ShardError> {
    p.nodes()
        .get(&node)
        .map(|i| i.raft_addr.clone())
        .ok_or_else(|| ShardError::Rebalance(format!("node {node} is not a member")))
}

async fn members<E, SM>(
    inner: &Inner<E, SM>,
    p: &Placement,
    group: GroupId,
) -> Result<Membership, ShardError> {
    let t = inner.host.transport.for_group(group);
    let a = addrs(p, group);
    Ok(
        call_cluster(&t, &a, CALL, Idempotence::Idempotent, |n| async move {
            n.members().await
        })
        .await?,
    )
}

async fn change_group<E, SM>(
    inner: &Inner<E, SM>,
    p: &Placement,
    group: GroupId,
    change: MembershipChange,
) -> Result<(), ShardError> {
    let t = inner.host.transport.for_group(group);
    let a = addrs(p, group);
    // A membership change whose outcome is unknown is checked by the next
    // plan (it reads the members again), so it is not sent twice here.
    call_cluster(&t, &a, CALL, Idempotence::NotIdempotent, |n| {
        let c = change.clone();
        async move { n.change_membership(vec![c]).await }
    })
    .await?;
    Ok(())
}

async fn execute<E, SM>(
    inner: &Inner<E, SM>,
    mover: Option<&dyn SlotMover>,
    p: &Placement,
    step: Step,
) -> Result<(), ShardError>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    let version = Some(p.version());
    match step {
        Step::AddReplica { group, node } => {
            let g = &p.groups()[&group];
            let mut p = p.clone();
            if !g.learners.contains(&node) {
                let mut learners = g.learners.clone();
                learners.insert(node);
                inner
                    .change(version, Change::SetLearners { group, learners })
                    .await?;
                p = inner.placement.borrow().clone();
            }
            let addr = addr_of(&p, node)?;
            let m = members(inner, &p, group).await?;
            let role = m.members.iter().find(|m| m.id == node).map(|m| m.role);
            if role.is_none() {
                let add = MembershipChange::AddLearner {
                    id: node,
                    addr: addr.clone(),
                };
                change_group(inner, &p, group, add).await?;
            }
            // Caught up enough once the new replica has applied its own
            // addition (it came with the leader's log or snapshot).
            wait_caught_up(inner, group, node, &addr).await?;
            if role != Some(MemberRole::Voter) {
                change_group(
                    inner,
                    &p,
                    group,
                    MembershipChange::AddVoter { id: node, addr },
                )
                .await?;
            }
            let mut replicas = p.groups()[&group].replicas.clone();
            replicas.insert(node);
            inner
                .change(None, Change::SetReplicas { group, replicas })
                .await?;
        }
        Step::RemoveReplica { group, node } => {
            let m = members(inner, p, group).await?;
            if m.members.iter().any(|m| m.id == node) {
                change_group(inner, p, group, MembershipChange::Remove { id: node }).await?;
            }
            let g = &p.groups()[&group];
            let change = if g.learners.contains(&node) {
                let mut learners = g.learners.clone();
                learners.remove(&node);
                Change::SetLearners { group, learners }
            } else {
                let mut replicas = g.replicas.clone();
                replicas.remove(&node);
                Change::SetReplicas { group, replicas }
            };
            inner.change(None, change).await?;
        }
        Step::CreateGroup { group, replicas } => {
            inner
                .change(version, Change::CreateGroup { group, replicas })
                .await?;
            // Its replicas bootstrap it as they apply the change.
            let p = inner.placement.borrow().clone();
            let deadline = tokio::time::Instant::now() + CATCH_UP;
            while members(inner, &p, group)
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
                tokio::time::sleep(PAUSE / 5).await;
            }
        }
        Step::MoveSlots(m) => move_slots(inner, mover, p, m).await?,
        Step::Purge(m) => {
            let mover = mover.ok_or_else(|| {
                ShardError::Rebalance("this node has no slot mover; cannot purge".into())
            })?;
            let from = (m.from, addrs(p, m.from));
            mover
                .purge(&inner.host.transport, from, m.slots)
                .await
                .map_err(|e| ShardError::Rebalance(format!("purging {m} from its source: {e}")))?;
            inner.change(None, Change::Purged(m)).await?;
        }
        Step::DeleteGroup { group } => {
            inner.change(version, Change::DeleteGroup { group }).await?;
        }
        Step::TransferLeader { group, to } => {
            transfer_leader(&inner.host.transport, p, group, to).await?;
        }
        Step::RemoveNode { node } => {
            inner.change(version, Change::RemoveNode { node }).await?;
            let meta = inner.meta.handle();
            let m = meta.members().await?;
            if m.members.iter().any(|m| m.id == node) {
                meta.change_membership(vec![MembershipChange::Remove { id: node }])
                    .await?;
            }
        }
    }
    Ok(())
}

async fn wait_caught_up<E, SM>(
    inner: &Inner<E, SM>,
    group: GroupId,
    node: NodeId,
    addr: &str,
) -> Result<(), ShardError> {
    let t = inner.host.transport.for_group(group);
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
        tokio::time::sleep(PAUSE / 5).await;
    }
}

async fn move_slots<E, SM>(
    inner: &Inner<E, SM>,
    mover: Option<&dyn SlotMover>,
    p: &Placement,
    m: SlotMove,
) -> Result<(), ShardError>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    let Some(mover) = mover else {
        // Without a mover the move cannot carry data: abandon it.
        if p.moving() == Some(m) {
            inner.change(None, Change::AbortMove(m)).await?;
        }
        return Err(ShardError::Rebalance(
            "this node has no slot mover; slots cannot move".into(),
        ));
    };
    if p.moving() != Some(m) {
        inner
            .change(Some(p.version()), Change::BeginMove(m))
            .await?;
    }
    let t = &inner.host.transport;
    let from = (m.from, addrs(p, m.from));
    let to = (m.to, addrs(p, m.to));
    mover
        .copy(t, from, to, m.slots)
        .await
        .map_err(|e| ShardError::Rebalance(format!("copying {m}: {e}")))?;
    // The purge is a step of its own (the placement remembers it), so a
    // crash right after the commit still gets the source purged.
    inner.change(None, Change::CommitMove(m)).await?;
    Ok(())
}

//! The rebalancer: carries out [`plan`]'s steps, one at a time, on the
//! node that leads the metadata group.
//!
//! Each step is written so that running it again after a crash half-way
//! is harmless, and the plan is recomputed from the committed placement
//! after every step; so a rebalance interrupted anywhere (this node
//! killed, leadership of the metadata group moving) resumes where the
//! placement says it is, on whichever node leads next.

use crate::host::{Inner, ShardError};
use crate::mover::SlotMover;
use crate::placement::{Change, NodeId, Placement};
use crate::plan::{plan, repair, Observed};
use crate::step::CALL;
use raftify_core::{AbstractLogEntry, AbstractStateMachine};
use raftify_grpc::RaftClient;
use slog::{info, warn};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
        let ctx = inner.rebalancing();
        let outcome = tokio::select! {
            r = ctx.execute(mover.as_deref(), &placement, step.clone()) => Some(r),
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
/// limits group sizes) the size its leader reports and — once some group
/// holds half the limit — each non-empty group's bytes per slot (as
/// `mover` weighs them).
async fn observe<E, SM>(
    inner: &Inner<E, SM>,
    mover: Option<&dyn SlotMover>,
    p: &Placement,
) -> Observed
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    let mut observed = Observed {
        leaders: inner.rebalancing().leaders(p).await,
        ..Observed::default()
    };
    let sizes = if p.settings().max_group_bytes > 0 {
        // Statuses are asked of each leader by address (the client API:
        // the node's client token).
        let me = p.nodes().get(&inner.id).map(|n| n.raft_addr.clone());
        me.and_then(|a| RaftClient::new([a], inner.template.grpc.clone()).ok())
    } else {
        None
    };
    let Some(client) = sizes else {
        return observed;
    };
    for (&g, l) in &observed.leaders {
        let Some(leader) = p.nodes().get(l) else {
            continue;
        };
        let group = client.for_group(g);
        let status = group.status(&leader.raft_addr);
        if let Some(bytes) = tokio::time::timeout(CALL, status)
            .await
            .ok()
            .and_then(|s| s.ok()?.state_bytes)
        {
            observed.sizes.insert(g, bytes);
        }
    }
    // Weights matter only once a group holds half the limit: below that
    // no group is over it, and no move of a group's slots can take
    // another over it.
    let limit = p.settings().max_group_bytes;
    let Some(mover) = mover.filter(|_| observed.sizes.values().any(|&b| b >= limit / 2)) else {
        return observed;
    };
    for (&g, &bytes) in &observed.sizes {
        let Some(leader) = observed.leaders.get(&g).and_then(|l| p.nodes().get(l)) else {
            continue;
        };
        if bytes == 0 {
            continue;
        }
        let group = client.for_group(g);
        let weigh = mover.weigh(&group, &leader.raft_addr);
        match tokio::time::timeout(CALL, weigh).await {
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

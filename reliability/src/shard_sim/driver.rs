//! The rebalancer of the simulation: the real planner's steps, carried
//! out by the real executor and the cache's slot mover from whichever
//! node leads the metadata group (cut short when that node crashes), and
//! now and then a new target of groups per node.

use super::node::{lock, meta_leader, World};
use super::*;
use raftify_cache::CacheSlotMover;
use raftify_shard::{plan, Change, Observed, Settings, Step, META_GROUP};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub(super) fn step_kind(s: &Step) -> &'static str {
    match s {
        Step::AddReplica { .. } => "add_replica",
        Step::RemoveReplica { .. } => "remove_replica",
        Step::CreateGroup { .. } => "create_group",
        Step::MoveSlots(_) => "move",
        Step::Purge(_) => "purge",
        Step::DeleteGroup { .. } => "delete_group",
        Step::TransferLeader { .. } => "transfer_leader",
        Step::RemoveNode { .. } => "remove_node",
    }
}

/// Plans and runs one rebalance step on the metadata leader; whether the
/// placement was balanced (nothing to do).
pub(super) async fn drive_once(w: &Arc<World>) -> bool {
    let Some(v) = meta_leader(w) else {
        return false;
    };
    let (world, id) = (w.clone(), v.id);
    let task = tokio::spawn(async move {
        let net = world.net.transport_in(META_GROUP, v.id);
        let ctx = v.rebalancing(&net);
        let p = v.placement.borrow().clone();
        let observed = Observed {
            leaders: ctx.leaders(&p).await,
            ..Observed::default()
        };
        let Some(step) = plan(&p, &observed) else {
            return true;
        };
        let mover = CacheSlotMover {
            chunk: world.opts.chunk,
        };
        // As the host does: a step is abandoned when this node stops
        // leading the metadata group (the next leader plans again).
        let mut role = v.meta.handle().subscribe_role();
        let deposed = role.wait_for(|s| s.role != raftify_core::Role::Leader);
        tokio::select! {
            r = ctx.execute(Some(&mover), &p, step.clone()) => {
                if r.is_ok() {
                    World::count(&world.steps, step_kind(&step));
                }
            }
            _ = deposed => World::count(&world.steps, "deposed"),
        }
        false
    });
    if let Some(n) = lock(&w.nodes).get_mut(&id) {
        n.driving = Some(task.abort_handle());
    }
    let abort = task.abort_handle();
    let done = match tokio::time::timeout(STEP_TIMEOUT, task).await {
        Ok(Ok(balanced)) => balanced,
        Ok(Err(_)) => false,
        Err(_) => {
            abort.abort();
            false
        }
    };
    if let Some(n) = lock(&w.nodes).get_mut(&id) {
        n.driving = None;
    }
    done
}

/// The rebalancer: one step after another on whichever node leads the
/// metadata group; while `churn` holds, now and then a new target of
/// groups per node (1 to 3), so that groups split, merge and go, and —
/// with four nodes — once a node told to leave (its replicas move to the
/// others, then it is removed).
pub(super) async fn driver(
    w: Arc<World>,
    mut rng: SimRng,
    churn: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut next_target = Instant::now() + Duration::from_millis(rng.range(1_000, 3_000));
    let mut leave_at =
        (w.opts.nodes > 3).then(|| Instant::now() + Duration::from_millis(rng.range(2_000, 6_000)));
    while !stop.load(Ordering::Acquire) {
        // Pauses between steps leave moves half-done for a while (the
        // source answering `ASK`, the target serving): clients run into
        // every stage.
        tokio::time::sleep(Duration::from_millis(rng.range(20, 500))).await;
        if churn.load(Ordering::Acquire) && Instant::now() >= next_target {
            if let Some(v) = meta_leader(&w) {
                let settings = Settings {
                    groups_per_node: rng.range(1, 3) as usize,
                    ..v.placement.borrow().settings()
                };
                let net = w.net.transport_in(META_GROUP, v.id);
                let ctx = v.rebalancing(&net);
                let change = ctx.change(None, Change::SetSettings(settings));
                if matches!(tokio::time::timeout(OP_TIMEOUT, change).await, Ok(Ok(_))) {
                    World::count(&w.steps, "retarget");
                }
            }
            next_target = Instant::now() + Duration::from_millis(rng.range(1_500, 5_000));
        }
        if churn.load(Ordering::Acquire) && leave_at.is_some_and(|t| Instant::now() >= t) {
            if let Some(v) = meta_leader(&w) {
                let node = rng.range(1, w.opts.nodes);
                let net = w.net.transport_in(META_GROUP, v.id);
                let ctx = v.rebalancing(&net);
                let leave = Change::SetLeaving {
                    node,
                    leaving: true,
                };
                if matches!(
                    tokio::time::timeout(OP_TIMEOUT, ctx.change(None, leave)).await,
                    Ok(Ok(_))
                ) {
                    World::count(&w.steps, "leave");
                    leave_at = None;
                }
            }
        }
        drive_once(&w).await;
    }
}

//! The simulation's nemesis.

use super::node::{boot, crash, meta_leader, World};
use super::*;
use crate::rng::SimRng;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Crashes and restarts nodes (one down at a time: every group keeps a
/// quorum), isolates one for a while, delays or drops messages, until
/// `until`.
pub(super) async fn nemesis(w: Arc<World>, mut rng: SimRng, until: Instant) {
    let mut down: Option<u64> = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.range(300, 1_500))).await;
        if let Some(id) = down.take() {
            boot(&w, id).await;
            World::count(&w.faults, "restart");
            continue;
        }
        let id = rng.range(1, NODES);
        match rng.below(5) {
            0 | 1 => {
                // Most often the metadata leader: it runs the rebalance.
                let victim = match meta_leader(&w) {
                    Some(v) if rng.chance(0.6) => v.id,
                    _ => id,
                };
                crash(&w, victim).await;
                down = Some(victim);
                World::count(&w.faults, "crash");
            }
            2 => {
                w.net.isolate(id);
                tokio::time::sleep(Duration::from_millis(rng.range(300, 2_000))).await;
                w.heal();
                World::count(&w.faults, "isolate");
            }
            3 => {
                w.net
                    .set_delay(Some(Duration::from_millis(rng.range(5, 40))));
                tokio::time::sleep(Duration::from_millis(rng.range(500, 2_000))).await;
                w.heal();
                World::count(&w.faults, "delay");
            }
            _ => {
                w.net.set_drop_rate(0.2);
                tokio::time::sleep(Duration::from_millis(rng.range(300, 1_500))).await;
                w.heal();
                World::count(&w.faults, "drops");
            }
        }
    }
    if let Some(id) = down {
        boot(&w, id).await;
        World::count(&w.faults, "restart");
    }
}

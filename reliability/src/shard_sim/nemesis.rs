//! The simulation's nemesis.

use super::node::{boot, crash, meta_leader, World};
use crate::rng::SimRng;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Crashes and restarts nodes (one down at a time: every group keeps a
/// quorum), isolates one for a while, cuts a link, loses a node's
/// answers to requests it ran (outcomes unknown to the caller), delays
/// or drops messages, until `until`.
pub(super) async fn nemesis(w: Arc<World>, mut rng: SimRng, until: Instant) {
    let mut down: Option<u64> = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.range(300, 1_500))).await;
        if let Some(id) = down.take() {
            if boot(&w, id).await {
                World::count(&w.faults, "restart");
            } else {
                // Tried again later; no other node goes down meanwhile.
                down = Some(id);
            }
            continue;
        }
        let id = rng.range(1, w.opts.nodes);
        match rng.below(7) {
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
            fault => {
                // A network fault for a while, then healed.
                let (kind, ms) = match fault {
                    2 => {
                        w.net.isolate(id);
                        ("isolate", (300, 2_000))
                    }
                    3 => {
                        let d = Duration::from_millis(rng.range(5, 40));
                        w.net.set_delay(Some(d));
                        ("delay", (500, 2_000))
                    }
                    4 => {
                        w.net.cut(id, 1 + (id % w.opts.nodes));
                        ("cut", (300, 2_000))
                    }
                    5 => {
                        w.net.lose_replies_from(id);
                        ("lost_replies", (200, 1_000))
                    }
                    _ => {
                        w.net.set_drop_rate(0.2);
                        ("drops", (300, 1_500))
                    }
                };
                tokio::time::sleep(Duration::from_millis(rng.range(ms.0, ms.1))).await;
                w.heal();
                World::count(&w.faults, kind);
            }
        }
    }
    while let Some(id) = down {
        if boot(&w, id).await {
            World::count(&w.faults, "restart");
            down = None;
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

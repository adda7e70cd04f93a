//! The leader's evictor for `--maxmemory`: every [`CHECK`] the leader
//! compares the keyspace's memory estimate with the limit and, over it,
//! samples keys, chooses victims by the policy
//! ([`raftify_cache::eviction`]) and proposes one [`Op::Evict`] entry,
//! deleting them on every node at once, until memory is back under 95 % of
//! the limit. Writes go on meanwhile, unless memory overshoots the limit by
//! 10 % (then they are refused with `-OOM`, see
//! [`raftify_cache::eviction::refuses`]).
//!
//! On a sharded node each group's leader runs one, against the group's
//! share of the cluster's memory ([`crate::sharded::Shard::group_budget`]).

use crate::server::Node;
use raftify_cache::commands::xorshift;
use raftify_cache::eviction::{choose, sample, Policy};
use raftify_cache::{CacheEntry, Op};
use raftify_core::unix_ms;
use slog::{debug, Logger};
use std::time::Duration;

/// How often the leader checks memory.
const CHECK: Duration = Duration::from_millis(100);

/// The memory a group may hold now; `None`: do not evict now.
pub type Budget = std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// The leader's evictor: runs until the node stops.
pub async fn run(node: Node, policy: Policy, max: Budget, logger: Logger) {
    if policy == Policy::NoEviction {
        return;
    }
    let mut seed = unix_ms() | 1;
    let mut state = node.handle().subscribe();
    loop {
        if state.borrow().fatal.is_some() || matches!(state.borrow().role, raftify::Role::Stopped) {
            return;
        }
        let mut pause = CHECK;
        // The budget is asked for only while leading (followers never evict).
        let leading = node.handle().is_leader();
        if let Some(max) = leading.then(&*max).flatten().filter(|&m| m > 0) {
            seed = xorshift(seed);
            let target = max - max / 20;
            let victims = node
                .stale_read(|sm| {
                    let ks = sm.keyspace();
                    let used = ks.used_memory() as u64;
                    if used <= max {
                        return Vec::new();
                    }
                    let sample = sample(ks, seed, sm.frequencies());
                    choose(policy, sample, (used - target) as usize)
                })
                .await;
            if !victims.is_empty() {
                let n = victims.len();
                let entry = CacheEntry {
                    clock_ms: unix_ms(),
                    op: Op::Evict(victims),
                };
                match node.propose_local(&entry).await {
                    Ok(_) => {
                        debug!(logger, "evicted keys"; "count" => n, "policy" => policy.name());
                        pause = Duration::ZERO;
                    }
                    Err(e) => debug!(logger, "eviction proposal failed; retrying"; "error" => %e),
                }
            }
        }
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = state.changed() => if changed.is_err() { return },
            }
        }
    }
}

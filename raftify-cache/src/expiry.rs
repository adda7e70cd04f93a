//! Active expiry: the leader proposes [`Op::Expire`] when the earliest
//! TTL (of a key or a named-cache entry) is due on its clock, which
//! advances the replicated clock and deletes the expired entries on every
//! node at once. (Reads already treat an entry past its TTL on the
//! replicated clock as missing.) `raftify-redis` and the embedded cache
//! both run it.

use crate::{CacheEntry, CacheState, Op};
use raftify_core::{unix_ms, Raft, Role};
use slog::{debug, Logger};
use std::time::Duration;

/// Longest pause between two looks at the earliest TTL.
const POLL: Duration = Duration::from_millis(100);

/// Runs until the node stops.
pub async fn run(node: Raft<CacheEntry, CacheState>, logger: Logger) {
    // Elections wake it, not every write: a TTL written since the last
    // look is seen within POLL (reads judge TTLs themselves meanwhile).
    let mut state = node.handle().subscribe_role();
    loop {
        if state.borrow().fatal.is_some() || matches!(state.borrow().role, Role::Stopped) {
            return;
        }
        let mut pause = POLL;
        if node.handle().is_leader() {
            let due = node.stale_read(|sm| sm.next_expiry()).await;
            let now = unix_ms();
            match due {
                Some(t) if t <= now => {
                    let entry = CacheEntry {
                        clock_ms: now,
                        op: Op::Expire,
                    };
                    if let Err(e) = node.propose_local(&entry).await {
                        debug!(logger, "expiry proposal failed; retrying"; "error" => %e);
                    }
                    continue;
                }
                Some(t) => pause = pause.min(Duration::from_millis(t - now)),
                None => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

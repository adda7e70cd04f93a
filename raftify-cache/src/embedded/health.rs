//! [`Health`]: the quorum state a node sees, as a watch channel.

use crate::{CacheEntry, CacheState};
use raftify_core::{Raft, Role};
use std::time::Duration;
use tokio::sync::watch;

/// How often the commit index is compared with the applied one (the rest
/// follows the node's state as it changes).
const POLL: Duration = Duration::from_millis(100);

/// What a node knows of its cluster's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The leader this node follows (or itself); `None` during an election
    /// or when this node cannot reach a quorum.
    pub leader: Option<u64>,
    /// Whether a quorum is reachable: a leader knows (it steps down when a
    /// quorum stops answering within an election timeout); a follower
    /// infers it from following a leader.
    pub quorum: bool,
    /// Whether this node has applied every entry it knows to be committed.
    pub caught_up: bool,
    /// This node's role.
    pub role: Option<Role>,
    /// The last entry applied here.
    pub applied: u64,
}

impl Health {
    /// Ready to serve: a leader is known and this node has caught up (the
    /// answer for a readiness probe).
    pub fn ready(&self) -> bool {
        self.leader.is_some() && self.quorum && self.caught_up
    }
}

/// Keeps `tx` up to date until the node stops.
pub(crate) async fn run(node: Raft<CacheEntry, CacheState>, tx: watch::Sender<Health>) {
    let mut state = node.handle().subscribe();
    loop {
        let s = state.borrow_and_update().clone();
        if s.fatal.is_some() || matches!(s.role, Role::Stopped) {
            tx.send_replace(Health {
                role: Some(Role::Stopped),
                ..Health::default()
            });
            return;
        }
        let commit = match node.handle().status().await {
            Ok(st) => st.commit_index,
            Err(_) => u64::MAX,
        };
        let leader = (s.leader_id != 0).then_some(s.leader_id);
        let h = Health {
            leader,
            quorum: leader.is_some(),
            caught_up: s.applied_index >= commit,
            role: Some(s.role),
            applied: s.applied_index,
        };
        tx.send_if_modified(|old| {
            let changed = *old != h;
            *old = h;
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

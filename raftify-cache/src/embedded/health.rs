//! [`Health`]: the quorum state a node sees, as a watch channel.

use crate::{CacheEntry, CacheState};
use raftify_core::{Raft, Role};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often a node checks it has caught up (the rest follows the node's
/// state as it changes).
const POLL: Duration = Duration::from_millis(100);
/// How often a slow round is checked against the election timeout.
const TICK: Duration = Duration::from_millis(25);

/// What a node knows of its cluster's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The leader this node follows (or itself); `None` during an election
    /// or when this node cannot reach a quorum.
    pub leader: Option<u64>,
    /// Whether a quorum is reachable: a ReadIndex round (which the leader
    /// confirms with a quorum) succeeded within the last election timeout.
    /// This turns false within about one election timeout of a loss,
    /// sooner than raft's own election timers notice.
    pub quorum: bool,
    /// Whether this node has applied every entry the leader had committed
    /// (checked by a ReadIndex round every 100 ms).
    pub caught_up: bool,
    /// This node's role.
    pub role: Option<Role>,
    /// The last entry applied here, as of the last health round (every
    /// 100 ms, and on elections): the channel does not change on every
    /// write.
    pub applied: u64,
}

impl Health {
    /// Ready to serve: a leader is known and this node has caught up (the
    /// answer for a readiness probe).
    pub fn ready(&self) -> bool {
        self.leader.is_some() && self.quorum && self.caught_up
    }
}

/// Keeps `tx` up to date until the node stops: the role and leader as
/// they change, and, by a ReadIndex round every [`POLL`], whether a quorum
/// answers and this node has caught up (the round completes once this
/// node applied everything the leader had committed; one that does not
/// complete within an election timeout means a lost quorum or a node
/// behind).
pub(crate) async fn run(node: Raft<CacheEntry, CacheState>, tx: watch::Sender<Health>) {
    let tx = std::sync::Arc::new(tx);
    let prober = tokio::spawn(probe(node.clone(), tx.clone()));
    let mut state = node.handle().subscribe_role();
    loop {
        let s = state.borrow_and_update().clone();
        if s.fatal.is_some() || matches!(s.role, Role::Stopped) {
            prober.abort();
            tx.send_replace(Health {
                role: Some(Role::Stopped),
                ..Health::default()
            });
            return;
        }
        let leader = (s.leader_id != 0).then_some(s.leader_id);
        tx.send_if_modified(|h| {
            let old = h.clone();
            h.leader = leader;
            h.quorum &= leader.is_some();
            h.role = Some(s.role);
            if leader.is_none() {
                h.caught_up = false;
            }
            *h != old
        });
        if state.changed().await.is_err() {
            prober.abort();
            return;
        }
    }
}

async fn probe(node: Raft<CacheEntry, CacheState>, tx: std::sync::Arc<watch::Sender<Health>>) {
    let limit = node.handle().config().election_timeout();
    let mut changes = tx.subscribe();
    let mut last_ok: Option<Instant> = None;
    let publish = |last_ok: Option<Instant>, caught_up: Option<bool>| {
        let applied = node.handle().state().applied_index;
        tx.send_if_modified(|h| {
            let old = h.clone();
            h.applied = applied;
            h.quorum = h.leader.is_some() && last_ok.is_some_and(|t| t.elapsed() <= limit);
            if let Some(c) = caught_up {
                h.caught_up = c;
            }
            h.caught_up &= h.quorum;
            *h != old
        });
    };
    loop {
        let started = Instant::now();
        let leader = changes.borrow_and_update().leader;
        // A round in flight when the leader changes is abandoned and a new
        // one starts at once: a new leader is confirmed within a round trip.
        let mut leader_changed = false;
        let ok = if leader.is_some() {
            let call = node.handle().read_index();
            tokio::pin!(call);
            loop {
                tokio::select! {
                    r = &mut call => break r.is_ok(),
                    _ = tokio::time::sleep(TICK) => {
                        publish(last_ok, None);
                        if started.elapsed() > limit {
                            break false;
                        }
                    }
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if changes.borrow_and_update().leader != leader {
                            leader_changed = true;
                            break false;
                        }
                    }
                }
            }
        } else {
            false
        };
        if ok {
            last_ok = Some(Instant::now());
        }
        publish(last_ok, (!leader_changed).then_some(ok));
        if leader_changed {
            continue;
        }
        // Until the next round: the pause, or sooner a new leader.
        let pause = tokio::time::sleep(POLL);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if changes.borrow_and_update().leader != leader {
                        break;
                    }
                }
            }
        }
    }
}

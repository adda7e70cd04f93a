//! Election safety: at most one leader per term.
//!
//! Observed two ways: every node's published state (role, term, leader) as
//! it changes — two nodes leading the same term, or two nodes believing in
//! different leaders for the same term, is a violation — and every hard
//! state a node persists ([`crate::LossyStore`] reports a node that votes
//! for two candidates in one term, the root cause of split leadership).

use super::Violations;
use raftify_core::{NodeState, Role};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// What has been seen of leaders, per term.
#[derive(Default)]
pub struct LeaderLog {
    /// term -> leader -> the nodes that saw it lead (the leader itself included).
    by_term: Mutex<BTreeMap<u64, BTreeMap<u64, Vec<u64>>>>,
}

impl LeaderLog {
    /// Records node `node`'s state; reports a second leader for a term.
    /// Returns true when `node` is newly seen leading `state.term`.
    pub fn observe(&self, v: &Violations, node: u64, state: &NodeState) -> bool {
        let leader = if state.role == Role::Leader {
            node
        } else {
            state.leader_id
        };
        if leader == 0 || state.term == 0 {
            return false;
        }
        let mut m = self.by_term.lock().unwrap_or_else(|p| p.into_inner());
        let leaders = m.entry(state.term).or_default();
        let newly_leading =
            state.role == Role::Leader && !leaders.get(&node).is_some_and(|w| w.contains(&node));
        leaders.entry(leader).or_default().push(node);
        if leaders.len() > 1 {
            v.report(
                "election_safety",
                format!(
                    "term {} has {} leaders: {:?} (leader -> nodes that saw it)",
                    state.term,
                    leaders.len(),
                    leaders
                ),
            );
        }
        newly_leading
    }

    /// Number of terms in which a leader was seen.
    pub fn terms_with_leader(&self) -> usize {
        self.by_term.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

//! Leader completeness: the log of a leader of term `T` holds every entry
//! committed in a term before `T`.
//!
//! Checked each time a node is seen becoming leader, against every entry
//! known committed so far ([`super::no_lost_commits::Committed`]); entries
//! below the leader's compacted prefix are covered by its snapshot.

use super::no_lost_commits::Committed;
use super::Violations;
use crate::lossy_store::LossyStore;
use crate::rng::digest;

/// Checks the log of `leader`, newly leading `term`.
pub fn check_new_leader(
    committed: &Committed,
    leader: u64,
    term: u64,
    store: &LossyStore,
    v: &Violations,
) {
    let (first, log) = store.log();
    let (snap_index, _) = store.snapshot_point();
    for (index, (t, d)) in committed.entries() {
        if t >= term {
            continue;
        }
        if index < first {
            if index > snap_index {
                v.report(
                    "leader_completeness",
                    format!("leader {leader} of term {term} compacted index {index} without a snapshot covering it"),
                );
            }
            continue;
        }
        match log.get((index - first) as usize) {
            Some(e) if e.term == t && digest(&e.data) == d => {}
            Some(e) => v.report(
                "leader_completeness",
                format!(
                    "leader {leader} of term {term} holds (term {}, data {:016x}) at index {index}, \
                     committed was (term {t}, data {d:016x})",
                    e.term,
                    digest(&e.data)
                ),
            ),
            None => v.report(
                "leader_completeness",
                format!(
                    "leader {leader} of term {term} lacks committed index {index} (term {t}); its log ends at {}",
                    first + log.len() as u64 - 1
                ),
            ),
        }
    }
}

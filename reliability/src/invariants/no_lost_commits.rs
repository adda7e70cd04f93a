//! No lost commits: an entry, once committed, never changes or disappears,
//! and every write acknowledged to a client is applied, with its command,
//! at the index it was acknowledged at, on every node.
//!
//! "Committed" is learned from the stores: an entry at or below a node's
//! persisted commit index. The set only grows; seeing a different entry at a
//! known committed index, or a final log without it, is a violation.

use super::Violations;
use crate::lossy_store::LossyStore;
use crate::rng::digest;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Every entry known committed: index -> (term, data digest).
#[derive(Default)]
pub struct Committed {
    map: Mutex<BTreeMap<u64, (u64, u64)>>,
}

impl Committed {
    /// A snapshot of the set, in index order.
    pub fn entries(&self) -> Vec<(u64, (u64, u64))> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// The highest committed index known.
    pub fn max_index(&self) -> u64 {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
    }

    /// Adds what the stores now hold as committed; reports a committed
    /// index whose entry changed.
    pub fn collect(&self, stores: &[(u64, Arc<LossyStore>)], v: &Violations) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for (id, s) in stores {
            let commit = s.commit();
            let (first, log) = s.log();
            for e in log.iter().take_while(|e| e.index <= commit) {
                debug_assert!(e.index >= first);
                let now = (e.term, digest(&e.data));
                match m.get(&e.index) {
                    None => {
                        m.insert(e.index, now);
                    }
                    Some(was) if *was != now => v.report(
                        "no_lost_commits",
                        format!(
                            "node {id} holds (term {}, data {:016x}) at committed index {}, \
                             committed earlier as (term {}, data {:016x})",
                            now.0, now.1, e.index, was.0, was.1
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    /// At the end of a run: every committed entry is still in the log of
    /// each of `members` (or below its snapshot).
    pub fn check_present(&self, members: &[(u64, Arc<LossyStore>)], v: &Violations) {
        let entries = self.entries();
        for (id, s) in members {
            let (first, log) = s.log();
            for (index, (t, d)) in &entries {
                if *index < first {
                    continue;
                }
                match log.get((index - first) as usize) {
                    Some(e) if e.term == *t && digest(&e.data) == *d => {}
                    other => v.report(
                        "no_lost_commits",
                        format!(
                            "member {id} lost committed index {index} (term {t}): it holds {:?}",
                            other.map(|e| (e.term, digest(&e.data)))
                        ),
                    ),
                }
            }
        }
    }
}

/// A write acknowledged to a client: index and command digest.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    /// Log index from the apply output.
    pub index: u64,
    /// Digest of the command.
    pub digest: u64,
}

/// Every acknowledged write must be in every member's applied record, at
/// its index, with its command. Returns the number of acknowledged writes
/// lost (missing or different on some member).
pub fn check_acked(acked: &[Acked], records: &[(u64, Vec<(u64, u64)>)], v: &Violations) -> u64 {
    let mut lost = 0;
    for (id, record) in records {
        let by_index: BTreeMap<u64, u64> = record.iter().copied().collect();
        for a in acked {
            match by_index.get(&a.index) {
                Some(d) if *d == a.digest => {}
                other => {
                    lost += 1;
                    v.report(
                        "no_lost_commits",
                        format!(
                            "acknowledged write {:016x} at index {} is {} on node {id}",
                            a.digest,
                            a.index,
                            match other {
                                None => "missing".to_string(),
                                Some(d) => format!("replaced by {d:016x}"),
                            }
                        ),
                    );
                }
            }
        }
    }
    lost
}

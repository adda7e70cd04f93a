//! Log matching: if two logs hold an entry with the same index and term,
//! they hold the same entries up to and including it.
//!
//! Checked on the persisted logs of every store of a run (crashed and
//! removed nodes included), pairwise, during the run and at its end.

use super::Violations;
use crate::lossy_store::LossyStore;
use crate::rng::digest;
use raft::eraftpb::Entry;
use std::sync::Arc;

fn same(a: &Entry, b: &Entry) -> bool {
    a.term == b.term && a.get_entry_type() == b.get_entry_type() && a.data == b.data
}

fn at(log: &[Entry], first: u64, idx: u64) -> &Entry {
    &log[(idx - first) as usize]
}

/// Checks every pair of logs.
pub fn check(stores: &[(u64, Arc<LossyStore>)], v: &Violations) {
    let logs: Vec<(u64, u64, Vec<Entry>)> = stores
        .iter()
        .map(|(id, s)| {
            let (first, es) = s.log();
            (*id, first, es)
        })
        .collect();
    for (i, (a_id, a_first, a)) in logs.iter().enumerate() {
        for (b_id, b_first, b) in logs.iter().skip(i + 1) {
            let lo = (*a_first).max(*b_first);
            let hi = (a_first + a.len() as u64).min(b_first + b.len() as u64); // exclusive
            if lo >= hi {
                continue;
            }
            // The highest common index where the terms agree.
            let Some(top) = (lo..hi)
                .rev()
                .find(|idx| at(a, *a_first, *idx).term == at(b, *b_first, *idx).term)
            else {
                continue;
            };
            for idx in lo..=top {
                let (ea, eb) = (at(a, *a_first, idx), at(b, *b_first, idx));
                if !same(ea, eb) {
                    v.report(
                        "log_matching",
                        format!(
                            "nodes {a_id} and {b_id} agree on (index {top}, term {}) but differ at index {idx}: \
                             term {} data {:016x} vs term {} data {:016x}",
                            at(a, *a_first, top).term,
                            ea.term,
                            digest(&ea.data),
                            eb.term,
                            digest(&eb.data)
                        ),
                    );
                    break;
                }
            }
        }
    }
}

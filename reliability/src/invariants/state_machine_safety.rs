//! State machine safety: every node applies the same command at each log
//! index, in increasing index order.
//!
//! Checked as it happens by [`crate::sm::ApplyOracle`] (every apply, on
//! every node, against the first apply of that index anywhere), and at the
//! end of a run by comparing the applied records of the members.

use super::Violations;

/// Compares the final applied records `(node, [(index, digest)])`: equal
/// where they overlap, and identical once every node applied as far.
pub fn check_records(records: &[(u64, Vec<(u64, u64)>)], v: &Violations) {
    let Some((first_id, first)) = records.first() else {
        return;
    };
    for (id, r) in records.iter().skip(1) {
        if r != first {
            let diff = r
                .iter()
                .zip(first.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(r.len().min(first.len()));
            v.report(
                "state_machine_safety",
                format!(
                    "applied sequences of nodes {first_id} ({} entries) and {id} ({} entries) differ at position {diff}: {:?} vs {:?}",
                    first.len(),
                    r.len(),
                    first.get(diff),
                    r.get(diff)
                ),
            );
        }
    }
}

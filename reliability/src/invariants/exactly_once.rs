//! Exactly-once writes: every command is applied at one log index at most
//! (a retried session write is answered from the session table, never
//! applied again), and the counter the counter clients increment in
//! sessions ends equal to the increments they were acknowledged, give or
//! take those whose outcome they never learned.

use super::Violations;

/// Reports a command (digest `d`) applied at `index` after it was applied
/// at `first`: applied twice.
pub fn check_single_apply(d: u64, first: u64, index: u64, v: &Violations) {
    if first != index {
        v.report(
            "exactly_once",
            format!("command {d:016x} applied at index {first} and again at index {index}"),
        );
    }
}

/// Checks the final counter on every member against what the counter
/// clients were told: `acked` increments acknowledged, `unresolved` whose
/// outcome is unknown (each applied once or not at all).
pub fn check_counter(values: &[(u64, i64)], acked: u64, unresolved: u64, v: &Violations) {
    let (lo, hi) = (acked as i64, (acked + unresolved) as i64);
    for (node, value) in values {
        if *value < lo || *value > hi {
            v.report(
                "exactly_once",
                format!(
                    "node {node}: the counter is {value}, clients were acknowledged {acked} \
                     increments ({unresolved} more unknown)"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_applies_and_wrong_counters_are_reported() {
        let v = Violations::default();
        check_single_apply(1, 5, 5, &v);
        check_counter(&[(1, 7), (2, 8)], 7, 1, &v);
        assert!(v.all().is_empty());
        check_single_apply(1, 5, 9, &v);
        check_counter(&[(3, 9)], 7, 1, &v);
        check_counter(&[(3, 6)], 7, 1, &v);
        assert_eq!(v.all().len(), 3);
    }
}

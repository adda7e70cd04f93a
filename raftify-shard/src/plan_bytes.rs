//! The planner's rules for groups that hold too many bytes (with a size
//! limit, [`crate::Settings::max_group_bytes`], and the groups weighed:
//! [`Observed::weights`]).
//!
//! Spreading slots evenly over enough groups splits a group that grew
//! with keys spread over its slots. A range made hot by hash tags (many
//! keys in few slots) stays with one group that way: [`hot_split`] moves
//! the part of such a group's slots that holds about half of its surplus
//! (by bytes, not by slot count) to the group holding the fewest bytes,
//! and [`fits`] keeps the slot-count rules from moving bytes back over
//! the limit. A hot split leaves both groups below the larger one's
//! size before it, so hot splits end; slot-count moves never take a group
//! over the limit, so they do not start new ones. Bytes in one slot
//! cannot be split (as in Redis Cluster, a slot is the unit).

use super::Observed;
use crate::placement::{GroupId, Placement, SlotMove};
use crate::plan::Step;
use crate::slots::SlotRange;

/// Rule 6a: the largest group over the limit that can be split gives the
/// part of one of its slot runs (a prefix or a suffix) whose bytes come
/// closest to half its difference with the group holding the fewest
/// bytes, which takes it. Each such move leaves both groups smaller than
/// the donor was, so the sizes, largest first, only go down: hot splits
/// end.
pub(super) fn hot_split(p: &Placement, observed: &Observed) -> Option<Step> {
    let max = p.settings().max_group_bytes;
    if max == 0 {
        return None;
    }
    let mut sizes = sizes(p, observed)?;
    // Largest first; the taker is the smallest of the others.
    sizes.sort_by_key(|&(g, b)| (u64::MAX - b, g));
    sizes
        .iter()
        .take_while(|&&(_, b)| b > max)
        .find_map(|&(donor, big)| {
            let &(taker, small) = sizes.iter().rev().find(|&&(g, _)| g != donor)?;
            let weights = observed.weights.get(&donor)?;
            let slots = best_cut(p, donor, weights, big.saturating_sub(small))?;
            Some(Step::MoveSlots(SlotMove {
                slots,
                from: donor,
                to: taker,
            }))
        })
}

/// Whether moving `m` keeps its target within the size limit, as far as
/// is known (no limit, or an unknown size or weight: yes).
pub(super) fn fits(p: &Placement, observed: &Observed, m: &SlotMove) -> bool {
    let max = p.settings().max_group_bytes;
    let (Some(&target), Some(weights)) = (observed.sizes.get(&m.to), observed.weights.get(&m.from))
    else {
        return true;
    };
    max == 0 || target.saturating_add(bytes_in(weights, m.slots)) <= max
}

/// Every group's size, when every one is known.
fn sizes(p: &Placement, observed: &Observed) -> Option<Vec<(GroupId, u64)>> {
    p.groups()
        .keys()
        .map(|g| observed.sizes.get(g).map(|&b| (*g, b)))
        .collect()
}

/// The bytes `weights` (slot, bytes; in slot order) holds in `range`.
fn bytes_in(weights: &[(u16, u64)], range: SlotRange) -> u64 {
    weights
        .iter()
        .filter(|(s, _)| range.contains(*s))
        .fold(0u64, |t, (_, b)| t.saturating_add(*b))
}

/// The prefix or suffix of one of `donor`'s runs moving the bytes closest
/// to half of `gap` (the donor's bytes less the taker's), among those
/// moving some bytes and fewer than `gap` (so that both groups end below
/// the donor's size before); of equally close ones, the one moving fewer
/// bytes (a new, empty taker: the small side moves, not the hot one).
fn best_cut(p: &Placement, donor: GroupId, weights: &[(u16, u64)], gap: u64) -> Option<SlotRange> {
    let want = gap / 2;
    let mut best: Option<((u64, u64), SlotRange)> = None;
    let mut consider = |moved: u64, range: Option<SlotRange>| {
        let Some(range) = range else {
            return;
        };
        if moved == 0 || moved >= gap {
            return;
        }
        let score = (moved.abs_diff(want), moved);
        if best.is_none_or(|(b, _)| score < b) {
            best = Some((score, range));
        }
    };
    for (run, _) in p.ranges().into_iter().filter(|(_, g)| *g == donor) {
        let inside: Vec<(u16, u64)> = weights
            .iter()
            .copied()
            .filter(|(s, _)| run.contains(*s))
            .collect();
        let total = inside.iter().fold(0u64, |t, (_, b)| t.saturating_add(*b));
        let mut before = 0u64;
        for &(slot, bytes) in &inside {
            // The suffix from this slot on, and the prefix up to it.
            consider(total.saturating_sub(before), SlotRange::new(slot, run.end));
            before = before.saturating_add(bytes);
            consider(before, SlotRange::new(run.start, slot));
        }
    }
    best.map(|(_, r)| r)
}

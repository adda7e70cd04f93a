//! Entries handed to the storage writer but not yet durable.
//!
//! With pipelined persistence the loop gives raft-rs a Ready back
//! (`advance_append_async`) before its entries are on disk, and raft-rs at
//! once forgets them from its own unstable log: from then on it reads them
//! through [`raft::Storage`]. The overlay keeps that suffix in memory, in
//! front of the store, until the write that carries it completes (the part a
//! later, still queued write replaced stays until that write completes too).

use raft::eraftpb::Entry;
use std::collections::VecDeque;

/// A contiguous run of log entries, each tagged with the number of the write
/// that carries it. Tags never decrease from front to back.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    entries: VecDeque<(u64, Entry)>,
}

impl Overlay {
    /// Records the entries of write `seq`. The first one may replace a
    /// suffix, in the overlay or (shadowing it) in the store.
    pub(crate) fn push(&mut self, seq: u64, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        debug_assert!(
            self.last_index().is_none_or(|l| first.index <= l + 1),
            "raft appends contiguously"
        );
        match self.first_index() {
            Some(f) if first.index > f => {
                let keep = (first.index - f) as usize;
                self.entries.truncate(keep);
            }
            _ => self.entries.clear(),
        }
        self.entries
            .extend(entries.iter().map(|e| (seq, e.clone())));
    }

    /// Forgets what writes up to `seq` made durable.
    pub(crate) fn persisted(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|(s, _)| *s <= seq) {
            self.entries.pop_front();
        }
    }

    pub(crate) fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(_, e)| e.index)
    }

    pub(crate) fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(_, e)| e.index)
    }

    /// The entry at `idx` when the overlay holds it.
    pub(crate) fn get(&self, idx: u64) -> Option<&Entry> {
        let first = self.first_index()?;
        let pos = idx.checked_sub(first)?;
        self.entries.get(pos as usize).map(|(_, e)| e)
    }

    /// Entries `[low, high)` ∩ the overlay, in order.
    pub(crate) fn range(&self, low: u64, high: u64) -> impl Iterator<Item = &Entry> {
        let first = self.first_index().unwrap_or(u64::MAX);
        let skip = low.saturating_sub(first) as usize;
        let take = high.saturating_sub(low.max(first)) as usize;
        self.entries.iter().skip(skip).take(take).map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ents(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to)
            .map(|index| Entry {
                index,
                term,
                ..Default::default()
            })
            .collect()
    }

    fn terms(o: &Overlay, low: u64, high: u64) -> Vec<(u64, u64)> {
        o.range(low, high).map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn appends_and_forgets_what_is_durable() {
        let mut o = Overlay::default();
        o.push(1, &ents(5, 7, 1));
        o.push(2, &ents(8, 9, 1));
        assert_eq!((o.first_index(), o.last_index()), (Some(5), Some(9)));
        assert_eq!(terms(&o, 6, 9), vec![(6, 1), (7, 1), (8, 1)]);
        assert_eq!(terms(&o, 1, 6), vec![(5, 1)]);
        assert_eq!(o.get(9).map(|e| e.index), Some(9));
        assert!(o.get(4).is_none() && o.get(10).is_none());
        o.persisted(1);
        assert_eq!(o.first_index(), Some(8));
        o.persisted(2);
        assert_eq!(o.first_index(), None);
    }

    #[test]
    fn a_later_write_replaces_a_suffix_and_keeps_it_until_it_is_durable() {
        let mut o = Overlay::default();
        o.push(1, &ents(5, 9, 1));
        // A new leader overwrites 7.. with its own entries.
        o.push(2, &ents(7, 8, 2));
        assert_eq!(terms(&o, 5, 100), vec![(5, 1), (6, 1), (7, 2), (8, 2)]);
        // Write 1 is durable: the store has 5..=9 of term 1, but 7 and 8 must
        // still be read from the overlay (and 9 no longer exists).
        o.persisted(1);
        assert_eq!(terms(&o, 5, 100), vec![(7, 2), (8, 2)]);
        assert_eq!(o.last_index(), Some(8));
    }

    #[test]
    fn a_write_below_the_overlay_shadows_the_store() {
        let mut o = Overlay::default();
        o.push(3, &ents(10, 12, 2));
        o.push(4, &ents(8, 8, 3));
        assert_eq!(terms(&o, 1, 100), vec![(8, 3)]);
        assert_eq!(o.first_index(), Some(8));
    }
}

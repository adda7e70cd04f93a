//! The key space: Redis Cluster's 16,384 hash slots.
//!
//! A key's slot is CRC16 (XMODEM) of the key modulo 16,384, or of the part
//! between the first `{` and the next `}` when that part is not empty (a
//! hash tag: `{user:7}:name` and `{user:7}:mail` share a slot, so one
//! group holds both and a transaction over them stays in one log).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The number of hash slots.
pub const SLOTS: u16 = 16384;

/// A slot: `0..SLOTS`.
pub type Slot = u16;

/// The slot of `key` (what `CLUSTER KEYSLOT` answers).
pub fn key_slot(key: &[u8]) -> Slot {
    redis_protocol::redis_keyslot(key)
}

/// A non-empty run of slots, `start..=end` (both inclusive, as `CLUSTER
/// SLOTS` prints them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotRange {
    /// The first slot.
    pub start: Slot,
    /// The last slot (inclusive).
    pub end: Slot,
}

impl SlotRange {
    /// `start..=end`, or `None` unless `start <= end < SLOTS`.
    pub fn new(start: Slot, end: Slot) -> Option<Self> {
        (start <= end && end < SLOTS).then_some(SlotRange { start, end })
    }

    /// Every slot.
    pub fn all() -> Self {
        SlotRange {
            start: 0,
            end: SLOTS - 1,
        }
    }

    /// How many slots it holds (1 to 16,384).
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    /// Never empty (a range holds at least one slot); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `slot` is in it.
    pub fn contains(&self, slot: Slot) -> bool {
        self.start <= slot && slot <= self.end
    }

    /// Whether it is a valid range (what deserialized input must be
    /// checked for).
    pub fn is_valid(&self) -> bool {
        self.start <= self.end && self.end < SLOTS
    }

    /// Its slots.
    pub fn slots(&self) -> impl Iterator<Item = Slot> {
        self.start..=self.end
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// The runs of equal values in `owners` (indexed by slot), in slot order:
/// each maximal range of slots with the same owner, and the owner.
pub fn runs<T: PartialEq + Copy>(owners: &[T]) -> Vec<(SlotRange, T)> {
    let mut out: Vec<(SlotRange, T)> = Vec::new();
    for (slot, &owner) in owners.iter().enumerate().take(usize::from(SLOTS)) {
        let slot = slot as Slot; // < SLOTS by the take above
        match out.last_mut() {
            Some((range, o)) if *o == owner && range.end + 1 == slot => range.end = slot,
            _ => out.push((
                SlotRange {
                    start: slot,
                    end: slot,
                },
                owner,
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis_and_honour_hash_tags() {
        // Values from Redis's own `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(
            key_slot(b"{user1000}.followers"),
            key_slot(b"{user1000}.following")
        );
        // An empty tag is not a tag: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), redis_crc(b"foo{}{bar}"));
        assert!(key_slot(b"") < SLOTS);
    }

    fn redis_crc(key: &[u8]) -> Slot {
        // CRC16-XMODEM, the reference definition in Redis's cluster spec.
        let mut crc: u16 = 0;
        for &b in key {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % SLOTS
    }

    #[test]
    fn ranges_validate_and_count() {
        assert_eq!(SlotRange::all().len(), 16384);
        assert!(SlotRange::new(5, 4).is_none());
        assert!(SlotRange::new(0, SLOTS).is_none());
        let r = SlotRange::new(10, 19).unwrap();
        assert_eq!(r.len(), 10);
        assert!(r.contains(10) && r.contains(19) && !r.contains(20));
        assert_eq!(r.to_string(), "10-19");
        assert!(!SlotRange { start: 9, end: 3 }.is_valid());
    }

    #[test]
    fn runs_are_maximal_and_in_order() {
        let mut owners = vec![1u64; usize::from(SLOTS)];
        owners[100..200].iter_mut().for_each(|o| *o = 2);
        owners[16383] = 3;
        let r = runs(&owners);
        assert_eq!(
            r,
            vec![
                (SlotRange::new(0, 99).unwrap(), 1),
                (SlotRange::new(100, 199).unwrap(), 2),
                (SlotRange::new(200, 16382).unwrap(), 1),
                (SlotRange::new(16383, 16383).unwrap(), 3),
            ]
        );
    }
}

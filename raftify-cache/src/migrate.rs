//! Moving hash slots between groups of a sharded deployment: the cache's
//! side of a slot move.
//!
//! A move of slots `a..=b` from group S to group T goes, each step an entry
//! in one group's log:
//!
//! 1. [`Migrate::Freeze`] in S: from that point of S's log on, a write to a
//!    key of those slots is refused with `-TRYAGAIN` (nothing applied), so
//!    what S holds of them no longer changes;
//! 2. the freeze's reply is the export ([`CacheState::export_slots`] at
//!    that point of the log): every item of those slots with its TTL;
//! 3. [`Migrate::Import`] of those items in T (replacing what T has under
//!    the same keys: T owns none of them yet), which also lifts anything
//!    T refused for those slots (they may have left T before);
//! 4. the placement gives the slots to T (clients go there now);
//! 5. [`Migrate::Drop`] in S: the items go, and S refuses reads and writes
//!    of those slots from then on with `-TRYAGAIN` (a client routed by a
//!    placement older than the move asks again and is sent to T; nothing
//!    is written where no one will read it). [`Migrate::Thaw`] instead
//!    abandons the move.
//!
//! Frozen and moved slots are part of the replicated state (and of
//! snapshots), so a replica that restarts or catches up refuses the same.
//!
//! [`CacheState::export_slots`]: crate::CacheState::export_slots

use crate::keyspace::{Item, Keyspace};
use bytes::Bytes;
use raftify_core::BoxError;

/// The key slot of `key` (Redis Cluster's: CRC16 of the key or of its
/// `{hash tag}`, modulo 16,384).
pub fn key_slot(key: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(key)
}

/// The cache's part of a slot move (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrate {
    /// Refuse writes to slots `start..=end` from now on; replies with
    /// their items (what [`Migrate::Import`] takes). Freezing again
    /// replies with the same items: safe to send again.
    Freeze {
        /// First slot.
        start: u16,
        /// Last slot (inclusive).
        end: u16,
    },
    /// Accept writes to them again (a move abandoned).
    Thaw {
        /// First slot.
        start: u16,
        /// Last slot (inclusive).
        end: u16,
    },
    /// Items of slots `start..=end` exported from another group (a
    /// freeze's reply): inserted, and the slots accepted here again.
    Import {
        /// First slot.
        start: u16,
        /// Last slot (inclusive).
        end: u16,
        /// The items.
        items: Bytes,
    },
    /// Delete every key of the slots, and refuse their reads and writes
    /// from now on (they moved away).
    Drop {
        /// First slot.
        start: u16,
        /// Last slot (inclusive).
        end: u16,
    },
}

/// Slot ranges this group refuses: frozen by a move in progress (writes
/// refused) or moved away (reads and writes refused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frozen {
    moving: Vec<(u16, u16)>,
    moved: Vec<(u16, u16)>,
}

fn within(ranges: &[(u16, u16)], slot: u16) -> bool {
    ranges.iter().any(|&(a, b)| a <= slot && slot <= b)
}

impl Frozen {
    /// Whether nothing is refused (the common case: one check per command).
    pub fn is_empty(&self) -> bool {
        self.moving.is_empty() && self.moved.is_empty()
    }

    /// Whether writes to `slot` are refused (moving or moved).
    pub fn refuses_write(&self, slot: u16) -> bool {
        within(&self.moving, slot) || within(&self.moved, slot)
    }

    /// Whether reads of `slot` are refused (moved away).
    pub fn refuses_read(&self, slot: u16) -> bool {
        within(&self.moved, slot)
    }

    /// The ranges being moved away.
    pub fn moving(&self) -> &[(u16, u16)] {
        &self.moving
    }

    /// The ranges moved away.
    pub fn moved(&self) -> &[(u16, u16)] {
        &self.moved
    }

    pub(crate) fn freeze(&mut self, start: u16, end: u16) {
        if !self.moving.contains(&(start, end)) {
            self.moving.push((start, end));
        }
    }

    pub(crate) fn set_moved(&mut self, start: u16, end: u16) {
        self.moving.retain(|&(a, b)| b < start || a > end);
        if !self.moved.contains(&(start, end)) {
            self.moved.push((start, end));
        }
    }

    /// Accepts `start..=end` again (a move abandoned, or slots moving in):
    /// ranges overlapping it are cut down to what lies outside it.
    pub(crate) fn thaw(&mut self, start: u16, end: u16) {
        for list in [&mut self.moving, &mut self.moved] {
            let mut kept = Vec::new();
            for &(a, b) in list.iter() {
                if b < start || a > end {
                    kept.push((a, b));
                    continue;
                }
                if a < start {
                    kept.push((a, start - 1));
                }
                if b > end {
                    kept.push((end + 1, b));
                }
            }
            *list = kept;
        }
    }
}

/// Checks a slot range from a log entry.
pub(crate) fn check_range(start: u16, end: u16) -> Result<(), String> {
    if start <= end && end < 16384 {
        Ok(())
    } else {
        Err(format!("bad slot range {start}-{end}"))
    }
}

/// Every item of slots `start..=end`, in the snapshot's item format.
pub(crate) fn export(ks: &Keyspace, start: u16, end: u16) -> Result<Vec<u8>, BoxError> {
    let items: Vec<(&Bytes, &Item)> = ks
        .iter()
        .filter(|(k, _)| {
            let s = key_slot(k);
            start <= s && s <= end
        })
        .collect();
    let mut out = Vec::new();
    crate::snapshot::put_items(&mut out, items)?;
    Ok(out)
}

/// Inserts exported items (replacing keys of the same name); how many.
pub(crate) fn import(ks: &mut Keyspace, mut data: &[u8]) -> Result<usize, BoxError> {
    let n = crate::snapshot::read_count(&mut data)?;
    let mut items = Vec::new();
    for _ in 0..n {
        items.push(crate::snapshot::read_item(&mut data)?);
    }
    if !data.is_empty() {
        return Err("bytes after the exported items".into());
    }
    // Checked whole before anything is applied.
    for (key, value, expire_at) in items.iter().cloned() {
        ks.insert(key, value, expire_at);
    }
    Ok(items.len())
}

/// Deletes every key of slots `start..=end`; how many.
pub(crate) fn drop_range(ks: &mut Keyspace, start: u16, end: u16) -> usize {
    let keys: Vec<Bytes> = ks
        .iter()
        .map(|(k, _)| k)
        .filter(|k| {
            let s = key_slot(k);
            start <= s && s <= end
        })
        .cloned()
        .collect();
    keys.iter().filter(|k| ks.remove(k).is_some()).count()
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod tests;

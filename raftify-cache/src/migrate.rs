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
//!    the same keys: T owns none of them yet);
//! 4. the placement gives the slots to T (clients go there now);
//! 5. [`Migrate::Drop`] in S: the items go and the slots thaw (S no longer
//!    owns them). [`Migrate::Thaw`] instead abandons the move.
//!
//! Frozen slots are part of the replicated state (and of snapshots), so a
//! replica that restarts or catches up still refuses those writes.
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
    /// Items exported from another group ([`crate::CacheState::export_slots`]).
    Import(Bytes),
    /// Delete every key of the slots and thaw them (they moved away).
    Drop {
        /// First slot.
        start: u16,
        /// Last slot (inclusive).
        end: u16,
    },
}

/// Slot ranges frozen by a move in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frozen(Vec<(u16, u16)>);

impl Frozen {
    /// Whether nothing is frozen (the common case: one check per write).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `slot` is frozen.
    pub fn contains(&self, slot: u16) -> bool {
        self.0.iter().any(|&(a, b)| a <= slot && slot <= b)
    }

    /// The frozen ranges.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    pub(crate) fn freeze(&mut self, start: u16, end: u16) {
        if !self.0.contains(&(start, end)) {
            self.0.push((start, end));
        }
    }

    pub(crate) fn thaw(&mut self, start: u16, end: u16) {
        self.0.retain(|&(a, b)| b < start || a > end);
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

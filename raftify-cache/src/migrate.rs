//! Moving hash slots between groups of a sharded deployment: the cache's
//! side of a slot move.
//!
//! A move of slots `a..=b` from group S to group T goes chunk by chunk,
//! each step an entry in one group's log:
//!
//! 1. [`Migrate::Freeze`] of a chunk in S: from that point of S's log on,
//!    a write to a key of those slots is refused with `-TRYAGAIN` (nothing
//!    applied), so what S holds of them no longer changes; reads are still
//!    served;
//! 2. the freeze's reply is the export ([`CacheState::export_slots`] at
//!    that point of the log): every item of those slots with its TTL;
//! 3. [`Migrate::Import`] of those items in T (replacing what T has under
//!    the same keys: T owns none of them yet), which also lifts anything
//!    T refused for those slots (they may have left T before), and marks
//!    them *incoming*: T accepts them from a client that sent `ASKING`;
//! 4. [`Migrate::Hand`] of the chunk in S: T holds its keys now, so S
//!    answers reads and writes of them with `-ASK slot` (the front-end
//!    adds T's address), as Redis Cluster's source node answers for keys
//!    already migrated;
//! 5. when every chunk is handed, the placement gives the slots to T
//!    (clients go there without `ASKING` now);
//! 6. [`Migrate::Drop`] in S: the items go, and S refuses reads and writes
//!    of those slots from then on with `-TRYAGAIN` (a client routed by a
//!    placement older than the move asks again and is sent to T; nothing
//!    is written where no one will read it).
//!
//! A begun move only goes forward: once a chunk is handed, T may have
//! taken writes S never saw. [`Migrate::Freeze`] of a handed chunk answers
//! `HANDED` (its items are not exported again), so a move re-run after a
//! crash skips what was handed; a chunk frozen but not handed is exported
//! and imported again, which is safe because no client was sent to T for
//! it yet. [`Migrate::Thaw`] abandons a move that handed nothing.
//!
//! Frozen, handed, incoming and moved slots are part of the replicated
//! state (and of snapshots), so a replica that restarts or catches up
//! refuses the same.
//!
//! [`CacheState::export_slots`]: crate::CacheState::export_slots

use crate::keyspace::{Item, Keyspace};
use bytes::Bytes;
use raftify_core::BoxError;

pub use crate::keyspace::key_slot;

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
    /// The target holds the items of slots `start..=end` (imported
    /// there): reads and writes of them are answered `-ASK` from now on.
    Hand {
        /// First slot.
        start: u16,
        /// Last slot (inclusive).
        end: u16,
    },
    /// Delete every key of the slots, and refuse their reads and writes
    /// from now on (they moved away).
    Drop {
        /// First slot.
        start: u16,
        /// Last slot (inclusive).
        end: u16,
    },
    /// How many bytes each of slots `start..=end` holds (as
    /// [`crate::Keyspace::slot_bytes`] counts them): replies
    /// [`encode_weights`]' bulk string. Changes nothing: asked as a read
    /// (`remote::answer_read`), by the rebalancer splitting a group by
    /// size.
    Weigh {
        /// First slot.
        start: u16,
        /// Last slot (inclusive).
        end: u16,
    },
}

/// Bytes of one slot's record in [`encode_weights`].
const WEIGHT_RECORD: usize = 10;

/// The slots of `start..=end` holding anything, with their bytes, as
/// [`Migrate::Weigh`] answers them: 10 bytes a slot (slot, then bytes;
/// big-endian), in slot order.
pub fn encode_weights(ks: &Keyspace, start: u16, end: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for (slot, bytes) in ks.slot_bytes().filter(|(s, _)| (start..=end).contains(s)) {
        out.extend_from_slice(&slot.to_be_bytes());
        out.extend_from_slice(&bytes.to_be_bytes());
    }
    out
}

/// Reads [`encode_weights`]' records back.
pub fn decode_weights(data: &[u8]) -> Result<Vec<(u16, u64)>, BoxError> {
    if !data.len().is_multiple_of(WEIGHT_RECORD) {
        return Err(format!("{} bytes are not whole slot weights", data.len()).into());
    }
    data.chunks_exact(WEIGHT_RECORD)
        .map(|r| {
            let slot = u16::from_be_bytes([r[0], r[1]]);
            let mut b = [0u8; 8];
            b.copy_from_slice(&r[2..]);
            check_range(slot, slot)?;
            Ok((slot, u64::from_be_bytes(b)))
        })
        .collect()
}

/// Slot ranges this group refuses or accepts specially during moves:
/// frozen by a move in progress (writes refused), handed to the target
/// (reads and writes answered `-ASK`), moved away (reads and writes
/// refused), and incoming (imported here by a move: accepted from clients
/// that sent `ASKING`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frozen {
    moving: Vec<(u16, u16)>,
    moved: Vec<(u16, u16)>,
    handed: Vec<(u16, u16)>,
    incoming: Vec<(u16, u16)>,
}

fn within(ranges: &[(u16, u16)], slot: u16) -> bool {
    ranges.iter().any(|&(a, b)| a <= slot && slot <= b)
}

/// Cuts `start..=end` out of the ranges of `list`.
fn cut(list: &mut Vec<(u16, u16)>, start: u16, end: u16) {
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

/// Adds `start..=end` to the ranges of `list`, kept sorted with
/// overlapping and adjacent ranges merged (a move's chunks, one after
/// another, make one range).
fn add(list: &mut Vec<(u16, u16)>, start: u16, end: u16) {
    list.push((start, end));
    list.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(list.len());
    for &(a, b) in list.iter() {
        match merged.last_mut() {
            Some((_, e)) if u32::from(a) <= u32::from(*e) + 1 => *e = (*e).max(b),
            _ => merged.push((a, b)),
        }
    }
    *list = merged;
}

/// Whether every slot of `start..=end` lies in one of `ranges`.
fn covered(ranges: &[(u16, u16)], start: u16, end: u16) -> bool {
    let mut next = u32::from(start);
    while next <= u32::from(end) {
        let Some(&(_, b)) = ranges
            .iter()
            .find(|&&(a, b)| u32::from(a) <= next && next <= u32::from(b))
        else {
            return false;
        };
        next = u32::from(b) + 1;
    }
    true
}

/// Why a command on a slot is refused (see [`Frozen::refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Moving or moved away: `-TRYAGAIN`.
    TryAgain(u16),
    /// Handed to the target group: `-ASK slot` (the front-end adds the
    /// target's address).
    Ask(u16),
}

impl Refusal {
    /// The error reply's text (`ASK slot` without an address: see
    /// [`Refusal::Ask`]).
    pub fn message(self) -> String {
        match self {
            Refusal::TryAgain(slot) => {
                format!("TRYAGAIN slot {slot} is moving or moved to another group; try again")
            }
            Refusal::Ask(slot) => format!("ASK {slot}"),
        }
    }
}

impl Frozen {
    /// Whether nothing is refused (the common case: one check per command).
    pub fn is_empty(&self) -> bool {
        self.moving.is_empty() && self.moved.is_empty() && self.handed.is_empty()
    }

    /// Whether writes to `slot` are refused (moving, handed or moved).
    pub fn refuses_write(&self, slot: u16) -> bool {
        within(&self.moving, slot) || within(&self.moved, slot) || within(&self.handed, slot)
    }

    /// Whether reads of `slot` are refused (handed or moved away).
    pub fn refuses_read(&self, slot: u16) -> bool {
        within(&self.moved, slot) || within(&self.handed, slot)
    }

    /// How a refused command on `slot` is answered: `ASK` when the slot
    /// was handed to the target, else `TRYAGAIN`.
    pub fn refusal(&self, slot: u16) -> Refusal {
        if within(&self.handed, slot) {
            Refusal::Ask(slot)
        } else {
            Refusal::TryAgain(slot)
        }
    }

    /// Whether `slot` was imported here by a move (a client sent to this
    /// group with `-ASK` is served).
    pub fn accepts_asking(&self, slot: u16) -> bool {
        within(&self.incoming, slot)
    }

    /// The ranges being moved away (frozen, not yet handed).
    pub fn moving(&self) -> &[(u16, u16)] {
        &self.moving
    }

    /// The ranges moved away.
    pub fn moved(&self) -> &[(u16, u16)] {
        &self.moved
    }

    /// The ranges handed to the target of a move in progress.
    pub fn handed(&self) -> &[(u16, u16)] {
        &self.handed
    }

    /// The ranges imported here by moves.
    pub fn incoming(&self) -> &[(u16, u16)] {
        &self.incoming
    }

    /// Whether every slot of `start..=end` was handed (a re-run move skips
    /// the chunk).
    pub fn is_handed(&self, start: u16, end: u16) -> bool {
        covered(&self.handed, start, end)
    }

    /// Slots leaving: writes refused; no longer incoming.
    pub(crate) fn freeze(&mut self, start: u16, end: u16) {
        add(&mut self.moving, start, end);
        cut(&mut self.incoming, start, end);
    }

    /// Slots handed to the target (frozen before): reads and writes
    /// answered `ASK`. Slots already moved away stay so.
    pub(crate) fn hand(&mut self, start: u16, end: u16) {
        cut(&mut self.moving, start, end);
        cut(&mut self.incoming, start, end);
        if !covered(&self.moved, start, end) {
            add(&mut self.handed, start, end);
        }
    }

    pub(crate) fn set_moved(&mut self, start: u16, end: u16) {
        cut(&mut self.moving, start, end);
        cut(&mut self.handed, start, end);
        cut(&mut self.incoming, start, end);
        add(&mut self.moved, start, end);
    }

    /// A move abandoned: writes to `start..=end` accepted again. Refused
    /// when any of them was handed (the target may hold writes this group
    /// never saw): such a move only goes forward.
    pub(crate) fn abandon(&mut self, start: u16, end: u16) -> Result<(), String> {
        if self.handed.iter().any(|&(a, b)| a <= end && start <= b) {
            return Err(format!(
                "slots of {start}-{end} were handed to the target; the move can only go forward"
            ));
        }
        cut(&mut self.moving, start, end);
        Ok(())
    }

    /// Accepts `start..=end` again (slots moving in): ranges overlapping
    /// it are cut down to what lies outside it.
    fn thaw(&mut self, start: u16, end: u16) {
        for list in [&mut self.moving, &mut self.moved, &mut self.handed] {
            cut(list, start, end);
        }
    }

    /// Slots imported here: accepted again, and from `ASKING` clients.
    pub(crate) fn import(&mut self, start: u16, end: u16) {
        self.thaw(start, end);
        add(&mut self.incoming, start, end);
    }

    /// Restores a handed range (from a snapshot).
    pub(crate) fn restore_handed(&mut self, start: u16, end: u16) {
        add(&mut self.handed, start, end);
    }

    /// Restores an incoming range (from a snapshot).
    pub(crate) fn restore_incoming(&mut self, start: u16, end: u16) {
        add(&mut self.incoming, start, end);
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

/// The most (estimated) bytes of items one [`Migrate::Import`] entry
/// carries: a freeze's export or a restore's round larger than this goes
/// in several imports (a log entry is at most `Config::max_entry_size`,
/// 8 MiB by default).
pub const IMPORT_BYTES: usize = 4 << 20;

/// Every item of slots `start..=end`, in the snapshot's item format.
pub(crate) fn export(ks: &Keyspace, start: u16, end: u16) -> Result<Vec<u8>, BoxError> {
    let items = items_in(ks, start, end);
    let mut parts = export_parts(&items, usize::MAX)?;
    Ok(parts.pop().unwrap_or_default())
}

/// The live items of slots `start..=end`.
pub(crate) fn items_in(ks: &Keyspace, start: u16, end: u16) -> Vec<(&[u8], &Item)> {
    ks.iter()
        .filter(|(k, _)| (start..=end).contains(&key_slot(k)))
        .collect()
}

/// `items` in the snapshot's item format, in parts of at most about
/// `max` bytes each by their weight (an item larger than that alone in
/// its part; no items: one empty part): each what one
/// [`Migrate::Import`] takes.
pub fn export_parts(items: &[(&[u8], &Item)], max: usize) -> Result<Vec<Vec<u8>>, BoxError> {
    let mut parts = Vec::new();
    let mut rest = items;
    loop {
        let mut weight = 0usize;
        let n = rest
            .iter()
            .take_while(|(k, i)| {
                weight =
                    weight.saturating_add(k.len() + crate::keyspace::PER_KEY + i.value.weight());
                weight <= max
            })
            .count()
            .max(1)
            .min(rest.len());
        let (now, later) = rest.split_at(n);
        let mut out = Vec::new();
        let mut spill = crate::snapshot::Spill::new(&mut out);
        crate::snapshot::put_items(&mut spill, now.len(), now.iter().copied())?;
        spill.finish()?;
        parts.push(out);
        rest = later;
        if rest.is_empty() {
            return Ok(parts);
        }
    }
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
    let keys: Vec<Bytes> = items_in(ks, start, end)
        .into_iter()
        .map(|(k, _)| Bytes::copy_from_slice(k))
        .collect();
    keys.iter().filter(|k| ks.remove(k).is_some()).count()
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod tests;

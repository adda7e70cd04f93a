//! The journaled tail: writes that are durable in the journal but not yet
//! checkpointed into LMDB, and the view of the log they give.
//!
//! Reads combine LMDB with the tail: every entry from [`View::from`] on,
//! and the hard state if a tail write set one, come from the tail. That is
//! consistent whatever LMDB holds at the moment: a checkpoint writes into
//! LMDB only what the tail already shows (entries at or after `from`, the
//! tail's hard state) and drops records from the tail only after its commit.

use crate::codec::{crc32, decode_framed, decode_msg, encode_msg};
use crate::journal;
use raftify_core::protobuf::Message;
use raftify_core::raft::eraftpb::{Entry, HardState};
use raftify_core::storage::StorageResult;
use raftify_core::StorageError;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

/// One journaled write: what it appends (from `entries[0].index` on,
/// replacing what the log held there) and the hard state it sets.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) seq: u64,
    pub(crate) entries: Vec<Entry>,
    /// The journal record (or its payload, read back) ...
    record: Vec<u8>,
    /// ... and where in it each entry is as stored in LMDB
    /// (`crc32 ++ eraftpb.Entry`).
    framed: Vec<Range<usize>>,
    pub(crate) hard_state: Option<HardState>,
    /// Journal payload size, for the checkpoint threshold.
    pub(crate) bytes: usize,
}

impl Pending {
    /// A write just encoded by [`encode`] and journaled as `seq`.
    pub(crate) fn new(
        seq: u64,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
        encoded: Encoded,
    ) -> Self {
        let bytes = encoded.record.len() - encoded.payload_at;
        Pending {
            seq,
            entries,
            record: encoded.record,
            framed: encoded.framed,
            hard_state,
            bytes,
        }
    }

    /// The entries with their LMDB records.
    pub(crate) fn framed(&self) -> impl Iterator<Item = (&Entry, &[u8])> {
        let record = &self.record;
        self.entries
            .iter()
            .zip(self.framed.iter().map(move |r| &record[r.clone()]))
    }
}

/// A write encoded as a journal record ([`crate::journal::new_record`]
/// and the payload), with where its entries' LMDB records are.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// Handed to [`crate::journal::Journal::append`].
    pub(crate) record: Vec<u8>,
    payload_at: usize,
    framed: Vec<Range<usize>>,
}

/// Flag bit: the payload holds a hard state.
const HAS_HARD_STATE: u8 = 1;
/// Flag bit: the payload is a group's, in a shared environment's journal
/// (its id follows the flags).
const HAS_GROUP: u8 = 2;
/// Flag (alone): the payload is a batch of group payloads written and
/// synced together (see [`encode_batch`]).
const BATCH: u8 = 4;

/// Encodes a write as a journal payload, each entry written once, in
/// place:
/// `flags (u8: 1 = hard state, 2 = group) [group (u64 LE)]
/// [len (u32 LE) ++ HardState] count (u32 LE)
/// { len (u32 LE) ++ crc32 ++ Entry }*`. A store alone in its environment
/// writes no group (and so reads the payloads of earlier versions).
pub(crate) fn encode(
    group: Option<u64>,
    entries: &[Entry],
    hard_state: Option<&HardState>,
) -> StorageResult<Encoded> {
    let size: usize = entries
        .iter()
        .map(|e| e.compute_size() as usize + 8)
        .sum::<usize>()
        + 64;
    let mut out = journal::new_record(size);
    let payload_at = out.len();
    let mut flags = 0;
    if hard_state.is_some() {
        flags |= HAS_HARD_STATE;
    }
    if group.is_some() {
        flags |= HAS_GROUP;
    }
    out.push(flags);
    if let Some(g) = group {
        out.extend_from_slice(&g.to_le_bytes());
    }
    if let Some(h) = hard_state {
        let b = encode_msg(h).map_err(StorageError::Invalid)?;
        put_len(&mut out, b.len())?;
        out.extend_from_slice(&b);
    }
    put_len(&mut out, entries.len())?;
    let mut framed = Vec::with_capacity(entries.len());
    for e in entries {
        let len_at = out.len();
        out.extend_from_slice(&[0u8; 8]);
        e.write_to_vec(&mut out)
            .map_err(|err| StorageError::Invalid(format!("cannot encode Entry: {err}")))?;
        let crc = crc32(&out[len_at + 8..]);
        let framed_len = out.len() - len_at - 4;
        let n = u32::try_from(framed_len)
            .map_err(|_| StorageError::Invalid("an entry is limited to 4 GiB".into()))?;
        out[len_at..len_at + 4].copy_from_slice(&n.to_le_bytes());
        out[len_at + 4..len_at + 8].copy_from_slice(&crc.to_le_bytes());
        framed.push(len_at + 4..out.len());
    }
    Ok(Encoded {
        record: out,
        payload_at,
        framed,
    })
}

fn put_len(out: &mut Vec<u8>, n: usize) -> StorageResult<()> {
    let n = u32::try_from(n)
        .map_err(|_| StorageError::Invalid("a write is limited to 4 GiB per part".into()))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

impl Encoded {
    /// The journal payload alone.
    fn payload(&self) -> &[u8] {
        &self.record[self.payload_at..]
    }
}

/// Encodes several groups' writes as one journal record:
/// `flags (u8: 4) count (u32 LE) { len (u32 LE) ++ payload }*`, each
/// payload a group's as [`encode`] makes it. One record, one CRC: after a
/// power loss the batch is in the journal whole or not at all, as a single
/// write is (records written one after the other and synced once could
/// reach the disk out of order, a later one intact behind a torn one).
pub(crate) fn encode_batch<'a>(
    writes: impl Iterator<Item = &'a Encoded> + Clone,
) -> StorageResult<Vec<u8>> {
    let size: usize = writes.clone().map(|w| w.payload().len() + 4).sum::<usize>() + 5;
    let mut out = journal::new_record(size);
    out.push(BATCH);
    put_len(&mut out, writes.clone().count())?;
    for w in writes {
        put_len(&mut out, w.payload().len())?;
        out.extend_from_slice(w.payload());
    }
    Ok(out)
}

/// Decodes a journal payload (a record that passed its CRC, so a failure
/// here is damage or a foreign format): each write it holds (one, or a
/// batch's), with the group it is of (`None`: a store alone in its
/// environment).
pub(crate) fn decode(seq: u64, payload: Vec<u8>) -> Result<Vec<(Option<u64>, Pending)>, String> {
    if payload.first() != Some(&BATCH) {
        return decode_one(seq, payload).map(|w| vec![w]);
    }
    let truncated = || format!("journal record {seq} is truncated");
    let u32_at = |at: usize| -> Result<usize, String> {
        let b = payload.get(at..at + 4).ok_or_else(truncated)?;
        let b: [u8; 4] = b.try_into().map_err(|_| truncated())?;
        Ok(u32::from_le_bytes(b) as usize)
    };
    let count = u32_at(1)?;
    let mut at = 5;
    let mut out = Vec::with_capacity(count.min(1 << 12));
    for _ in 0..count {
        let len = u32_at(at)?;
        let part = payload.get(at + 4..at + 4 + len).ok_or_else(truncated)?;
        if part.first().is_some_and(|f| f & BATCH != 0) {
            return Err(format!("journal record {seq}: a batch within a batch"));
        }
        out.push(decode_one(seq, part.to_vec())?);
        at += 4 + len;
    }
    if at != payload.len() {
        return Err(format!("journal record {seq}: bytes after its batch"));
    }
    Ok(out)
}

/// Decodes one write's payload.
fn decode_one(seq: u64, payload: Vec<u8>) -> Result<(Option<u64>, Pending), String> {
    let truncated = || format!("journal record {seq} is truncated");
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<Range<usize>, String> {
        let r = at..at.checked_add(n).ok_or_else(truncated)?;
        if r.end > payload.len() {
            return Err(truncated());
        }
        at = r.end;
        Ok(r)
    };
    let len = |p: &[u8], r: Range<usize>| {
        p.get(r)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .map(|n| n as usize)
            .ok_or_else(truncated)
    };
    let flags = payload.get(take(1)?.start).copied().ok_or_else(truncated)?;
    if flags & !(HAS_HARD_STATE | HAS_GROUP) != 0 {
        return Err(format!(
            "journal record {seq} has unknown flags {flags:#04x}"
        ));
    }
    let group = match flags & HAS_GROUP {
        0 => None,
        _ => {
            let r = take(8)?;
            let id = payload.get(r).and_then(|b| b.try_into().ok());
            Some(id.map(u64::from_le_bytes).ok_or_else(truncated)?)
        }
    };
    let hard_state = if flags & HAS_HARD_STATE != 0 {
        let n = len(&payload, take(4)?)?;
        Some(decode_msg(&payload[take(n)?]).map_err(|e| format!("journal record {seq}: {e}"))?)
    } else {
        None
    };
    let count = len(&payload, take(4)?)?;
    let mut entries = Vec::with_capacity(count.min(1 << 16));
    let mut framed = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let n = len(&payload, take(4)?)?;
        let r = take(n)?;
        let e: Entry =
            decode_framed(&payload[r.clone()]).map_err(|e| format!("journal record {seq}: {e}"))?;
        entries.push(e);
        framed.push(r);
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(format!("journal record {seq}: entries are not contiguous"));
        }
    }
    let write = Pending {
        seq,
        entries,
        bytes: payload.len(),
        record: payload,
        framed,
        hard_state,
    };
    Ok((group, write))
}

/// What the tail shows: entries `from ..= from + len - 1` (replacing
/// everything LMDB holds from `from` on) and the latest hard state set.
#[derive(Debug, Default, Clone)]
pub(crate) struct View {
    /// First index the tail replaces; 0: the tail holds no entries.
    pub(crate) from: u64,
    pub(crate) entries: Vec<Entry>,
    pub(crate) hard_state: Option<HardState>,
}

impl View {
    /// The last index the tail holds, if it holds entries.
    pub(crate) fn last(&self) -> Option<u64> {
        (self.from > 0).then(|| self.from + self.entries.len() as u64 - 1)
    }

    fn apply(&mut self, p: &Pending) {
        if let Some(first) = p.entries.first() {
            if self.from == 0 || first.index < self.from {
                self.from = first.index;
                self.entries.clear();
            } else {
                let keep = (first.index - self.from) as usize;
                self.entries.truncate(keep);
            }
            self.entries.extend(p.entries.iter().cloned());
        }
        if let Some(hs) = &p.hard_state {
            self.hard_state = Some(hs.clone());
        }
    }

    /// Copies of the entries `low..high` the tail holds, stopping after
    /// the first one that takes their total size past `max_size` (the
    /// caller cuts by raft's rule).
    pub(crate) fn slice(&self, low: u64, high: u64, max_size: Option<u64>) -> Vec<Entry> {
        if self.from == 0 || high <= self.from {
            return Vec::new();
        }
        let lo = (low.max(self.from) - self.from) as usize;
        let hi = ((high - self.from) as usize).min(self.entries.len());
        let mut out = Vec::new();
        let mut size = 0u64;
        for e in self.entries.get(lo..hi).unwrap_or_default() {
            out.push(e.clone());
            size += u64::from(e.compute_size());
            if max_size.is_some_and(|max| size > max) {
                break;
            }
        }
        out
    }

    /// The term of entry `idx`, if the tail holds it.
    pub(crate) fn term(&self, idx: u64) -> Option<u64> {
        if self.from == 0 || idx < self.from {
            return None;
        }
        self.entries.get((idx - self.from) as usize).map(|e| e.term)
    }
}

/// The records not yet checkpointed, and their view.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    records: VecDeque<Arc<Pending>>,
    view: View,
    bytes: usize,
}

impl Tail {
    pub(crate) fn push(&mut self, p: Pending) {
        self.view.apply(&p);
        self.bytes += p.bytes;
        self.records.push_back(Arc::new(p));
    }

    pub(crate) fn view(&self) -> &View {
        &self.view
    }

    /// Payload bytes not yet checkpointed.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records to checkpoint (all of them, in order).
    pub(crate) fn records(&self) -> Vec<Arc<Pending>> {
        self.records.iter().cloned().collect()
    }

    /// Forgets the records up to `seq` (now in LMDB) and rebuilds the view
    /// from the rest.
    pub(crate) fn drop_through(&mut self, seq: u64) {
        while self.records.front().is_some_and(|r| r.seq <= seq) {
            if let Some(r) = self.records.pop_front() {
                self.bytes -= r.bytes;
            }
        }
        let mut view = View::default();
        for r in &self.records {
            view.apply(r);
        }
        self.view = view;
    }

    /// The view of the records after `seq` only (for a read-only handle,
    /// whose LMDB may have been checkpointed past some of its records).
    pub(crate) fn view_after(&self, seq: u64) -> View {
        let mut view = View::default();
        for r in self.records.iter().filter(|r| r.seq > seq) {
            view.apply(r);
        }
        view
    }
}

/// Records by store (`None`: a store alone in its environment).
pub(crate) type StoreRecords = Vec<(Option<u64>, Vec<Arc<Pending>>)>;

/// The tails of the stores sharing one journal: one per group of a shared
/// environment ([`super::LmdbEnv`]), one (`None`) for a store alone. A
/// write's record is pushed to its store's tail right after the journal
/// sync that made it durable, under the journal's lock and in sequence
/// order, so the tails hold exactly the records after the last checkpoint:
/// a checkpoint can take them all at one point in the sequence.
#[derive(Debug, Default)]
pub(crate) struct Tails {
    by_store: BTreeMap<Option<u64>, Tail>,
    bytes: usize,
}

impl Tails {
    pub(crate) fn push(&mut self, store: Option<u64>, p: Pending) {
        self.bytes += p.bytes;
        self.by_store.entry(store).or_default().push(p);
    }

    /// Runs `f` on `store`'s view (empty when it has no tail).
    pub(crate) fn view<T>(&self, store: Option<u64>, f: impl FnOnce(&View) -> T) -> T {
        match self.by_store.get(&store) {
            Some(t) => f(t.view()),
            None => f(&View::default()),
        }
    }

    /// Payload bytes not yet checkpointed, over every store.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_store.is_empty()
    }

    /// `store`'s records.
    pub(crate) fn records_of(&self, store: Option<u64>) -> Vec<Arc<Pending>> {
        self.by_store
            .get(&store)
            .map(Tail::records)
            .unwrap_or_default()
    }

    /// Every store's records, and the last sequence number among them.
    pub(crate) fn all(&self) -> (StoreRecords, Option<u64>) {
        let all: Vec<_> = self
            .by_store
            .iter()
            .map(|(s, t)| (*s, t.records()))
            .collect();
        let last = all
            .iter()
            .filter_map(|(_, r)| r.last().map(|p| p.seq))
            .max();
        (all, last)
    }

    /// Forgets the records up to `seq` (checkpointed); a store whose tail
    /// empties leaves the map.
    pub(crate) fn drop_through(&mut self, seq: u64) {
        for t in self.by_store.values_mut() {
            t.drop_through(seq);
        }
        self.by_store.retain(|_, t| !t.is_empty());
        self.bytes = self.by_store.values().map(Tail::bytes).sum();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::field_reassign_with_default)]
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8; 3].into();
        e
    }

    fn pending(seq: u64, entries: Vec<Entry>, hs_term: Option<u64>) -> Pending {
        let hs = hs_term.map(|t| {
            let mut h = HardState::default();
            h.term = t;
            h
        });
        let enc = encode(None, &entries, hs.as_ref()).unwrap();
        decode_one(seq, enc.record[enc.payload_at..].to_vec())
            .unwrap()
            .1
    }

    #[test]
    fn payloads_round_trip_and_damage_is_an_error() {
        let enc = encode(None, &[entry(5, 2), entry(6, 2)], None).unwrap();
        let payload = enc.record[enc.payload_at..].to_vec();
        let (group, p) = decode(9, payload.clone()).unwrap().remove(0);
        assert_eq!(group, None);
        assert_eq!(p.entries, vec![entry(5, 2), entry(6, 2)]);
        // Each entry's LMDB record is the framed entry, as LMDB stores it.
        for (e, f) in p.framed() {
            assert_eq!(f, &crate::codec::frame(&e.write_to_bytes().unwrap())[..]);
        }
        assert!(p.hard_state.is_none());
        assert!(decode(9, payload[..payload.len() - 1].to_vec()).is_err());
        let mut bad = payload.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(decode(9, bad).is_err());
    }

    #[test]
    fn a_groups_payload_names_its_group() {
        let mut hs = HardState::default();
        hs.term = 4;
        let enc = encode(Some(77), &[entry(3, 4)], Some(&hs)).unwrap();
        let payload = enc.record[enc.payload_at..].to_vec();
        let (group, p) = decode(1, payload.clone()).unwrap().remove(0);
        assert_eq!(group, Some(77));
        assert_eq!(p.entries, vec![entry(3, 4)]);
        assert_eq!(p.hard_state.as_ref().map(|h| h.term), Some(4));
        for (e, f) in p.framed() {
            assert_eq!(f, &crate::codec::frame(&e.write_to_bytes().unwrap())[..]);
        }
        // Unknown flags are damage, not a silently different layout.
        let mut unknown = payload;
        unknown[0] |= 0x80;
        assert!(decode(1, unknown).is_err());
    }

    #[test]
    fn a_batch_is_one_payload_of_several_groups_writes() {
        let a = encode(Some(1), &[entry(5, 1)], None).unwrap();
        let mut hs = HardState::default();
        hs.commit = 9;
        let b = encode(Some(2), &[entry(9, 3), entry(10, 3)], Some(&hs)).unwrap();
        let rec = encode_batch([&a, &b].into_iter()).unwrap();
        let payload = rec[journal::new_record(0).len()..].to_vec();
        let writes = decode(4, payload.clone()).unwrap();
        assert_eq!(writes.len(), 2);
        assert_eq!((writes[0].0, writes[1].0), (Some(1), Some(2)));
        assert_eq!(writes[0].1.entries, vec![entry(5, 1)]);
        assert_eq!(writes[1].1.entries, vec![entry(9, 3), entry(10, 3)]);
        assert_eq!(writes[1].1.hard_state.as_ref().map(|h| h.commit), Some(9));
        assert!(writes.iter().all(|(_, p)| p.seq == 4));
        for (_, p) in &writes {
            for (e, f) in p.framed() {
                assert_eq!(f, &crate::codec::frame(&e.write_to_bytes().unwrap())[..]);
            }
        }
        // Cut short, or with bytes after it: damage.
        assert!(decode(4, payload[..payload.len() - 1].to_vec()).is_err());
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode(4, longer).is_err());
        let mut huge = payload;
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(4, huge).is_err());
    }

    #[test]
    fn the_view_follows_appends_truncations_and_checkpoints() {
        let mut t = Tail::default();
        t.push(pending(
            1,
            vec![entry(10, 1), entry(11, 1), entry(12, 1)],
            Some(1),
        ));
        t.push(pending(2, vec![entry(12, 2), entry(13, 2)], None));
        assert_eq!(t.view().from, 10);
        assert_eq!(t.view().last(), Some(13));
        assert_eq!(
            t.view().slice(11, 14, None),
            vec![entry(11, 1), entry(12, 2), entry(13, 2)]
        );
        // A conflict below the tail replaces everything from there.
        t.push(pending(3, vec![entry(8, 3)], Some(3)));
        assert_eq!((t.view().from, t.view().last()), (8, Some(8)));
        assert_eq!(t.view().hard_state.as_ref().map(|h| h.term), Some(3));
        t.drop_through(2);
        assert_eq!((t.view().from, t.view().last()), (8, Some(8)));
        t.drop_through(3);
        assert!(t.is_empty());
        assert_eq!(t.view().last(), None);
        assert_eq!(t.bytes(), 0);
    }
}

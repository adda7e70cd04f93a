//! The records of the `entries` database: the log, one framed
//! `eraftpb.Entry` per index (see [`crate::codec::frame`]).

use super::keys::KeyRange;
use super::meta::Meta;
use super::txn::Fail;
use super::LmdbStore;
use crate::codec::decode_framed;
use heed::{PutFlags, RoTxn, RwTxn};
use raftify_core::protobuf::Message;
use raftify_core::raft::eraftpb::Entry;
use raftify_core::storage::{limit_size, StorageResult};
use raftify_core::StorageError;
use std::ops::Bound;

impl LmdbStore {
    /// The last index in the log (`meta.offset` when it holds no entries).
    pub(crate) fn last_index_txn(&self, txn: &RoTxn, meta: &Meta) -> StorageResult<u64> {
        let last = match self.last_key(txn)? {
            Some(k) => Some(self.index_of(k)?),
            None => None,
        };
        match last {
            None => Ok(meta.offset),
            Some(k) if k > meta.offset => Ok(k),
            Some(k) => Err(self.corrupt(format!(
                "entry {k} is stored although the log was compacted up to {}",
                meta.offset
            ))),
        }
    }

    /// The key of this store's first (`first`) or last stored entry.
    fn end_key<'t>(&self, txn: &'t RoTxn, first: bool) -> StorageResult<Option<&'t [u8]>> {
        let (lo, hi) = self.entry_bounds();
        let range: KeyRange = (Bound::Included(&lo), Bound::Included(&hi));
        let found = match first {
            true => self.entries_db.range(txn, &range).map(|mut i| i.next()),
            false => self.entries_db.rev_range(txn, &range).map(|mut i| i.next()),
        };
        let found = found.map_err(|e| self.heed_err("read the first or last entry", e))?;
        match found {
            None => Ok(None),
            Some(item) => Ok(Some(
                item.map_err(|e| self.heed_err("read the first or last entry", e))?
                    .0,
            )),
        }
    }

    /// The key of the last stored entry.
    pub(super) fn last_key<'t>(&self, txn: &'t RoTxn) -> StorageResult<Option<&'t [u8]>> {
        self.end_key(txn, false)
    }

    /// The index of the first stored entry.
    pub(super) fn first_stored(&self, txn: &RoTxn) -> StorageResult<Option<u64>> {
        match self.end_key(txn, true)? {
            Some(k) => self.index_of(k).map(Some),
            None => Ok(None),
        }
    }

    /// Decodes the record stored under `idx`, checking it holds entry `idx`.
    pub(super) fn decode_entry(&self, idx: u64, raw: &[u8]) -> StorageResult<Entry> {
        let e: Entry =
            decode_framed(raw).map_err(|e| self.corrupt(format!("log entry {idx}: {e}")))?;
        if e.index != idx {
            return Err(self.corrupt(format!(
                "the record under key {idx} holds entry {}",
                e.index
            )));
        }
        Ok(e)
    }

    /// The entry at `idx`, which the caller knows is within the log.
    pub(crate) fn get_entry(&self, txn: &RoTxn, idx: u64) -> StorageResult<Entry> {
        let raw = self
            .entries_db
            .get(txn, &self.entry_key(idx))
            .map_err(|e| self.heed_err(&format!("read log entry {idx}"), e))?
            .ok_or_else(|| self.corrupt(format!("log entry {idx} is missing (gap in the log)")))?;
        self.decode_entry(idx, raw)
    }

    /// The term of entry `idx`, given the log's metadata and last index.
    pub(super) fn term_txn(
        &self,
        txn: &RoTxn,
        meta: &Meta,
        last: u64,
        idx: u64,
    ) -> StorageResult<u64> {
        if idx == meta.offset {
            return Ok(meta.offset_term);
        }
        if idx < meta.offset {
            return Err(StorageError::Compacted);
        }
        if idx > last {
            return Err(StorageError::Unavailable);
        }
        Ok(self.get_entry(txn, idx)?.term)
    }

    /// The entries `low..high`, which the caller has checked lie within the
    /// log, cut to `max_size` by raft's rule ([`limit_size`]).
    ///
    /// Reading stops at the first entry that takes the total past
    /// `max_size`, and `limit_size` then decides what is kept: raft-rs asks
    /// for ranges up to the last index with a message-size limit, so reading
    /// the whole range first would decode entries only to drop them.
    pub(super) fn read_entries(
        &self,
        txn: &RoTxn,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> StorageResult<Vec<Entry>> {
        let mut out = Vec::new();
        if low == high {
            return Ok(out);
        }
        let (lo, hi) = (self.entry_key(low), self.entry_key(high));
        let range: KeyRange = (Bound::Included(&lo), Bound::Excluded(&hi));
        let iter = self
            .entries_db
            .range(txn, &range)
            .map_err(|e| self.heed_err("read log entries", e))?;
        let mut size = 0u64;
        let mut expect = low;
        for item in iter {
            let (k, raw) = item.map_err(|e| self.heed_err("read log entries", e))?;
            let k = self.index_of(k)?;
            if k != expect {
                return Err(self.corrupt(format!("log entry {expect} is missing (gap in the log)")));
            }
            let e = self.decode_entry(k, raw)?;
            if max_size.is_some() {
                size += u64::from(e.compute_size());
            }
            out.push(e);
            expect += 1;
            if max_size.is_some_and(|max| size > max) {
                limit_size(&mut out, max_size);
                return Ok(out);
            }
        }
        // Not cut: the total of what was read is within `max_size`.
        if expect != high {
            return Err(self.corrupt(format!("log entry {expect} is missing (gap in the log)")));
        }
        Ok(out)
    }

    /// Appends already framed entry records (keys must be increasing and
    /// above every stored key of the store). Alone in its environment, with
    /// `MDB_APPEND`: the key is then the database's last.
    pub(crate) fn append_raw(&self, wtxn: &mut RwTxn, idx: u64, framed: &[u8]) -> Result<(), Fail> {
        let flags = match self.scope {
            None => PutFlags::APPEND,
            Some(_) => PutFlags::empty(),
        };
        self.entries_db
            .put_with_flags(wtxn, flags, &self.entry_key(idx), framed)
            .map_err(|e| self.fail(&format!("append log entry {idx}"), e))
    }

    /// Deletes the entries `from ..= to`; `what` names it in an error
    /// (formatted only then).
    fn delete_entries(
        &self,
        wtxn: &mut RwTxn,
        from: u64,
        to: u64,
        what: impl Fn() -> String,
    ) -> Result<(), Fail> {
        let (lo, hi) = (self.entry_key(from), self.entry_key(to));
        let range: KeyRange = (Bound::Included(&lo), Bound::Included(&hi));
        self.entries_db
            .delete_range(wtxn, &range)
            .map(|_| ())
            .map_err(|e| self.fail(&what(), e))
    }

    /// Deletes the entries from `idx` on.
    pub(super) fn delete_from(&self, wtxn: &mut RwTxn, idx: u64) -> Result<(), Fail> {
        self.delete_entries(wtxn, idx, u64::MAX, || {
            format!("delete log entries from {idx}")
        })
    }

    /// Deletes the entries up to and including `idx`.
    pub(super) fn delete_through(&self, wtxn: &mut RwTxn, idx: u64) -> Result<(), Fail> {
        self.delete_entries(wtxn, 0, idx, || format!("delete log entries up to {idx}"))
    }

    /// Deletes every entry of the store.
    pub(super) fn clear_log(&self, wtxn: &mut RwTxn) -> Result<(), Fail> {
        self.delete_entries(wtxn, 0, u64::MAX, || "clear the log".into())
    }
}

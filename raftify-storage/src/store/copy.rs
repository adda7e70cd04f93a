//! Copying a store's state into another store, for restores (see
//! [`crate::restore_wal_from`]).

use super::keys::KeyRange;
use super::LmdbStore;
use raftify_core::storage::StorageResult;
use raftify_core::StorageError;
use std::ops::Bound;

impl LmdbStore {
    /// Removes the recorded identity (used by restores, so the node that
    /// adopts a copied log records its own).
    pub(crate) fn clear_identity(&self) -> StorageResult<()> {
        let _w = self.lock_writer();
        self.write_txn(|wtxn| self.delete_identity(wtxn))
    }

    /// Copies this store's whole state (entries, hard state, snapshot,
    /// compaction offset; not the identity) into `dst`, which must be empty,
    /// in one read transaction here and one write transaction there.
    ///
    /// Journaled writes not yet in LMDB are copied too, without holding up
    /// this store's writer: its tail's records are taken before the read
    /// transaction, and those a checkpoint moved into LMDB meanwhile are
    /// skipped (the transaction sees them there, below its `wal_seq`).
    pub(crate) fn copy_state_into(&self, dst: &LmdbStore) -> StorageResult<()> {
        let _w = dst.lock_writer();
        let mut attempts = 0;
        loop {
            let tail = self.tail_records();
            let res = self.read(|rtxn| {
                let (snap, meta) = self.read_snapshot(rtxn)?;
                let (_, created) = dst.write_with_snapshot_file(true, |wtxn, created| {
                    dst.clear_log(wtxn)?;
                    let (lo, hi) = self.entry_bounds();
                    let range: KeyRange = (Bound::Included(&lo), Bound::Included(&hi));
                    let iter = self
                        .entries_db
                        .range(rtxn, &range)
                        .map_err(|e| self.heed_err("read log entries", e))?;
                    for item in iter {
                        let (k, raw) = item.map_err(|e| self.heed_err("read log entries", e))?;
                        let k = self.index_of(k)?;
                        // Verify every record: never propagate damage.
                        self.decode_entry(k, raw)?;
                        dst.append_raw(wtxn, k, raw)?;
                    }
                    dst.put_offset(wtxn, meta.offset, meta.offset_term)?;
                    dst.put_hard_state(wtxn, &meta.hard_state)?;
                    if !tail.is_empty() {
                        let after = self.read_wal_seq(rtxn)?;
                        let newer: Vec<_> =
                            tail.iter().filter(|r| r.seq > after).cloned().collect();
                        dst.apply_pending(wtxn, &newer)?;
                    }
                    if meta.snap_file.is_some() {
                        let name = match created {
                            Some(n) => n.clone(),
                            None => {
                                let n = dst.create_snapshot_file(&snap, 1)?;
                                *created = Some(n.clone());
                                n
                            }
                        };
                        dst.put_snapshot_ref(wtxn, &meta.snap_meta, &name, 1)?;
                    }
                    Ok(())
                })?;
                Ok(created)
            });
            match res {
                Err(StorageError::SnapshotTemporarilyUnavailable) if attempts < 5 => attempts += 1,
                other => return other.map(|_| ()),
            }
        }
    }
}

//! Copying a store's state into another store, for restores (see
//! [`crate::restore_wal_from`]).

use super::LmdbStore;
use raftify_core::storage::StorageResult;
use raftify_core::StorageError;

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
    pub(crate) fn copy_state_into(&self, dst: &LmdbStore) -> StorageResult<()> {
        // A store journaling here: its whole state in LMDB, appends held.
        self.with_tail_checkpointed(|| self.copy_lmdb_into(dst))
    }

    fn copy_lmdb_into(&self, dst: &LmdbStore) -> StorageResult<()> {
        let _w = dst.lock_writer();
        let mut attempts = 0;
        loop {
            let res = self.read(|rtxn| {
                let (snap, meta) = self.read_snapshot(rtxn)?;
                let (_, created) = dst.write_with_snapshot_file(true, |wtxn, created| {
                    dst.entries_db
                        .clear(wtxn)
                        .map_err(|e| dst.fail("clear the log", e))?;
                    let iter = self
                        .entries_db
                        .iter(rtxn)
                        .map_err(|e| self.heed_err("read log entries", e))?;
                    for item in iter {
                        let (k, raw) = item.map_err(|e| self.heed_err("read log entries", e))?;
                        // Verify every record: never propagate damage.
                        self.decode_entry(k, raw)?;
                        dst.append_raw(wtxn, k, raw)?;
                    }
                    dst.put_offset(wtxn, meta.offset, meta.offset_term)?;
                    dst.put_hard_state(wtxn, &meta.hard_state)?;
                    // A read-only source: its journal's records after what
                    // this transaction sees checkpointed.
                    if let Some(tail) = &self.read_only_tail {
                        let after = self.read_wal_seq(rtxn)?;
                        dst.apply_pending(wtxn, &tail.0.records_after(after), None)?;
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

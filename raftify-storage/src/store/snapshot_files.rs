//! The snapshot files in `snap/`: writing them before the transaction
//! that references them, reading the current one, and deleting the ones no
//! committed metadata refers to (see the crate docs for why snapshot data
//! lives in files).

use super::meta::Meta;
use super::txn::Fail;
use super::{LmdbStore, SNAP_DIR};
use crate::error::LmdbError;
use crate::files::{remove_tmp_files, sync_dir};
use crate::snapshot_file::{data_of, map_snapshot_file, write_snapshot_file_with};
use bytes::Bytes;
use heed::{RoTxn, RwTxn};
use raftify_core::raft::eraftpb::{Snapshot, SnapshotMetadata};
use raftify_core::storage::StorageResult;
use raftify_core::{LogStore, StorageError, WriteSnapshot};
use std::fs;
use std::path::Path;

impl LmdbStore {
    /// Writes the current snapshot to `path` in the snapshot-file format (for
    /// [`crate::restore_wal_snapshot_from`] on another node).
    pub fn export_snapshot(&self, path: impl AsRef<Path>) -> Result<(), LmdbError> {
        let snap = self.snapshot().map_err(|e| LmdbError::Store {
            path: self.dir.clone(),
            source: e,
        })?;
        crate::snapshot_file::write_snapshot_file(path, &snap)
    }

    /// The current snapshot (its file mapped, its data a slice of the
    /// mapping; checked against the metadata) and the metadata it was read
    /// with.
    pub(super) fn read_snapshot(&self, txn: &RoTxn) -> StorageResult<(Snapshot, Meta)> {
        self.read_snapshot_file(txn).map(|(s, m, _)| (s, m))
    }

    /// [`LmdbStore::read_snapshot`] with the whole file's bytes (the
    /// mapping; `None` when no snapshot was ever stored).
    pub(super) fn read_snapshot_file(
        &self,
        txn: &RoTxn,
    ) -> StorageResult<(Snapshot, Meta, Option<Bytes>)> {
        let meta = self.read_meta(txn)?;
        let Some(name) = &meta.snap_file else {
            // No snapshot was ever stored.
            return Ok((Snapshot::default(), meta, None));
        };
        let path = self.dir.join(SNAP_DIR).join(name);
        // Missing: possibly replaced by a concurrent writer (read-only
        // handles); the caller retries with a fresh transaction.
        let (snap, file) = map_snapshot_file(&path)
            .map_err(|e| self.lmdb_to_storage(e))?
            .ok_or(StorageError::SnapshotTemporarilyUnavailable)?;
        if snap.get_metadata() != &meta.snap_meta {
            return Err(self.corrupt(format!(
                "snapshot file {} does not match the snapshot metadata in LMDB",
                path.display()
            )));
        }
        Ok((snap, meta, Some(file)))
    }

    /// The size of the stored snapshot file `name`.
    pub(super) fn snapshot_file_size(&self, name: &str) -> StorageResult<u64> {
        let path = self.dir.join(SNAP_DIR).join(name);
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| StorageError::backend(LmdbError::io("stat snapshot file", &path, e)))
    }

    /// Writes a snapshot file (durably) for a snapshot that a transaction is
    /// about to reference; returns its name.
    pub(crate) fn create_snapshot_file(&self, snap: &Snapshot, seq: u64) -> StorageResult<String> {
        let m = snap.get_metadata();
        let name = format!("{seq:020}-{:020}-{:020}.snap", m.index, m.term);
        self.write_snapshot_file(snap.get_metadata(), data_of(snap), &name)?;
        Ok(name)
    }

    /// Writes a snapshot file durably (temp file, fsync, rename, dir fsync),
    /// its data written by `write_data` as it is produced; returns the
    /// data's length.
    pub(super) fn write_snapshot_file(
        &self,
        meta: &SnapshotMetadata,
        write_data: WriteSnapshot<'_>,
        name: &str,
    ) -> StorageResult<u64> {
        write_snapshot_file_with(&self.dir.join(SNAP_DIR).join(name), meta, write_data)
            .map_err(|e| self.lmdb_to_storage(e))
    }

    /// Deletes a snapshot file, ignoring errors (an orphan left behind is
    /// removed on the next open).
    pub(super) fn remove_snapshot_file(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(SNAP_DIR).join(name));
    }

    /// After a commit that replaced the snapshot: make sure the commit is on
    /// disk (it is already, unless `no_sync`), then delete the old file.
    pub(super) fn retire_snapshot(&self, old: Option<String>, new: &str) {
        let Some(old) = old else { return };
        if old == new {
            return;
        }
        if self.opts.no_sync {
            let _g = self.gate_read();
            if self.env.force_sync().is_err() {
                // Keep the old file; it is removed as an orphan on next open.
                return;
            }
        }
        self.remove_snapshot_file(&old);
        let _ = sync_dir(&self.dir.join(SNAP_DIR));
    }

    /// Runs a write that may create a snapshot file: the file is removed
    /// again when the transaction does not commit. The commit is durable
    /// at once when `durable` (see [`LmdbStore::write_txn_deferred`]).
    pub(super) fn write_with_snapshot_file<T>(
        &self,
        durable: bool,
        mut f: impl FnMut(&mut RwTxn, &mut Option<String>) -> Result<T, Fail>,
    ) -> StorageResult<(T, Option<String>)> {
        let mut created: Option<String> = None;
        let result = if durable {
            self.write_txn(|wtxn| f(wtxn, &mut created))
        } else {
            self.write_txn_deferred(|wtxn| f(wtxn, &mut created))
        };
        match result {
            Ok(v) => Ok((v, created)),
            Err(e) => {
                if let Some(name) = created {
                    self.remove_snapshot_file(&name);
                }
                Err(e)
            }
        }
    }

    /// Deletes snapshot files no committed metadata refers to (left by a crash
    /// between writing a snapshot file and committing, or before deleting
    /// the previous one).
    pub(super) fn remove_orphan_snapshots(&self) {
        let snap_dir = self.dir.join(SNAP_DIR);
        remove_tmp_files(&snap_dir);
        let Ok(meta) = self.read(|txn| self.read_meta(txn)) else {
            return;
        };
        let Ok(read) = fs::read_dir(&snap_dir) else {
            return;
        };
        for entry in read.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".snap") && meta.snap_file.as_deref() != Some(name.as_str()) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

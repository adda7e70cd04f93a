//! [`LogStore`] for [`LmdbStore`]: the raft-facing reads and the writes,
//! each in one LMDB transaction.

use super::tail::View;
use super::LmdbStore;
use crate::codec::{encode_msg, frame};
use crate::files::{encode_archive, write_durable};
use crate::snapshot_file::data_of;
use bytes::Bytes;
use heed::RoTxn;
use raftify_core::raft::eraftpb::{Entry, Snapshot, SnapshotMetadata};
use raftify_core::raft::RaftState;
use raftify_core::storage::{check_append, limit_size, Durability, StorageResult, StoreIdentity};
use raftify_core::{LogStore, SnapshotInfo, StorageError, WriteBatch, WriteSnapshot};
use std::sync::atomic::Ordering;

impl LogStore for LmdbStore {
    fn initial_state(&self) -> StorageResult<RaftState> {
        self.view_then_read(
            |v| v.hard_state.clone(),
            |txn, hs| {
                let meta = self.read_meta(txn)?;
                Ok(RaftState::new(
                    hs.unwrap_or(meta.hard_state),
                    meta.snap_meta.get_conf_state().clone(),
                ))
            },
        )
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> StorageResult<Vec<Entry>> {
        // Replication reads the newest entries: usually all in the tail.
        let in_tail = self.tail_answer(|v| {
            let inside = v.from > 0 && v.from <= low && low <= high;
            (inside && v.last().is_some_and(|l| high <= l + 1))
                .then(|| v.slice(low, high, max_size))
        });
        if let Some(mut out) = in_tail {
            limit_size(&mut out, max_size);
            return Ok(out);
        }
        self.view_then_read(
            |v| (v.from, v.last(), v.slice(low, high, max_size)),
            |txn, (from, tail_last, tail)| {
                let meta = self.read_meta(txn)?;
                let last = match tail_last {
                    Some(l) => l,
                    None => self.last_index_txn(txn, &meta)?,
                };
                if low < meta.offset + 1 {
                    return Err(StorageError::Compacted);
                }
                if high > last + 1 || low > high {
                    return Err(StorageError::Unavailable);
                }
                if from == 0 || high <= from {
                    return self.read_entries(txn, low, high, max_size);
                }
                let mut out = Vec::new();
                if low < from {
                    out = self.read_entries(txn, low, from, max_size)?;
                    if (out.len() as u64) < from - low {
                        return Ok(out); // cut by max_size
                    }
                }
                out.extend(tail);
                limit_size(&mut out, max_size);
                Ok(out)
            },
        )
    }

    fn term(&self, idx: u64) -> StorageResult<u64> {
        if let Some(t) = self.tail_answer(|v| v.term(idx)) {
            return Ok(t);
        }
        self.view_then_read(
            |v| (v.from, v.last(), v.term(idx)),
            |txn, (from, tail_last, tail_term)| {
                let meta = self.read_meta(txn)?;
                if idx == meta.offset {
                    return Ok(meta.offset_term);
                }
                if idx < meta.offset {
                    return Err(StorageError::Compacted);
                }
                if let Some(t) = tail_term {
                    return Ok(t);
                }
                let last = match tail_last {
                    // At or after `from` the tail answers: past its end.
                    Some(_) if idx >= from => return Err(StorageError::Unavailable),
                    Some(l) => l,
                    None => self.last_index_txn(txn, &meta)?,
                };
                self.term_txn(txn, &meta, last, idx)
            },
        )
    }

    fn first_index(&self) -> StorageResult<u64> {
        if self.read_only {
            return self.read(|txn| Ok(self.read_meta(txn)?.offset + 1));
        }
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((g, first)) = *self.first_index_cache() {
            if g == generation {
                return Ok(first);
            }
        }
        let first = self.read(|txn| Ok(self.read_meta(txn)?.offset + 1))?;
        // Kept only if no write committed meanwhile (the value might predate it).
        let mut c = self.first_index_cache();
        if self.generation.load(Ordering::Acquire) == generation {
            *c = Some((generation, first));
        }
        Ok(first)
    }

    fn last_index(&self) -> StorageResult<u64> {
        if let Some(l) = self.tail_answer(View::last) {
            return Ok(l);
        }
        self.view_then_read(
            |v| v.last(),
            |txn, tail_last| match tail_last {
                Some(l) => Ok(l),
                None => {
                    let meta = self.read_meta(txn)?;
                    self.last_index_txn(txn, &meta)
                }
            },
        )
    }

    fn snapshot(&self) -> StorageResult<Snapshot> {
        self.snapshot_with_file().map(|(s, _)| s)
    }

    fn snapshot_file(&self) -> StorageResult<Option<(SnapshotMetadata, Bytes)>> {
        let (mut snap, file) = self.snapshot_with_file()?;
        Ok(file.map(|f| (snap.take_metadata(), f)))
    }

    fn snapshot_info(&self) -> StorageResult<SnapshotInfo> {
        let meta = self.read(|txn| self.read_meta(txn))?;
        let size = match &meta.snap_file {
            Some(name) => self.snapshot_file_size(name)?,
            None => 0,
        };
        Ok(SnapshotInfo {
            metadata: meta.snap_meta,
            size,
        })
    }

    fn write(&self, batch: WriteBatch) -> StorageResult<()> {
        match &self.wal {
            Some(_) => self.write_deferred(batch).map(|_| ()),
            None => self.write_batch(batch, true),
        }
    }

    fn write_deferred(&self, batch: WriteBatch) -> StorageResult<Durability> {
        self.ensure_writable()?;
        if let Some(wal) = &self.wal {
            // One journal record and one sync; a snapshot install goes to
            // LMDB, after the journaled tail.
            if batch.snapshot.is_none() {
                if !batch.is_empty() {
                    self.journal_append(wal, batch.entries, batch.hard_state)?;
                }
            } else {
                self.with_tail_checkpointed(|| self.write_batch(batch, true))?;
            }
            return Ok(Durability::Durable);
        }
        // A snapshot install retires the previous snapshot file after its
        // commit: that commit must be durable first.
        let durable = batch.snapshot.is_some() || !self.defers_meta_sync();
        self.write_batch(batch, durable)?;
        Ok(if durable {
            Durability::Durable
        } else {
            Durability::UntilNext
        })
    }

    fn sync(&self) -> StorageResult<()> {
        self.ensure_writable()?;
        match &self.wal {
            // Journaled writes are durable when they return.
            Some(_) => Ok(()),
            None => self.sync_meta(),
        }
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> StorageResult<()> {
        let meta = snapshot.get_metadata().clone();
        self.save_snapshot_with(meta, data_of(&snapshot))
            .map(|_| ())
    }

    fn save_snapshot_with(
        &self,
        m: SnapshotMetadata,
        write: WriteSnapshot<'_>,
    ) -> StorageResult<u64> {
        self.ensure_writable()?;
        // The file is the bulk of the work (the whole state, written as the
        // state machine produces it, and synced): it is written before
        // taking the writer lock, so the log writes of a running node are
        // not held up behind it. Only one own snapshot is saved at a time,
        // so its name is unique; a crash before the commit below leaves an
        // orphan that the next open removes.
        let next_seq = self.read(|txn| Ok(self.read_meta(txn)?.snap_seq))? + 1;
        let name = format!("{next_seq:020}-{:020}-{:020}-own.snap", m.index, m.term);
        let size = self.write_snapshot_file(&m, write, &name)?;
        // What the snapshot covers was applied, so it is in the log: in
        // LMDB once the tail is checkpointed (appends go on meanwhile).
        let committed = self.checkpoint().and_then(|()| {
            let _w = self.lock_writer();
            self.write_txn(|wtxn| {
                let meta = self.read_meta(wtxn)?;
                if m.index < meta.snap_meta.index {
                    return Err(StorageError::SnapshotOutOfDate.into());
                }
                let last = self.last_index_txn(wtxn, &meta)?;
                if m.index > last {
                    return Err(StorageError::Invalid(format!(
                        "snapshot at index {} is beyond the last entry {last}",
                        m.index
                    ))
                    .into());
                }
                self.put_snapshot_ref(wtxn, &m, &name, meta.snap_seq + 1)?;
                Ok(meta.snap_file)
            })
        });
        match committed {
            Ok(old_file) => {
                self.retire_snapshot(old_file, &name);
                Ok(size)
            }
            Err(e) => {
                self.remove_snapshot_file(&name);
                Err(e)
            }
        }
    }

    fn compact(&self, index: u64) -> StorageResult<()> {
        self.ensure_writable()?;
        // The entries it removes are applied, so they are in the tail or
        // LMDB; once checkpointed, the tail holds only later appends (raft
        // never rewrites applied entries), which compaction does not
        // touch: appends go on meanwhile.
        self.checkpoint()?;
        self.compact_lmdb(index)
    }

    fn identity(&self) -> StorageResult<Option<StoreIdentity>> {
        self.read(|txn| self.read_identity(txn))
    }

    fn set_identity(&self, identity: &StoreIdentity) -> StorageResult<()> {
        self.ensure_writable()?;
        let _w = self.lock_writer();
        self.write_txn(|wtxn| self.put_identity(wtxn, identity))
    }

    fn blocking_writes(&self) -> bool {
        true
    }

    fn inline_appends(&self) -> bool {
        // Without fsync a commit only copies pages into the page cache.
        self.options().no_sync
    }
}

impl LmdbStore {
    /// What the journaled tail alone answers, without a read transaction
    /// (the raft loop's hot reads: the newest entries, their terms, the
    /// last index). Every index the tail holds is above the compacted
    /// prefix: appends only write after the commit index, and compaction
    /// checkpoints the tail first.
    fn tail_answer<T>(&self, f: impl FnOnce(&View) -> Option<T>) -> Option<T> {
        self.wal.as_ref().and_then(|wal| wal.read(self.scope, f))
    }

    /// Reads `pick` of the journaled tail, then runs `body` in a read
    /// transaction with it. In that order: a checkpoint commits before the
    /// tail forgets what it moved, so LMDB read afterwards has it (see
    /// `tail.rs`). A read-only handle uses its journal records after the
    /// `wal_seq` its transaction sees.
    fn view_then_read<V, T>(
        &self,
        pick: impl FnOnce(&View) -> V,
        body: impl FnOnce(&RoTxn, V) -> StorageResult<T>,
    ) -> StorageResult<T> {
        match (&self.wal, &self.read_only_tail) {
            (Some(wal), _) => {
                let v = wal.read(self.scope, pick);
                self.read(|txn| body(txn, v))
            }
            (None, Some(tail)) => self.read(|txn| {
                let view = tail.0.view_after(self.read_wal_seq(txn)?);
                body(txn, pick(&view))
            }),
            (None, None) => self.read(|txn| body(txn, pick(&View::default()))),
        }
    }

    /// Compaction in LMDB (with the tail already checkpointed).
    fn compact_lmdb(&self, index: u64) -> StorageResult<()> {
        let _w = self.lock_writer();
        self.write_txn(|wtxn| {
            let meta = self.read_meta(wtxn)?;
            let first = meta.offset + 1;
            if index <= first {
                return Ok(());
            }
            let snap_index = meta.snap_meta.index;
            if index > snap_index + 1 {
                return Err(StorageError::Invalid(format!(
                    "compact to {index} beyond snapshot index {snap_index}"
                ))
                .into());
            }
            let new_offset = index - 1;
            let last = self.last_index_txn(wtxn, &meta)?;
            let term = self.term_txn(wtxn, &meta, last, new_offset)?;
            if let Some(archive) = &self.opts.archive_compacted {
                let mut records = Vec::with_capacity((new_offset - meta.offset) as usize);
                for idx in first..=new_offset {
                    let raw = self
                        .entries_db
                        .get(wtxn, &self.entry_key(idx))
                        .map_err(|e| self.fail("read entries to archive", e))?
                        .ok_or_else(|| self.corrupt(format!("log entry {idx} is missing")))?;
                    // Verify before archiving: never archive garbage silently.
                    self.decode_entry(idx, raw)?;
                    records.push(raw.to_vec());
                }
                let path = archive.join(format!("compacted-{first:020}-{new_offset:020}.wal"));
                write_durable(&path, &encode_archive(&records))
                    .map_err(|e| self.lmdb_to_storage(e))?;
            }
            self.delete_through(wtxn, new_offset)?;
            self.put_offset(wtxn, new_offset, term)?;
            Ok(())
        })
    }

    /// Writes one Ready's batch in one transaction; durable now when
    /// `durable`, else once the next commit or sync returns.
    fn write_batch(&self, batch: WriteBatch, durable: bool) -> StorageResult<()> {
        self.ensure_writable()?;
        if batch.is_empty() {
            return Ok(());
        }

        let _w = self.lock_writer();
        // Encode outside the transaction; it may run more than once.
        let mut records = Vec::with_capacity(batch.entries.len());
        for e in &batch.entries {
            records.push(frame(&encode_msg(e).map_err(StorageError::Invalid)?));
        }
        let (old_file, new_file) = self.write_with_snapshot_file(durable, |wtxn, created| {
            let meta = self.read_meta(wtxn)?;
            let last = self.last_index_txn(wtxn, &meta)?;
            // Validate everything first so a failing batch changes nothing.
            let (offset, new_last, keep) = match &batch.snapshot {
                Some(snap) => {
                    let m = snap.get_metadata();
                    if m.index < meta.snap_meta.index {
                        return Err(StorageError::SnapshotOutOfDate.into());
                    }
                    let keep =
                        matches!(self.term_txn(wtxn, &meta, last, m.index), Ok(t) if t == m.term);
                    (m.index, if keep { last } else { m.index }, keep)
                }
                None => (meta.offset, last, false),
            };
            check_append(offset, new_last, &batch.entries)?;

            let mut hs = meta.hard_state.clone();
            let mut replaced = None;
            if let Some(snap) = &batch.snapshot {
                let m = snap.get_metadata();
                let seq = meta.snap_seq + 1;
                let name = match created {
                    Some(n) => n.clone(),
                    None => {
                        let n = self.create_snapshot_file(snap, seq)?;
                        *created = Some(n.clone());
                        n
                    }
                };
                if keep {
                    if m.index > 0 {
                        self.delete_through(wtxn, m.index)?;
                    }
                } else {
                    self.clear_log(wtxn)?;
                }
                self.put_offset(wtxn, m.index, m.term)?;
                self.put_snapshot_ref(wtxn, m, &name, seq)?;
                hs.term = hs.term.max(m.term);
                hs.commit = hs.commit.max(m.index);
                replaced = Some(meta.snap_file.clone());
            }
            if let Some(first) = batch.entries.first() {
                self.delete_from(wtxn, first.index)?;
                for (e, rec) in batch.entries.iter().zip(&records) {
                    self.append_raw(wtxn, e.index, rec)?;
                }
            }
            if let Some(h) = &batch.hard_state {
                hs = h.clone();
            }
            if batch.snapshot.is_some() || batch.hard_state.is_some() {
                self.put_hard_state(wtxn, &hs)?;
            }
            Ok(replaced.flatten())
        })?;
        if let Some(new) = new_file {
            self.retire_snapshot(old_file, &new);
        }
        Ok(())
    }
}

impl LmdbStore {
    /// The current snapshot and its file's bytes, retrying while a
    /// read-only handle races with the writer replacing the file.
    fn snapshot_with_file(&self) -> StorageResult<(Snapshot, Option<Bytes>)> {
        let mut attempts = 0;
        loop {
            match self.read(|txn| self.read_snapshot_file(txn)) {
                Err(StorageError::SnapshotTemporarilyUnavailable) if attempts < 5 => {
                    attempts += 1;
                }
                Err(StorageError::SnapshotTemporarilyUnavailable) => {
                    return Err(self.corrupt("the current snapshot file is missing"));
                }
                other => return other.map(|(s, _, f)| (s, f)),
            }
        }
    }
}

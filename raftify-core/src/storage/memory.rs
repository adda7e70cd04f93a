//! [`MemStore`]: the whole [`LogStore`] contract in memory, for tests and
//! for nodes that do not need durability.

use super::{limit_size, LogStore, StorageError, StorageResult, StoreIdentity, WriteBatch};
use raft::eraftpb::{Entry, HardState, Snapshot};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct Inner {
    hard_state: HardState,
    /// Latest snapshot (its metadata carries the conf state).
    snapshot: Snapshot,
    /// entries[i].index == snapshot index + 1 + i - (compacted offset); kept
    /// contiguous; the first entry's index is `first_index()`.
    entries: Vec<Entry>,
    /// Index of the last compacted entry (entries start right after it).
    offset: u64,
    /// Term of the entry at `offset`.
    offset_term: u64,
    identity: Option<StoreIdentity>,
}

impl Inner {
    fn first_index(&self) -> u64 {
        self.offset + 1
    }

    fn last_index(&self) -> u64 {
        self.offset + self.entries.len() as u64
    }

    fn term(&self, idx: u64) -> StorageResult<u64> {
        if idx == self.offset {
            return Ok(self.offset_term);
        }
        if idx < self.offset {
            return Err(StorageError::Compacted);
        }
        if idx > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        Ok(self.entries[(idx - self.offset - 1) as usize].term)
    }

    /// Installs a snapshot already checked to be newer than the current one.
    fn apply_snapshot(&mut self, snap: Snapshot) {
        let meta = snap.get_metadata();
        // Keep entries after the snapshot only when they agree with it.
        let keep = matches!(self.term(meta.index), Ok(t) if t == meta.term);
        if keep {
            let drop = (meta.index - self.offset) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.offset = meta.index;
        self.offset_term = meta.term;
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.snapshot = snap;
    }

    /// Appends entries already checked by [`check_append`], dropping the
    /// conflicting suffix first.
    fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        self.entries
            .truncate((first.index - self.offset - 1) as usize);
        self.entries.extend(entries);
    }
}

/// Checks that `entries` can be appended to a log holding `(offset, last]`:
/// contiguous, not before the compacted prefix, and leaving no gap.
pub fn check_append(offset: u64, last: u64, entries: &[Entry]) -> StorageResult<()> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    if first.index <= offset {
        return Err(StorageError::Invalid(format!(
            "append at index {} overwrites compacted entries (compacted up to {offset})",
            first.index
        )));
    }
    if first.index > last + 1 {
        return Err(StorageError::Invalid(format!(
            "append at index {} leaves a gap after last index {last}",
            first.index
        )));
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(StorageError::Invalid(format!(
                "appended entries are not contiguous: {} then {}",
                pair[0].index, pair[1].index
            )));
        }
    }
    Ok(())
}

/// An in-memory [`LogStore`].
///
/// Share it through an `Arc` to "restart" a node over the same state in
/// tests. Nothing survives the process.
///
/// ```
/// use raftify_core::storage::{LogStore, MemStore};
/// let store = MemStore::new();
/// assert_eq!(store.last_index().unwrap(), 0);
/// assert_eq!(store.first_index().unwrap(), 1);
/// ```
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner half-written in a
        // way later calls would misread, so poisoning is not fatal.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogStore for MemStore {
    fn initial_state(&self) -> StorageResult<raft::RaftState> {
        let inner = self.lock();
        Ok(raft::RaftState::new(
            inner.hard_state.clone(),
            inner.snapshot.get_metadata().get_conf_state().clone(),
        ))
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> StorageResult<Vec<Entry>> {
        let inner = self.lock();
        if low < inner.first_index() {
            return Err(StorageError::Compacted);
        }
        if high > inner.last_index() + 1 || low > high {
            return Err(StorageError::Unavailable);
        }
        let lo = (low - inner.offset - 1) as usize;
        let hi = (high - inner.offset - 1) as usize;
        let mut out = inner.entries[lo..hi].to_vec();
        limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> StorageResult<u64> {
        self.lock().term(idx)
    }

    fn first_index(&self) -> StorageResult<u64> {
        Ok(self.lock().first_index())
    }

    fn last_index(&self) -> StorageResult<u64> {
        Ok(self.lock().last_index())
    }

    fn snapshot(&self) -> StorageResult<Snapshot> {
        Ok(self.lock().snapshot.clone())
    }

    fn write(&self, batch: WriteBatch) -> StorageResult<()> {
        let mut inner = self.lock();
        // Validate everything first so a failing batch changes nothing.
        let (offset, last) = match &batch.snapshot {
            Some(snap) => {
                let meta = snap.get_metadata();
                if meta.index < inner.snapshot.get_metadata().index {
                    return Err(StorageError::SnapshotOutOfDate);
                }
                let keep = matches!(inner.term(meta.index), Ok(t) if t == meta.term);
                let last = if keep { inner.last_index() } else { meta.index };
                (meta.index, last)
            }
            None => (inner.offset, inner.last_index()),
        };
        check_append(offset, last, &batch.entries)?;
        if let Some(snap) = batch.snapshot {
            inner.apply_snapshot(snap);
        }
        inner.append(batch.entries);
        if let Some(hs) = batch.hard_state {
            inner.hard_state = hs;
        }
        Ok(())
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> StorageResult<()> {
        let mut inner = self.lock();
        let meta = snapshot.get_metadata();
        if meta.index < inner.snapshot.get_metadata().index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if meta.index > inner.last_index() {
            return Err(StorageError::Invalid(format!(
                "snapshot at index {} is beyond the last entry {}",
                meta.index,
                inner.last_index()
            )));
        }
        inner.snapshot = snapshot;
        Ok(())
    }

    fn compact(&self, index: u64) -> StorageResult<()> {
        let mut inner = self.lock();
        if index <= inner.first_index() {
            return Ok(());
        }
        let snap_index = inner.snapshot.get_metadata().index;
        if index > snap_index + 1 {
            return Err(StorageError::Invalid(format!(
                "compact to {index} beyond snapshot index {snap_index}"
            )));
        }
        let new_offset = index - 1;
        let term = inner.term(new_offset)?;
        let drop = (new_offset - inner.offset) as usize;
        inner.entries.drain(..drop);
        inner.offset = new_offset;
        inner.offset_term = term;
        Ok(())
    }

    fn identity(&self) -> StorageResult<Option<StoreIdentity>> {
        Ok(self.lock().identity.clone())
    }

    fn set_identity(&self, identity: &StoreIdentity) -> StorageResult<()> {
        self.lock().identity = Some(identity.clone());
        Ok(())
    }

    fn blocking_writes(&self) -> bool {
        false
    }
}

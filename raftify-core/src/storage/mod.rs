//! The storage contract between the Raft loop and a durable log.
//!
//! [`LogStore`] is raft-rs's [`raft::Storage`] made object-safe, plus the writes
//! the loop performs. The loop calls [`LogStore::write`] **once per raft
//! `Ready`** with everything that Ready asks to persist (snapshot, entries, hard
//! state), so a backend can make it one durable commit (group commit).
//!
//! raftify-core ships [`MemStore`] for tests; `raftify-storage` provides LMDB.

mod memory;
mod overlay;

pub use memory::{check_append, MemStore};
pub(crate) use overlay::Overlay;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where a snapshot's data goes as it is produced
/// ([`LogStore::save_snapshot_with`]): written in order, with seeks back
/// to patch what was written earlier (a length).
pub trait SnapshotWriter: std::io::Write + std::io::Seek {}
impl<T: std::io::Write + std::io::Seek + ?Sized> SnapshotWriter for T {}

/// Writes a snapshot's data into a [`SnapshotWriter`].
pub type WriteSnapshot<'a> = Box<dyn FnOnce(&mut dyn SnapshotWriter) -> std::io::Result<()> + 'a>;

/// Errors a [`LogStore`] returns.
///
/// The first four are the conditions raft-rs itself understands; they are
/// passed through to it. Everything else makes the node report a storage
/// failure to its callers.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The requested index is older than the first entry still stored.
    #[error("log compacted: the requested entries were removed by compaction")]
    Compacted,
    /// The requested index is newer than the last stored entry.
    #[error("log entry unavailable: index beyond the last stored entry")]
    Unavailable,
    /// A snapshot older than the current one was offered.
    #[error("snapshot out of date: the store already has newer state")]
    SnapshotOutOfDate,
    /// No snapshot can be produced right now; raft-rs retries later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The stored data does not decode, fails its checksum, or violates the
    /// log's invariants. The node cannot go on with this data: rebuild its
    /// data dir from a healthy peer's, or replace the node.
    #[error(
        "storage corrupted: {what} (in {location}); this node's data cannot be used: rebuild its \
         data dir from a healthy peer's (memstore: --restore-wal-from PEER_DATA_DIR) or remove \
         the node and add it back"
    )]
    Corrupted {
        /// What is damaged, and how it shows.
        what: String,
        /// The file or store it is in.
        location: String,
    },
    /// The caller asked for something the store cannot do (a gap in the log,
    /// an overwrite of compacted entries, ...).
    #[error("invalid storage operation: {0}")]
    Invalid(String),
    /// The backend failed (I/O, LMDB, full disk, ...).
    #[error("storage backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// Damage: `what` is wrong, in the file or store `location`.
    pub fn corrupted(what: impl Into<String>, location: impl Into<String>) -> Self {
        StorageError::Corrupted {
            what: what.into(),
            location: location.into(),
        }
    }

    /// Wraps any backend error.
    pub fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        StorageError::Backend(Box::new(e))
    }

    fn into_raft(self) -> raft::Error {
        use raft::StorageError as R;
        match self {
            StorageError::Compacted => raft::Error::Store(R::Compacted),
            StorageError::Unavailable => raft::Error::Store(R::Unavailable),
            StorageError::SnapshotOutOfDate => raft::Error::Store(R::SnapshotOutOfDate),
            StorageError::SnapshotTemporarilyUnavailable => {
                raft::Error::Store(R::SnapshotTemporarilyUnavailable)
            }
            other => raft::Error::Store(R::Other(Box::new(other))),
        }
    }
}

/// Result type of storage operations.
pub type StorageResult<T> = std::result::Result<T, StorageError>;

/// What one raft `Ready` asks to persist; written by [`LogStore::write`] as
/// one atomic, durable commit.
///
/// Order of application inside the commit: `snapshot` (which replaces the
/// log up to its index), then `entries` (which replace any conflicting
/// suffix), then `hard_state`.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// A snapshot received from the leader, to install.
    pub snapshot: Option<Snapshot>,
    /// New log entries; the first one may overwrite an existing suffix.
    pub entries: Vec<Entry>,
    /// The new hard state (term, vote, commit).
    pub hard_state: Option<HardState>,
}

impl WriteBatch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }

    /// Folds a later batch into this one, so that writing the result is the
    /// same as writing `self` and then `later`: a later snapshot replaces
    /// everything before it, later entries replace the suffix they overlap,
    /// the later hard state wins. The loop uses it to write every Ready
    /// queued behind an in-flight commit in one commit.
    ///
    /// ```
    /// use raftify_core::raft::eraftpb::Entry;
    /// use raftify_core::WriteBatch;
    /// let e = |index, term| Entry { index, term, ..Default::default() };
    /// let mut batch = WriteBatch { entries: vec![e(1, 1), e(2, 1), e(3, 1)], ..Default::default() };
    /// batch.merge(WriteBatch { entries: vec![e(3, 2), e(4, 2)], ..Default::default() });
    /// let got: Vec<(u64, u64)> = batch.entries.iter().map(|e| (e.index, e.term)).collect();
    /// assert_eq!(got, vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
    /// ```
    pub fn merge(&mut self, later: WriteBatch) {
        if later.snapshot.is_some() {
            self.snapshot = later.snapshot;
            self.entries.clear();
        }
        if let Some(first) = later.entries.first() {
            let keep = self
                .entries
                .iter()
                .position(|e| e.index >= first.index)
                .unwrap_or(self.entries.len());
            self.entries.truncate(keep);
            self.entries.extend(later.entries);
        }
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
    }
}

/// How durable a [`LogStore::write_deferred`] is when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// This write and every earlier one survive a power loss.
    Durable,
    /// Every earlier write survives a power loss; this one does once the
    /// next `write_deferred`, `write` or `sync` returns (until then a power
    /// loss may undo it — whole, never in part — though a process crash
    /// cannot). What a store whose commit needs two syncs returns when it
    /// lets the next commit's sync carry the second one.
    UntilNext,
}

/// Who a data directory belongs to: written once at first start, checked on
/// every later start so a node never runs on another node's or another
/// cluster's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreIdentity {
    /// The node id this log belongs to.
    pub node_id: u64,
    /// The cluster this log belongs to.
    pub cluster_id: String,
}

/// What [`LogStore::snapshot_info`] tells of the latest snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotInfo {
    /// Index, term and conf state (index 0: no snapshot yet).
    pub metadata: raft::eraftpb::SnapshotMetadata,
    /// Bytes it takes where stored (its file, for a store that keeps one;
    /// else its data).
    pub size: u64,
}

/// A durable (or, for tests, in-memory) Raft log.
///
/// Implementations must follow raft-rs's storage contract: `term(i)` works for
/// `first_index() - 1 ..= last_index()`, appending at index `i` removes every
/// stored entry at `i` and after, and a snapshot replaces the log up to its
/// index. They must never panic on bad input: return a [`StorageError`].
pub trait LogStore: Send + Sync + 'static {
    /// Hard state and conf state as of the last write.
    ///
    /// The conf state is the one of the latest snapshot; the loop re-applies
    /// configuration changes committed after it.
    fn initial_state(&self) -> StorageResult<raft::RaftState>;
    /// Entries in `[low, high)`, at most `max_size` bytes in total but always
    /// at least one entry when the range is not empty.
    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> StorageResult<Vec<Entry>>;
    /// The term of entry `idx`; valid for `first_index() - 1 ..= last_index()`.
    fn term(&self, idx: u64) -> StorageResult<u64>;
    /// The first index still stored (snapshot index + 1 on a compacted log).
    fn first_index(&self) -> StorageResult<u64>;
    /// The index of the last stored entry (the snapshot index when empty).
    fn last_index(&self) -> StorageResult<u64>;
    /// The latest snapshot, with its data.
    fn snapshot(&self) -> StorageResult<Snapshot>;
    /// The latest snapshot's metadata and stored size, without reading its
    /// data where the store keeps them apart (for listings and status).
    /// Default: from [`LogStore::snapshot`].
    fn snapshot_info(&self) -> StorageResult<SnapshotInfo> {
        let mut s = self.snapshot()?;
        Ok(SnapshotInfo {
            size: s.data.len() as u64,
            metadata: s.take_metadata(),
        })
    }
    /// The latest snapshot as the file the store keeps it in, with its
    /// metadata — for backups, without encoding a copy (raftify-storage:
    /// a read-only mapping of the checksummed snapshot file, what
    /// `--restore-snapshot-from` reads). `None`: the store keeps no
    /// such file, or has no snapshot. Default: `None`.
    fn snapshot_file(&self) -> StorageResult<Option<(SnapshotMetadata, bytes::Bytes)>> {
        Ok(None)
    }
    /// Persists one Ready's worth of state atomically and durably.
    fn write(&self, batch: WriteBatch) -> StorageResult<()>;
    /// Persists one Ready's worth of state atomically, and durably either
    /// now or once the next write or [`LogStore::sync`] returns (see
    /// [`Durability`]). The loop's storage writer uses it: while Readys
    /// queue up, each commit's sync also makes the previous commit durable,
    /// and when none is queued it calls `sync`. Default: [`LogStore::write`],
    /// [`Durability::Durable`].
    fn write_deferred(&self, batch: WriteBatch) -> StorageResult<Durability> {
        self.write(batch).map(|()| Durability::Durable)
    }
    /// Makes every write so far durable. Default: nothing to do.
    fn sync(&self) -> StorageResult<()> {
        Ok(())
    }
    /// Stores a snapshot this node created from its own state machine. It
    /// does not touch the log; [`LogStore::compact`] is called afterwards.
    fn save_snapshot(&self, snapshot: Snapshot) -> StorageResult<()>;
    /// [`LogStore::save_snapshot`] with the data written by `write` as it is
    /// produced, straight where the store keeps it (a store with snapshot
    /// files: the file), so a large state is never held serialized in
    /// memory. `write` may seek within what it wrote (positions count from
    /// the data's start) and must leave the writer at the end. Returns the
    /// data's size. An error of `write` fails the save (nothing is
    /// stored). Default: into a buffer, then [`LogStore::save_snapshot`].
    fn save_snapshot_with(
        &self,
        metadata: SnapshotMetadata,
        write: WriteSnapshot<'_>,
    ) -> StorageResult<u64> {
        let mut buf = std::io::Cursor::new(Vec::new());
        write(&mut buf).map_err(StorageError::backend)?;
        let data = buf.into_inner();
        let size = data.len() as u64;
        let mut snap = Snapshot::default();
        snap.data = data.into();
        snap.set_metadata(metadata);
        self.save_snapshot(snap)?;
        Ok(size)
    }
    /// Removes entries before `index` (which must be ≤ the snapshot index + 1).
    fn compact(&self, index: u64) -> StorageResult<()>;
    /// The identity recorded in the store, if any.
    fn identity(&self) -> StorageResult<Option<StoreIdentity>>;
    /// Records the identity of the store (first start).
    fn set_identity(&self, identity: &StoreIdentity) -> StorageResult<()>;
    /// Whether [`LogStore::write`] blocks on I/O (an fsync). When true the
    /// loop's pipelined writes are made by a writer thread of their own,
    /// and its other writes on tokio's blocking pool. Default true.
    fn blocking_writes(&self) -> bool {
        true
    }
    /// Whether a write of log entries and hard state (no snapshot) is cheap
    /// enough to run on the async runtime although
    /// [`LogStore::blocking_writes`] is true: a store that does not sync
    /// (a few microseconds a commit), whose snapshots and compactions still
    /// go to the blocking pool: the writer is then a task of the loop's
    /// runtime, not a thread. Saves a thread hop per commit. Default
    /// false.
    fn inline_appends(&self) -> bool {
        false
    }
}

/// Adapts a shared [`LogStore`] to raft-rs's [`raft::Storage`].
pub(crate) struct RaftStorage {
    pub(crate) store: Arc<dyn LogStore>,
    /// Set when raft asked for a snapshot the store cannot serve yet (too
    /// old for the requesting peer); the loop then takes a fresh one.
    pub(crate) snapshot_wanted: Arc<AtomicBool>,
    /// Entries given to the storage writer, not yet durable (pipelined
    /// persistence); read in front of the store.
    pub(crate) overlay: Overlay,
}

impl RaftStorage {
    pub(crate) fn new(store: Arc<dyn LogStore>) -> Self {
        RaftStorage {
            store,
            snapshot_wanted: Arc::new(AtomicBool::new(false)),
            overlay: Overlay::default(),
        }
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.store.initial_state().map_err(StorageError::into_raft)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let (Some(first), Some(last)) = (self.overlay.first_index(), self.overlay.last_index())
        else {
            return self
                .store
                .entries(low, high, max_size)
                .map_err(StorageError::into_raft);
        };
        if high > last + 1 {
            return Err(StorageError::Unavailable.into_raft());
        }
        let mut out = Vec::new();
        if low < first {
            out = self
                .store
                .entries(low, high.min(first), max_size)
                .map_err(StorageError::into_raft)?;
            if (out.len() as u64) < high.min(first) - low {
                return Ok(out); // cut by max_size
            }
        }
        out.extend(self.overlay.range(low, high).cloned());
        limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if let Some(e) = self.overlay.get(idx) {
            return Ok(e.term);
        }
        if self.overlay.last_index().is_some_and(|l| idx > l) {
            return Err(StorageError::Unavailable.into_raft());
        }
        self.store.term(idx).map_err(StorageError::into_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.store.first_index().map_err(StorageError::into_raft)
    }

    fn last_index(&self) -> raft::Result<u64> {
        match self.overlay.last_index() {
            Some(l) => Ok(l),
            None => self.store.last_index().map_err(StorageError::into_raft),
        }
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let snap = self.store.snapshot().map_err(StorageError::into_raft)?;
        let cs = snap.get_metadata().get_conf_state();
        // raft-rs refuses a snapshot whose configuration does not include the
        // receiver (a node added after it was taken): take a newer one.
        let includes_peer = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .any(|id| *id == to);
        if snap.get_metadata().index < request_index || !includes_peer {
            self.snapshot_wanted.store(true, Ordering::Release);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

/// Builds the conf state of a fresh cluster with the given voters.
pub(crate) fn conf_state_with_voters(voters: impl IntoIterator<Item = u64>) -> ConfState {
    let mut cs = ConfState::default();
    cs.voters = voters.into_iter().collect();
    cs
}

/// Trims `entries` so their encoded size stays within `max_size`, keeping at
/// least one entry (raft-rs's `limit_size` contract). Shared by backends.
pub fn limit_size(entries: &mut Vec<Entry>, max_size: Option<u64>) {
    use protobuf::Message;
    let Some(max) = max_size else { return };
    if entries.len() <= 1 {
        return;
    }
    let mut size = 0u64;
    let keep = entries
        .iter()
        .take_while(|e| {
            size += u64::from(e.compute_size());
            size <= max
        })
        .count();
    entries.truncate(keep.max(1));
}

/// Node `id`'s raft address as recorded in the replicated address book of
/// the store's latest snapshot: a restarted node need not be told its own
/// address again. `None` before the first snapshot that lists it.
pub fn recorded_addr(store: &dyn LogStore, id: u64) -> Option<String> {
    recorded_peers(store)?.remove(&id)
}

/// The replicated address book (node id → raft address) of the store's
/// latest snapshot; `None` before the first snapshot.
pub fn recorded_peers(store: &dyn LogStore) -> Option<std::collections::BTreeMap<u64, String>> {
    let snap = store.snapshot().ok()?;
    let (meta, _) = crate::codec::decode_snapshot(&snap.data).ok()?;
    Some(meta.peers)
}

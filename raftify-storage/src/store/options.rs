//! [`LmdbOptions`], and the rounding of map sizes.

use std::path::PathBuf;
use std::time::Duration;

/// Map sizes are kept multiples of this (a multiple of every page size LMDB
/// runs with: 4 KiB, 16 KiB, 64 KiB).
pub(super) const MAP_ALIGN: usize = 64 * 1024;

/// Options of [`LmdbStore::open`](crate::LmdbStore::open). The data
/// directory itself is the first argument of `open`.
///
/// ```
/// use raftify_storage::LmdbOptions;
/// let opts = LmdbOptions::new().map_size(64 << 20).no_sync(true);
/// assert!(opts.no_sync);
/// ```
#[derive(Debug, Clone)]
pub struct LmdbOptions {
    /// Initial size of LMDB's memory map (the largest the file may grow
    /// before the store has to grow the map). Default 1 GiB. It is virtual
    /// address space, not disk: the file only grows as data is written.
    /// Rounded up to a multiple of 64 KiB.
    pub map_size: usize,
    /// Upper bound for automatic map growth. When a write finds the map full
    /// (`MDB_MAP_FULL`) the store doubles the map, up to this size, and
    /// retries the write; past it the write fails with
    /// [`StorageError::Backend`](raftify_core::StorageError::Backend).
    /// Default 1 TiB.
    pub max_map_size: usize,
    /// Opens LMDB with `MDB_NOSYNC`: commits are not fsynced. **This trades
    /// durability for speed**: a process crash loses nothing (the data is in
    /// the OS page cache), but an OS crash or power loss may lose the last
    /// writes, which for Raft means a node may forget votes and entries it
    /// acknowledged. Only for tests, benchmarks, or clusters that accept
    /// that. Default false.
    pub no_sync: bool,
    /// When set, [`LogStore::compact`](raftify_core::LogStore::compact) first
    /// writes the entries it removes to a file in this directory
    /// (`compacted-<first>-<last>.wal`, see [`crate::read_archive_file`]),
    /// durably, before deleting them.
    pub archive_compacted: Option<PathBuf>,
    /// Write each raft write to an append-only journal in `<dir>/wal/` with
    /// one `fdatasync`, and move the journal into LMDB in the background,
    /// in large transactions (every 200 ms, or when half a segment is
    /// pending). Off, every write is an LMDB commit: two syncs (data pages,
    /// then the meta page). Both keep every acknowledged write through a
    /// power loss; see `docs/STORAGE.md`. With [`LmdbOptions::no_sync`] the
    /// journal is written without syncs: one `pwrite` per raft write
    /// instead of an LMDB commit's page writes, and the newest entries are
    /// read from memory. After an OS crash or power loss such a journal may
    /// have lost pages out of order; the store then refuses to open
    /// (`Corrupted`) rather than resume with a hole in its log. Default
    /// true.
    pub journal: bool,
    /// Size of one journal segment file (zero-filled when created, reused
    /// once checkpointed; a store keeps two or three). Rounded up to 4 KiB,
    /// between 8 KiB and 1 GiB. Default 16 MiB.
    pub journal_segment_size: usize,
    /// How long [`LmdbStore::open`](crate::LmdbStore::open) keeps trying
    /// when the directory's `raftify.lock` is held, before it fails with
    /// [`LmdbError::Locked`](crate::LmdbError::Locked) (bbolt's `Timeout`).
    /// A lock outlives its store briefly when another thread of the process
    /// starts a child process at that moment: the child holds a copy of
    /// the lock's descriptor until it `exec`s. Default 1 s; zero tries once.
    pub lock_wait: Duration,
}

impl Default for LmdbOptions {
    fn default() -> Self {
        LmdbOptions {
            map_size: 1 << 30,
            max_map_size: 1 << 40,
            no_sync: false,
            archive_compacted: None,
            journal: true,
            journal_segment_size: 16 << 20,
            lock_wait: Duration::from_secs(1),
        }
    }
}

impl LmdbOptions {
    /// The defaults: 1 GiB map, growth up to 1 TiB, fsync on (through the
    /// journal), no archiving.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`LmdbOptions::map_size`].
    pub fn map_size(mut self, bytes: usize) -> Self {
        self.map_size = bytes;
        self
    }

    /// Sets [`LmdbOptions::max_map_size`].
    pub fn max_map_size(mut self, bytes: usize) -> Self {
        self.max_map_size = bytes;
        self
    }

    /// Sets [`LmdbOptions::no_sync`] (see its durability caveat).
    pub fn no_sync(mut self, no_sync: bool) -> Self {
        self.no_sync = no_sync;
        self
    }

    /// Sets [`LmdbOptions::journal`].
    pub fn journal(mut self, on: bool) -> Self {
        self.journal = on;
        self
    }

    /// Sets [`LmdbOptions::journal_segment_size`].
    pub fn journal_segment_size(mut self, bytes: usize) -> Self {
        self.journal_segment_size = bytes;
        self
    }

    /// Sets [`LmdbOptions::lock_wait`].
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Sets [`LmdbOptions::archive_compacted`].
    pub fn archive_compacted(mut self, dir: impl Into<PathBuf>) -> Self {
        self.archive_compacted = Some(dir.into());
        self
    }
}

/// Rounds a map size up to a multiple of [`MAP_ALIGN`] (at least one).
pub(super) fn align_up(n: usize) -> usize {
    n.div_ceil(MAP_ALIGN)
        .saturating_mul(MAP_ALIGN)
        .max(MAP_ALIGN)
}

//! Durable storage for raftify nodes: [`LmdbStore`], a
//! [`raftify_core::LogStore`] on LMDB (through the `heed` crate).
//!
//! # Example
//!
//! ```
//! use raftify_core::raft::eraftpb::{Entry, HardState};
//! use raftify_core::{LogStore, WriteBatch};
//! use raftify_storage::{LmdbOptions, LmdbStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let opts = LmdbOptions::new().map_size(16 << 20);
//! {
//!     let store = LmdbStore::open(dir.path(), opts.clone())?;
//!     let mut entry = Entry::default();
//!     entry.index = 1;
//!     entry.term = 1;
//!     entry.data = b"hello".to_vec().into();
//!     let mut hs = HardState::default();
//!     hs.term = 1;
//!     hs.commit = 1;
//!     // One raft Ready = one LMDB transaction = one fsync.
//!     store.write(WriteBatch { entries: vec![entry], hard_state: Some(hs), snapshot: None })?;
//! }
//! // After a restart (or a crash) the state is exactly the last commit.
//! let store = LmdbStore::open(dir.path(), opts)?;
//! assert_eq!(store.last_index()?, 1);
//! assert_eq!(store.initial_state()?.hard_state.commit, 1);
//! assert_eq!(&store.entries(1, 2, None)?[0].data[..], b"hello");
//! # Ok(()) }
//! ```
//!
//! # On-disk layout
//!
//! A store directory holds:
//!
//! * `data.mdb`, `lock.mdb` — the LMDB environment, with two named databases:
//!   * `entries`: key = the entry index as 8 big-endian bytes (so LMDB's
//!     byte order is index order), value = `crc32 ++ eraftpb.Entry`.
//!   * `meta`: `format_version` (u32), `hard_state` (`eraftpb.HardState`),
//!     `snapshot_meta` (`eraftpb.SnapshotMetadata`, including the conf
//!     state), `snapshot_file` (name of the current snapshot file),
//!     `snapshot_seq`, `offset` (index and term of the last compacted entry:
//!     the log holds `offset + 1 ..= last`), `identity` (node id + cluster
//!     id). Every value carries a CRC-32, since LMDB does not checksum pages.
//! * `snap/<seq>-<index>-<term>.snap` — the current snapshot, with its data
//!   (format: see [`write_snapshot_file`]).
//! * `raftify.lock` — the exclusive writer lock (`flock`), holding the pid.
//! * `wal/<id>.jnl` — the journal's segments (with fsync on, see
//!   [Durability](#durability)).
//!
//! # Many groups in one environment
//!
//! [`LmdbEnv`] keeps the logs of many Raft groups (a sharded node's
//! replicas) in one directory: one LMDB environment whose `group_entries`
//! database keys entries by group then index and whose `group_meta`
//! database keys records `<group>/<name>` (`meta` keeps the environment's
//! format version and journal position), one journal in `wal/` whose
//! records name their group, one checkpoint thread, and
//! `groups/<id>/snap/` for each group's snapshot files.
//! [`LmdbEnv::group`] gives a group's [`LmdbStore`]; concurrent appends of
//! different groups are written and synced together (one `fdatasync`),
//! and one checkpoint moves every group's journaled writes into LMDB.
//!
//! # Why snapshot data lives in files, not in LMDB
//!
//! Snapshots are whole state machines: potentially far larger than the log.
//! In LMDB they would need large runs of contiguous free pages on every
//! replacement (fragmenting the map and growing the file), would be copied
//! by every WAL copy, and would be read through the map by every
//! `snapshot()` call. As a file they are written sequentially, fsynced once,
//! and can be shipped or restored on their own. Atomicity with the log is
//! kept by ordering: the new file is written to a temporary name, fsynced,
//! renamed to a name never used before (a sequence number is part of it) and
//! the directory fsynced; only then does the LMDB transaction that points
//! `snapshot_file` at it (and installs the snapshot into the log) commit.
//! The previous file is deleted only after that commit is durable. A crash
//! at any point leaves the old, fully valid state; orphaned files are
//! removed on the next open.
//!
//! # Durability
//!
//! [`LogStore::write`](raftify_core::LogStore::write) makes a whole
//! [`WriteBatch`](raftify_core::WriteBatch) (snapshot install, truncation
//! of a conflicting suffix, appended entries, hard state) durable as one
//! unit (group commit): when it returns `Ok`, all of it survives a process
//! or machine crash; when validation fails, none of it was applied.
//!
//! With fsync on, an append is one record of an append-only journal
//! (`wal/`) and **one `fdatasync`**; a background thread moves the journal
//! into LMDB in large transactions ("checkpoints", LMDB's two syncs shared
//! by every write since the last one), and every open applies what the
//! journal holds beyond LMDB. Reads see journaled writes at once.
//! Snapshot installs, compaction and own snapshots go to LMDB directly
//! (after a checkpoint). [`LmdbOptions::journal`]`(false)` makes every
//! write an LMDB commit instead. With [`LmdbOptions::no_sync`] nothing is
//! fsynced: writes survive a process crash but not an OS crash or power
//! loss. `docs/STORAGE.md` gives the formats and why they are safe.
//!
//! When a write finds the map full, the store doubles the map (up to
//! [`LmdbOptions::max_map_size`]) and retries the transaction.
//!
//! # Bad input
//!
//! Nothing read from disk is trusted: truncated or overwritten files,
//! records with bad checksums or that do not decode, gaps in the log,
//! foreign directories and directories locked by another process all come
//! back as errors ([`LmdbError`] from the `open`/restore functions,
//! [`raftify_core::StorageError`] from the
//! [`LogStore`](raftify_core::LogStore) methods) naming the directory.
//! One limit: LMDB trusts its own B-tree pages; damage there that leaves
//! the meta pages intact can still crash the process inside LMDB.

#![deny(missing_docs)]

mod codec;
mod error;
mod files;
mod journal;
mod restore;
mod snapshot_file;
mod store;

pub use error::LmdbError;
pub use files::{read_archive_file, sync_dir, write_durable};
pub use restore::{restore_wal_from, restore_wal_snapshot_from};
pub use snapshot_file::{
    check_snapshot_file, encode_snapshot_file, read_snapshot_file, stored_snapshot_file,
    write_snapshot_file,
};
pub use store::{JournalStats, LmdbEnv, LmdbOptions, LmdbStore, FORMAT_VERSION};

//! [`LmdbStore`]: the durable [`LogStore`](raftify_core::LogStore).
//!
//! The store is one struct whose methods are split by concern:
//!
//! * `options.rs`: [`LmdbOptions`] and map-size rounding;
//! * `open.rs`: opening or creating a store, validating it, the writer lock;
//! * `txn.rs`: read and write transactions, map growth, error conversion;
//! * `meta.rs`: the records of the `meta` database;
//! * `entries.rs`: the records of the `entries` database (the log);
//! * `snapshot_files.rs`: the snapshot files in `snap/`;
//! * `log_store.rs`: the `LogStore` implementation on top of those;
//! * `copy.rs`: copying a store's state into another one (for restores);
//! * `tail.rs`: journaled writes not yet in LMDB, and the log they show;
//! * `checkpoint.rs`: the journal path of a store with fsync on, and the
//!   checkpoints that move it into LMDB;
//! * `keys.rs`: the keys of a store's records, alone in its environment or
//!   one group's in a shared one;
//! * `env.rs`: [`LmdbEnv`], one environment and journal for many groups.

use heed::types::{Bytes, Str};
use heed::{Database, Env, WithoutTls};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

mod checkpoint;
mod copy;
mod entries;
mod env;
mod keys;
mod log_store;
mod meta;
mod open;
mod options;
mod snapshot_files;
mod tail;
mod txn;

#[cfg(test)]
mod tests;

pub use checkpoint::JournalStats;
pub use env::LmdbEnv;
pub use options::LmdbOptions;

/// On-disk format version written into new stores and checked on open.
pub const FORMAT_VERSION: u32 = 1;

/// Name of the LMDB database holding the log entries.
const ENTRIES_DB: &str = "entries";
/// Name of the LMDB database holding the metadata records.
const META_DB: &str = "meta";
/// The log entries of the groups of a shared environment ([`LmdbEnv`]),
/// keyed by group then index.
const GROUP_ENTRIES_DB: &str = "group_entries";
/// The metadata records of the groups of a shared environment, keyed
/// `<group>/<record>`.
const GROUP_META_DB: &str = "group_meta";
/// Name of the exclusive lock file in a store directory.
pub(crate) const LOCK_FILE: &str = "raftify.lock";
/// Folder (inside the store directory) holding snapshot files.
pub(crate) const SNAP_DIR: &str = "snap";
/// LMDB's data file.
pub(crate) const DATA_FILE: &str = "data.mdb";
/// LMDB's lock file.
const LMDB_LOCK_FILE: &str = "lock.mdb";

/// Keys: the index as 8 big-endian bytes, after the group's 8 in a shared
/// environment (see `keys.rs`).
pub(crate) type EntriesDb = Database<Bytes, Bytes>;
pub(crate) type MetaDb = Database<Str, Bytes>;

/// A durable [`LogStore`](raftify_core::LogStore) on LMDB. See the
/// [crate docs](crate) for the on-disk layout and durability guarantees.
///
/// All methods take `&self`; share the store through an `Arc`. Writes are
/// serialized internally; reads run concurrently with writes (LMDB MVCC).
pub struct LmdbStore {
    pub(crate) dir: PathBuf,
    /// The environment's directory (LMDB's files, the journal): `dir`
    /// itself unless the store is a group of a shared environment.
    pub(crate) env_dir: PathBuf,
    /// Whether the environment is shared ([`LmdbEnv`]): its journal
    /// records name their group.
    pub(crate) shared: bool,
    pub(crate) env: Env<WithoutTls>,
    pub(crate) entries_db: EntriesDb,
    pub(crate) meta_db: MetaDb,
    /// The environment's own records (format version, journal position):
    /// `meta_db` itself for a store alone in its environment.
    pub(crate) root_meta_db: MetaDb,
    /// The group whose log this is, in a shared environment ([`LmdbEnv`]);
    /// `None` for a store alone in its environment.
    pub(crate) scope: Option<u64>,
    /// A group store keeps its environment (and its checkpoint thread)
    /// open, and marks the group open while it lives.
    lease: Option<Arc<env::GroupLease>>,
    /// Every transaction holds this shared; resizing the map holds it
    /// exclusively, as LMDB requires that no transaction be active then.
    gate: Arc<RwLock<()>>,
    /// Serializes writers (LMDB would too) so snapshot files and the
    /// transaction that references them are created in one critical section.
    write_lock: Arc<Mutex<()>>,
    /// Serializes this store's journal appends (each is checked against
    /// the log the previous one left).
    appends: Arc<Mutex<()>>,
    /// Bumped after every committed write transaction.
    generation: Arc<AtomicU64>,
    /// `first_index` as of a generation: raft-rs asks for it on every Ready
    /// check, and each answer would otherwise be a read transaction that
    /// decodes the metadata. Not used by read-only handles (another
    /// process writes).
    first_index_cache: Arc<Mutex<Option<(u64, u64)>>>,
    opts: LmdbOptions,
    read_only: bool,
    /// The journal, on a store opened for writing with fsync on
    /// ([`LmdbOptions::journal`]).
    wal: Option<Arc<checkpoint::Wal>>,
    /// A read-only handle's copy of the journal's records.
    read_only_tail: Option<Arc<checkpoint::ReadOnlyTail>>,
    /// The checkpoint thread (on the handle `open` returned, not on the
    /// thread's own handle).
    checkpointer: Option<JoinHandle<()>>,
    /// The exclusive lock on `raftify.lock`, held while the store is open
    /// for writing; released when the file is closed (or the process dies).
    _lock: Option<Arc<File>>,
}

impl Drop for LmdbStore {
    fn drop(&mut self) {
        // The thread ends; its handle (and its clone of the environment)
        // is gone before this one's. What is still only in the journal is
        // applied by the next open.
        if let (Some(thread), Some(wal)) = (self.checkpointer.take(), &self.wal) {
            wal.stop(thread);
        }
    }
}

impl std::fmt::Debug for LmdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbStore")
            .field("dir", &self.dir)
            .field("group", &self.scope)
            .field("read_only", &self.read_only)
            .field("opts", &self.opts)
            .finish()
    }
}

impl LmdbStore {
    /// Another handle on the same environment, journal and locks, for the
    /// checkpoint thread.
    fn handle(&self) -> LmdbStore {
        LmdbStore {
            dir: self.dir.clone(),
            env_dir: self.env_dir.clone(),
            shared: self.shared,
            env: self.env.clone(),
            entries_db: self.entries_db,
            meta_db: self.meta_db,
            root_meta_db: self.root_meta_db,
            scope: self.scope,
            lease: None,
            gate: self.gate.clone(),
            write_lock: self.write_lock.clone(),
            appends: self.appends.clone(),
            generation: self.generation.clone(),
            first_index_cache: self.first_index_cache.clone(),
            opts: self.opts.clone(),
            read_only: self.read_only,
            wal: self.wal.clone(),
            read_only_tail: self.read_only_tail.clone(),
            checkpointer: None,
            _lock: self._lock.clone(),
        }
    }

    /// A handle on `group`'s records in this (shared) environment, for
    /// the journal's recovery and checkpoints: the environment's locks,
    /// the group's keys.
    fn scoped(&self, group: u64) -> LmdbStore {
        let mut h = self.handle();
        h.dir = env::group_dir(&self.env_dir, group);
        h.scope = Some(group);
        h.appends = Arc::new(Mutex::new(()));
        h.first_index_cache = Arc::new(Mutex::new(None));
        h
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the store was opened with [`LmdbStore::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &LmdbOptions {
        &self.opts
    }

    /// The current size of the memory map (grows on `MDB_MAP_FULL`).
    pub fn map_size(&self) -> usize {
        let _g = self.gate_read();
        self.env.info().map_size
    }
}

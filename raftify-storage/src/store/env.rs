//! [`LmdbEnv`]: one LMDB environment and one journal for the logs of many
//! Raft groups, e.g. the replicas a sharded node hosts.
//!
//! A directory of its own per group would give every group its LMDB
//! files, a journal of two or three zero-filled segments, a checkpoint
//! thread and four file descriptors, and every group's write its own
//! `fdatasync`. In a shared environment the groups' records are keyed by
//! group in two databases (see `keys.rs`), their writes go through one
//! journal, committed together (one `fdatasync` for every write waiting at
//! that moment, whatever its group), and one checkpoint moves every
//! group's journaled writes into LMDB in one transaction.
//!
//! Layout of the directory: LMDB's `data.mdb`/`lock.mdb`, `raftify.lock`,
//! the journal in `wal/`, and `groups/<id>/snap/` for each group's
//! snapshot files (which stay files, as for a store of its own).

use super::{LmdbOptions, LmdbStore, SNAP_DIR};
use crate::error::LmdbError;
use raftify_core::storage::StorageResult;
use raftify_core::StorageError;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Folder of the groups' snapshot folders.
pub(crate) const GROUPS_DIR: &str = "groups";

/// Where `group`'s snapshot files live in the environment in `env_dir`.
pub(crate) fn group_dir(env_dir: &Path, group: u64) -> PathBuf {
    env_dir.join(GROUPS_DIR).join(group.to_string())
}

/// One LMDB environment, journal and checkpoint thread shared by the logs
/// of many groups; [`LmdbEnv::group`] gives each group's
/// [`LogStore`](raftify_core::LogStore).
///
/// ```
/// use raftify_core::raft::eraftpb::Entry;
/// use raftify_core::{LogStore, WriteBatch};
/// use raftify_storage::{LmdbEnv, LmdbOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let env = LmdbEnv::open(dir.path(), LmdbOptions::new().map_size(16 << 20))?;
/// let (a, b) = (env.group(1)?, env.group(2)?);
/// let mut e = Entry::default();
/// (e.index, e.term) = (1, 1);
/// a.write(WriteBatch { entries: vec![e], ..Default::default() })?;
/// assert_eq!((a.last_index()?, b.last_index()?), (1, 0));
/// # Ok(()) }
/// ```
pub struct LmdbEnv {
    /// The environment's own store: its lock, journal and checkpoints.
    root: LmdbStore,
    /// The groups with a store open now (or being deleted).
    open: Mutex<BTreeSet<u64>>,
}

impl std::fmt::Debug for LmdbEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbEnv")
            .field("dir", &self.root.dir)
            .finish()
    }
}

/// A group's claim on the environment while its store is open: keeps the
/// environment open, and the group from being opened twice.
pub(crate) struct GroupLease {
    env: Arc<LmdbEnv>,
    group: u64,
}

impl Drop for GroupLease {
    fn drop(&mut self) {
        self.env.open_groups().remove(&self.group);
    }
}

impl LmdbEnv {
    /// Opens (creating it if needed) the shared environment in `dir`, with
    /// the options every group's store then has (fsync, journal, map
    /// size). Journaled writes of an earlier run are moved into LMDB first.
    /// Locked like a store ([`LmdbStore::open`]); a store's directory is
    /// not an environment and the other way round
    /// ([`LmdbError::NotAStore`]).
    pub fn open(dir: impl AsRef<Path>, opts: LmdbOptions) -> Result<Arc<Self>, LmdbError> {
        let root = LmdbStore::open_shared_root(dir.as_ref(), opts)?;
        let env = Arc::new(LmdbEnv {
            root,
            open: Mutex::new(BTreeSet::new()),
        });
        env.remove_leftover_folders()?;
        Ok(env)
    }

    /// Removes the folders of groups that store nothing: left by a
    /// deletion cut short between its transaction and the folder's
    /// removal, or by a group created and never written.
    fn remove_leftover_folders(&self) -> Result<(), LmdbError> {
        let groups = self.dir().join(GROUPS_DIR);
        let entries = match fs::read_dir(&groups) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(LmdbError::io("list directory", &groups, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(group) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if !self.holds(group)? {
                let dir = entry.path();
                fs::remove_dir_all(&dir).map_err(|e| LmdbError::io("remove directory", &dir, e))?;
            }
        }
        Ok(())
    }

    /// The environment's directory.
    pub fn dir(&self) -> &Path {
        &self.root.dir
    }

    /// Where `group`'s snapshot files are kept (`groups/<group>`; also
    /// the place for whatever else a front-end keeps per group).
    pub fn group_dir(&self, group: u64) -> PathBuf {
        group_dir(self.dir(), group)
    }

    fn open_groups(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `group`'s store, created empty if the environment has none: a
    /// [`LogStore`](raftify_core::LogStore) like [`LmdbStore::open`]'s,
    /// whose appends share the environment's journal and syncs. A group's
    /// store is open once at a time ([`LmdbError::Locked`] while another
    /// is open); dropping it closes it.
    pub fn group(self: &Arc<Self>, group: u64) -> Result<LmdbStore, LmdbError> {
        let dir = group_dir(self.dir(), group);
        if !self.open_groups().insert(group) {
            return Err(LmdbError::Locked {
                path: dir,
                detail: format!("group {group}'s store is already open in this process"),
            });
        }
        let lease = Arc::new(GroupLease {
            env: self.clone(),
            group,
        });
        fs::create_dir_all(dir.join(SNAP_DIR))
            .map_err(|e| LmdbError::io("create directory", &dir, e))?;
        let mut store = self.root.scoped(group);
        store.lease = Some(lease);
        store.validate()?;
        store.remove_orphan_snapshots();
        Ok(store)
    }

    /// Whether `group` has anything stored (a log, a snapshot or a hard
    /// state), journaled writes included.
    pub fn holds(&self, group: u64) -> Result<bool, LmdbError> {
        let store = self.root.scoped(group);
        if !store.tail_records().is_empty() {
            return Ok(true);
        }
        store
            .read(|txn| store.holds_records(txn))
            .map_err(|e| self.store_error(e))
    }

    /// Deletes everything `group` has stored (its log, records and
    /// snapshot files), once its store is closed: waits for that up to
    /// [`LmdbOptions::lock_wait`], then fails with [`LmdbError::Locked`].
    pub fn delete_group(&self, group: u64) -> Result<(), LmdbError> {
        let dir = group_dir(self.dir(), group);
        let deadline =
            raftify_core::retry::deadline_after(self.root.options().lock_wait).into_std();
        while !self.open_groups().insert(group) {
            if Instant::now() >= deadline {
                return Err(LmdbError::Locked {
                    path: dir,
                    detail: format!("group {group}'s store is open"),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let deleted = self.delete_closed(group, &dir);
        self.open_groups().remove(&group);
        deleted
    }

    fn delete_closed(&self, group: u64, dir: &Path) -> Result<(), LmdbError> {
        // Its journaled writes first: a later recovery must find none of
        // them after the environment's journal position.
        self.root.checkpoint().map_err(|e| self.store_error(e))?;
        let store = self.root.scoped(group);
        {
            let _w = store.lock_writer();
            store
                .write_txn(|wtxn| {
                    store.clear_log(wtxn)?;
                    store.delete_own_records(wtxn)
                })
                .map_err(|e| self.store_error(e))?;
        }
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LmdbError::io("remove directory", dir, e))
            }
            _ => Ok(()),
        }
    }

    /// What the shared journal has written since the environment was
    /// opened (none with the journal off).
    pub fn journal_stats(&self) -> super::JournalStats {
        self.root
            .wal
            .as_ref()
            .map(|w| w.stats())
            .unwrap_or_default()
    }

    /// Moves every group's journaled writes into LMDB now (done in the
    /// background anyway).
    pub fn checkpoint(&self) -> Result<(), LmdbError> {
        self.root.checkpoint().map_err(|e| self.store_error(e))
    }

    fn store_error(&self, e: StorageError) -> LmdbError {
        LmdbError::Store {
            path: self.dir().to_path_buf(),
            source: e,
        }
    }
}

impl LmdbStore {
    /// The group of a shared environment this store is (`None`: a store
    /// of its own, [`LmdbStore::open`]).
    pub fn group(&self) -> Option<u64> {
        self.scope
    }

    /// Whether the store's entries or own records hold anything.
    pub(super) fn holds_records(&self, txn: &heed::RoTxn) -> StorageResult<bool> {
        if self.first_stored(txn)?.is_some() {
            return Ok(true);
        }
        let meta = self.read_meta(txn)?;
        Ok(meta.offset > 0
            || meta.snap_file.is_some()
            || meta.hard_state != Default::default()
            || self.read_identity(txn)?.is_some())
    }
}

// The stores of a shared environment are used from many threads.
const _: fn() = || {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<LmdbEnv>();
    is_send_sync::<LmdbStore>();
};

//! Transactions: running reads and writes, growing the map when a write
//! finds it full, the locks around them, and turning heed errors into
//! [`StorageError`]s.

use super::options::{align_up, MAP_ALIGN};
use super::LmdbStore;
use crate::error::LmdbError;
use heed::{MdbError, RoTxn, RwTxn};
use raftify_core::storage::StorageResult;
use raftify_core::StorageError;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// What made a write transaction fail: a full map (grow and retry) or a
/// real error.
pub(crate) enum Fail {
    MapFull,
    Store(StorageError),
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Store(e)
    }
}

impl LmdbStore {
    // ----- error helpers -------------------------------------------------

    /// A [`StorageError::Corrupted`] naming the store's data file.
    pub(crate) fn corrupt(&self, what: impl std::fmt::Display) -> StorageError {
        StorageError::corrupted(
            what.to_string(),
            self.dir.join("data.mdb").display().to_string(),
        )
    }

    /// Converts a heed error from trying to `op`: damage LMDB detects is
    /// [`StorageError::Corrupted`], the rest [`StorageError::Backend`].
    pub(crate) fn heed_err(&self, op: &str, e: heed::Error) -> StorageError {
        match e {
            heed::Error::Mdb(MdbError::Corrupted)
            | heed::Error::Mdb(MdbError::PageNotFound)
            | heed::Error::Mdb(MdbError::Incompatible) => {
                self.corrupt(format!("LMDB reports damage while trying to {op}: {e}"))
            }
            // LMDB reports a short write as EIO: a full disk shows as an
            // I/O error unless the free space is looked at.
            e if is_enospc(&e) || (is_eio(&e) && disk_full(&self.dir)) => {
                StorageError::backend(LmdbError::Lmdb {
                    op: format!("{op}: {}", no_space(&self.dir)),
                    path: self.dir.clone(),
                    source: e,
                })
            }
            e => StorageError::backend(LmdbError::Lmdb {
                op: op.to_string(),
                path: self.dir.clone(),
                source: e,
            }),
        }
    }

    /// Like [`LmdbStore::heed_err`], inside a write transaction: a full map
    /// is [`Fail::MapFull`] so [`LmdbStore::write_txn`] grows it and retries.
    pub(crate) fn fail(&self, op: &str, e: heed::Error) -> Fail {
        match e {
            heed::Error::Mdb(MdbError::MapFull) => Fail::MapFull,
            e => Fail::Store(self.heed_err(op, e)),
        }
    }

    pub(super) fn lmdb_to_storage(&self, e: LmdbError) -> StorageError {
        // LmdbError messages already name the file or directory.
        StorageError::from(e)
    }

    // ----- transactions --------------------------------------------------

    pub(super) fn gate_read(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    fn gate_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn first_index_cache(&self) -> MutexGuard<'_, Option<(u64, u64)>> {
        self.first_index_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails with [`StorageError::Invalid`] on a read-only handle.
    pub(super) fn ensure_writable(&self) -> StorageResult<()> {
        if self.read_only {
            return Err(StorageError::Invalid(format!(
                "LMDB store {} is opened read-only",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Runs `f` in a read transaction. Adopts a map grown by another process
    /// (`MDB_MAP_RESIZED`, only possible for read-only handles).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&RoTxn) -> StorageResult<T>) -> StorageResult<T> {
        let mut attempts = 0;
        loop {
            let gate = self.gate_read();
            match self.env.read_txn() {
                Ok(txn) => return f(&txn),
                Err(heed::Error::Mdb(MdbError::MapResized)) if attempts < 3 => {
                    attempts += 1;
                    drop(gate);
                    let _g = self.gate_write();
                    // SAFETY: the exclusive gate guarantees no transaction of
                    // this process is active; 0 adopts the size in the file.
                    unsafe { self.env.resize(0) }
                        .map_err(|e| self.heed_err("adopt the grown map size", e))?;
                }
                Err(e) => return Err(self.heed_err("begin a read transaction", e)),
            }
        }
    }

    /// Runs `f` in one write transaction and commits it durably. On
    /// `MDB_MAP_FULL` (from `f` or the commit) the transaction is aborted,
    /// the map doubled and `f` run again in a fresh transaction.
    pub(crate) fn write_txn<T>(
        &self,
        f: impl FnMut(&mut RwTxn) -> Result<T, Fail>,
    ) -> StorageResult<T> {
        let v = self.write_txn_deferred(f)?;
        self.sync_meta()?;
        Ok(v)
    }

    /// Makes the last commit's meta page durable (a no-op unless commits
    /// defer it: see [`LmdbStore::defers_meta_sync`]).
    pub(crate) fn sync_meta(&self) -> StorageResult<()> {
        if !self.defers_meta_sync() {
            return Ok(());
        }
        let _gate = self.gate_read();
        self.env
            .force_sync()
            .map_err(|e| self.heed_err("sync the data file", e))
    }

    /// Whether a commit syncs its data pages but leaves its meta page to
    /// the next commit's sync (or [`LmdbStore::sync_meta`]): LMDB's
    /// `MDB_NOMETASYNC`, on every store opened for writing with syncs on.
    /// Such a commit survives a process crash at once, and a power loss
    /// once the next sync returns; before that, a power loss undoes it
    /// whole (LMDB keeps the previous meta page and the pages it points
    /// to).
    pub(crate) fn defers_meta_sync(&self) -> bool {
        !self.read_only && !self.opts.no_sync
    }

    /// [`LmdbStore::write_txn`] without syncing the meta page: durable once
    /// the next commit or [`LmdbStore::sync_meta`] returns.
    pub(crate) fn write_txn_deferred<T>(
        &self,
        mut f: impl FnMut(&mut RwTxn) -> Result<T, Fail>,
    ) -> StorageResult<T> {
        self.ensure_writable()?;
        loop {
            let gate = self.gate_read();
            let mut wtxn = self
                .env
                .write_txn()
                .map_err(|e| self.heed_err("begin a write transaction", e))?;
            let result = match f(&mut wtxn) {
                Ok(v) => wtxn
                    .commit()
                    .map(|()| v)
                    .map_err(|e| self.fail("commit", e)),
                Err(e) => {
                    wtxn.abort();
                    Err(e)
                }
            };
            drop(gate);
            match result {
                Ok(v) => {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    return Ok(v);
                }
                Err(Fail::Store(e)) => return Err(e),
                Err(Fail::MapFull) => self.grow()?,
            }
        }
    }

    /// Doubles the map, up to `max_map_size`; fails once it is reached.
    fn grow(&self) -> StorageResult<()> {
        let _g = self.gate_write();
        let current = self.env.info().map_size;
        let cap = self.opts.max_map_size / MAP_ALIGN * MAP_ALIGN;
        if current >= cap {
            return Err(StorageError::backend(LmdbError::Lmdb {
                op: format!(
                    "grow the map beyond {current} bytes (max_map_size is {})",
                    self.opts.max_map_size
                ),
                path: self.dir.clone(),
                source: heed::Error::Mdb(MdbError::MapFull),
            }));
        }
        let new = align_up(current.saturating_mul(2)).min(cap);
        // SAFETY: the exclusive gate guarantees no transaction of this
        // process is active, which is what mdb_env_set_mapsize requires.
        unsafe { self.env.resize(new) }.map_err(|e| self.heed_err("grow the map", e))
    }
}

/// What a write that found the disk full says.
pub(crate) fn no_space(dir: &std::path::Path) -> String {
    format!(
        "no space left on device (the file system of {} is full; free space or grow the \
         volume, then restart the node)",
        dir.display()
    )
}

/// Whether a file write's error means the disk is full: `ENOSPC`, or
/// `EIO` with no space left (see [`disk_full`]).
pub(crate) fn io_disk_full(e: &std::io::Error, dir: &std::path::Path) -> bool {
    e.raw_os_error() == Some(28) || (e.raw_os_error() == Some(5) && disk_full(dir))
}

/// Whether `e` is `EIO`.
fn is_eio(e: &heed::Error) -> bool {
    match e {
        heed::Error::Io(io) => io.raw_os_error() == Some(5),
        heed::Error::Mdb(MdbError::Other(5)) => true,
        _ => false,
    }
}

/// Whether the file system holding `dir` has (nearly) no space left for
/// unprivileged writers: less than one LMDB page.
pub(crate) fn disk_full(dir: &std::path::Path) -> bool {
    match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize) < 4096,
        Err(_) => false,
    }
}

/// Whether `e` is `ENOSPC` (no space left on the device).
fn is_enospc(e: &heed::Error) -> bool {
    match e {
        heed::Error::Io(io) => io.raw_os_error() == Some(28),
        heed::Error::Mdb(MdbError::Other(28)) => true,
        _ => false,
    }
}

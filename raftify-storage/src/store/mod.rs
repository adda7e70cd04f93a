//! [`LmdbStore`]: the durable [`LogStore`].

use crate::codec::{be_u64, decode_framed, encode_msg, frame, unframe};
use crate::error::LmdbError;
use crate::files::{
    decode_snapshot_file, encode_archive, encode_snapshot_file, remove_tmp_files, sync_dir,
    write_durable,
};
use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, EnvFlags, EnvOpenOptions, MdbError, PutFlags, RoTxn, RwTxn, WithoutTls};
use raftify_core::raft::eraftpb::{Entry, HardState, Snapshot, SnapshotMetadata};
use raftify_core::raft::RaftState;
use raftify_core::storage::{check_append, StorageResult, StoreIdentity};
use raftify_core::{LogStore, StorageError, WriteBatch};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// On-disk format version written into new stores and checked on open.
pub const FORMAT_VERSION: u32 = 1;

/// Name of the LMDB database holding the log entries.
const ENTRIES_DB: &str = "entries";
/// Name of the LMDB database holding the metadata records.
const META_DB: &str = "meta";
/// Name of the exclusive lock file in a store directory.
pub(crate) const LOCK_FILE: &str = "raftify.lock";
/// Folder (inside the store directory) holding snapshot files.
pub(crate) const SNAP_DIR: &str = "snap";
/// LMDB's data file.
pub(crate) const DATA_FILE: &str = "data.mdb";
/// LMDB's lock file.
const LMDB_LOCK_FILE: &str = "lock.mdb";

const K_VERSION: &str = "format_version";
const K_HARD_STATE: &str = "hard_state";
const K_SNAP_META: &str = "snapshot_meta";
const K_SNAP_FILE: &str = "snapshot_file";
const K_SNAP_SEQ: &str = "snapshot_seq";
const K_OFFSET: &str = "offset";
const K_IDENTITY: &str = "identity";

/// Map sizes are kept multiples of this (a multiple of every page size LMDB
/// runs with: 4 KiB, 16 KiB, 64 KiB).
const MAP_ALIGN: usize = 64 * 1024;

/// Options of [`LmdbStore::open`]. The data directory itself is the first
/// argument of `open`.
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
    /// [`StorageError::Backend`]. Default 1 TiB.
    pub max_map_size: usize,
    /// Opens LMDB with `MDB_NOSYNC`: commits are not fsynced. **This trades
    /// durability for speed**: a process crash loses nothing (the data is in
    /// the OS page cache), but an OS crash or power loss may lose the last
    /// writes, which for Raft means a node may forget votes and entries it
    /// acknowledged. Only for tests, benchmarks, or clusters that accept
    /// that. Default false.
    pub no_sync: bool,
    /// When set, [`LogStore::compact`] first writes the entries it removes to
    /// a file in this directory (`compacted-<first>-<last>.wal`, see
    /// [`crate::read_archive_file`]), durably, before deleting them.
    pub archive_compacted: Option<PathBuf>,
}

impl Default for LmdbOptions {
    fn default() -> Self {
        LmdbOptions {
            map_size: 1 << 30,
            max_map_size: 1 << 40,
            no_sync: false,
            archive_compacted: None,
        }
    }
}

impl LmdbOptions {
    /// The defaults: 1 GiB map, growth up to 1 TiB, fsync on every commit,
    /// no archiving.
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

    /// Sets [`LmdbOptions::archive_compacted`].
    pub fn archive_compacted(mut self, dir: impl Into<PathBuf>) -> Self {
        self.archive_compacted = Some(dir.into());
        self
    }
}

fn align_up(n: usize) -> usize {
    n.div_ceil(MAP_ALIGN)
        .saturating_mul(MAP_ALIGN)
        .max(MAP_ALIGN)
}

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

/// The metadata records, decoded.
#[derive(Default, Clone)]
pub(crate) struct Meta {
    pub(crate) hard_state: HardState,
    pub(crate) snap_meta: SnapshotMetadata,
    pub(crate) snap_file: Option<String>,
    pub(crate) snap_seq: u64,
    /// Index of the last compacted entry (entries start right after it).
    pub(crate) offset: u64,
    /// Term of the entry at `offset`.
    pub(crate) offset_term: u64,
}

pub(crate) type EntriesDb = Database<U64<BigEndian>, Bytes>;
pub(crate) type MetaDb = Database<Str, Bytes>;

/// A durable [`LogStore`] on LMDB. See the [crate docs](crate) for the
/// on-disk layout and durability guarantees.
///
/// All methods take `&self`; share the store through an `Arc`. Writes are
/// serialized internally; reads run concurrently with writes (LMDB MVCC).
pub struct LmdbStore {
    pub(crate) dir: PathBuf,
    pub(crate) env: Env<WithoutTls>,
    pub(crate) entries_db: EntriesDb,
    pub(crate) meta_db: MetaDb,
    /// Every transaction holds this shared; resizing the map holds it
    /// exclusively, as LMDB requires that no transaction be active then.
    gate: RwLock<()>,
    /// Serializes writers (LMDB would too) so snapshot files and the
    /// transaction that references them are created in one critical section.
    write_lock: Mutex<()>,
    /// Bumped after every committed write transaction.
    generation: AtomicU64,
    /// `first_index` as of a generation: raft-rs asks for it on every Ready
    /// check, and each answer would otherwise be a read transaction that
    /// decodes the metadata. Not used by read-only handles (another
    /// process writes).
    first_index_cache: Mutex<Option<(u64, u64)>>,
    opts: LmdbOptions,
    read_only: bool,
    /// The exclusive lock on `raftify.lock`, held while the store is open
    /// for writing; released when the file is closed (or the process dies).
    _lock: Option<File>,
}

impl std::fmt::Debug for LmdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbStore")
            .field("dir", &self.dir)
            .field("read_only", &self.read_only)
            .field("opts", &self.opts)
            .finish()
    }
}

fn heed_open_error(dir: &Path, e: heed::Error) -> LmdbError {
    match e {
        heed::Error::Mdb(MdbError::Invalid) => LmdbError::corrupted(
            dir.join(DATA_FILE),
            "not a valid LMDB file (bad magic or meta pages: overwritten or truncated)",
        ),
        heed::Error::Mdb(MdbError::VersionMismatch) => LmdbError::corrupted(
            dir.join(DATA_FILE),
            "LMDB version mismatch (file written by an incompatible LMDB, or damaged)",
        ),
        heed::Error::Mdb(MdbError::Corrupted) | heed::Error::Mdb(MdbError::PageNotFound) => {
            LmdbError::corrupted(dir.join(DATA_FILE), format!("{e}"))
        }
        heed::Error::EnvAlreadyOpened => LmdbError::Locked {
            path: dir.to_path_buf(),
            detail: "the LMDB environment is already open in this process".into(),
        },
        other => LmdbError::Lmdb {
            op: "open the environment".into(),
            path: dir.to_path_buf(),
            source: other,
        },
    }
}

impl LmdbStore {
    /// Opens (creating it if needed) the store in `dir` for reading and
    /// writing.
    ///
    /// A missing or empty directory becomes a new store. An existing store is
    /// reopened with exactly the state of its last committed write (after a
    /// crash too: LMDB commits are atomic). The directory is locked
    /// exclusively (`raftify.lock`, an `flock`) until the store is dropped;
    /// a second writer, in this or another process, gets
    /// [`LmdbError::Locked`].
    ///
    /// Errors name the directory: [`LmdbError::NotAStore`] for a non-empty
    /// directory without a store, [`LmdbError::Corrupted`] for truncated or
    /// overwritten files and undecodable records,
    /// [`LmdbError::UnsupportedVersion`], [`LmdbError::Io`] and
    /// [`LmdbError::Lmdb`] otherwise.
    pub fn open(dir: impl AsRef<Path>, opts: LmdbOptions) -> Result<Self, LmdbError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| LmdbError::io("create directory", &dir, e))?;
        if !dir.is_dir() {
            return Err(LmdbError::NotAStore {
                path: dir,
                reason: "not a directory".into(),
            });
        }
        let data = dir.join(DATA_FILE);
        if !data.exists() {
            // Refuse to scatter LMDB files into some unrelated directory.
            let foreign: Vec<String> = fs::read_dir(&dir)
                .map_err(|e| LmdbError::io("list directory", &dir, e))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != LOCK_FILE && n != LMDB_LOCK_FILE && n != SNAP_DIR)
                .collect();
            if !foreign.is_empty() {
                return Err(LmdbError::NotAStore {
                    path: dir,
                    reason: format!(
                        "the directory is not empty ({}) and has no {DATA_FILE}",
                        foreign.join(", ")
                    ),
                });
            }
        }
        let lock = take_lock(&dir)?;
        Self::open_env(dir, opts, false, Some(lock))
    }

    /// Opens an existing store read-only, e.g. for a CLI inspecting the
    /// directory of a node that may be running.
    ///
    /// No lock is taken and nothing is written: LMDB readers never block the
    /// writer and always see a consistent committed state. Write methods
    /// return [`StorageError::Invalid`]. A missing directory or one without
    /// `data.mdb` is [`LmdbError::Missing`].
    ///
    /// heed allows one environment per path per process, so this fails with
    /// [`LmdbError::Locked`] if the same process already has the store open;
    /// use that handle instead.
    pub fn open_read_only(dir: impl AsRef<Path>, opts: LmdbOptions) -> Result<Self, LmdbError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(LmdbError::Missing {
                path: dir,
                what: "a raftify store directory".into(),
            });
        }
        if !dir.join(DATA_FILE).is_file() {
            return Err(LmdbError::Missing {
                path: dir.join(DATA_FILE),
                what: "the LMDB data file of a raftify store".into(),
            });
        }
        Self::open_env(dir, opts, true, None)
    }

    fn open_env(
        dir: PathBuf,
        opts: LmdbOptions,
        read_only: bool,
        lock: Option<File>,
    ) -> Result<Self, LmdbError> {
        let data = dir.join(DATA_FILE);
        // LMDB treats an empty data file as a new environment: a store
        // truncated to nothing would silently come back empty. Refuse.
        if let Ok(md) = fs::metadata(&data) {
            if md.len() < 2 * 4096 {
                return Err(LmdbError::corrupted(
                    &data,
                    format!(
                        "truncated: {} bytes, smaller than LMDB's two meta pages",
                        md.len()
                    ),
                ));
            }
        }
        let mut flags = EnvFlags::empty();
        if read_only {
            flags |= EnvFlags::READ_ONLY;
        }
        if opts.no_sync && !read_only {
            flags |= EnvFlags::NO_SYNC;
        }
        let mut eo = EnvOpenOptions::new().read_txn_without_tls();
        eo.map_size(align_up(opts.map_size)).max_dbs(4);
        // SAFETY: NO_SYNC only weakens durability (documented on
        // `LmdbOptions::no_sync`); the data file is only modified through
        // this environment: writers are excluded by `raftify.lock`, and heed
        // refuses a second environment on the same path in one process.
        let env = unsafe {
            eo.flags(flags);
            eo.open(&dir)
        }
        .map_err(|e| heed_open_error(&dir, e))?;

        // A data file shorter than its last committed page would make LMDB
        // read past the end of the mapping (SIGBUS); catch it here.
        let info = env.info();
        let page = env.stat().page_size as u64;
        let need = (info.last_page_number as u64 + 1) * page;
        let have = fs::metadata(&data)
            .map_err(|e| LmdbError::io("stat", &data, e))?
            .len();
        if have < need {
            return Err(LmdbError::corrupted(
                &data,
                format!("truncated: {have} bytes, but committed pages reach byte {need}"),
            ));
        }
        if !read_only {
            // Reader slots of crashed processes would pin old pages forever.
            let _ = env.clear_stale_readers();
        }

        let lmdb = |op: &str, e: heed::Error| -> LmdbError {
            match e {
                heed::Error::Mdb(MdbError::Corrupted)
                | heed::Error::Mdb(MdbError::PageNotFound)
                | heed::Error::Mdb(MdbError::Incompatible) => {
                    LmdbError::corrupted(&data, format!("{op}: {e}"))
                }
                e => LmdbError::Lmdb {
                    op: op.to_string(),
                    path: dir.clone(),
                    source: e,
                },
            }
        };

        let (entries_db, meta_db) = if read_only {
            let rtxn = env
                .read_txn()
                .map_err(|e| lmdb("begin a read transaction", e))?;
            let meta: Option<MetaDb> = env
                .open_database(&rtxn, Some(META_DB))
                .map_err(|e| lmdb("open the meta database", e))?;
            let entries: Option<EntriesDb> = env
                .open_database(&rtxn, Some(ENTRIES_DB))
                .map_err(|e| lmdb("open the entries database", e))?;
            let (Some(meta), Some(entries)) = (meta, entries) else {
                return Err(LmdbError::NotAStore {
                    path: dir,
                    reason: "the LMDB environment has no raftify `meta`/`entries` databases".into(),
                });
            };
            rtxn.commit()
                .map_err(|e| lmdb("end the read transaction", e))?;
            (entries, meta)
        } else {
            let mut wtxn = env
                .write_txn()
                .map_err(|e| lmdb("begin a write transaction", e))?;
            let meta: Option<MetaDb> = env
                .open_database(&wtxn, Some(META_DB))
                .map_err(|e| lmdb("open the meta database", e))?;
            let dbs = match meta {
                Some(meta) => {
                    let entries: Option<EntriesDb> = env
                        .open_database(&wtxn, Some(ENTRIES_DB))
                        .map_err(|e| lmdb("open the entries database", e))?;
                    let Some(entries) = entries else {
                        return Err(LmdbError::corrupted(
                            &dir,
                            "the `entries` database is missing",
                        ));
                    };
                    (entries, meta)
                }
                None => {
                    // New store, unless the environment holds someone else's data.
                    let main: Database<Bytes, Bytes> = env
                        .open_database(&wtxn, None)
                        .map_err(|e| lmdb("open the main database", e))?
                        .ok_or_else(|| LmdbError::corrupted(&data, "no main database"))?;
                    let used = main
                        .len(&wtxn)
                        .map_err(|e| lmdb("count the main database", e))?;
                    if used > 0 {
                        return Err(LmdbError::NotAStore {
                            path: dir,
                            reason: "an LMDB environment without raftify metadata".into(),
                        });
                    }
                    let meta: MetaDb = env
                        .create_database(&mut wtxn, Some(META_DB))
                        .map_err(|e| lmdb("create the meta database", e))?;
                    let entries: EntriesDb = env
                        .create_database(&mut wtxn, Some(ENTRIES_DB))
                        .map_err(|e| lmdb("create the entries database", e))?;
                    meta.put(&mut wtxn, K_VERSION, &frame(&FORMAT_VERSION.to_be_bytes()))
                        .map_err(|e| lmdb("write the format version", e))?;
                    (entries, meta)
                }
            };
            wtxn.commit().map_err(|e| lmdb("commit", e))?;
            dbs
        };

        let store = LmdbStore {
            dir,
            env,
            entries_db,
            meta_db,
            gate: RwLock::new(()),
            write_lock: Mutex::new(()),
            generation: AtomicU64::new(0),
            first_index_cache: Mutex::new(None),
            opts,
            read_only,
            _lock: lock,
        };
        store.validate()?;
        if !read_only {
            store.remove_orphan_snapshots();
        }
        Ok(store)
    }

    /// Checks the format version and the invariants of the metadata and the
    /// log ends (not every entry: that would read the whole log).
    fn validate(&self) -> Result<(), LmdbError> {
        let corrupted = |e: StorageError| match e {
            StorageError::Corrupted(reason) => LmdbError::corrupted(&self.dir, reason),
            other => LmdbError::Store {
                path: self.dir.clone(),
                source: other,
            },
        };
        self.read(|txn| {
            let version = self
                .meta_db
                .get(txn, K_VERSION)
                .map_err(|e| self.heed_err("read the format version", e))?
                .ok_or_else(|| self.corrupt("the format version record is missing"))?;
            let version = unframe(version)
                .ok()
                .and_then(|b| b.try_into().ok().map(u32::from_be_bytes))
                .ok_or_else(|| self.corrupt("the format version record does not decode"))?;
            if version != FORMAT_VERSION {
                return Err(StorageError::Invalid(format!("version:{version}")));
            }
            let meta = self.read_meta(txn)?;
            let last = self.last_index_txn(txn, &meta)?;
            if last > meta.offset {
                let first = self
                    .entries_db
                    .first(txn)
                    .map_err(|e| self.heed_err("read the first entry", e))?;
                match first {
                    Some((k, _)) if k == meta.offset + 1 => {}
                    Some((k, _)) => {
                        return Err(self.corrupt(format!(
                            "the first stored entry is {k} but the log starts at {}",
                            meta.offset + 1
                        )))
                    }
                    None => {}
                }
                self.get_entry(txn, last)?;
                self.get_entry(txn, meta.offset + 1)?;
            }
            if let Some(name) = &meta.snap_file {
                let path = self.dir.join(SNAP_DIR).join(name);
                if !path.is_file() {
                    return Err(self.corrupt(format!(
                        "the current snapshot file {} is missing",
                        path.display()
                    )));
                }
            }
            Ok(())
        })
        .map_err(|e| match e {
            StorageError::Invalid(v) if v.starts_with("version:") => {
                LmdbError::UnsupportedVersion {
                    path: self.dir.clone(),
                    found: v["version:".len()..].parse().unwrap_or(0),
                    supported: FORMAT_VERSION,
                }
            }
            other => corrupted(other),
        })
    }

    /// Deletes snapshot files no committed metadata refers to (left by a crash
    /// between writing a snapshot file and committing, or before deleting
    /// the previous one).
    fn remove_orphan_snapshots(&self) {
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

    /// Writes the current snapshot to `path` in the snapshot-file format (for
    /// [`crate::restore_wal_snapshot_from`] on another node).
    pub fn export_snapshot(&self, path: impl AsRef<Path>) -> Result<(), LmdbError> {
        let snap = self.snapshot().map_err(|e| LmdbError::Store {
            path: self.dir.clone(),
            source: e,
        })?;
        crate::files::write_snapshot_file(path, &snap)
    }

    // ----- error helpers -------------------------------------------------

    pub(crate) fn corrupt(&self, what: impl std::fmt::Display) -> StorageError {
        StorageError::Corrupted(format!("LMDB store {}: {what}", self.dir.display()))
    }

    pub(crate) fn heed_err(&self, op: &str, e: heed::Error) -> StorageError {
        match e {
            heed::Error::Mdb(MdbError::Corrupted)
            | heed::Error::Mdb(MdbError::PageNotFound)
            | heed::Error::Mdb(MdbError::Incompatible) => {
                self.corrupt(format!("LMDB reports damage while trying to {op}: {e}"))
            }
            heed::Error::Mdb(MdbError::Other(28)) | heed::Error::Io(_) if is_enospc(&e) => {
                StorageError::backend(LmdbError::Lmdb {
                    op: format!("{op} (the disk is full)"),
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

    pub(crate) fn fail(&self, op: &str, e: heed::Error) -> Fail {
        match e {
            heed::Error::Mdb(MdbError::MapFull) => Fail::MapFull,
            e => Fail::Store(self.heed_err(op, e)),
        }
    }

    fn lmdb_to_storage(&self, e: LmdbError) -> StorageError {
        // LmdbError messages already name the file or directory.
        StorageError::from(e)
    }

    // ----- transactions --------------------------------------------------

    fn gate_read(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    fn gate_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    fn first_index_cache(&self) -> MutexGuard<'_, Option<(u64, u64)>> {
        self.first_index_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure_writable(&self) -> StorageResult<()> {
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

    /// Runs `f` in one write transaction and commits it. On `MDB_MAP_FULL`
    /// (from `f` or the commit) the transaction is aborted, the map doubled
    /// and `f` run again in a fresh transaction.
    pub(crate) fn write_txn<T>(
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

    // ----- reading state -------------------------------------------------

    fn get_meta<'t>(&self, txn: &'t RoTxn, key: &str) -> StorageResult<Option<&'t [u8]>> {
        let raw = self
            .meta_db
            .get(txn, key)
            .map_err(|e| self.heed_err(&format!("read metadata record `{key}`"), e))?;
        match raw {
            None => Ok(None),
            Some(raw) => unframe(raw)
                .map(Some)
                .map_err(|e| self.corrupt(format!("metadata record `{key}`: {e}"))),
        }
    }

    pub(crate) fn read_meta(&self, txn: &RoTxn) -> StorageResult<Meta> {
        let mut meta = Meta::default();
        if let Some(b) = self.get_meta(txn, K_HARD_STATE)? {
            meta.hard_state = crate::codec::decode_msg(b)
                .map_err(|e| self.corrupt(format!("metadata record `{K_HARD_STATE}`: {e}")))?;
        }
        if let Some(b) = self.get_meta(txn, K_SNAP_META)? {
            meta.snap_meta = crate::codec::decode_msg(b)
                .map_err(|e| self.corrupt(format!("metadata record `{K_SNAP_META}`: {e}")))?;
        }
        if let Some(b) = self.get_meta(txn, K_SNAP_FILE)? {
            let name = std::str::from_utf8(b)
                .ok()
                .filter(|n| !n.is_empty() && !n.contains('/') && !n.starts_with('.'))
                .ok_or_else(|| {
                    self.corrupt(format!(
                        "metadata record `{K_SNAP_FILE}` is not a file name"
                    ))
                })?;
            meta.snap_file = Some(name.to_string());
        }
        if let Some(b) = self.get_meta(txn, K_SNAP_SEQ)? {
            meta.snap_seq = be_u64(b, 0).filter(|_| b.len() == 8).ok_or_else(|| {
                self.corrupt(format!("metadata record `{K_SNAP_SEQ}` is malformed"))
            })?;
        }
        if let Some(b) = self.get_meta(txn, K_OFFSET)? {
            match (b.len(), be_u64(b, 0), be_u64(b, 8)) {
                (16, Some(i), Some(t)) => {
                    meta.offset = i;
                    meta.offset_term = t;
                }
                _ => return Err(self.corrupt(format!("metadata record `{K_OFFSET}` is malformed"))),
            }
        }
        Ok(meta)
    }

    pub(crate) fn last_index_txn(&self, txn: &RoTxn, meta: &Meta) -> StorageResult<u64> {
        let last = self
            .entries_db
            .last(txn)
            .map_err(|e| self.heed_err("read the last entry", e))?;
        match last {
            None => Ok(meta.offset),
            Some((k, _)) if k > meta.offset => Ok(k),
            Some((k, _)) => Err(self.corrupt(format!(
                "entry {k} is stored although the log was compacted up to {}",
                meta.offset
            ))),
        }
    }

    fn decode_entry(&self, idx: u64, raw: &[u8]) -> StorageResult<Entry> {
        let e: Entry =
            decode_framed(raw).map_err(|e| self.corrupt(format!("log entry {idx}: {e}")))?;
        if e.index != idx {
            return Err(self.corrupt(format!(
                "the record under key {idx} holds entry {}",
                e.index
            )));
        }
        Ok(e)
    }

    /// The entry at `idx`, which the caller knows is within the log.
    pub(crate) fn get_entry(&self, txn: &RoTxn, idx: u64) -> StorageResult<Entry> {
        let raw = self
            .entries_db
            .get(txn, &idx)
            .map_err(|e| self.heed_err(&format!("read log entry {idx}"), e))?
            .ok_or_else(|| self.corrupt(format!("log entry {idx} is missing (gap in the log)")))?;
        self.decode_entry(idx, raw)
    }

    fn term_txn(&self, txn: &RoTxn, meta: &Meta, last: u64, idx: u64) -> StorageResult<u64> {
        if idx == meta.offset {
            return Ok(meta.offset_term);
        }
        if idx < meta.offset {
            return Err(StorageError::Compacted);
        }
        if idx > last {
            return Err(StorageError::Unavailable);
        }
        Ok(self.get_entry(txn, idx)?.term)
    }

    fn read_snapshot(&self, txn: &RoTxn) -> StorageResult<(Snapshot, Meta)> {
        let meta = self.read_meta(txn)?;
        let Some(name) = &meta.snap_file else {
            // No snapshot was ever stored.
            return Ok((Snapshot::default(), meta));
        };
        let path = self.dir.join(SNAP_DIR).join(name);
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // Possibly replaced by a concurrent writer (read-only
                // handles); the caller retries with a fresh transaction.
                StorageError::SnapshotTemporarilyUnavailable
            } else {
                StorageError::backend(LmdbError::io("read snapshot file", &path, e))
            }
        })?;
        let snap = decode_snapshot_file(&path, &bytes).map_err(|e| self.lmdb_to_storage(e))?;
        if snap.get_metadata() != &meta.snap_meta {
            return Err(self.corrupt(format!(
                "snapshot file {} does not match the snapshot metadata in LMDB",
                path.display()
            )));
        }
        Ok((snap, meta))
    }

    // ----- writing helpers ------------------------------------------------

    fn put_meta(&self, wtxn: &mut RwTxn, key: &str, payload: &[u8]) -> Result<(), Fail> {
        self.meta_db
            .put(wtxn, key, &frame(payload))
            .map_err(|e| self.fail(&format!("write metadata record `{key}`"), e))
    }

    pub(crate) fn put_hard_state(&self, wtxn: &mut RwTxn, hs: &HardState) -> Result<(), Fail> {
        let b = encode_msg(hs).map_err(StorageError::Invalid)?;
        self.put_meta(wtxn, K_HARD_STATE, &b)
    }

    pub(crate) fn put_offset(&self, wtxn: &mut RwTxn, index: u64, term: u64) -> Result<(), Fail> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&index.to_be_bytes());
        b[8..].copy_from_slice(&term.to_be_bytes());
        self.put_meta(wtxn, K_OFFSET, &b)
    }

    pub(crate) fn put_snapshot_ref(
        &self,
        wtxn: &mut RwTxn,
        meta: &SnapshotMetadata,
        file: &str,
        seq: u64,
    ) -> Result<(), Fail> {
        let b = encode_msg(meta).map_err(StorageError::Invalid)?;
        self.put_meta(wtxn, K_SNAP_META, &b)?;
        self.put_meta(wtxn, K_SNAP_FILE, file.as_bytes())?;
        self.put_meta(wtxn, K_SNAP_SEQ, &seq.to_be_bytes())
    }

    /// Appends already framed entry records with `MDB_APPEND` (keys must be
    /// increasing and above every stored key).
    pub(crate) fn append_raw(&self, wtxn: &mut RwTxn, idx: u64, framed: &[u8]) -> Result<(), Fail> {
        self.entries_db
            .put_with_flags(wtxn, PutFlags::APPEND, &idx, framed)
            .map_err(|e| self.fail(&format!("append log entry {idx}"), e))
    }

    fn delete_from(&self, wtxn: &mut RwTxn, idx: u64) -> Result<(), Fail> {
        self.entries_db
            .delete_range(wtxn, &(idx..))
            .map(|_| ())
            .map_err(|e| self.fail(&format!("delete log entries from {idx}"), e))
    }

    fn delete_through(&self, wtxn: &mut RwTxn, idx: u64) -> Result<(), Fail> {
        self.entries_db
            .delete_range(wtxn, &(..=idx))
            .map(|_| ())
            .map_err(|e| self.fail(&format!("delete log entries up to {idx}"), e))
    }

    /// Writes a snapshot file (durably) for a snapshot that a transaction is
    /// about to reference; returns its name.
    pub(crate) fn create_snapshot_file(&self, snap: &Snapshot, seq: u64) -> StorageResult<String> {
        let m = snap.get_metadata();
        let name = format!("{seq:020}-{:020}-{:020}.snap", m.index, m.term);
        self.write_snapshot_file(snap, &name)?;
        Ok(name)
    }

    /// Writes a snapshot file durably (temp file, fsync, rename, dir fsync).
    fn write_snapshot_file(&self, snap: &Snapshot, name: &str) -> StorageResult<()> {
        let bytes = encode_snapshot_file(snap).map_err(StorageError::Invalid)?;
        write_durable(&self.dir.join(SNAP_DIR).join(name), &bytes)
            .map_err(|e| self.lmdb_to_storage(e))
    }

    fn remove_snapshot_file(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(SNAP_DIR).join(name));
    }

    /// After a commit that replaced the snapshot: make sure the commit is on
    /// disk (it is already, unless `no_sync`), then delete the old file.
    fn retire_snapshot(&self, old: Option<String>, new: &str) {
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
    /// again when the transaction does not commit.
    fn write_with_snapshot_file<T>(
        &self,
        mut f: impl FnMut(&mut RwTxn, &mut Option<String>) -> Result<T, Fail>,
    ) -> StorageResult<(T, Option<String>)> {
        let mut created: Option<String> = None;
        let result = self.write_txn(|wtxn| f(wtxn, &mut created));
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
}

fn is_enospc(e: &heed::Error) -> bool {
    match e {
        heed::Error::Io(io) => io.raw_os_error() == Some(28),
        heed::Error::Mdb(MdbError::Other(28)) => true,
        _ => false,
    }
}

/// Takes the exclusive `raftify.lock` of a store directory.
fn take_lock(dir: &Path) -> Result<File, LmdbError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LmdbError::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            return Err(LmdbError::Locked {
                path: dir.to_path_buf(),
                detail: if holder.is_empty() {
                    format!("{} is held", path.display())
                } else {
                    format!("{} is held by pid {holder}", path.display())
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(LmdbError::io("lock", &path, e));
        }
    }
    // Informational only: the flock is what excludes other writers.
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    let _ = file.sync_all();
    Ok(file)
}

impl LogStore for LmdbStore {
    fn initial_state(&self) -> StorageResult<RaftState> {
        self.read(|txn| {
            let meta = self.read_meta(txn)?;
            Ok(RaftState::new(
                meta.hard_state.clone(),
                meta.snap_meta.get_conf_state().clone(),
            ))
        })
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> StorageResult<Vec<Entry>> {
        self.read(|txn| {
            let meta = self.read_meta(txn)?;
            let last = self.last_index_txn(txn, &meta)?;
            if low < meta.offset + 1 {
                return Err(StorageError::Compacted);
            }
            if high > last + 1 || low > high {
                return Err(StorageError::Unavailable);
            }
            let mut out = Vec::new();
            if low == high {
                return Ok(out);
            }
            let iter = self
                .entries_db
                .range(txn, &(low..high))
                .map_err(|e| self.heed_err("read log entries", e))?;
            let mut size = 0u64;
            let mut expect = low;
            for item in iter {
                let (k, raw) = item.map_err(|e| self.heed_err("read log entries", e))?;
                if k != expect {
                    return Err(
                        self.corrupt(format!("log entry {expect} is missing (gap in the log)"))
                    );
                }
                let e = self.decode_entry(k, raw)?;
                // Same rule as raftify_core::storage::limit_size: keep
                // entries while the total stays within max_size, at least one.
                if let Some(max) = max_size {
                    size += u64::from(raftify_core::protobuf::Message::compute_size(&e));
                    if !out.is_empty() && size > max {
                        return Ok(out);
                    }
                }
                out.push(e);
                expect += 1;
            }
            if expect != high {
                return Err(self.corrupt(format!("log entry {expect} is missing (gap in the log)")));
            }
            Ok(out)
        })
    }

    fn term(&self, idx: u64) -> StorageResult<u64> {
        self.read(|txn| {
            let meta = self.read_meta(txn)?;
            if idx == meta.offset {
                return Ok(meta.offset_term);
            }
            let last = self.last_index_txn(txn, &meta)?;
            self.term_txn(txn, &meta, last, idx)
        })
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
        self.read(|txn| {
            let meta = self.read_meta(txn)?;
            self.last_index_txn(txn, &meta)
        })
    }

    fn snapshot(&self) -> StorageResult<Snapshot> {
        // A read-only handle can race with the writer replacing the file.
        let mut attempts = 0;
        loop {
            match self.read(|txn| self.read_snapshot(txn)) {
                Err(StorageError::SnapshotTemporarilyUnavailable) if attempts < 5 => {
                    attempts += 1;
                }
                Err(StorageError::SnapshotTemporarilyUnavailable) => {
                    return Err(self.corrupt("the current snapshot file is missing"));
                }
                other => return other.map(|(s, _)| s),
            }
        }
    }

    fn write(&self, batch: WriteBatch) -> StorageResult<()> {
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
        let (old_file, new_file) = self.write_with_snapshot_file(|wtxn, created| {
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
                    self.entries_db
                        .clear(wtxn)
                        .map_err(|e| self.fail("clear the log", e))?;
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

    fn save_snapshot(&self, snapshot: Snapshot) -> StorageResult<()> {
        self.ensure_writable()?;
        // The file is the bulk of the work (the whole state, written and
        // synced): it is written before taking the writer lock, so the log
        // writes of a running node are not held up behind it. Only one own
        // snapshot is saved at a time, so its name is unique; a crash before
        // the commit below leaves an orphan that the next open removes.
        let m = snapshot.get_metadata().clone();
        let next_seq = self.read(|txn| Ok(self.read_meta(txn)?.snap_seq))? + 1;
        let name = format!("{next_seq:020}-{:020}-{:020}-own.snap", m.index, m.term);
        self.write_snapshot_file(&snapshot, &name)?;
        let _w = self.lock_writer();
        let committed = self.write_txn(|wtxn| {
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
        });
        match committed {
            Ok(old_file) => {
                self.retire_snapshot(old_file, &name);
                Ok(())
            }
            Err(e) => {
                self.remove_snapshot_file(&name);
                Err(e)
            }
        }
    }

    fn compact(&self, index: u64) -> StorageResult<()> {
        self.ensure_writable()?;
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
                        .get(wtxn, &idx)
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

    fn identity(&self) -> StorageResult<Option<StoreIdentity>> {
        self.read(|txn| {
            let Some(b) = self.get_meta(txn, K_IDENTITY)? else {
                return Ok(None);
            };
            let node_id =
                be_u64(b, 0).ok_or_else(|| self.corrupt("the identity record is too short"))?;
            let cluster_id = std::str::from_utf8(&b[8..])
                .map_err(|_| self.corrupt("the identity record's cluster id is not UTF-8"))?
                .to_string();
            Ok(Some(StoreIdentity {
                node_id,
                cluster_id,
            }))
        })
    }

    fn set_identity(&self, identity: &StoreIdentity) -> StorageResult<()> {
        self.ensure_writable()?;
        let _w = self.lock_writer();
        let mut b = identity.node_id.to_be_bytes().to_vec();
        b.extend_from_slice(identity.cluster_id.as_bytes());
        self.write_txn(|wtxn| self.put_meta(wtxn, K_IDENTITY, &b))
    }

    fn blocking_writes(&self) -> bool {
        true
    }
}

impl LmdbStore {
    /// Removes the recorded identity (used by restores, so the node that
    /// adopts a copied log records its own).
    pub(crate) fn clear_identity(&self) -> StorageResult<()> {
        let _w = self.lock_writer();
        self.write_txn(|wtxn| {
            self.meta_db
                .delete(wtxn, K_IDENTITY)
                .map(|_| ())
                .map_err(|e| self.fail("delete the identity record", e))
        })
    }

    /// Copies this store's whole state (entries, hard state, snapshot,
    /// compaction offset; not the identity) into `dst`, which must be empty,
    /// in one read transaction here and one write transaction there.
    pub(crate) fn copy_state_into(&self, dst: &LmdbStore) -> StorageResult<()> {
        let _w = dst.lock_writer();
        let mut attempts = 0;
        loop {
            let res = self.read(|rtxn| {
                let (snap, meta) = self.read_snapshot(rtxn)?;
                let (_, created) = dst.write_with_snapshot_file(|wtxn, created| {
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

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use raftify_core::protobuf::Message;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8; 10].into();
        e
    }

    fn store_with_entries(dir: &Path) -> LmdbStore {
        let s = LmdbStore::open(dir, LmdbOptions::new().map_size(1 << 20)).unwrap();
        s.write(WriteBatch {
            entries: (1..=5).map(|i| entry(i, 1)).collect(),
            ..Default::default()
        })
        .unwrap();
        s
    }

    #[test]
    fn undecodable_entry_record_is_corrupted_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_entries(dir.path());
        // A record with a valid checksum whose payload is not an Entry.
        let garbage = frame(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let mut wtxn = s.env.write_txn().unwrap();
        s.entries_db.put(&mut wtxn, &3, &garbage).unwrap();
        wtxn.commit().unwrap();
        let err = s.entries(1, 6, None).unwrap_err();
        assert!(matches!(err, StorageError::Corrupted(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("log entry 3") && msg.contains("cannot decode"),
            "{msg}"
        );
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(matches!(s.term(3), Err(StorageError::Corrupted(_))));
        // Entries that are fine still read.
        assert_eq!(s.entries(1, 3, None).unwrap().len(), 2);
    }

    #[test]
    fn flipped_bits_in_entry_fail_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_entries(dir.path());
        let mut rec = frame(&entry(4, 1).write_to_bytes().unwrap());
        let n = rec.len();
        rec[n - 1] ^= 0x40;
        let mut wtxn = s.env.write_txn().unwrap();
        s.entries_db.put(&mut wtxn, &4, &rec).unwrap();
        wtxn.commit().unwrap();
        let err = s.entries(4, 5, None).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn entry_under_wrong_key_is_corrupted() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_entries(dir.path());
        let rec = frame(&entry(9, 1).write_to_bytes().unwrap());
        let mut wtxn = s.env.write_txn().unwrap();
        s.entries_db.put(&mut wtxn, &2, &rec).unwrap();
        wtxn.commit().unwrap();
        let err = s.term(2).unwrap_err();
        assert!(err.to_string().contains("holds entry 9"), "{err}");
    }

    #[test]
    fn damaged_metadata_fails_open_with_corrupted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store_with_entries(dir.path());
            let mut wtxn = s.env.write_txn().unwrap();
            s.meta_db
                .put(&mut wtxn, K_HARD_STATE, b"\x00\x01\x02\x03junk")
                .unwrap();
            wtxn.commit().unwrap();
            assert!(matches!(s.initial_state(), Err(StorageError::Corrupted(_))));
        }
        let err = LmdbStore::open(dir.path(), LmdbOptions::new().map_size(1 << 20)).unwrap_err();
        assert!(matches!(err, LmdbError::Corrupted { .. }), "{err:?}");
        assert!(err.to_string().contains("hard_state"), "{err}");
    }

    #[test]
    fn gap_in_log_is_corrupted() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_entries(dir.path());
        let mut wtxn = s.env.write_txn().unwrap();
        s.entries_db.delete(&mut wtxn, &3).unwrap();
        wtxn.commit().unwrap();
        let err = s.entries(1, 6, None).unwrap_err();
        assert!(err.to_string().contains("gap"), "{err}");
    }

    #[test]
    fn unsupported_version_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store_with_entries(dir.path());
            let mut wtxn = s.env.write_txn().unwrap();
            s.meta_db
                .put(&mut wtxn, K_VERSION, &frame(&99u32.to_be_bytes()))
                .unwrap();
            wtxn.commit().unwrap();
        }
        let err = LmdbStore::open(dir.path(), LmdbOptions::new().map_size(1 << 20)).unwrap_err();
        assert!(
            matches!(
                err,
                LmdbError::UnsupportedVersion {
                    found: 99,
                    supported: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

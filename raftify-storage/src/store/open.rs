//! Opening a store: creating or validating the directory and the LMDB
//! environment, and taking the writer lock.

use super::meta::put_format_version;
use super::options::align_up;
use super::{
    EntriesDb, LmdbOptions, LmdbStore, MetaDb, DATA_FILE, ENTRIES_DB, FORMAT_VERSION,
    GROUP_ENTRIES_DB, GROUP_META_DB, LMDB_LOCK_FILE, LOCK_FILE, META_DB, SNAP_DIR,
};
use crate::error::LmdbError;
use crate::journal::JOURNAL_DIR;
use heed::types::Bytes;
use heed::{Database, EnvFlags, EnvOpenOptions, MdbError, RoTxn, WithoutTls};
use raftify_core::StorageError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Maps a failure to open the environment to an [`LmdbError`] naming the
/// data file or directory.
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
    /// [`LmdbError::Locked`] once [`LmdbOptions::lock_wait`] has passed.
    ///
    /// Errors name the directory: [`LmdbError::NotAStore`] for a non-empty
    /// directory without a store, [`LmdbError::Corrupted`] for truncated or
    /// overwritten files and undecodable records,
    /// [`LmdbError::UnsupportedVersion`], [`LmdbError::Io`] and
    /// [`LmdbError::Lmdb`] otherwise.
    pub fn open(dir: impl AsRef<Path>, opts: LmdbOptions) -> Result<Self, LmdbError> {
        let dir = dir.as_ref().to_path_buf();
        let lock = prepare_dir(&dir, &opts, &[])?;
        Self::open_env(dir, opts, false, Some(lock), false)
    }

    /// The store of a shared environment's own records, which runs its
    /// journal and checkpoints (see [`super::LmdbEnv::open`]).
    pub(super) fn open_shared_root(dir: &Path, opts: LmdbOptions) -> Result<Self, LmdbError> {
        let lock = prepare_dir(dir, &opts, &[super::env::GROUPS_DIR])?;
        Self::open_env(dir.to_path_buf(), opts, false, Some(lock), true)
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
        Self::check_readable(&dir)?;
        Self::open_env(dir, opts, true, None, false)
    }

    /// Opens `group`'s log in the shared environment in `env_dir`
    /// ([`super::LmdbEnv`]) read-only, as [`LmdbStore::open_read_only`]
    /// does a store's (e.g. for a CLI inspecting a running sharded node).
    pub fn open_group_read_only(
        env_dir: impl AsRef<Path>,
        group: u64,
        opts: LmdbOptions,
    ) -> Result<Self, LmdbError> {
        let dir = env_dir.as_ref().to_path_buf();
        Self::check_readable(&dir)?;
        let root = Self::open_env(dir, opts, true, None, true)?;
        let mut store = root.scoped(group);
        store.validate()?;
        if let Err(e) = store.load_read_only_tail() {
            return Err(journal_error(&store, e));
        }
        Ok(store)
    }

    fn check_readable(dir: &Path) -> Result<(), LmdbError> {
        let dir = dir.to_path_buf();
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
        Ok(())
    }

    /// Opens the environment in `dir`; `shared`: a shared environment's
    /// own store ([`super::LmdbEnv`]), whose log databases are the groups'.
    fn open_env(
        dir: PathBuf,
        opts: LmdbOptions,
        read_only: bool,
        lock: Option<File>,
        shared: bool,
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
        } else if !read_only {
            // Commits sync their data pages; the meta page is synced by the
            // next commit or an explicit sync (see `defers_meta_sync`).
            flags |= EnvFlags::NO_META_SYNC;
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

        // A store alone keeps its log in `entries` and `meta`; a shared
        // environment keeps its own records in `meta` and its groups' in
        // `group_entries` and `group_meta`.
        let (log_entries, log_meta) = match shared {
            false => (ENTRIES_DB, META_DB),
            true => (GROUP_ENTRIES_DB, GROUP_META_DB),
        };
        let wrong_layout = |dir: PathBuf| LmdbError::NotAStore {
            path: dir,
            reason: match shared {
                true => "a single store's environment, not a shared one (groups')".into(),
                false => "a shared environment of groups (`LmdbEnv`), not a single store".into(),
            },
        };
        // The log's databases, in an environment that has `meta` (None:
        // missing).
        let open_log = |txn: &RoTxn<WithoutTls>,
                        meta: MetaDb|
         -> Result<Option<(EntriesDb, MetaDb)>, LmdbError> {
            let entries: Option<EntriesDb> = env
                .open_database(txn, Some(log_entries))
                .map_err(|e| lmdb("open the entries database", e))?;
            let log: Option<MetaDb> = match shared {
                false => Some(meta),
                true => env
                    .open_database(txn, Some(log_meta))
                    .map_err(|e| lmdb("open the groups' meta database", e))?,
            };
            Ok(entries.zip(log))
        };
        // Why the log's databases are missing: the environment has the
        // other layout's, or `otherwise`.
        let missing = |txn: &RoTxn<WithoutTls>, otherwise: LmdbError| -> LmdbError {
            let other = match shared {
                false => GROUP_ENTRIES_DB,
                true => ENTRIES_DB,
            };
            match env.open_database::<Bytes, Bytes>(txn, Some(other)) {
                Ok(Some(_)) => wrong_layout(dir.clone()),
                Ok(None) => otherwise,
                Err(e) => lmdb("open the entries database", e),
            }
        };
        let not_a_store = |path: PathBuf| LmdbError::NotAStore {
            path,
            reason: format!("the LMDB environment has no raftify `meta`/`{log_entries}` databases"),
        };
        let (entries_db, meta_db, root_meta_db) = if read_only {
            let rtxn = env
                .read_txn()
                .map_err(|e| lmdb("begin a read transaction", e))?;
            let meta: Option<MetaDb> = env
                .open_database(&rtxn, Some(META_DB))
                .map_err(|e| lmdb("open the meta database", e))?;
            let Some(meta) = meta else {
                return Err(missing(&rtxn, not_a_store(dir.clone())));
            };
            let Some((entries, log)) = open_log(&rtxn, meta)? else {
                return Err(missing(&rtxn, not_a_store(dir.clone())));
            };
            rtxn.commit()
                .map_err(|e| lmdb("end the read transaction", e))?;
            (entries, log, meta)
        } else {
            let mut wtxn = env
                .write_txn()
                .map_err(|e| lmdb("begin a write transaction", e))?;
            let meta: Option<MetaDb> = env
                .open_database(&wtxn, Some(META_DB))
                .map_err(|e| lmdb("open the meta database", e))?;
            let dbs = match meta {
                Some(meta) => {
                    let Some((entries, log)) = open_log(&wtxn, meta)? else {
                        let gone = format!("the `{log_entries}` database is missing");
                        return Err(missing(&wtxn, LmdbError::corrupted(&dir, gone)));
                    };
                    (entries, log, meta)
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
                        .create_database(&mut wtxn, Some(log_entries))
                        .map_err(|e| lmdb("create the entries database", e))?;
                    let log: MetaDb = match shared {
                        false => meta,
                        true => env
                            .create_database(&mut wtxn, Some(log_meta))
                            .map_err(|e| lmdb("create the groups' meta database", e))?,
                    };
                    put_format_version(&meta, &mut wtxn)
                        .map_err(|e| lmdb("write the format version", e))?;
                    (entries, log, meta)
                }
            };
            wtxn.commit().map_err(|e| lmdb("commit", e))?;
            if !opts.no_sync {
                env.force_sync()
                    .map_err(|e| lmdb("sync the new store", e))?;
            }
            dbs
        };

        let journals = !read_only && opts.journals();
        let mut store = LmdbStore {
            env_dir: dir.clone(),
            dir,
            shared,
            env,
            entries_db,
            meta_db,
            root_meta_db,
            scope: None,
            lease: None,
            gate: Arc::new(RwLock::new(())),
            write_lock: Arc::new(Mutex::new(())),
            appends: Arc::new(Mutex::new(())),
            generation: Arc::new(AtomicU64::new(0)),
            first_index_cache: Arc::new(Mutex::new(None)),
            opts,
            read_only,
            wal: None,
            read_only_tail: None,
            checkpointer: None,
            _lock: lock.map(Arc::new),
        };
        store.validate()?;
        if read_only && shared {
            // The tail is loaded per group (`open_group_read_only`).
        } else if read_only {
            if let Err(e) = store.load_read_only_tail() {
                return Err(journal_error(&store, e));
            }
        } else {
            if !shared {
                store.remove_orphan_snapshots();
            }
            let started = store.recover_journal().and_then(|last| match journals {
                true => store.start_journal(last),
                false => Ok(()),
            });
            if let Err(e) = started {
                return Err(journal_error(&store, e));
            }
        }
        Ok(store)
    }

    /// Checks the format version and the invariants of the metadata and the
    /// log ends (not every entry: that would read the whole log). A shared
    /// environment's own store has no log: the version only.
    pub(super) fn validate(&self) -> Result<(), LmdbError> {
        let root_only = self.shared && self.scope.is_none();
        let corrupted = |e: StorageError| match e {
            StorageError::Corrupted { what, .. } => LmdbError::corrupted(&self.dir, what),
            other => LmdbError::Store {
                path: self.dir.clone(),
                source: other,
            },
        };
        self.read(|txn| {
            let version = self.read_format_version(txn)?;
            if version != FORMAT_VERSION {
                return Err(StorageError::Invalid(format!("version:{version}")));
            }
            if root_only {
                return Ok(());
            }
            let meta = self.read_meta(txn)?;
            let last = self.last_index_txn(txn, &meta)?;
            if last > meta.offset {
                match self.first_stored(txn)? {
                    Some(k) if k == meta.offset + 1 => {}
                    Some(k) => {
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
}

/// A failure to read a store's journal, naming it.
fn journal_error(store: &LmdbStore, e: StorageError) -> LmdbError {
    match e {
        StorageError::Corrupted { what, .. } => {
            LmdbError::corrupted(store.env_dir.join(JOURNAL_DIR), what)
        }
        other => LmdbError::Store {
            path: store.env_dir.join(JOURNAL_DIR),
            source: other,
        },
    }
}

/// Creates `dir` if needed, refuses a directory holding anything but a
/// store's files (and the names in `also`), and takes its writer lock.
fn prepare_dir(dir: &Path, opts: &LmdbOptions, also: &[&str]) -> Result<File, LmdbError> {
    fs::create_dir_all(dir).map_err(|e| LmdbError::io("create directory", dir, e))?;
    if !dir.is_dir() {
        return Err(LmdbError::NotAStore {
            path: dir.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    let data = dir.join(DATA_FILE);
    if !data.exists() {
        // Refuse to scatter LMDB files into some unrelated directory.
        let foreign: Vec<String> = fs::read_dir(dir)
            .map_err(|e| LmdbError::io("list directory", dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n != LOCK_FILE
                    && n != LMDB_LOCK_FILE
                    && n != SNAP_DIR
                    && n != JOURNAL_DIR
                    && !also.contains(&n.as_str())
            })
            .collect();
        if !foreign.is_empty() {
            return Err(LmdbError::NotAStore {
                path: dir.to_path_buf(),
                reason: format!(
                    "the directory is not empty ({}) and has no {DATA_FILE}",
                    foreign.join(", ")
                ),
            });
        }
    }
    take_lock(dir, opts.lock_wait)
}

/// Takes the exclusive `raftify.lock` of a store directory, retrying a
/// held lock for up to `wait`.
fn take_lock(dir: &Path, wait: Duration) -> Result<File, LmdbError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LmdbError::io("open lock file", &path, e))?;
    let deadline = raftify_core::retry::deadline_after(wait).into_std();
    let mut result = file.try_lock();
    while matches!(result, Err(std::fs::TryLockError::WouldBlock)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        result = file.try_lock();
    }
    match result {
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

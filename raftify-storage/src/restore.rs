//! Seeding a new node's directory from another node's log or snapshot.

use crate::error::LmdbError;
use crate::snapshot_file::read_snapshot_file;
use crate::store::{LmdbOptions, LmdbStore, DATA_FILE};
use raftify_core::{LogStore, WriteBatch};
use std::fs;
use std::path::Path;

/// Removes what a failed restore left in `dst` (the directory itself too
/// when the restore created it).
fn remove_partial(dst: &Path, existed: bool) {
    if existed {
        if let Ok(it) = fs::read_dir(dst) {
            for e in it.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    } else {
        let _ = fs::remove_dir_all(dst);
    }
}

/// Fails unless `dst` does not exist or is an empty directory.
fn check_destination(dst: &Path) -> Result<(), LmdbError> {
    match fs::read_dir(dst) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(LmdbError::DestinationNotEmpty {
                    path: dst.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LmdbError::io("list directory", dst, e)),
    }
}

fn store_err(dst: &Path, e: raftify_core::StorageError) -> LmdbError {
    LmdbError::Store {
        path: dst.to_path_buf(),
        source: e,
    }
}

impl LmdbStore {
    /// Copies this store's log, hard state, compaction point and snapshot
    /// (not its identity) into the new or empty directory `dst_dir`, and
    /// returns the new store opened for writing.
    ///
    /// The copy is consistent: it reads everything in one LMDB read
    /// transaction, which never blocks (nor is blocked by) this store's
    /// writer, and writes it in one transaction at `dst_dir`. Every record is
    /// verified on the way. This store is not modified.
    pub fn copy_wal_to(
        &self,
        dst_dir: impl AsRef<Path>,
        opts: LmdbOptions,
    ) -> Result<LmdbStore, LmdbError> {
        let dst_dir = dst_dir.as_ref();
        check_destination(dst_dir)?;
        let existed = dst_dir.exists();
        let dst = LmdbStore::open(dst_dir, opts)?;
        if let Err(e) = self.copy_state_into(&dst) {
            drop(dst);
            remove_partial(dst_dir, existed);
            return Err(store_err(dst_dir, e));
        }
        Ok(dst)
    }
}

/// Restores a node's write-ahead log from another node's store directory.
///
/// `src_dir` is opened read-only (no lock, so the source node may keep
/// running; LMDB readers never block its writer) and its committed state —
/// entries, hard state, compaction point, snapshot — is copied in one
/// consistent read transaction into `dst_dir`, which must not exist or be
/// empty. The source is left untouched. The recorded identity (node id,
/// cluster id) is **not** copied, so the node started on `dst_dir` records
/// its own on first start.
///
/// Returns the new store, open for writing. If the source store is open in
/// this same process, use [`LmdbStore::copy_wal_to`] on that handle (heed
/// allows one environment per path per process).
///
/// ```
/// use raftify_storage::{restore_wal_from, LmdbOptions, LmdbStore};
/// use raftify_core::{LogStore, WriteBatch};
/// use raftify_core::raft::eraftpb::Entry;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tmp = tempfile::tempdir()?;
/// let (src, dst) = (tmp.path().join("node1"), tmp.path().join("node4"));
/// {
///     let store = LmdbStore::open(&src, LmdbOptions::new().map_size(1 << 20))?;
///     let mut e = Entry::default();
///     e.index = 1;
///     e.term = 1;
///     store.write(WriteBatch { entries: vec![e], ..Default::default() })?;
/// }
/// let copy = restore_wal_from(&src, &dst, LmdbOptions::new().map_size(1 << 20))?;
/// assert_eq!(copy.last_index()?, 1);
/// assert_eq!(copy.identity()?, None);
/// # Ok(()) }
/// ```
pub fn restore_wal_from(
    src_dir: impl AsRef<Path>,
    dst_dir: impl AsRef<Path>,
    opts: LmdbOptions,
) -> Result<LmdbStore, LmdbError> {
    let (src_dir, dst_dir) = (src_dir.as_ref(), dst_dir.as_ref());
    check_destination(dst_dir)?;
    let src = LmdbStore::open_read_only(src_dir, LmdbOptions::default())?;
    src.copy_wal_to(dst_dir, opts)
}

/// Starts a node's directory from a snapshot only: `dst_dir` (new or empty)
/// gets `src`'s snapshot as its snapshot, an empty log starting right after
/// it, a hard state with the snapshot's term and commit index, and the
/// snapshot's conf state. No identity is recorded.
///
/// `src` is either a snapshot file (written by
/// [`crate::write_snapshot_file`] or [`LmdbStore::export_snapshot`], or a
/// `.snap` file of a store's `snap/` folder) or a store directory, opened
/// read-only (the node may be running) to take its current snapshot. The
/// source is not modified. A source without a snapshot (index 0) is
/// rejected.
///
/// Returns the new store, open for writing.
pub fn restore_wal_snapshot_from(
    src: impl AsRef<Path>,
    dst_dir: impl AsRef<Path>,
    opts: LmdbOptions,
) -> Result<LmdbStore, LmdbError> {
    let (src, dst_dir) = (src.as_ref(), dst_dir.as_ref());
    check_destination(dst_dir)?;
    let snapshot = if src.is_dir() {
        if !src.join(DATA_FILE).is_file() {
            return Err(LmdbError::NotAStore {
                path: src.to_path_buf(),
                reason: format!("a directory without {DATA_FILE}"),
            });
        }
        let store = LmdbStore::open_read_only(src, LmdbOptions::default())?;
        store.snapshot().map_err(|e| store_err(src, e))?
    } else {
        read_snapshot_file(src)?
    };
    if snapshot.get_metadata().index == 0 {
        return Err(LmdbError::NotAStore {
            path: src.to_path_buf(),
            reason: "it holds no snapshot (snapshot index 0)".into(),
        });
    }
    let existed = dst_dir.exists();
    let dst = LmdbStore::open(dst_dir, opts)?;
    let installed = dst
        .write(WriteBatch {
            snapshot: Some(snapshot),
            ..Default::default()
        })
        .and_then(|()| dst.clear_identity());
    if let Err(e) = installed {
        drop(dst);
        remove_partial(dst_dir, existed);
        return Err(store_err(dst_dir, e));
    }
    Ok(dst)
}

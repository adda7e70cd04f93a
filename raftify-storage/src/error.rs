//! The error type of opening, restoring and inspecting stores.

use raftify_core::StorageError;
use std::path::PathBuf;

/// Why opening, restoring or inspecting an LMDB store failed.
///
/// Every variant names the file or directory involved. It converts into
/// [`StorageError`] (`Corrupted`, `Invalid` or `Backend`) for code that only
/// deals in the core's error type.
#[derive(Debug, thiserror::Error)]
pub enum LmdbError {
    /// A file-system operation failed (permissions, full disk, ...).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// LMDB itself reported an error.
    #[error("LMDB error at {path} while trying to {op}: {source}")]
    Lmdb {
        /// What was being done.
        op: String,
        /// The store directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: heed::Error,
    },
    /// The directory (or file) does not exist.
    #[error("{path} does not exist: {what}")]
    Missing {
        /// The missing path.
        path: PathBuf,
        /// What was expected there.
        what: String,
    },
    /// Another process or handle holds the store's exclusive lock.
    #[error(
        "store {path} is locked: {detail} (another raftify node or tool has it open for writing)"
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
        /// Details (e.g. the pid recorded in the lock file).
        detail: String,
    },
    /// The path exists but holds something that is not a raftify LMDB store.
    #[error("{path} is not a raftify LMDB store: {reason}")]
    NotAStore {
        /// The offending path.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The store's files are damaged: truncated, overwritten, undecodable.
    #[error("store data at {path} is corrupted: {reason}")]
    Corrupted {
        /// The damaged file or store directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store was written by a newer (or unknown) on-disk format.
    #[error("store {path} has on-disk format version {found}; this build supports {supported}")]
    UnsupportedVersion {
        /// The store directory.
        path: PathBuf,
        /// The version recorded in the store.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A restore was asked to write into a directory that already holds data.
    #[error("restore destination {path} is not empty; restores only write into a new or empty directory")]
    DestinationNotEmpty {
        /// The destination directory.
        path: PathBuf,
    },
    /// A [`raftify_core::LogStore`] operation failed while restoring.
    #[error("store operation on {path} failed: {source}")]
    Store {
        /// The store directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: StorageError,
    },
}

impl LmdbError {
    /// An I/O error of `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LmdbError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupted(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        LmdbError::Corrupted {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl From<LmdbError> for StorageError {
    fn from(e: LmdbError) -> Self {
        match e {
            LmdbError::Corrupted { path, reason } => {
                StorageError::corrupted(reason, path.display().to_string())
            }
            LmdbError::UnsupportedVersion { ref path, .. } => {
                let location = path.display().to_string();
                StorageError::corrupted(e.to_string(), location)
            }
            LmdbError::Missing { .. }
            | LmdbError::Locked { .. }
            | LmdbError::NotAStore { .. }
            | LmdbError::DestinationNotEmpty { .. } => StorageError::Invalid(e.to_string()),
            LmdbError::Store { source, .. } => source,
            LmdbError::Io { .. } | LmdbError::Lmdb { .. } => StorageError::Backend(Box::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_and_store_are_thread_safe() {
        // Needed for `anyhow`/`Box<dyn Error + Send + Sync>` callers and for
        // `Arc<dyn LogStore>`.
        assert_send_sync::<LmdbError>();
        assert_send_sync::<crate::LmdbStore>();
    }

    #[test]
    fn conversion_keeps_the_kind_and_the_path() {
        let e = LmdbError::corrupted("/data/n1/data.mdb", "truncated");
        match StorageError::from(e) {
            StorageError::Corrupted { what, location } => {
                assert_eq!(location, "/data/n1/data.mdb");
                assert_eq!(what, "truncated");
            }
            other => panic!("{other:?}"),
        }
        let e = LmdbError::Locked {
            path: "/data/n1".into(),
            detail: "held".into(),
        };
        assert!(
            matches!(StorageError::from(e), StorageError::Invalid(m) if m.contains("/data/n1"))
        );
        let e = LmdbError::io("fsync", "/data/n1", std::io::Error::other("boom"));
        assert!(matches!(StorageError::from(e), StorageError::Backend(_)));
    }
}

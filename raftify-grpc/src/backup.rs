//! Backups over the client service: [`RaftClient::save_snapshot`] streams a
//! node's newest snapshot (`DownloadSnapshot`) into a file of raftify's
//! snapshot-file format — what `--restore-snapshot-from` starts a node or a
//! cluster from — and the server side that answers it.
//!
//! The file appears whole or not at all: the bytes go to `<file>.partial`,
//! are checked as they arrive (one snapshot, contiguous, the announced
//! length), synced, checked again as a file (magic, lengths, checksum),
//! and only then renamed over `<file>`.

use crate::calls::{st, Answer};
use crate::client::RaftClient;
use crate::net::rpc_error;
use crate::pb;
use raftify_core::{Error, LogStore, Result, StorageError};
use raftify_storage::LmdbError;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_stream::{Stream, StreamExt};
use tonic::{Response, Status};

/// What [`RaftClient::save_snapshot`] saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedSnapshot {
    /// The snapshot's last included index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The file's length in bytes.
    pub size: u64,
}

/// The chunks `DownloadSnapshot` answers.
pub(crate) type SnapshotFileStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::SnapshotFileChunk, Status>> + Send>>;

/// `DownloadSnapshot` on the server: `store`'s newest snapshot file, in
/// chunks of `chunk` bytes (slices of the file's mapping, not copies).
pub(crate) async fn download(store: Arc<dyn LogStore>, chunk: usize) -> Answer<SnapshotFileStream> {
    let found = tokio::task::spawn_blocking(move || raftify_storage::stored_snapshot_file(&*store))
        .await
        .map_err(|e| Status::internal(format!("reading the snapshot failed: {e}")))?
        .map_err(|e| st(Error::Storage(e)))?;
    let Some((meta, file)) = found else {
        return Err(Status::failed_precondition(
            "this node has no snapshot yet: take one first (CreateSnapshot; raftify-cli snapshot)",
        ));
    };
    let (index, term, size, chunk) = (meta.index, meta.term, file.len() as u64, chunk.max(1));
    let chunks = (0..file.len()).step_by(chunk).map(move |at| {
        Ok(pb::SnapshotFileChunk {
            index,
            term,
            size,
            offset: at as u64,
            data: file.slice(at..at.saturating_add(chunk).min(file.len())),
        })
    });
    Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
}

impl RaftClient {
    /// Saves the newest snapshot stored on the node at `addr` to `path`, a
    /// file of raftify's snapshot-file format (`--restore-snapshot-from`
    /// reads it; so does `raftify-cli debug persisted`). The file is
    /// replaced only once the whole snapshot arrived and checks out; until
    /// then it goes to `<path>.partial`, removed on failure. Take a
    /// snapshot first ([`RaftClient::snapshot`]) for one of the node's
    /// current state. The whole transfer may take
    /// [`GrpcConfig::snapshot_timeout`](crate::GrpcConfig::snapshot_timeout).
    pub async fn save_snapshot(&self, addr: &str, path: &Path) -> Result<SavedSnapshot> {
        let limit = self.config().snapshot_timeout;
        let partial = partial_path(path);
        let saved = tokio::time::timeout(limit, self.receive(addr, &partial, limit)).await;
        let saved = match saved {
            Ok(Ok(saved)) => saved,
            Ok(Err(e)) => return Err(discard(&partial, e).await),
            Err(_) => return Err(discard(&partial, Error::Timeout(limit)).await),
        };
        let checked = {
            let partial = partial.clone();
            tokio::task::spawn_blocking(move || raftify_storage::check_snapshot_file(&partial))
                .await
        };
        let meta = match checked {
            Ok(Ok(meta)) => meta,
            Ok(Err(e)) => return Err(discard(&partial, Error::Storage(e.into())).await),
            Err(e) => return Err(discard(&partial, Error::Fatal(e.to_string())).await),
        };
        if (meta.index, meta.term) != (saved.index, saved.term) {
            let e = corrupt(
                &partial,
                "the file names another snapshot than the node announced",
            );
            return Err(discard(&partial, e).await);
        }
        if let Err(e) = tokio::fs::rename(&partial, path).await {
            return Err(discard(&partial, io_error("rename the backup into place", path, e)).await);
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new(".")).to_path_buf();
        tokio::task::spawn_blocking(move || raftify_storage::sync_dir(&dir))
            .await
            .map_err(|e| Error::Fatal(e.to_string()))?
            .map_err(|e| Error::Storage(e.into()))?;
        Ok(saved)
    }

    /// Streams the node's snapshot file into `partial` and syncs it.
    async fn receive(&self, addr: &str, partial: &Path, limit: Duration) -> Result<SavedSnapshot> {
        let mut stream = self
            .at(addr, |mut c| async move {
                c.download_snapshot(crate::net::request(pb::Empty {}, limit))
                    .await
                    .map(Response::into_inner)
                    .map_err(|s| rpc_error(s, limit))
            })
            .await?;
        let mut file = tokio::fs::File::create(partial)
            .await
            .map_err(|e| io_error("create the backup file", partial, e))?;
        let mut first: Option<SavedSnapshot> = None;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| rpc_error(s, limit))?;
            let announced = SavedSnapshot {
                index: chunk.index,
                term: chunk.term,
                size: chunk.size,
            };
            let expected = *first.get_or_insert(announced);
            if announced != expected || chunk.offset != written {
                return Err(corrupt(
                    partial,
                    "the node's chunks do not follow each other (another snapshot, or a gap)",
                ));
            }
            written = written.saturating_add(chunk.data.len() as u64);
            if written > expected.size {
                return Err(corrupt(partial, "the node sent more than it announced"));
            }
            file.write_all(&chunk.data)
                .await
                .map_err(|e| io_error("write the backup file", partial, e))?;
        }
        let Some(saved) = first.filter(|s| s.size == written) else {
            return Err(corrupt(
                partial,
                "the transfer ended before the whole snapshot",
            ));
        };
        file.sync_all()
            .await
            .map_err(|e| io_error("sync the backup file", partial, e))?;
        Ok(saved)
    }
}

/// `<path>.partial`, where a download goes until it checks out.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Removes what a failed download left; answers its error.
async fn discard(partial: &Path, e: Error) -> Error {
    let _ = tokio::fs::remove_file(partial).await;
    e
}

fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Storage(StorageError::from(LmdbError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }))
}

fn corrupt(path: &Path, what: &str) -> Error {
    Error::Storage(StorageError::corrupted(what, path.display().to_string()))
}

//! Backups over the client service: [`RaftClient::save_snapshot`] streams a
//! node's newest snapshot (`DownloadSnapshot`) into a file of raftify's
//! snapshot-file format — what `--restore-snapshot-from` starts a node or a
//! cluster from — and [`Downloads`], the server side that answers it.
//!
//! The server serves at most
//! [`GrpcConfig::max_concurrent_snapshot_downloads`] at once, copies one
//! chunk at a time out of the snapshot file (the store's own file, mapped;
//! a store that keeps none, such as `MemStore`, encodes one in memory for
//! the download), and cuts a download off when its client takes no chunk
//! for `snapshot_idle_timeout`, or after `snapshot_timeout`, saying so in
//! the stream's last message.
//!
//! The client's file appears whole or not at all: the bytes go to a new
//! hidden file beside it (`.<name>.<random>.partial`, removed on failure),
//! are checked as they arrive (one snapshot, contiguous, no more than
//! announced, announced no larger than `max_snapshot_size`), synced,
//! checked again as a file (magic, lengths, checksum), and only then
//! renamed over `<file>`.

use crate::calls::{st, Answer};
use crate::client::RaftClient;
use crate::config::GrpcConfig;
use crate::net::{request, rpc_error};
use crate::pb;
use bytes::Bytes;
use raftify_core::{Error, LogStore, Result, StorageError};
use raftify_storage::LmdbError;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
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

/// `DownloadSnapshot` on a server: its limits, shared by every group.
pub(crate) struct Downloads {
    permits: Arc<Semaphore>,
    chunk: usize,
    idle: Duration,
    total: Duration,
}

impl Downloads {
    pub(crate) fn new(config: &GrpcConfig) -> Self {
        Downloads {
            permits: Arc::new(Semaphore::new(config.max_concurrent_snapshot_downloads)),
            chunk: config.snapshot_chunk_size.max(1),
            idle: config.snapshot_idle_timeout,
            total: config.snapshot_timeout,
        }
    }

    /// `store`'s newest snapshot file, in chunks copied one at a time by a
    /// task that holds one of the permits until it ends.
    pub(crate) async fn serve(&self, store: Arc<dyn LogStore>) -> Answer<SnapshotFileStream> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "too many snapshot downloads at once (max_concurrent_snapshot_downloads); \
                 try again later",
            )
        })?;
        let found =
            tokio::task::spawn_blocking(move || raftify_storage::stored_snapshot_file(&*store))
                .await
                .map_err(|e| Status::internal(format!("reading the snapshot failed: {e}")))?
                .map_err(|e| st(Error::Storage(e)))?;
        let Some((meta, file)) = found else {
            return Err(Status::failed_precondition(
                "this node has no snapshot yet: take one first (CreateSnapshot; raftify-cli snapshot)",
            ));
        };
        // One slot for the chunk in flight, one kept for the error that
        // ends a download cut off (a stalled client leaves the other full).
        let (tx, rx) = mpsc::channel(2);
        let Ok(last_word) = tx.clone().try_reserve_owned() else {
            return Err(Status::internal("a new channel has no room"));
        };
        let (chunk, idle) = (self.chunk, self.idle);
        let deadline = raftify_core::retry::deadline_after(self.total);
        tokio::spawn(async move {
            let _permit = permit;
            let cut_off = |why: &str| {
                Err(Status::deadline_exceeded(format!(
                    "snapshot download cut off: {why}"
                )))
            };
            let (index, term, size) = (meta.index, meta.term, file.len() as u64);
            for at in (0..file.len()).step_by(chunk) {
                let end = at.saturating_add(chunk).min(file.len());
                // A copy (the file may be a mapping: paged in off the
                // async threads), so what waits for the client is a chunk.
                let part = file.slice(at..end);
                let Ok(data) =
                    tokio::task::spawn_blocking(move || Bytes::copy_from_slice(&part)).await
                else {
                    return;
                };
                let msg = pb::SnapshotFileChunk {
                    index,
                    term,
                    size,
                    offset: at as u64,
                    data,
                };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    last_word.send(cut_off("it outlasted snapshot_timeout"));
                    return;
                }
                match tokio::time::timeout(idle.min(left), tx.send(Ok(msg))).await {
                    Ok(Ok(())) => {}
                    // The client went away.
                    Ok(Err(_)) => return,
                    Err(_) => {
                        last_word.send(cut_off(
                            "the client took no chunk for snapshot_idle_timeout, or it \
                             outlasted snapshot_timeout",
                        ));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Checks the chunks of one download as they arrive.
#[derive(Debug)]
pub(crate) struct Receiving {
    max_size: u64,
    announced: Option<SavedSnapshot>,
    written: u64,
}

impl Receiving {
    pub(crate) fn new(max_size: u64) -> Self {
        Receiving {
            max_size,
            announced: None,
            written: 0,
        }
    }

    /// Whether `chunk` follows what came before: the same snapshot, at the
    /// next offset, within the announced size (itself within the limit).
    pub(crate) fn accept(
        &mut self,
        chunk: &pb::SnapshotFileChunk,
    ) -> std::result::Result<(), String> {
        let this = SavedSnapshot {
            index: chunk.index,
            term: chunk.term,
            size: chunk.size,
        };
        let expected = *self.announced.get_or_insert(this);
        if expected.size > self.max_size {
            return Err(format!(
                "the snapshot is {} bytes, more than max_snapshot_size ({})",
                expected.size, self.max_size
            ));
        }
        if this != expected {
            return Err("a chunk of another snapshot".into());
        }
        if chunk.offset != self.written {
            return Err(format!(
                "a chunk at offset {} where {} was expected",
                chunk.offset, self.written
            ));
        }
        self.written = self.written.saturating_add(chunk.data.len() as u64);
        if self.written > expected.size {
            return Err(format!("more than the {} bytes announced", expected.size));
        }
        Ok(())
    }

    /// What arrived, once the stream ended: the whole snapshot, or why not.
    pub(crate) fn finish(&self) -> std::result::Result<SavedSnapshot, String> {
        match self.announced {
            Some(s) if s.size == self.written => Ok(s),
            Some(s) => Err(format!(
                "the transfer ended after {} of {} bytes",
                self.written, s.size
            )),
            None => Err("the transfer ended before its first chunk".into()),
        }
    }
}

impl RaftClient {
    /// Saves the newest snapshot stored on the node at `addr` to `path`, a
    /// file of raftify's snapshot-file format (`--restore-snapshot-from`
    /// reads it; so does `raftify-cli debug persisted`). `path` is replaced
    /// only once the whole snapshot arrived and checks out; until then it
    /// goes to a new hidden file beside it, removed on failure. Take a
    /// snapshot first ([`RaftClient::snapshot`]) for one of the node's
    /// current state. The transfer may take
    /// [`GrpcConfig::snapshot_timeout`] in all; a snapshot announced larger
    /// than [`GrpcConfig::max_snapshot_size`] is refused.
    pub async fn save_snapshot(&self, addr: &str, path: &Path) -> Result<SavedSnapshot> {
        let limit = self.config().snapshot_timeout;
        let name = path
            .file_name()
            .ok_or_else(|| Error::InvalidArgument(format!("{} names no file", path.display())))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(name);
        prefix.push(".");
        let partial = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(|e| io_error("create a file beside", path, e))?;
        let file = partial
            .reopen()
            .map_err(|e| io_error("open the new file", partial.path(), e))?;
        let received = tokio::time::timeout(limit, self.receive(addr, file, partial.path(), limit));
        let saved = match received.await {
            Ok(r) => r?,
            Err(_) => return Err(Error::Timeout(limit)),
        };
        let checked = {
            let at = partial.path().to_path_buf();
            tokio::task::spawn_blocking(move || raftify_storage::check_snapshot_file(at)).await
        };
        let meta = match checked {
            Ok(Ok(meta)) => meta,
            Ok(Err(e)) => return Err(sent_by(addr, format!("the file does not check out: {e}"))),
            Err(e) => return Err(Error::Fatal(e.to_string())),
        };
        if (meta.index, meta.term) != (saved.index, saved.term) {
            return Err(sent_by(
                addr,
                "a file of another snapshot than announced".into(),
            ));
        }
        partial
            .persist(path)
            .map_err(|e| io_error("rename the backup into place as", path, e.error))?;
        tokio::task::spawn_blocking(move || raftify_storage::sync_dir(&dir))
            .await
            .map_err(|e| Error::Fatal(e.to_string()))?
            .map_err(|e| {
                Error::Storage(StorageError::Invalid(format!(
                    "{} was saved, but its directory could not be synced (the rename may not \
                     survive a crash): {e}",
                    path.display()
                )))
            })?;
        Ok(saved)
    }

    /// Streams the node's snapshot file into `file` and syncs it.
    async fn receive(
        &self,
        addr: &str,
        file: std::fs::File,
        at: &Path,
        limit: Duration,
    ) -> Result<SavedSnapshot> {
        let mut stream = self
            .at(addr, |mut c| async move {
                c.download_snapshot(request(pb::Empty {}, limit))
                    .await
                    .map(Response::into_inner)
                    .map_err(|s| rpc_error(s, limit))
            })
            .await?;
        let mut file = tokio::fs::File::from_std(file);
        let mut check = Receiving::new(self.config().max_snapshot_size);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| rpc_error(s, limit))?;
            check.accept(&chunk).map_err(|e| sent_by(addr, e))?;
            file.write_all(&chunk.data)
                .await
                .map_err(|e| io_error("write", at, e))?;
        }
        let saved = check.finish().map_err(|e| sent_by(addr, e))?;
        file.sync_all().await.map_err(|e| io_error("sync", at, e))?;
        Ok(saved)
    }
}

fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Storage(LmdbError::io(op, path, source).into())
}

/// A download that did not deliver one whole snapshot (the node's data
/// is not in question: the transfer is).
fn sent_by(addr: &str, what: String) -> Error {
    Error::Transport(format!("snapshot download from {addr}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u64, size: u64, offset: u64, len: usize) -> pb::SnapshotFileChunk {
        pb::SnapshotFileChunk {
            index,
            term: 2,
            size,
            offset,
            data: Bytes::from(vec![7u8; len]),
        }
    }

    #[test]
    fn a_whole_snapshot_in_order_is_accepted() {
        let mut r = Receiving::new(100);
        for at in [0, 40, 80] {
            r.accept(&chunk(5, 100, at, if at == 80 { 20 } else { 40 }))
                .unwrap();
        }
        let saved = r.finish().unwrap();
        assert_eq!((saved.index, saved.term, saved.size), (5, 2, 100));
    }

    #[test]
    fn gaps_repeats_excess_other_snapshots_and_early_ends_are_refused() {
        let refused = |chunks: &[pb::SnapshotFileChunk], why: &str| {
            let mut r = Receiving::new(100);
            let err = chunks
                .iter()
                .try_for_each(|c| r.accept(c))
                .and_then(|()| r.finish().map(|_| ()))
                .unwrap_err();
            assert!(err.contains(why), "{err}");
        };
        refused(
            &[chunk(5, 100, 0, 40), chunk(5, 100, 50, 50)],
            "at offset 50",
        );
        refused(&[chunk(5, 100, 0, 40), chunk(5, 100, 0, 40)], "at offset 0");
        refused(
            &[chunk(5, 100, 0, 60), chunk(5, 100, 60, 60)],
            "more than the 100",
        );
        refused(
            &[chunk(5, 100, 0, 40), chunk(6, 100, 40, 60)],
            "another snapshot",
        );
        refused(
            &[chunk(5, 100, 0, 40), chunk(5, 90, 40, 50)],
            "another snapshot",
        );
        refused(&[chunk(5, 100, 0, 40)], "after 40 of 100 bytes");
        refused(&[], "before its first chunk");
        refused(&[chunk(5, u64::MAX, 0, 1)], "more than max_snapshot_size");
    }
}

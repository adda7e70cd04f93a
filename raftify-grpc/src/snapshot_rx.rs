//! Receiving a snapshot stream: the chunks go to a spool file in
//! [`GrpcConfig::snapshot_spool_dir`](crate::GrpcConfig::snapshot_spool_dir)
//! (streamed to disk: a node's heap does not grow with the snapshots it
//! receives) or, without one, to memory. Either way the size is checked
//! against what was announced, and the data against the sender's CRC-32,
//! before anything reaches the node.

use bytes::Bytes;
use raftify_core::codec::{crc32, Crc32};
use std::io::Write;
use std::path::Path;
use tempfile::NamedTempFile;
use tonic::Status;

/// Where the chunks go.
enum Sink {
    Memory(Vec<u8>),
    /// Removed when dropped (a failed or abandoned stream leaves nothing).
    Spool(Option<NamedTempFile>),
}

/// A snapshot being received.
pub(crate) struct Receiving {
    sink: Sink,
    crc: Crc32,
    len: usize,
    cap: usize,
}

impl Receiving {
    /// Starts receiving `cap` bytes, into a spool file in `spool_dir` when
    /// given.
    pub(crate) fn new(cap: usize, spool_dir: Option<&Path>) -> Result<Self, Status> {
        let sink = match spool_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| spool_error("create", dir, e))?;
                let file = tempfile::Builder::new()
                    .prefix("incoming-")
                    .suffix(".snap")
                    .tempfile_in(dir)
                    .map_err(|e| spool_error("create a file in", dir, e))?;
                Sink::Spool(Some(file))
            }
            // Memory grows with what arrives, not with what is announced.
            None => Sink::Memory(Vec::with_capacity(cap.min(8 * 1024 * 1024))),
        };
        Ok(Receiving {
            sink,
            crc: Crc32::new(),
            len: 0,
            cap,
        })
    }

    /// Adds the next chunk.
    pub(crate) async fn push(&mut self, data: Bytes) -> Result<(), Status> {
        if self.len + data.len() > self.cap {
            return Err(Status::invalid_argument(
                "snapshot data exceeds its announced size",
            ));
        }
        self.len += data.len();
        match &mut self.sink {
            Sink::Memory(buf) => buf.extend_from_slice(&data),
            Sink::Spool(slot) => {
                let mut file = slot
                    .take()
                    .ok_or_else(|| Status::internal("snapshot spool file lost"))?;
                let mut crc = std::mem::take(&mut self.crc);
                // Off the async workers: a write may wait for the disk.
                let (file, crc, written) = tokio::task::spawn_blocking(move || {
                    crc.update(&data);
                    let written = file.write_all(&data);
                    (file, crc, written)
                })
                .await
                .map_err(|_| Status::internal("writing the snapshot spool file failed"))?;
                written.map_err(|e| spool_error("write", file.path(), e))?;
                self.crc = crc;
                *slot = Some(file);
            }
        }
        Ok(())
    }

    /// The received data, once it is complete and matches the sender's
    /// checksum (senders before checksums existed send none). A spooled
    /// snapshot comes back as a read-only mapping of its file, which is
    /// removed at once (the mapping keeps the data until it is dropped).
    pub(crate) async fn finish(self, expected: Option<u32>) -> Result<Bytes, Status> {
        if self.len != self.cap {
            return Err(Status::invalid_argument(format!(
                "truncated snapshot: {} of {} bytes",
                self.len, self.cap
            )));
        }
        let (data, actual) = match self.sink {
            Sink::Memory(buf) => {
                let (buf, sum) = tokio::task::spawn_blocking(move || {
                    let sum = crc32(&buf);
                    (buf, sum)
                })
                .await
                .map_err(|_| Status::internal("checksumming the snapshot failed"))?;
                (Bytes::from(buf), sum)
            }
            Sink::Spool(slot) => {
                let file = slot.ok_or_else(|| Status::internal("snapshot spool file lost"))?;
                // The length is known (it was counted as it arrived): an
                // empty snapshot maps nothing.
                let data = if self.len == 0 {
                    Bytes::new()
                } else {
                    map(file)?
                };
                (data, self.crc.finish())
            }
        };
        match expected {
            Some(expected) if expected != actual => Err(Status::data_loss(format!(
                "snapshot data is corrupt: checksum {actual:#010x}, the sender's {expected:#010x}"
            ))),
            _ => Ok(data),
        }
    }
}

/// Maps a complete spool file and removes it.
fn map(file: NamedTempFile) -> Result<Bytes, Status> {
    // SAFETY: the file is this stream's own (a fresh temp file nobody else
    // opens), complete, never written again, and unlinked right below, so
    // the mapped bytes cannot change under the mapping.
    let mapped = unsafe { memmap2::Mmap::map(file.as_file()) }
        .map_err(|e| spool_error("map", file.path(), e))?;
    drop(file);
    Ok(Bytes::from_owner(mapped))
}

fn spool_error(what: &str, path: &Path, e: std::io::Error) -> Status {
    Status::internal(format!(
        "cannot {what} the snapshot spool {}: {e}",
        path.display()
    ))
}

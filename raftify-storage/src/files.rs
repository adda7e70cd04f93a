//! Compaction archives and the durable-file helpers.

use crate::error::LmdbError;
use raftify_core::raft::eraftpb::Entry;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

/// First bytes of a compaction archive.
const ARCHIVE_MAGIC: &[u8; 8] = b"RFTYWAL1";

/// Fsyncs a directory so a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), LmdbError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LmdbError::io("fsync directory", dir, e))
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the
/// same directory is written and fsynced, renamed over `path`, and the
/// directory is fsynced. A crash leaves either the old file or the new one
/// (plus possibly a `.tmp` file, which [`remove_tmp_files`] cleans up).
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), LmdbError> {
    write_durable_with(path, |f, tmp| {
        f.write_all(bytes)
            .map_err(|e| LmdbError::io("write", tmp, e))
    })
}

/// [`write_durable`] with the contents written by `write` into the
/// temporary file (opened for reading and writing; its path given for
/// messages).
pub(crate) fn write_durable_with(
    path: &Path,
    write: impl FnOnce(&mut File, &Path) -> Result<(), LmdbError>,
) -> Result<(), LmdbError> {
    let dir = path.parent().ok_or_else(|| LmdbError::NotAStore {
        path: path.to_path_buf(),
        reason: "file path has no parent directory".into(),
    })?;
    fs::create_dir_all(dir).map_err(|e| LmdbError::io("create directory", dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| LmdbError::io("create", &tmp, e))?;
        write(&mut f, &tmp)?;
        f.sync_all().map_err(|e| LmdbError::io("fsync", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| LmdbError::io("rename into", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes leftover `.tmp` files of interrupted [`write_durable`] calls.
pub(crate) fn remove_tmp_files(dir: &Path) {
    let Ok(read) = fs::read_dir(dir) else { return };
    for entry in read.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The whole of `path`, a `what` (for the error when it is missing).
pub(crate) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, LmdbError> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LmdbError::Missing {
                    path: path.to_path_buf(),
                    what: what.into(),
                }
            } else {
                LmdbError::io("read", path, e)
            }
        })?;
    Ok(buf)
}

/// Encodes raw framed entry records (as stored in LMDB) into an archive:
/// `"RFTYWAL1"` then, per entry, `length (u32 LE) ++ crc32 (u32 LE) ++
/// eraftpb.Entry`.
pub(crate) fn encode_archive(framed_records: &[Vec<u8>]) -> Vec<u8> {
    let total: usize = framed_records.iter().map(|r| r.len() + 4).sum();
    let mut out = Vec::with_capacity(total + 8);
    out.extend_from_slice(ARCHIVE_MAGIC);
    for rec in framed_records {
        // A framed record is crc ++ payload; the archive stores len(payload).
        let payload_len = rec.len().saturating_sub(4) as u32;
        out.extend_from_slice(&payload_len.to_le_bytes());
        out.extend_from_slice(rec);
    }
    out
}

/// Reads a compaction archive written when
/// [`crate::LmdbOptions::archive_compacted`] is set, verifying every record.
pub fn read_archive_file(path: impl AsRef<Path>) -> Result<Vec<Entry>, LmdbError> {
    let path = path.as_ref();
    let bytes = read_file(path, "an archive file")?;
    let bad = |reason: String| LmdbError::corrupted(path, reason);
    if bytes.len() < 8 || &bytes[..8] != ARCHIVE_MAGIC {
        return Err(bad("not a raftify archive file (bad header)".into()));
    }
    let mut out = Vec::new();
    let mut at = 8usize;
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 8)
            .ok_or_else(|| bad(format!("record header at byte {at} is truncated")))?;
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[..4]);
        let len = u32::from_le_bytes(len) as usize;
        let record = bytes
            .get(at + 4..at + 8 + len)
            .ok_or_else(|| bad(format!("record at byte {at} is truncated")))?;
        let entry: Entry = crate::codec::decode_framed(record)
            .map_err(|e| bad(format!("record at byte {at}: {e}")))?;
        out.push(entry);
        at += 8 + len;
    }
    Ok(out)
}

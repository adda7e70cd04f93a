//! The snapshot-file format: what `snap/` holds, what
//! [`write_snapshot_file`] exports and [`read_snapshot_file`] reads.
//!
//! `RFTYSNP2` (written now):
//!
//! ```text
//! "RFTYSNP2" | crc32 (u32 LE) | metadata length (u32 LE) | data length (u64 LE)
//!            | eraftpb.SnapshotMetadata | data
//! ```
//!
//! The checksum covers everything after itself. The data comes last and
//! raw, so it is written as it is produced (a node's own snapshot goes from
//! its state machine straight into the file, buffered) and read back as a
//! slice of the file's mapping: neither way is the state held in memory a
//! second time. `RFTYSNP1` files (`crc32 | length (u64 LE) |
//! eraftpb.Snapshot`) are still read.

use crate::codec::{crc32, decode_msg, encode_msg};
use crate::error::LmdbError;
use crate::files::{read_file, write_durable_with};
use bytes::Bytes;
use raftify_core::codec::Crc32;
use raftify_core::raft::eraftpb::{Snapshot, SnapshotMetadata};
use raftify_core::storage::StorageResult;
use raftify_core::{LogStore, StorageError, WriteSnapshot};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// First bytes of a snapshot file as written now.
const MAGIC: &[u8; 8] = b"RFTYSNP2";
/// First bytes of a snapshot file written before the data was streamed.
const MAGIC_V1: &[u8; 8] = b"RFTYSNP1";
/// Magic, checksum, metadata length, data length.
const HEADER: u64 = 24;
/// Where the checksummed part starts (after magic and checksum).
const SUMMED_FROM: u64 = 12;
/// The buffer between the data's writer and the file.
const BUFFER: usize = 1 << 20;

/// Writes a snapshot file's bytes to `out` (empty, at its start): the
/// header, `meta`, and the data `write_data` writes through a buffer
/// (positions it seeks to count from the data's start); then the lengths,
/// and the checksum read back from `out`. Returns the data's length.
pub(crate) fn write_snapshot_to<W: Read + Write + Seek>(
    out: &mut W,
    meta: &SnapshotMetadata,
    write_data: WriteSnapshot<'_>,
) -> io::Result<u64> {
    let meta_bytes = encode_msg(meta).map_err(io::Error::other)?;
    let meta_len = u32::try_from(meta_bytes.len())
        .map_err(|_| io::Error::other("snapshot metadata over 4 GiB"))?;
    out.write_all(MAGIC)?;
    out.write_all(&[0; HEADER as usize - MAGIC.len()])?;
    out.write_all(&meta_bytes)?;
    let base = HEADER + u64::from(meta_len);
    {
        let mut region = DataRegion {
            inner: BufWriter::with_capacity(BUFFER, &mut *out),
            base,
        };
        write_data(&mut region)?;
        region.inner.flush()?;
    }
    let end = out.seek(SeekFrom::End(0))?;
    let data_len = end - base;
    out.seek(SeekFrom::Start(SUMMED_FROM))?;
    out.write_all(&meta_len.to_le_bytes())?;
    out.write_all(&data_len.to_le_bytes())?;
    // The checksum of what is in `out` now (the page cache, for a file
    // just written), in pieces.
    let crc = crc_from(out)?;
    out.seek(SeekFrom::Start(8))?;
    out.write_all(&crc.to_le_bytes())?;
    out.seek(SeekFrom::End(0))?;
    Ok(data_len)
}

/// The data part of a file being written: seeks count from its start.
struct DataRegion<W: Write + Seek> {
    inner: BufWriter<W>,
    base: u64,
}

impl<W: Write + Seek> Write for DataRegion<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write + Seek> Seek for DataRegion<W> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let pos = match pos {
            SeekFrom::Start(n) => {
                SeekFrom::Start(self.base.checked_add(n).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "seek beyond 2^64")
                })?)
            }
            other => other,
        };
        let was = self.inner.stream_position()?;
        let at = self.inner.seek(pos)?;
        match at.checked_sub(self.base) {
            Some(rel) => Ok(rel),
            None => {
                // Refused: back where it was.
                self.inner.seek(SeekFrom::Start(was))?;
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "seek before the snapshot data's start",
                ))
            }
        }
    }
}

/// The data of `snap`, for [`write_snapshot_to`].
pub(crate) fn data_of(snap: &Snapshot) -> WriteSnapshot<'_> {
    Box::new(move |out| out.write_all(&snap.data))
}

/// Encodes a snapshot in the snapshot-file format: the bytes
/// [`write_snapshot_file`] writes, for a caller that sends them elsewhere.
/// An error says why the snapshot cannot be encoded.
pub fn encode_snapshot_file(snap: &Snapshot) -> Result<Vec<u8>, String> {
    let mut out = io::Cursor::new(Vec::with_capacity(snap.data.len() + 64));
    write_snapshot_to(&mut out, snap.get_metadata(), data_of(snap))
        .map_err(|e| format!("cannot encode the snapshot: {e}"))?;
    Ok(out.into_inner())
}

/// Writes `snapshot` to `path` in raftify's snapshot-file format, atomically
/// and durably (temporary file, fsync, rename, directory fsync).
///
/// The file can be given to [`crate::restore_wal_snapshot_from`] and read
/// back with [`read_snapshot_file`].
pub fn write_snapshot_file(path: impl AsRef<Path>, snapshot: &Snapshot) -> Result<(), LmdbError> {
    write_snapshot_file_with(path.as_ref(), snapshot.get_metadata(), data_of(snapshot)).map(|_| ())
}

/// Writes a snapshot file whose data `write_data` produces, atomically and
/// durably; returns the data's length.
pub(crate) fn write_snapshot_file_with(
    path: &Path,
    meta: &SnapshotMetadata,
    write_data: WriteSnapshot<'_>,
) -> Result<u64, LmdbError> {
    let mut len = 0;
    write_durable_with(path, |file, tmp| {
        len = write_snapshot_to(file, meta, write_data)
            .map_err(|e| LmdbError::io("write snapshot file", tmp, e))?;
        Ok(())
    })?;
    Ok(len)
}

/// Reads and verifies (magic, lengths, checksum, metadata) a snapshot file
/// written by [`write_snapshot_file`] or found in a store's `snap/` folder.
pub fn read_snapshot_file(path: impl AsRef<Path>) -> Result<Snapshot, LmdbError> {
    let path = path.as_ref();
    let buf = read_file(path, "a snapshot file")?;
    decode_snapshot_file(path, Bytes::from(buf))
}

/// Checks a snapshot file (magic, lengths, checksum, metadata), reading it
/// in pieces: neither held on the heap nor mapped (a file another process
/// could still change, such as a download, is never mapped). Answers its
/// metadata.
pub fn check_snapshot_file(path: impl AsRef<Path>) -> Result<SnapshotMetadata, LmdbError> {
    let path = path.as_ref();
    let io_err = |e: io::Error| LmdbError::io("read snapshot file", path, e);
    let bad = |reason: String| LmdbError::corrupted(path, reason);
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LmdbError::Missing {
                path: path.to_path_buf(),
                what: "a snapshot file".into(),
            })
        }
        Err(e) => return Err(io_err(e)),
    };
    let len = file.metadata().map_err(io_err)?.len();
    let mut head = Vec::with_capacity(HEADER as usize);
    (&mut file)
        .take(HEADER)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    if head.starts_with(MAGIC_V1) {
        // The old format is read whole (it was written whole).
        return read_snapshot_file(path).map(|mut s| s.take_metadata());
    }
    let header = Header::parse(&head, len).map_err(bad)?;
    let actual = crc_from(&mut file).map_err(io_err)?;
    header.check_crc(actual).map_err(bad)?;
    let mut meta = vec![0u8; header.meta_len as usize];
    file.seek(SeekFrom::Start(HEADER)).map_err(io_err)?;
    file.read_exact(&mut meta).map_err(io_err)?;
    decode_msg(&meta).map_err(bad)
}

/// The checksum of what `r` holds from [`SUMMED_FROM`] to its end, read
/// in pieces.
fn crc_from<R: Read + Seek>(r: &mut R) -> io::Result<u32> {
    r.seek(SeekFrom::Start(SUMMED_FROM))?;
    let mut crc = Crc32::new();
    let mut buf = vec![0u8; BUFFER];
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(crc.finish()),
            n => crc.update(&buf[..n]),
        }
    }
}

/// The fixed header of an `RFTYSNP2` file: its checksum and the lengths
/// of its metadata and data, which must add up to the file's.
struct Header {
    crc: u32,
    meta_len: u64,
}

impl Header {
    /// Parses the first bytes of a file of `len` bytes (a whole header's
    /// worth when the file has one).
    fn parse(head: &[u8], len: u64) -> Result<Header, String> {
        let word = |at: usize| -> [u8; 4] {
            let mut w = [0u8; 4];
            w.copy_from_slice(&head[at..at + 4]);
            w
        };
        if head.len() < HEADER as usize || !head.starts_with(MAGIC) {
            return Err(format!(
                "not a raftify snapshot file (missing the {:?} header)",
                String::from_utf8_lossy(MAGIC)
            ));
        }
        let crc = u32::from_le_bytes(word(8));
        let meta_len = u64::from(u32::from_le_bytes(word(12)));
        let mut data_len = [0u8; 8];
        data_len.copy_from_slice(&head[16..24]);
        let data_len = u64::from_le_bytes(data_len);
        let expected = HEADER
            .checked_add(meta_len)
            .and_then(|n| n.checked_add(data_len));
        if expected != Some(len) {
            return Err(format!(
                "truncated or extended: the header says {meta_len} metadata and {data_len} data \
                 bytes, the file has {} bytes after its {HEADER}-byte header",
                len.saturating_sub(HEADER)
            ));
        }
        Ok(Header { crc, meta_len })
    }

    /// Whether `actual` (the checksum of the file from [`SUMMED_FROM`]) is
    /// the one the header stores.
    fn check_crc(&self, actual: u32) -> Result<(), String> {
        if actual == self.crc {
            return Ok(());
        }
        Err(format!(
            "snapshot checksum mismatch (stored {:#010x}, computed {actual:#010x})",
            self.crc
        ))
    }
}

/// A store's newest snapshot as a snapshot file's bytes, with its
/// metadata, for a backup: the file the store keeps when it keeps one (a
/// mapping, not a copy; raftify-storage), else the snapshot encoded in
/// that format. `None` before the store's first snapshot.
pub fn stored_snapshot_file(
    store: &dyn LogStore,
) -> StorageResult<Option<(SnapshotMetadata, Bytes)>> {
    if let Some(kept) = store.snapshot_file()?.filter(|(m, _)| m.index > 0) {
        return Ok(Some(kept));
    }
    let mut snap = store.snapshot()?;
    if snap.get_metadata().index == 0 {
        return Ok(None);
    }
    let bytes = encode_snapshot_file(&snap).map_err(StorageError::Invalid)?;
    Ok(Some((snap.take_metadata(), Bytes::from(bytes))))
}

/// Reads one of the store's own snapshot files through a read-only
/// mapping: the data is a slice of it (file-backed pages the kernel can
/// reclaim, not a copy on the heap); with the whole file's bytes (the
/// mapping). `Ok(None)`: no such file.
pub(crate) fn map_snapshot_file(path: &Path) -> Result<Option<(Snapshot, Bytes)>, LmdbError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LmdbError::io("open snapshot file", path, e)),
    };
    let len = file
        .metadata()
        .map_err(|e| LmdbError::io("stat snapshot file", path, e))?
        .len();
    if len < HEADER {
        return Err(LmdbError::corrupted(
            path,
            format!("a snapshot file of {len} bytes is shorter than its header"),
        ));
    }
    // SAFETY: the store's snapshot files are written under a temporary
    // name, synced, renamed into place and never written again (only
    // removed, which a mapping outlives), so the mapped bytes cannot
    // change while the snapshot lives.
    let mapped = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| LmdbError::io("map snapshot file", path, e))?;
    let file = Bytes::from_owner(mapped);
    decode_snapshot_file(path, file.clone()).map(|s| Some((s, file)))
}

/// Decodes a snapshot file's bytes; `path` is only used in messages. The
/// data of an `RFTYSNP2` file is a slice of `bytes`.
pub(crate) fn decode_snapshot_file(path: &Path, bytes: Bytes) -> Result<Snapshot, LmdbError> {
    let bad = |reason: String| LmdbError::corrupted(path, reason);
    if bytes.starts_with(MAGIC_V1) {
        return decode_v1(&bytes).map_err(bad);
    }
    let header = Header::parse(&bytes, bytes.len() as u64).map_err(bad)?;
    header
        .check_crc(crc32(&bytes[SUMMED_FROM as usize..]))
        .map_err(bad)?;
    let data_at = (HEADER + header.meta_len) as usize;
    let meta: SnapshotMetadata = decode_msg(&bytes[HEADER as usize..data_at]).map_err(bad)?;
    let mut snap = Snapshot::default();
    snap.set_metadata(meta);
    snap.data = bytes.slice(data_at..);
    Ok(snap)
}

/// `"RFTYSNP1" | crc32 (u32 LE) | length (u64 LE) | eraftpb.Snapshot`.
fn decode_v1(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < 20 {
        return Err(format!(
            "a snapshot file of {} bytes is shorter than its header",
            bytes.len()
        ));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[8..12]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len);
    let payload = &bytes[20..];
    if payload.len() as u64 != len {
        return Err(format!(
            "truncated or extended: header says {len} payload bytes, file has {}",
            payload.len()
        ));
    }
    if crc32(payload) != u32::from_le_bytes(crc) {
        return Err("snapshot checksum mismatch".into());
    }
    decode_msg(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(index: u64, data: &[u8]) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = 2;
        s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.data = Bytes::copy_from_slice(data);
        s
    }

    #[test]
    fn files_round_trip_and_the_data_is_a_slice_of_them() {
        for data in [&b""[..], b"x", &[9u8; 3 << 20][..]] {
            let s = snap(7, data);
            let bytes = Bytes::from(encode_snapshot_file(&s).unwrap());
            let back = decode_snapshot_file(Path::new("t"), bytes.clone()).unwrap();
            assert_eq!(back, s);
            let at = back.data.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(at + data.len(), bytes.len(), "the data is the file's tail");
        }
    }

    #[test]
    fn a_writer_may_patch_what_it_wrote_but_not_the_header() {
        let mut out = io::Cursor::new(Vec::new());
        let meta = snap(3, b"").take_metadata();
        write_snapshot_to(
            &mut out,
            &meta,
            Box::new(|w| {
                w.write_all(b"0000-rest")?;
                w.seek(SeekFrom::Start(0))?;
                w.write_all(b"LEN!")?;
                assert!(w.seek(SeekFrom::Current(-5)).is_err(), "before the data");
                // A refused seek leaves the position as it was.
                assert_eq!(w.stream_position()?, 4);
                w.seek(SeekFrom::End(0))?;
                Ok(())
            }),
        )
        .unwrap();
        let back = decode_snapshot_file(Path::new("t"), Bytes::from(out.into_inner())).unwrap();
        assert_eq!(&back.data[..], b"LEN!-rest");
        assert_eq!(back.get_metadata(), &meta);
    }

    #[test]
    fn damage_is_reported_not_returned() {
        let good = encode_snapshot_file(&snap(5, b"some data")).unwrap();
        for cut in 0..good.len() {
            let r = decode_snapshot_file(Path::new("t"), Bytes::copy_from_slice(&good[..cut]));
            assert!(r.is_err(), "cut at {cut}");
        }
        for at in 8..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            let r = decode_snapshot_file(Path::new("t"), Bytes::from(bad));
            assert!(r.is_err(), "flipped byte {at}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode_snapshot_file(Path::new("t"), Bytes::from(longer)).is_err());
    }

    #[test]
    fn version_1_files_are_still_read() {
        let s = snap(9, b"old data");
        let payload = encode_msg(&s).unwrap();
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&crc32(&payload).to_le_bytes());
        v1.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        v1.extend_from_slice(&payload);
        assert_eq!(
            decode_snapshot_file(Path::new("t"), Bytes::from(v1.clone())).unwrap(),
            s
        );
        v1.push(1);
        assert!(decode_snapshot_file(Path::new("t"), Bytes::from(v1)).is_err());
    }

    #[test]
    fn a_backup_is_the_stores_snapshot_and_checks_as_a_file() {
        use raftify_core::MemStore;
        let store = MemStore::new();
        assert!(stored_snapshot_file(&store).unwrap().is_none());
        let install = raftify_core::WriteBatch {
            snapshot: Some(snap(12, b"state")),
            ..Default::default()
        };
        store.write(install).unwrap();
        let (meta, bytes) = stored_snapshot_file(&store).unwrap().unwrap();
        assert_eq!((meta.index, meta.term), (12, 2));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.snap");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(check_snapshot_file(&path).unwrap(), meta);
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = check_snapshot_file(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let mut flipped = bytes.to_vec();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        std::fs::write(&path, &flipped).unwrap();
        let err = check_snapshot_file(&path).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::write(&path, b"RFTYSNP2").unwrap();
        let err = check_snapshot_file(&path).unwrap_err().to_string();
        assert!(err.contains("not a raftify snapshot file"), "{err}");
        let err = check_snapshot_file(dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}

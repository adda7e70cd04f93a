//! The write-ahead journal: the hot path's durability, one `fdatasync`
//! per write.
//!
//! A store with fsync on appends each raft write (entries and hard state)
//! to the journal and syncs it once; the write is then durable. The store
//! moves journaled writes into LMDB later, in large batches
//! ("checkpoints", see `store/checkpoint.rs`); a journal record is needed
//! only until the checkpoint that covers it is durable. A store opened with
//! `no_sync` journals the same way without syncing: a write is then one
//! `pwrite` instead of an LMDB commit's page writes.
//!
//! # Files
//!
//! `<store>/wal/<id>.jnl`, each a *segment* of fixed size, filled with
//! zeros when created. Writes overwrite blocks the file already has, so an
//! `fdatasync` flushes data only, never a file-size change through the
//! file system's journal (measured: twice the sync rate of appending to a
//! growing file). Segments are reused once checkpointed.
//!
//! A segment starts with a 32-byte header: `"RFTYJNL1"`, the sequence
//! number of its first record (u64 LE), a salt (u64 LE, new every time the
//! segment is (re)started), `crc32` of those 24 bytes (u32 LE), 4 zero
//! bytes. Records follow back to back:
//!
//! ```text
//! len (u32 LE) | crc32 (u32 LE) | seq (u64 LE) | salt (u64 LE) | payload (len bytes)
//! ```
//!
//! with the CRC over `seq ++ salt ++ payload`.
//!
//! # Recovery
//!
//! Reading stops at the first record that is not valid: bad CRC, a salt
//! other than its segment's (a record left from the segment's previous
//! use), or a sequence number other than the next one. Segments are read in
//! the order of their first sequence number and must continue each other.
//! Why what is read is exactly a prefix of what was written, and holds
//! everything acknowledged:
//!
//! * a record is acknowledged only after the `fdatasync` that follows its
//!   write returned, and that sync covers every earlier record of the
//!   segment; a segment is started only after the previous one's last
//!   record was synced;
//! * a record torn by a power loss fails its CRC; one that reached the disk
//!   although the sync had not returned is simply kept (it was never
//!   acknowledged, as with any log);
//! * after a recovery the writer never appends behind what it read: it
//!   starts a new segment with a new salt, so a record of an earlier life
//!   that happens to follow can never pass for a new one.

use crate::codec::crc32;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Folder of the journal inside a store directory.
pub(crate) const JOURNAL_DIR: &str = "wal";
const MAGIC: &[u8; 8] = b"RFTYJNL1";
const HEADER: u64 = 32;
const RECORD_HEADER: u64 = 24;
/// Segments are sized in multiples of this.
const BLOCK: u64 = 4096;
/// Largest segment size taken from the options (1 GiB).
const MAX_SEGMENT: u64 = 1 << 30;
/// How far after a damaged record reading looks for an intact one (see
/// `records_of`).
const DAMAGE_SCAN: usize = 256 * 1024;

/// A journal record read back: its sequence number and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) payload: Vec<u8>,
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    id: u64,
    file: File,
    len: u64,
    /// Sequence number of the first record (0: never used).
    first_seq: u64,
    /// Sequence number of the last record written (0: none).
    last_seq: u64,
}

/// The segment being written: its id, salt and where the next record goes.
#[derive(Debug, Clone, Copy)]
struct Active {
    id: u64,
    salt: u64,
    pos: u64,
}

/// The appending side of the journal (one per store, under its lock).
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    segment_size: u64,
    segments: Vec<Segment>,
    /// The segment being written.
    active: Option<Active>,
    next_seq: u64,
    next_id: u64,
    /// Set by a failed write or sync: what is on disk is then unknown, so
    /// the journal takes no more writes.
    failed: Option<String>,
    /// Whether appends (and new segments) are synced. Off for a store
    /// opened with `no_sync`: a record then survives a process crash (it
    /// is in the page cache) but not necessarily a power loss.
    sync: bool,
}

fn segment_name(id: u64) -> String {
    format!("{id:08}.jnl")
}

fn segment_id(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".jnl")?;
    (stem.len() == 8 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// The segment files of a journal directory, by id (none if it is missing).
fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
            out.push((id, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Parses a segment header: `(first_seq, salt)`.
fn parse_header(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() < HEADER as usize || &b[..8] != MAGIC {
        return None;
    }
    let u64_at = |at: usize| b[at..at + 8].try_into().ok().map(u64::from_le_bytes);
    let crc: [u8; 4] = b[24..28].try_into().ok()?;
    if crc32(&b[..24]) != u32::from_le_bytes(crc) {
        return None;
    }
    Some((u64_at(8)?, u64_at(16)?))
}

fn header(first_seq: u64, salt: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&first_seq.to_le_bytes());
    h[16..24].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Parses the record at `pos` of a segment with `salt`: `(seq, payload,
/// end)` if it is whole and its CRC matches.
fn record_at(bytes: &[u8], pos: usize, salt: u64) -> Option<(u64, &[u8], usize)> {
    let head = bytes.get(pos..pos + RECORD_HEADER as usize)?;
    let le32 = |at: usize| head[at..at + 4].try_into().ok().map(u32::from_le_bytes);
    let le64 = |at: usize| head[at..at + 8].try_into().ok().map(u64::from_le_bytes);
    let (len, crc, seq, rec_salt) = (le32(0)? as usize, le32(4)?, le64(8)?, le64(16)?);
    let end = pos.checked_add(RECORD_HEADER as usize)?.checked_add(len)?;
    let checked = bytes.get(pos + 8..end)?;
    (rec_salt == salt && crc32(checked) == crc).then(|| (seq, &checked[16..], end))
}

/// The valid records of one segment's bytes, in order, given its header;
/// an error if a damaged record after `after` is followed by a valid one
/// (damage on the disk, not a write torn by a crash: a record is written
/// only after the one before it was synced). Records up to `after` were
/// checkpointed: their segment may be being reused, its start overwritten.
fn records_of(bytes: &[u8], first_seq: u64, salt: u64, after: u64) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let mut pos = HEADER as usize;
    let mut expect = first_seq;
    while let Some((seq, payload, end)) = record_at(bytes, pos, salt) {
        if seq != expect {
            break;
        }
        out.push(Record {
            seq,
            payload: payload.to_vec(),
        });
        expect = expect.saturating_add(1);
        pos = end;
    }
    if expect <= after {
        return Ok(out);
    }
    // A damaged record followed by an intact one: look where the damaged
    // one's length says the next starts, and for the segment's salt in the
    // bytes after it (its length may be what is damaged). The search is
    // bounded: damage further from the last valid record than that is
    // taken for a torn write (it would need a record that large).
    let intact_after = |start: usize| {
        start > pos && matches!(record_at(bytes, start, salt), Some((seq, _, _)) if seq > expect)
    };
    let implied = bytes
        .get(pos..pos + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .and_then(|len| pos.checked_add(RECORD_HEADER as usize + len as usize));
    let needle = salt.to_le_bytes();
    let window = bytes
        .get(pos + 1..)
        .unwrap_or_default()
        .iter()
        .take(DAMAGE_SCAN);
    let found = implied.is_some_and(intact_after)
        || window.enumerate().any(|(i, &b)| {
            b == needle[0]
                && bytes.get(pos + 1 + i..pos + 9 + i) == Some(&needle[..])
                && (pos + 1 + i).checked_sub(16).is_some_and(intact_after)
        });
    if found {
        return Err(format!(
            "journal record {expect} is damaged but a later record after it is intact"
        ));
    }
    Ok(out)
}

/// A record buffer: space for the record's header, to which the caller
/// appends the payload before [`Journal::append`] (which fills the header
/// in place, so the payload is written without a copy).
pub(crate) fn new_record(payload_capacity: usize) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEADER as usize + payload_capacity);
    r.resize(RECORD_HEADER as usize, 0);
    r
}

/// Reads every record of the journal in `store_dir` after sequence number
/// `after` (what the store has already checkpointed), in order, stopping at
/// the first invalid record (a write torn by a crash). Read-only: changes
/// nothing on disk. When `strict`, damage that a crash cannot explain (a
/// damaged record followed by an intact one, a segment starting after a
/// gap) is an `InvalidData` error; not strict (a read-only handle, whose
/// writer may be appending and reusing segments while they are read), it
/// ends the records read like a torn write does.
pub(crate) fn read_after(store_dir: &Path, after: u64, strict: bool) -> io::Result<Vec<Record>> {
    let mut segments = Vec::new();
    for (_, path) in list(&store_dir.join(JOURNAL_DIR))? {
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        if let Some((first, salt)) = parse_header(&bytes) {
            segments.push((first, salt, bytes, path));
        }
    }
    let damaged = |path: &Path, what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    // A segment restarted after a crash may share its first number with
    // an abandoned one; the abandoned one's records are then invalid.
    segments.sort_by_key(|s| s.0);
    let mut out: Vec<Record> = Vec::new();
    let mut next = after.saturating_add(1);
    for (first, salt, bytes, path) in segments {
        let records = match records_of(&bytes, first, salt, after) {
            Ok(r) => r,
            Err(e) if strict => return Err(damaged(&path, e)),
            Err(_) => break,
        };
        if first > next {
            if records.is_empty() {
                continue; // only its header reached the disk
            }
            if !strict {
                break;
            }
            return Err(damaged(
                &path,
                format!("the journal jumps from record {} to {first}", next - 1),
            ));
        }
        for r in records {
            if r.seq == next {
                next = next.saturating_add(1);
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// A salt that differs between every start of a segment, in this process
/// and across restarts.
fn new_salt(first_seq: u64, id: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 of the inputs: any change flips about half the bits.
    let mut z =
        nanos ^ first_seq.rotate_left(21) ^ id.rotate_left(42) ^ u64::from(std::process::id());
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Journal {
    /// Opens the journal of `store_dir` for appending after sequence number
    /// `last_seq`, which the store has checkpointed: every existing segment
    /// is free for reuse. Creates the folder if needed. `sync`: whether
    /// appends are synced (see [`Journal::append`]).
    pub(crate) fn open(
        store_dir: &Path,
        segment_size: u64,
        last_seq: u64,
        sync: bool,
    ) -> io::Result<Self> {
        let dir = store_dir.join(JOURNAL_DIR);
        fs::create_dir_all(&dir)?;
        let mut segments = Vec::new();
        let mut next_id = 0;
        for (id, path) in list(&dir)? {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            next_id = next_id.max(id.saturating_add(1));
            segments.push(Segment {
                id,
                file,
                len,
                first_seq: 0,
                last_seq: 0,
            });
        }
        let mut journal = Journal {
            dir,
            segment_size: segment_size.clamp(2 * BLOCK, MAX_SEGMENT).div_ceil(BLOCK) * BLOCK,
            segments,
            active: None,
            next_seq: last_seq.saturating_add(1),
            next_id,
            failed: None,
            sync,
        };
        // The first segment is made now, not by the first write: zero-filling
        // it takes a while on a busy disk, and the first write is often a
        // vote that an election waits for.
        if journal.segments.is_empty() {
            journal.create_segment(journal.segment_size)?;
        }
        Ok(journal)
    }

    /// Appends one record and syncs it: when this returns `Ok(seq)` the
    /// record survives a power loss (a process crash only, for a journal
    /// opened without syncs). `checkpointed` is the last sequence number
    /// the store has made durable in LMDB: segments holding nothing after
    /// it may be reused.
    ///
    /// After a failed write or sync the outcome is unknown (the record may
    /// or may not be on disk) and every later append fails with the same
    /// reason. A failure to make room (a new segment on a full disk) leaves
    /// nothing behind and is not sticky.
    pub(crate) fn append(&mut self, record: &mut [u8], checkpointed: u64) -> io::Result<u64> {
        if let Some(why) = &self.failed {
            return Err(io::Error::other(format!(
                "the journal failed earlier and takes no more writes: {why}"
            )));
        }
        self.try_append(record, checkpointed)
    }

    /// Whether a write or sync failed: the journal takes no more writes.
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// See [`Journal::append`]; `record` is [`new_record`] and the payload.
    fn try_append(&mut self, record: &mut [u8], checkpointed: u64) -> io::Result<u64> {
        let payload_len = record
            .len()
            .checked_sub(RECORD_HEADER as usize)
            .ok_or_else(|| io::Error::other("a journal record lacks its header space"))?;
        let len = u32::try_from(payload_len)
            .map_err(|_| io::Error::other("a journal record is limited to 4 GiB"))?;
        let need = RECORD_HEADER + u64::from(len);
        let room = self
            .active
            .and_then(|a| self.segment(a.id).map(|s| a.pos + need <= s.len));
        if room != Some(true) {
            self.start_segment(need, checkpointed)?;
        }
        let Some(a) = self.active else {
            return Err(io::Error::other("no journal segment is active"));
        };
        let seq = self.next_seq;
        // The header is filled in place: the payload is never copied.
        record[..4].copy_from_slice(&len.to_le_bytes());
        record[8..16].copy_from_slice(&seq.to_le_bytes());
        record[16..24].copy_from_slice(&a.salt.to_le_bytes());
        let crc = crc32(&record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        let seg = self
            .segments
            .iter_mut()
            .find(|s| s.id == a.id)
            .ok_or_else(|| io::Error::other("the active journal segment is gone"))?;
        // From here a failure leaves the record's fate unknown. A new
        // segment's header goes with its first record, under one sync.
        let header = (a.pos == HEADER).then(|| header(seq, a.salt));
        let written = header
            .map_or(Ok(()), |h| seg.file.write_all_at(&h, 0))
            .and_then(|()| seg.file.write_all_at(record, a.pos))
            .and_then(|()| match self.sync {
                true => seg.file.sync_data(),
                false => Ok(()),
            });
        if let Err(e) = written {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        if a.pos == HEADER {
            seg.first_seq = seq;
        }
        seg.last_seq = seq;
        self.active = Some(Active {
            pos: a.pos + need,
            ..a
        });
        self.next_seq += 1;
        Ok(seq)
    }

    fn segment(&self, id: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id == id)
    }

    /// Makes a segment with room for `need` bytes of records the active
    /// one: a free segment (all its records checkpointed) if one is large
    /// enough, else a new file. The previous segment's records are all
    /// synced already (every append syncs).
    fn start_segment(&mut self, need: u64, checkpointed: u64) -> io::Result<()> {
        let active = self.active.map(|a| a.id);
        let size = self.segment_size;
        let free = |s: &Segment| Some(s.id) != active && s.last_seq <= checkpointed;
        // Free segments made for one large record go.
        let dir = self.dir.clone();
        self.segments.retain(|s| {
            let retire = free(s) && s.len > size && HEADER + need <= size;
            if retire {
                let _ = fs::remove_file(dir.join(segment_name(s.id)));
            }
            !retire
        });
        let found = self
            .segments
            .iter()
            .find(|s| free(s) && s.len >= HEADER + need)
            .map(|s| s.id);
        let id = match found {
            Some(id) => id,
            None => self.create_segment((HEADER + need).max(size))?,
        };
        if let Some(seg) = self.segments.iter_mut().find(|s| s.id == id) {
            seg.first_seq = 0;
            seg.last_seq = 0;
        }
        self.active = Some(Active {
            id,
            salt: new_salt(self.next_seq, id),
            pos: HEADER,
        });
        Ok(())
    }

    /// Creates a zero-filled segment file of `size` bytes (rounded up to
    /// whole blocks), durably, and returns its id.
    fn create_segment(&mut self, size: u64) -> io::Result<u64> {
        let size = size.div_ceil(BLOCK) * BLOCK;
        let id = self.next_id;
        let path = self.dir.join(segment_name(id));
        let tmp = self.dir.join(format!(".{}.tmp", segment_name(id)));
        let made = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            // Real zero blocks, not a sparse or fallocated file: later
            // syncs then flush data only (see the module docs).
            let zeros = vec![0u8; (1 << 20).min(size) as usize];
            let mut at = 0;
            while at < size {
                let n = (size - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            if self.sync {
                file.sync_all()?;
            }
            fs::rename(&tmp, &path)?;
            if self.sync {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(file)
        })();
        let file = match made {
            Ok(f) => f,
            Err(e) => {
                // A full disk must not keep a segment-sized leftover.
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.next_id += 1;
        self.segments.push(Segment {
            id,
            file,
            len: size,
            first_seq: 0,
            last_seq: 0,
        });
        Ok(id)
    }

    /// Number of segment files.
    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Removes leftover `.tmp` files of interrupted segment creations.
pub(crate) fn remove_tmp_files(store_dir: &Path) {
    crate::files::remove_tmp_files(&store_dir.join(JOURNAL_DIR));
}

/// Bytes of a segment file, for tests that damage journals.
#[cfg(test)]
pub(crate) fn segment_paths(store_dir: &Path) -> Vec<PathBuf> {
    list(&store_dir.join(JOURNAL_DIR))
        .unwrap_or_default()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[cfg(test)]
mod tests;

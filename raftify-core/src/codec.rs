//! How raftify frames what it puts in the log and in snapshots.
//!
//! * A normal entry's data is empty (raft's own no-op), or a tag byte followed
//!   by the payload: [`TAG_USER`] + the user's encoded entry,
//!   [`TAG_RESERVE_ID`] (a join-ticket id reservation, no payload),
//!   [`TAG_SESSION_OPEN`] (idle timeout, leader stamp) or
//!   [`TAG_SESSION_WRITE`] (session, seq, acked, leader stamp, then the
//!   user's encoded entry) or [`TAG_KEYED_WRITE`] (key length u16, the
//!   key's UTF-8 bytes, time-to-live, leader stamp, then the user's encoded
//!   entry), all integers big-endian, u64 unless said.
//! * A snapshot's data is raftify's own replicated metadata (the address
//!   book, the next free node id) and the state machine's bytes
//!   ([`encode_snapshot`], [`decode_snapshot`], [`SnapshotEnvelope`]); the
//!   state is written in place and read in place, never copied.
//! * A configuration change carries a [`ConfChangeContext`] (the addresses of
//!   the nodes it adds) in its context, so every node's address book follows
//!   the log and survives restarts.

use crate::sessions::Sessions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Tag of an entry carrying a user command.
pub const TAG_USER: u8 = 0;
/// Tag of an entry reserving a node id for a join ticket.
pub const TAG_RESERVE_ID: u8 = 1;
/// Tag of an entry opening a client session (see [`crate::sessions`]).
pub const TAG_SESSION_OPEN: u8 = 2;
/// Tag of a user command written in a client session.
pub const TAG_SESSION_WRITE: u8 = 3;
/// Tag of a user command carrying an idempotency key.
pub const TAG_KEYED_WRITE: u8 = 4;
/// The longest idempotency key, in bytes (the shortest is 1).
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// A decoded normal entry.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryPayload<'a> {
    /// Raft's leader no-op (empty data).
    Noop,
    /// A user command, still encoded.
    User(&'a [u8]),
    /// A node id reservation.
    ReserveId,
    /// A session opened with this idle timeout, at the leader's `stamp_ms`.
    SessionOpen {
        /// Idle time after which the session expires.
        idle_ms: u64,
        /// The proposing leader's wall clock.
        stamp_ms: u64,
    },
    /// A user command in a session.
    SessionWrite {
        /// The session (the index of the entry that opened it).
        session: u64,
        /// This write's sequence number in the session.
        seq: u64,
        /// The lowest sequence number whose answer the client still awaits.
        acked: u64,
        /// The proposing leader's wall clock.
        stamp_ms: u64,
        /// The user's encoded entry.
        user: &'a [u8],
    },
    /// A user command with an idempotency key.
    KeyedWrite {
        /// The key (1..=[`MAX_IDEMPOTENCY_KEY`] bytes).
        key: &'a str,
        /// How long the answer is remembered, in ms.
        ttl_ms: u64,
        /// The proposing leader's wall clock.
        stamp_ms: u64,
        /// The user's encoded entry.
        user: &'a [u8],
    },
}

/// Frames a session opening.
pub fn frame_session_open(idle_ms: u64, stamp_ms: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    v.push(TAG_SESSION_OPEN);
    v.extend_from_slice(&idle_ms.to_be_bytes());
    v.extend_from_slice(&stamp_ms.to_be_bytes());
    v
}

/// Frames a user command written in a session.
pub fn frame_session_write(
    session: u64,
    seq: u64,
    acked: u64,
    stamp_ms: u64,
    encoded: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(33 + encoded.len());
    v.push(TAG_SESSION_WRITE);
    for n in [session, seq, acked, stamp_ms] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v.extend_from_slice(encoded);
    v
}

/// Frames a user command with an idempotency key (checked by
/// [`check_idempotency_key`] before).
pub fn frame_keyed_write(key: &str, ttl_ms: u64, stamp_ms: u64, encoded: &[u8]) -> Vec<u8> {
    let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    let key = &key.as_bytes()[..usize::from(len)];
    let mut v = Vec::with_capacity(19 + key.len() + encoded.len());
    v.push(TAG_KEYED_WRITE);
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(&ttl_ms.to_be_bytes());
    v.extend_from_slice(&stamp_ms.to_be_bytes());
    v.extend_from_slice(encoded);
    v
}

/// Sets the leader's stamp of a framed entry (session openings, session
/// writes and keyed writes carry one) to `now_ms`, and returns the user's
/// encoded entry inside it, if it has one (for
/// [`AbstractLogEntry::stamp_on_leader`](crate::AbstractLogEntry::stamp_on_leader)).
/// Bytes that do not parse are left alone.
pub fn stamp_on_leader(data: &mut [u8], now_ms: u64) -> Option<&mut [u8]> {
    let now = now_ms.to_be_bytes();
    let (tag, rest) = data.split_first_mut()?;
    match *tag {
        TAG_USER => Some(rest),
        TAG_SESSION_OPEN => {
            rest.get_mut(8..16)?.copy_from_slice(&now);
            None
        }
        TAG_SESSION_WRITE => {
            rest.get_mut(24..32)?.copy_from_slice(&now);
            rest.get_mut(32..)
        }
        TAG_KEYED_WRITE => {
            let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
            let at = 2 + len + 8;
            rest.get_mut(at..at + 8)?.copy_from_slice(&now);
            rest.get_mut(at + 8..)
        }
        _ => None,
    }
}

/// Whether `key` may be an idempotency key: 1..=[`MAX_IDEMPOTENCY_KEY`]
/// bytes.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(format!(
            "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} bytes, not {}",
            key.len()
        ));
    }
    Ok(())
}

fn parse_keyed_write(rest: &[u8]) -> Option<EntryPayload<'_>> {
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 || len > MAX_IDEMPOTENCY_KEY || rest.len() < len {
        return None;
    }
    let (key, rest) = rest.split_at(len);
    let key = std::str::from_utf8(key).ok()?;
    let ([ttl_ms, stamp_ms], user) = take_u64s::<2>(rest)?;
    Some(EntryPayload::KeyedWrite {
        key,
        ttl_ms,
        stamp_ms,
        user,
    })
}

/// `n` big-endian u64s at the start of `data`, and the rest.
fn take_u64s<const N: usize>(data: &[u8]) -> Option<([u64; N], &[u8])> {
    if data.len() < N * 8 {
        return None;
    }
    let (head, rest) = data.split_at(N * 8);
    let mut out = [0u64; N];
    for (i, chunk) in head.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        out[i] = u64::from_be_bytes(b);
    }
    Some((out, rest))
}

/// Frames a user command.
pub fn frame_user(encoded: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(encoded.len() + 1);
    v.push(TAG_USER);
    v.extend_from_slice(encoded);
    v
}

/// Parses a normal entry's data.
pub fn parse_entry(data: &[u8]) -> Result<EntryPayload<'_>, String> {
    match data.split_first() {
        None => Ok(EntryPayload::Noop),
        Some((&TAG_USER, rest)) => Ok(EntryPayload::User(rest)),
        Some((&TAG_RESERVE_ID, [])) => Ok(EntryPayload::ReserveId),
        Some((&TAG_SESSION_OPEN, rest)) => match take_u64s::<2>(rest) {
            Some(([idle_ms, stamp_ms], [])) => Ok(EntryPayload::SessionOpen { idle_ms, stamp_ms }),
            _ => Err("malformed session opening".into()),
        },
        Some((&TAG_SESSION_WRITE, rest)) => match take_u64s::<4>(rest) {
            Some(([session, seq, acked, stamp_ms], user)) => Ok(EntryPayload::SessionWrite {
                session,
                seq,
                acked,
                stamp_ms,
                user,
            }),
            None => Err("malformed session write".into()),
        },
        Some((&TAG_KEYED_WRITE, rest)) => {
            parse_keyed_write(rest).ok_or_else(|| "malformed keyed write".into())
        }
        Some((tag, _)) => Err(format!("unknown raftify entry tag {tag}")),
    }
}

/// CRC-32 (IEEE 802.3 polynomial, as zlib computes it; `crc32fast`, which
/// uses the CPU's carry-less multiply where there is one).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// [`crc32`] over data that arrives in pieces.
#[derive(Debug, Clone, Default)]
pub struct Crc32(crc32fast::Hasher);

impl Crc32 {
    /// Nothing summed yet.
    pub fn new() -> Self {
        Crc32(crc32fast::Hasher::new())
    }

    /// Adds the next piece.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The checksum of everything added.
    pub fn finish(self) -> u32 {
        self.0.finalize()
    }
}

/// Snapshot data written by raftify before 0.1's reshape (still read).
const SNAPSHOT_MAGIC_V1: &[u8; 4] = b"RFS1";
/// Snapshot data as written now.
const SNAPSHOT_MAGIC: &[u8; 4] = b"RFS2";
/// The state-length field of a snapshot without state (the bootstrap one).
const NO_STATE: u64 = u64::MAX;

/// raftify's replicated metadata, stored in every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// Raft address of every member (voters and learners).
    pub peers: BTreeMap<u64, String>,
    /// The smallest id a join ticket may still reserve.
    pub next_node_id: u64,
    /// The cluster's identity, derived when it was bootstrapped (0: unknown,
    /// for data written before it existed). Carried on every message between
    /// members, so two clusters that share a name never mix.
    #[serde(default)]
    pub cluster_uid: u64,
    /// The open client sessions (exactly-once writes); absent from the
    /// snapshots of clusters that use none.
    #[serde(default, skip_serializing_if = "Sessions::is_empty")]
    pub sessions: Sessions,
}

/// A cluster's identity: FNV-1a over its name and initial members, the same
/// on every initial member (each derives it on its own, as etcd derives its
/// cluster ID), different for another member list or name. Never 0.
pub fn cluster_uid(name: &str, members: &BTreeMap<u64, String>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(name.as_bytes());
    for (id, addr) in members {
        eat(b"\n");
        eat(&id.to_be_bytes());
        eat(addr.as_bytes());
    }
    h.max(1)
}

/// What raftify stores as a raft snapshot's data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotEnvelope {
    /// raftify's own metadata.
    pub meta: ClusterMeta,
    /// The state machine's snapshot; `None` for the bootstrap snapshot taken
    /// before anything was applied.
    pub user: Option<Vec<u8>>,
}

/// Writes snapshot data — `RFS2`, u32 BE header length, JSON header (the
/// metadata), u64 BE state length (`u64::MAX`: no state), the state — in
/// one buffer: `write_state` appends the state where it belongs, so a large
/// state is never copied to make room for the header. `None`: no state.
pub fn encode_snapshot<E>(
    meta: &ClusterMeta,
    write_state: Option<impl FnOnce(&mut Vec<u8>) -> Result<(), E>>,
) -> Result<Vec<u8>, E> {
    let mut out = snapshot_head(meta);
    let at = out.len();
    out.extend_from_slice(&NO_STATE.to_be_bytes());
    if let Some(write) = write_state {
        let start = out.len();
        write(&mut out)?;
        let len = (out.len() - start) as u64;
        out[at..at + 8].copy_from_slice(&len.to_be_bytes());
    }
    Ok(out)
}

/// Snapshot data up to its state length: magic, header length, header.
fn snapshot_head(meta: &ClusterMeta) -> Vec<u8> {
    let header = serde_json::to_vec(meta).unwrap_or_default(); // ok: plain maps and integers
    let mut out = Vec::with_capacity(16 + header.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out
}

/// Writes snapshot data in [`encode_snapshot`]'s format to `out` while
/// `write_state` produces the state — for a store that writes it straight
/// to a file ([`crate::LogStore::save_snapshot_with`]): the state's length
/// is patched in afterwards, and `out` is left at the end.
pub fn write_snapshot_data<W, E>(
    out: &mut W,
    meta: &ClusterMeta,
    write_state: impl FnOnce(&mut W) -> Result<(), E>,
) -> Result<(), E>
where
    W: std::io::Write + std::io::Seek + ?Sized,
    E: From<std::io::Error>,
{
    use std::io::SeekFrom;
    out.write_all(&snapshot_head(meta))?;
    let at = out.stream_position()?;
    out.write_all(&NO_STATE.to_be_bytes())?;
    write_state(out)?;
    let end = out.stream_position()?;
    let len = end.checked_sub(at + 8).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the snapshot state writer moved before its start",
        )
    })?;
    out.seek(SeekFrom::Start(at))?;
    out.write_all(&len.to_be_bytes())?;
    out.seek(SeekFrom::Start(end))?;
    Ok(())
}

/// Reads snapshot data (`RFS2`, or the older `RFS1`) without copying the
/// state: the metadata, and the state's bytes within `data`.
pub fn decode_snapshot(data: &[u8]) -> Result<(ClusterMeta, Option<&[u8]>), String> {
    if data.starts_with(SNAPSHOT_MAGIC_V1) {
        return decode_v1(data);
    }
    let rest = data
        .strip_prefix(SNAPSHOT_MAGIC.as_slice())
        .ok_or("snapshot data does not start with the raftify magic")?;
    let (header, rest) = split_header(rest)?;
    let meta: ClusterMeta = serde_json::from_slice(header)
        .map_err(|e| format!("snapshot header does not parse: {e}"))?;
    if rest.len() < 8 {
        return Err("snapshot data truncated in its state length".into());
    }
    let (len, state) = rest.split_at(8);
    let len = u64::from_be_bytes([
        len[0], len[1], len[2], len[3], len[4], len[5], len[6], len[7],
    ]);
    if len == NO_STATE {
        if !state.is_empty() {
            return Err(format!(
                "snapshot without state has {} trailing bytes",
                state.len()
            ));
        }
        return Ok((meta, None));
    }
    if state.len() as u64 != len {
        return Err(format!(
            "snapshot data has {} state bytes, its header says {len}",
            state.len()
        ));
    }
    Ok((meta, Some(state)))
}

/// `u32` BE length, then that many bytes: the header and what follows.
fn split_header(rest: &[u8]) -> Result<(&[u8], &[u8]), String> {
    if rest.len() < 4 {
        return Err("snapshot data truncated in its header length".into());
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err("snapshot data truncated in its header".into());
    }
    Ok(rest.split_at(len))
}

/// `RFS1`: the state's length in the JSON header.
fn decode_v1(data: &[u8]) -> Result<(ClusterMeta, Option<&[u8]>), String> {
    #[derive(Deserialize)]
    struct Header {
        meta: ClusterMeta,
        user_len: Option<usize>,
    }
    let rest = &data[SNAPSHOT_MAGIC_V1.len()..];
    let (header, user) = split_header(rest)?;
    let header: Header = serde_json::from_slice(header)
        .map_err(|e| format!("snapshot header does not parse: {e}"))?;
    if user.len() != header.user_len.unwrap_or(0) {
        return Err(format!(
            "snapshot data has {} state bytes, its header says {:?}",
            user.len(),
            header.user_len
        ));
    }
    Ok((header.meta, header.user_len.map(|_| user)))
}

impl SnapshotEnvelope {
    /// The snapshot data of this metadata and state (see [`encode_snapshot`]).
    pub fn encode(&self) -> Vec<u8> {
        let write = self.user.as_ref().map(|u| {
            |out: &mut Vec<u8>| {
                out.extend_from_slice(u);
                Ok::<(), std::convert::Infallible>(())
            }
        });
        match encode_snapshot(&self.meta, write) {
            Ok(out) => out,
            Err(never) => match never {},
        }
    }

    /// Parses snapshot data (see [`decode_snapshot`]), copying the state.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let (meta, user) = decode_snapshot(data)?;
        Ok(SnapshotEnvelope {
            meta,
            user: user.map(<[u8]>::to_vec),
        })
    }
}

/// The context raftify attaches to every configuration change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChangeContext {
    /// Addresses of the nodes the change adds or promotes.
    pub addrs: BTreeMap<u64, String>,
}

impl ConfChangeContext {
    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default() // ok: plain map, cannot fail
    }

    /// Parses a context; an empty one means "no addresses".
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        if data.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(data).map_err(|e| format!("conf change context: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_stamp_replaces_the_proposers_in_every_frame() {
        let now = 9_999;
        let mut user = frame_user(b"xyz");
        assert_eq!(
            stamp_on_leader(&mut user, now).map(|u| u.to_vec()),
            Some(b"xyz".to_vec())
        );
        let mut open = frame_session_open(5_000, 1);
        assert!(stamp_on_leader(&mut open, now).is_none());
        assert_eq!(
            parse_entry(&open).unwrap(),
            EntryPayload::SessionOpen {
                idle_ms: 5_000,
                stamp_ms: now
            }
        );
        let mut write = frame_session_write(7, 3, 2, 1, b"cmd");
        assert_eq!(
            stamp_on_leader(&mut write, now).map(|u| u.to_vec()),
            Some(b"cmd".to_vec())
        );
        assert_eq!(
            parse_entry(&write).unwrap(),
            EntryPayload::SessionWrite {
                session: 7,
                seq: 3,
                acked: 2,
                stamp_ms: now,
                user: b"cmd"
            }
        );
        let mut keyed = frame_keyed_write("k1", 60_000, 1, b"cmd");
        assert_eq!(
            stamp_on_leader(&mut keyed, now).map(|u| u.to_vec()),
            Some(b"cmd".to_vec())
        );
        assert_eq!(
            parse_entry(&keyed).unwrap(),
            EntryPayload::KeyedWrite {
                key: "k1",
                ttl_ms: 60_000,
                stamp_ms: now,
                user: b"cmd"
            }
        );
        // Cut short or unknown: left alone.
        for bytes in [
            vec![],
            vec![TAG_SESSION_WRITE, 1, 2],
            vec![TAG_KEYED_WRITE, 0, 9, 1],
            vec![99, 1, 2],
        ] {
            let mut b = bytes.clone();
            assert!(stamp_on_leader(&mut b, now).is_none());
            assert_eq!(b, bytes);
        }
    }

    #[test]
    fn entries_round_trip_and_garbage_is_an_error() {
        assert_eq!(parse_entry(&[]).unwrap(), EntryPayload::Noop);
        assert_eq!(
            parse_entry(&frame_user(b"abc")).unwrap(),
            EntryPayload::User(b"abc")
        );
        assert_eq!(
            parse_entry(&[TAG_RESERVE_ID]).unwrap(),
            EntryPayload::ReserveId
        );
        assert!(parse_entry(&[7, 1, 2]).is_err());
        assert!(parse_entry(&[TAG_RESERVE_ID, 1]).is_err());
    }

    #[test]
    fn keyed_writes_round_trip_and_malformed_ones_are_errors() {
        let framed = frame_keyed_write("k-1", 60_000, 1_234, b"cmd");
        assert_eq!(
            parse_entry(&framed).unwrap(),
            EntryPayload::KeyedWrite {
                key: "k-1",
                ttl_ms: 60_000,
                stamp_ms: 1_234,
                user: b"cmd",
            }
        );
        // Every truncation short of the user entry is an error.
        for cut in 1..framed.len() - 3 {
            assert!(parse_entry(&framed[..cut]).is_err(), "cut at {cut}");
        }
        let mut empty_key = vec![TAG_KEYED_WRITE, 0, 0];
        empty_key.extend_from_slice(&[0; 16]);
        assert!(parse_entry(&empty_key).is_err());
        let mut not_utf8 = vec![TAG_KEYED_WRITE, 0, 1, 0xff];
        not_utf8.extend_from_slice(&[0; 16]);
        assert!(parse_entry(&not_utf8).is_err());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key(&"x".repeat(MAX_IDEMPOTENCY_KEY)).is_ok());
        assert!(check_idempotency_key(&"x".repeat(MAX_IDEMPOTENCY_KEY + 1)).is_err());
    }

    #[test]
    fn the_state_is_read_in_place_and_old_snapshots_still_decode() {
        let mut meta = ClusterMeta::default();
        meta.peers.insert(2, "127.0.0.1:2".into());
        let data = encode_snapshot(
            &meta,
            Some(|out: &mut Vec<u8>| {
                out.extend_from_slice(b"the state");
                Ok::<(), String>(())
            }),
        )
        .unwrap();
        let (m, state) = decode_snapshot(&data).unwrap();
        assert_eq!((m, state), (meta.clone(), Some(&b"the state"[..])));
        // The state is a slice of the data, not a copy.
        let at = state.unwrap().as_ptr() as usize - data.as_ptr() as usize;
        assert_eq!(at, data.len() - 9);
        // RFS1, as written before: the length in the JSON header.
        let header = serde_json::json!({ "meta": meta, "user_len": 3 }).to_string();
        let mut v1 = b"RFS1".to_vec();
        v1.extend_from_slice(&(header.len() as u32).to_be_bytes());
        v1.extend_from_slice(header.as_bytes());
        v1.extend_from_slice(b"old");
        assert_eq!(decode_snapshot(&v1).unwrap(), (meta, Some(&b"old"[..])));
        v1.push(0);
        assert!(decode_snapshot(&v1).is_err());
    }

    #[test]
    fn streamed_snapshot_data_is_what_the_buffered_encoder_writes() {
        let mut meta = ClusterMeta::default();
        meta.peers.insert(3, "127.0.0.1:3".into());
        let state = vec![7u8; 10_000];
        let buffered = encode_snapshot(
            &meta,
            Some(|out: &mut Vec<u8>| {
                out.extend_from_slice(&state);
                Ok::<(), std::io::Error>(())
            }),
        )
        .unwrap();
        // Written after a prefix (as a store's file header), in pieces.
        let mut out = std::io::Cursor::new(b"prefix".to_vec());
        out.set_position(6);
        write_snapshot_data(&mut out, &meta, |w: &mut std::io::Cursor<Vec<u8>>| {
            for piece in state.chunks(999) {
                std::io::Write::write_all(w, piece)?;
            }
            Ok::<(), std::io::Error>(())
        })
        .unwrap();
        assert_eq!(
            out.position() as usize,
            out.get_ref().len(),
            "left at the end"
        );
        assert_eq!(&out.get_ref()[6..], &buffered[..]);
        // A writer that fails fails the whole.
        let mut out = std::io::Cursor::new(Vec::new());
        let failed = write_snapshot_data(&mut out, &meta, |_| {
            Err::<(), std::io::Error>(std::io::Error::other("view failed"))
        });
        assert!(failed.is_err());
    }

    #[test]
    fn snapshot_envelope_round_trips_and_rejects_truncation() {
        let mut env = SnapshotEnvelope::default();
        env.meta.peers.insert(1, "127.0.0.1:1".into());
        env.meta.next_node_id = 9;
        env.user = Some(b"state".to_vec());
        let bytes = env.encode();
        assert_eq!(SnapshotEnvelope::decode(&bytes).unwrap(), env);
        for cut in 0..bytes.len() {
            assert!(
                SnapshotEnvelope::decode(&bytes[..cut]).is_err(),
                "truncated at {cut} must fail"
            );
        }
        env.user = None;
        assert_eq!(SnapshotEnvelope::decode(&env.encode()).unwrap(), env);
    }
}

//! How raftify frames what it puts in the log and in snapshots.
//!
//! * A normal entry's data is empty (raft's own no-op), or a tag byte followed
//!   by the payload: [`TAG_USER`] + the user's encoded entry, or
//!   [`TAG_RESERVE_ID`] (a join-ticket id reservation, no payload).
//! * A snapshot's data is an [`SnapshotEnvelope`]: raftify's own replicated
//!   metadata (the address book, the next free node id) and the user's bytes.
//! * A configuration change carries a [`ConfChangeContext`] (the addresses of
//!   the nodes it adds) in its context, so every node's address book follows
//!   the log and survives restarts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Tag of an entry carrying a user command.
pub const TAG_USER: u8 = 0;
/// Tag of an entry reserving a node id for a join ticket.
pub const TAG_RESERVE_ID: u8 = 1;

/// A decoded normal entry.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryPayload<'a> {
    /// Raft's leader no-op (empty data).
    Noop,
    /// A user command, still encoded.
    User(&'a [u8]),
    /// A node id reservation.
    ReserveId,
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
        Some((tag, _)) => Err(format!("unknown raftify entry tag {tag}")),
    }
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"RFS1";

/// raftify's replicated metadata, stored in every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// Raft address of every member (voters and learners).
    pub peers: BTreeMap<u64, String>,
    /// The smallest id a join ticket may still reserve.
    pub next_node_id: u64,
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

impl SnapshotEnvelope {
    /// `RFS1`, u32 BE header length, JSON header (with the state's length),
    /// then the state bytes.
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Header<'a> {
            meta: &'a ClusterMeta,
            user_len: Option<usize>,
        }
        let header = serde_json::to_vec(&Header {
            meta: &self.meta,
            user_len: self.user.as_ref().map(Vec::len),
        })
        .unwrap_or_default(); // ok: serializing plain maps and integers cannot fail
        let user = self.user.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(8 + header.len() + user.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(user);
        out
    }

    /// Parses [`SnapshotEnvelope::encode`]'s output; an error for anything else.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Header {
            meta: ClusterMeta,
            user_len: Option<usize>,
        }
        let rest = data
            .strip_prefix(SNAPSHOT_MAGIC.as_slice())
            .ok_or("snapshot data does not start with the raftify magic")?;
        if rest.len() < 4 {
            return Err("snapshot data truncated in its header length".into());
        }
        let (len, rest) = rest.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if rest.len() < len {
            return Err("snapshot data truncated in its header".into());
        }
        let (header, user) = rest.split_at(len);
        let header: Header = serde_json::from_slice(header)
            .map_err(|e| format!("snapshot header does not parse: {e}"))?;
        if user.len() != header.user_len.unwrap_or(0) {
            return Err(format!(
                "snapshot data has {} state bytes, its header says {:?}",
                user.len(),
                header.user_len
            ));
        }
        Ok(SnapshotEnvelope {
            meta: header.meta,
            user: header.user_len.map(|_| user.to_vec()),
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

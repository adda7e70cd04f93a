//! `RAFT SNAPSHOT LIST` and `RAFT SNAPSHOT READ`: the node's stored
//! snapshot, for backups. A node keeps one snapshot (the newest; older ones
//! are deleted once it is durable), named `<term>-<index>`.
//!
//! `READ` answers the snapshot in raftify's snapshot-file format (checksummed;
//! what `raftify-cli` and `--restore-snapshot-from` read), whole when it
//! fits [`WHOLE_MAX`], else by ranges: `RAFT SNAPSHOT READ <id> <offset>
//! <count>` with `count` ≤ [`WHOLE_MAX`]. The answer is the store's own
//! snapshot file, read through a mapping (with raftify-storage; another
//! store's snapshot is encoded in that format), kept for the next ranges.

use crate::server::error_reply;
use bytes::Bytes;
use raftify_cache::{commands::parse_i64, errors, Reply};
use raftify_core::raft::eraftpb::SnapshotMetadata;
use raftify_core::{Error, LogStore, StorageError};
use std::sync::{Arc, Mutex};

/// Largest reply of one `READ` (a quarter of the client output limit).
pub const WHOLE_MAX: usize = crate::conn::MAX_OUTPUT / 4;

/// The encoded file of the snapshot last read: `(id, bytes)`.
#[derive(Debug, Default)]
pub struct SnapshotCache(Mutex<Option<(String, Bytes)>>);

/// A snapshot's id: `<term>-<index>`; in sharded mode, where each group
/// has its own, `g<group>-<term>-<index>`.
fn id_of(group: Option<u64>, m: &SnapshotMetadata) -> String {
    match group {
        None => format!("{}-{}", m.term, m.index),
        Some(g) => format!("g{g}-{}-{}", m.term, m.index),
    }
}

/// The group a sharded snapshot id names (`g<group>-...`).
pub fn group_of(id: &[u8]) -> Option<u64> {
    let rest = id.strip_prefix(b"g")?;
    let end = rest.iter().position(|&b| b == b'-')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// `RAFT SNAPSHOT LIST`: the stored snapshot as a map of `id`, `index`,
/// `term`, `size` (bytes stored) and `voters`; empty before the first. Its
/// data is not read.
pub async fn list(store: Arc<dyn LogStore>) -> Reply {
    match listed(store, None).await {
        Ok(found) => Reply::Array(found.into_iter().collect()),
        Err(reply) => reply,
    }
}

/// One store's `RAFT SNAPSHOT LIST` entry (None before its first
/// snapshot); with `group` (sharded mode), the map starts with it.
pub async fn listed(store: Arc<dyn LogStore>, group: Option<u64>) -> Result<Option<Reply>, Reply> {
    let info = match tokio::task::spawn_blocking(move || store.snapshot_info()).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => return Err(error_reply(&Error::Storage(e))),
        Err(e) => return Err(Reply::err(format!("reading the snapshot failed: {e}"))),
    };
    let m = &info.metadata;
    if m.index == 0 {
        return Ok(None);
    }
    let voters = m.get_conf_state().voters.iter();
    let mut fields = Vec::with_capacity(6);
    if let Some(g) = group {
        fields.push((Reply::bulk("group"), Reply::Int(g as i64)));
    }
    fields.extend([
        (Reply::bulk("id"), Reply::bulk(id_of(group, m))),
        (Reply::bulk("index"), Reply::Int(m.index as i64)),
        (Reply::bulk("term"), Reply::Int(m.term as i64)),
        (Reply::bulk("size"), Reply::Int(info.size as i64)),
        (
            Reply::bulk("voters"),
            Reply::Array(voters.map(|v| Reply::Int(*v as i64)).collect()),
        ),
    ]);
    Ok(Some(Reply::Map(fields)))
}

/// `RAFT SNAPSHOT READ <id> [<offset> <count>]` of `store`, whose
/// snapshots are `group`'s in sharded mode (see [`id_of`]).
pub async fn read(
    store: Arc<dyn LogStore>,
    cache: &SnapshotCache,
    argv: &[Bytes],
    group: Option<u64>,
) -> Reply {
    let id = String::from_utf8_lossy(&argv[3]).into_owned();
    let range = match argv.len() {
        4 => None,
        6 => match (parse_i64(&argv[4]), parse_i64(&argv[5])) {
            (Some(o), Some(c)) if o >= 0 && c >= 0 => Some((o as usize, c as usize)),
            (Some(_), Some(_)) => return Reply::err("offset and count must not be negative"),
            _ => return errors::not_integer(),
        },
        _ => return Reply::err("usage: RAFT SNAPSHOT READ <id> [<offset> <count>]"),
    };
    let cached = cache
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .filter(|(c, _)| *c == id)
        .map(|(_, b)| b.clone());
    let file = match cached {
        Some(b) => b,
        None => {
            // The store's own file when it keeps one (a mapping, not a
            // copy); else the snapshot encoded in that format.
            let found =
                tokio::task::spawn_blocking(move || raftify_storage::stored_snapshot_file(&*store))
                    .await;
            let bytes = match found {
                Ok(Ok(Some((meta, bytes)))) if id_of(group, &meta) == id => bytes,
                Ok(Ok(_)) => {
                    return Reply::err(format!(
                        "no snapshot {id} here (RAFT SNAPSHOT LIST names the stored one)"
                    ))
                }
                // The snapshot could not be encoded: not the node's fault.
                Ok(Err(StorageError::Invalid(m))) => {
                    return Reply::err(format!("encoding the snapshot failed: {m}"))
                }
                Ok(Err(e)) => return error_reply(&Error::Storage(e)),
                Err(e) => return Reply::err(format!("reading the snapshot failed: {e}")),
            };
            *cache.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, bytes.clone()));
            bytes
        }
    };
    answer(file, range)
}

/// `file`, whole or the range asked for.
fn answer(file: Bytes, range: Option<(usize, usize)>) -> Reply {
    match range {
        None if file.len() <= WHOLE_MAX => Reply::Bulk(file),
        None => Reply::err(format!(
            "the snapshot file is {} bytes, more than one reply carries ({WHOLE_MAX}); read it in ranges: RAFT SNAPSHOT READ <id> <offset> <count>",
            file.len()
        )),
        Some((_, count)) if count > WHOLE_MAX => {
            Reply::err(format!("count must be at most {WHOLE_MAX}"))
        }
        Some((offset, count)) => {
            let start = offset.min(file.len());
            let end = start.saturating_add(count).min(file.len());
            Reply::Bulk(file.slice(start..end))
        }
    }
}

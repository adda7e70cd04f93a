//! `raftify-cli debug persisted`: what a node's data directory holds.

use crate::decode::Decoder;
use anyhow::{Context, Result};
use raftify_core::codec::{parse_entry, ConfChangeContext, EntryPayload, SnapshotEnvelope};
use raftify_core::protobuf::Message as _;
use raftify_core::raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType};
use raftify_core::LogStore;
use raftify_storage::{LmdbOptions, LmdbStore};
use serde::Serialize;
use serde_json::json;
use std::path::Path;

/// One log entry, described.
#[derive(Debug, Serialize)]
pub struct EntryView {
    /// Log index.
    pub index: u64,
    /// Term.
    pub term: u64,
    /// `normal`, `conf_change` or `conf_change_v2`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Bytes of data.
    pub data_len: usize,
    /// What raftify made of it: `noop`, `user`, `reserve_id`, the decoded
    /// configuration change, or an error.
    pub detail: String,
    /// A user entry as the `--decode` decoder read it (or `{"error": ...}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoded: Option<serde_json::Value>,
    /// The same, as a line for the table.
    #[serde(skip)]
    pub decoded_text: Option<String>,
}

fn conf_state_json(cs: &ConfState) -> serde_json::Value {
    json!({
        "voters": cs.voters,
        "learners": cs.learners,
        "voters_outgoing": cs.voters_outgoing,
        "learners_next": cs.learners_next,
        "auto_leave": cs.auto_leave,
    })
}

fn describe(e: &Entry, decoder: Option<&dyn Decoder>) -> EntryView {
    let mut decoded = None;
    let (kind, detail) = match e.get_entry_type() {
        EntryType::EntryNormal => (
            "normal",
            match parse_entry(&e.data) {
                Ok(EntryPayload::Noop) => "noop".to_string(),
                Ok(EntryPayload::User(b)) => {
                    decoded = decoder.map(|d| d.decode(b));
                    format!("user ({} bytes)", b.len())
                }
                Ok(EntryPayload::ReserveId) => "reserve_id (join ticket)".to_string(),
                Ok(EntryPayload::SessionOpen { idle_ms, .. }) => {
                    format!("session_open (expires after {idle_ms} ms idle)")
                }
                Ok(EntryPayload::SessionWrite {
                    session, seq, user, ..
                }) => {
                    decoded = decoder.map(|d| d.decode(user));
                    format!("session {session} write {seq} ({} bytes)", user.len())
                }
                Ok(EntryPayload::KeyedWrite {
                    key, ttl_ms, user, ..
                }) => {
                    decoded = decoder.map(|d| d.decode(user));
                    format!(
                        "keyed write {key:?} (remembered {ttl_ms} ms, {} bytes)",
                        user.len()
                    )
                }
                Err(err) => format!("not a raftify entry: {err}"),
            },
        ),
        EntryType::EntryConfChange => (
            "conf_change",
            match ConfChange::parse_from_bytes(&e.data) {
                Ok(cc) => format!("{:?} node {}", cc.get_change_type(), cc.node_id),
                Err(err) => format!("undecodable conf change: {err}"),
            },
        ),
        EntryType::EntryConfChangeV2 => (
            "conf_change_v2",
            match ConfChangeV2::parse_from_bytes(&e.data) {
                Ok(cc) if cc.changes.is_empty() => "leave joint configuration".to_string(),
                Ok(cc) => {
                    let addrs = ConfChangeContext::decode(&cc.context)
                        .unwrap_or_default()
                        .addrs;
                    cc.changes
                        .iter()
                        .map(|c| match addrs.get(&c.node_id) {
                            Some(a) => format!("{:?} {} @ {a}", c.get_change_type(), c.node_id),
                            None => format!("{:?} {}", c.get_change_type(), c.node_id),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                Err(err) => format!("undecodable conf change: {err}"),
            },
        ),
    };
    EntryView {
        index: e.index,
        term: e.term,
        kind,
        data_len: e.data.len(),
        decoded_text: decoded.as_ref().map(|d| match d {
            Ok(d) => format!("user {}", d.text),
            Err(err) => format!("{detail}; cannot decode: {err}"),
        }),
        decoded: decoded.map(|d| match d {
            Ok(d) => d.json,
            Err(err) => json!({ "error": err }),
        }),
        detail,
    }
}

/// Prints the persisted state of `dir` as tables, or as JSON; user entries
/// are shown through `decoder` when one is given.
pub fn run(
    dir: &Path,
    group: Option<u64>,
    json_out: bool,
    from: Option<u64>,
    to: Option<u64>,
    decoder: Option<&dyn Decoder>,
) -> Result<()> {
    let store = match group {
        None => LmdbStore::open_read_only(dir, LmdbOptions::default()).with_context(|| {
            format!(
                "cannot open {} as a raftify data directory (a sharded node's groups are \
                 shown with --group ID)",
                dir.display()
            )
        })?,
        Some(g) => LmdbStore::open_group_read_only(dir, g, LmdbOptions::default())
            .with_context(|| format!("cannot open group {g} in {}", dir.display()))?,
    };
    let state = store.initial_state()?;
    let hs = state.hard_state;
    let first = store.first_index()?;
    let last = store.last_index()?;
    let snap = store.snapshot()?;
    let md = snap.get_metadata();
    let identity = store.identity()?;
    let meta = if md.index > 0 {
        SnapshotEnvelope::decode(&snap.data)
            .ok()
            .map(|env| env.meta)
    } else {
        None
    };
    let lo = from.unwrap_or(first).max(first);
    let hi = to.map(|t| t.min(last)).unwrap_or(last);
    let mut entries = Vec::new();
    let mut next = lo;
    while next <= hi && next >= first {
        let batch = store.entries(next, hi + 1, Some(4 << 20))?;
        let Some(last_in_batch) = batch.last().map(|e| e.index) else {
            break;
        };
        entries.extend(batch.iter().map(|e| describe(e, decoder)));
        next = last_in_batch + 1;
    }

    if json_out {
        let out = json!({
            "dir": dir.display().to_string(),
            "group": group,
            "identity": identity.map(|i| json!({"node_id": i.node_id, "cluster_id": i.cluster_id})),
            "hard_state": {"term": hs.term, "vote": hs.vote, "commit": hs.commit},
            "conf_state": conf_state_json(&state.conf_state),
            "snapshot": {
                "index": md.index,
                "term": md.term,
                "conf_state": conf_state_json(md.get_conf_state()),
                "data_len": snap.data.len(),
                "peers": meta.as_ref().map(|m| &m.peers),
            },
            "first_index": first,
            "last_index": last,
            "entries": entries,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!("data dir      {}", dir.display());
    if let Some(g) = group {
        println!("group         {g}");
    }
    match identity {
        Some(i) => println!(
            "identity      node {} of cluster {:?}",
            i.node_id, i.cluster_id
        ),
        None => println!("identity      (none recorded)"),
    }
    println!(
        "hard state    term {}  vote {}  commit {}",
        hs.term, hs.vote, hs.commit
    );
    let cs = &state.conf_state;
    println!(
        "conf state    voters {:?}  learners {:?}{}",
        cs.voters,
        cs.learners,
        if cs.voters_outgoing.is_empty() {
            String::new()
        } else {
            format!("  outgoing {:?}", cs.voters_outgoing)
        }
    );
    println!(
        "snapshot      index {}  term {}  {} bytes",
        md.index,
        md.term,
        snap.data.len()
    );
    if let Some(m) = &meta {
        for (id, addr) in &m.peers {
            println!("  peer        {id} @ {addr}");
        }
    }
    println!(
        "log           first {first}  last {last}  ({} entries)",
        last + 1 - first
    );
    println!();
    println!(
        "{:>10}  {:>6}  {:<15}  {:>8}  detail",
        "index", "term", "type", "bytes"
    );
    for e in &entries {
        println!(
            "{:>10}  {:>6}  {:<15}  {:>8}  {}",
            e.index,
            e.term,
            e.kind,
            e.data_len,
            e.decoded_text.as_ref().unwrap_or(&e.detail)
        );
    }
    Ok(())
}

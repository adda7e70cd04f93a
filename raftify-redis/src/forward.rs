//! Transparent forwarding, for the HTTP port's key routes: a command on
//! one key runs on the group that owns the key's slot, wherever that is,
//! and the caller gets its answer — no redirection to follow.
//!
//! * A group this node hosts a replica of: through the replica (a write
//!   is forwarded to the group's leader by the core; a read is a
//!   ReadIndex, linearizable on any replica).
//! * Another group: through the Raft port of one of its replicas (the
//!   placement says which), with the core's retry helper: a write is never
//!   sent again once its outcome is unknown (it is not idempotent), a read
//!   is.
//! * A slot being moved: a chunk the target already holds answers `ASK`:
//!   the command runs on the target group at once; a chunk being copied,
//!   or a group without a leader, answers "try again" (nothing applied):
//!   it is tried again until [`FORWARD_DEADLINE`].
//!
//! The outcome says which of three things happened: an answer, certainly
//! not applied, or not known.

use crate::server::Server;
use bytes::Bytes;
use raftify_cache::{key_slot, CacheEntry, Op, Reply};
use raftify_core::retry::{seek_leader, Idempotence, RetryPolicy};
use raftify_core::{call_cluster, unix_ms, AbstractLogEntry, Error, ErrorClass};
use raftify_grpc::RaftClient;
use raftify_shard::GroupId;
use std::time::Duration;

/// How long a forwarded command may take, retries (moves, elections)
/// included.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(10);

/// What became of a forwarded command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Its reply (possibly an error reply of the command itself:
    /// `WRONGTYPE`, ...).
    Reply(Reply),
    /// Not applied (no leader, the slot kept moving, the node cannot
    /// serve) until the deadline: safe to send again.
    NotApplied(String),
    /// It may or may not have been applied.
    Unknown(String),
}

/// One attempt's result: a reply, or the core's error.
type Attempt = Result<Reply, Error>;

fn not_applied_reply(e: &str) -> bool {
    e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN")
}

/// Runs `argv` (a command on one key, at `argv[1]`) where it belongs.
/// `raft` is a client of this node's Raft port (for groups hosted
/// elsewhere); unused on a node that is not sharded.
pub async fn forward(server: &Server, raft: Option<&RaftClient>, argv: Vec<Bytes>) -> Outcome {
    let Some(write) = raftify_cache::table::lookup(&argv[0]).map(|c| c.is_write()) else {
        return Outcome::Reply(Reply::err("unknown command"));
    };
    let deadline = tokio::time::Instant::now() + FORWARD_DEADLINE;
    let slot = argv.get(1).map_or(0, |k| key_slot(k));
    // The group a chunk was handed to (after `ASK`), for the next try.
    let mut asked: Option<GroupId> = None;
    loop {
        let attempt = match (&server.node, &server.shard) {
            (Some(node), _) => run_local(node, &argv, write).await,
            (None, Some(shard)) => {
                let placement = shard.host.placement();
                let group = asked
                    .take()
                    .unwrap_or_else(|| placement.borrow().owner(slot));
                match shard.host.replica(group).await {
                    Some(node) => run_local(&node, &argv, write).await,
                    None => {
                        let addrs: Vec<String> = {
                            let p = placement.borrow();
                            p.groups()
                                .get(&group)
                                .map(|g| {
                                    g.replicas
                                        .iter()
                                        .filter_map(|n| p.nodes().get(n))
                                        .map(|n| n.raft_addr.clone())
                                        .collect()
                                })
                                .unwrap_or_default()
                        };
                        run_remote(shard, raft, group, &addrs, &argv, write, deadline).await
                    }
                }
            }
            (None, None) => return Outcome::NotApplied("no node".into()),
        };
        let retry_why = match attempt {
            Ok(Reply::Error(e)) if e.starts_with("ASK ") => {
                let target = server.shard.as_ref().and_then(|s| {
                    let p = s.host.placement();
                    let m = p.borrow().moving().filter(|m| m.slots.contains(slot));
                    m.map(|m| m.to)
                });
                match target {
                    Some(t) => {
                        asked = Some(t);
                        continue;
                    }
                    // The move ended meanwhile: the owner has it now.
                    None => e,
                }
            }
            Ok(Reply::Error(e)) if not_applied_reply(&e) => e,
            Ok(reply) => return Outcome::Reply(reply),
            Err(e) => match e.class() {
                ErrorClass::OutcomeUnknown => return Outcome::Unknown(e.to_string()),
                ErrorClass::Rejected => return Outcome::Reply(Reply::err(e)),
                ErrorClass::RetryLater | ErrorClass::Redirect | ErrorClass::Fatal => e.to_string(),
            },
        };
        if tokio::time::Instant::now() + Duration::from_millis(20) > deadline {
            return Outcome::NotApplied(retry_why);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entry(argv: &[Bytes]) -> CacheEntry {
    CacheEntry {
        clock_ms: unix_ms(),
        op: Op::Exec {
            commands: vec![argv.to_vec()],
            transaction: false,
            watched: Vec::new(),
        },
    }
}

async fn run_local(node: &crate::server::Node, argv: &[Bytes], write: bool) -> Attempt {
    if write {
        node.propose(&entry(argv)).await
    } else {
        node.linearizable_read(|sm| sm.read(argv)).await
    }
}

/// One command on `group` through the Raft port of one of its replicas.
async fn run_remote(
    shard: &crate::sharded::Shard,
    raft: Option<&RaftClient>,
    group: GroupId,
    addrs: &[String],
    argv: &[Bytes],
    write: bool,
    deadline: tokio::time::Instant,
) -> Attempt {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let out = if write {
        let data = entry(argv)
            .encode()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let t = shard.host.transport().for_group(group);
        call_cluster(&t, addrs, left, Idempotence::NotIdempotent, |n| {
            let data = data.clone();
            async move { n.propose(data).await }
        })
        .await?
    } else {
        let Some(client) = raft else {
            return Err(Error::NoLeader);
        };
        let client = client.for_group(group);
        let query = raftify_cache::remote::read_query(argv.to_vec())
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let policy = RetryPolicy::with_timeout(left);
        let (out, _) = seek_leader(addrs, None, &policy, Idempotence::Idempotent, |addr| {
            let (client, query) = (&client, query.clone());
            async move { client.read_at(&addr, query).await }
        })
        .await?;
        out
    };
    raftify_cache::remote::decode_reply(&out).map_err(|e| Error::Transport(e.to_string()))
}

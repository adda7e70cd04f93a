//! Redis Cluster's view of a raft group: one shard owning all 16384 slots,
//! the leader its master and the other members its replicas, at the
//! client addresses they announced through the log. Cluster clients
//! (redis-py `RedisCluster`, redis-rs, `redis-cli -c`) discover the leader
//! from `CLUSTER SLOTS`/`SHARDS`/`NODES` and follow leader changes by the
//! `-MOVED` a follower answers them for a write.

use crate::server::{error_reply, Node, Server, Session};
use bytes::Bytes;
use raftify_cache::{errors, CacheEntry, Op, Reply};
use raftify_core::unix_ms;
use slog::{debug, Logger};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Slots of the one shard.
const LAST_SLOT: i64 = 16383;

/// Tells the cluster this node's client address through the log, again
/// whenever the replicated one differs (a restart with a new address, a
/// snapshot from before the announcement), until the node stops.
pub async fn announce(node: Node, addr: String, logger: Logger) {
    let id = node.handle().id();
    let mut state = node.handle().subscribe_role();
    loop {
        if state.borrow().fatal.is_some() || matches!(state.borrow().role, raftify::Role::Stopped) {
            return;
        }
        let known = node
            .stale_read(|sm| sm.member_addrs().get(&id).cloned())
            .await;
        let mut pause = Duration::from_secs(2);
        if known.as_deref() != Some(addr.as_str()) && state.borrow().leader_id != 0 {
            let entry = CacheEntry {
                clock_ms: unix_ms(),
                op: Op::Announce {
                    id,
                    addr: Bytes::from(addr.clone()),
                },
            };
            if let Err(e) = node.propose(&entry).await {
                debug!(logger, "announcing the client address failed; retrying"; "error" => %e);
                pause = Duration::from_millis(300);
            } else {
                continue;
            }
        } else if known.is_none() {
            pause = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

/// A member as Redis Cluster shows it.
struct Shown {
    id: u64,
    host: String,
    port: i64,
    /// Shown as the master: the leader, or — while there is none (an
    /// election) — the last leader this node knew, marked failing, as
    /// Redis Cluster keeps showing a failed master until a replica takes
    /// over: clients keep a slot map and retry.
    master: bool,
    /// The master is the leader now.
    up: bool,
}

/// Redis Cluster's 40-character node id for raft member `id`.
pub fn node_id(cluster_uid: u64, id: u64) -> String {
    format!("{cluster_uid:016x}{id:024x}")
}

/// `CLUSTER INFO`: every slot served (`ok`) or none, the known nodes, the
/// shards (`cluster_size`) and the epoch.
/// `CLUSTER HELP`: the subcommands served (single-group and sharded).
pub(crate) fn cluster_help() -> Reply {
    Reply::bulks(
        [
            "CLUSTER INFO",
            "CLUSTER NODES",
            "CLUSTER SLOTS",
            "CLUSTER SHARDS",
            "CLUSTER MYID",
            "CLUSTER KEYSLOT <key>",
            "CLUSTER COUNTKEYSINSLOT <slot>",
            "CLUSTER GETKEYSINSLOT <slot> <count>",
            "CLUSTER HELP",
        ]
        .into_iter()
        .map(|t: &'static str| Bytes::from_static(t.as_bytes())),
    )
}

/// A parsed `CLUSTER COUNTKEYSINSLOT slot` / `GETKEYSINSLOT slot count`:
/// the slot and, for the second, the count; or Redis's error.
pub(crate) fn slot_query(argv: &[Bytes]) -> Result<(u16, Option<usize>), Reply> {
    let int = |b: &Bytes| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
    };
    let slot = int(&argv[2])
        .and_then(|s| u16::try_from(s).ok())
        .filter(|&s| s < raftify_shard::SLOTS);
    match (slot, argv.get(3)) {
        (Some(slot), None) => Ok((slot, None)),
        (Some(slot), Some(c)) => match int(c).and_then(|c| usize::try_from(c).ok()) {
            Some(count) => Ok((slot, Some(count))),
            None => Err(Reply::err("Invalid slot or number of keys")),
        },
        (None, None) => Err(Reply::err("Invalid slot")),
        (None, Some(_)) => Err(Reply::err("Invalid slot or number of keys")),
    }
}

/// The answer to a [`slot_query`] from a keyspace: how many keys of the
/// slot it holds, or up to `count` of them. Walks the keys (no per-slot
/// index): an administrator's command.
pub(crate) fn keys_in_slot(
    ks: &raftify_cache::keyspace::Keyspace,
    slot: u16,
    count: Option<usize>,
) -> Reply {
    let mut keys = ks
        .iter()
        .map(|(k, _)| k)
        .filter(|k| raftify_cache::key_slot(k) == slot);
    match count {
        None => Reply::Int(keys.count() as i64),
        Some(n) => Reply::Array(
            keys.by_ref()
                .take(n)
                .map(|k| Reply::Bulk(Bytes::copy_from_slice(k)))
                .collect(),
        ),
    }
}

pub(crate) fn cluster_info(ok: bool, known: usize, size: usize, epoch: u64) -> Reply {
    Reply::Bulk(Bytes::from(format!(
        "cluster_state:{}\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:{}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:{known}\r\ncluster_size:{size}\r\ncluster_current_epoch:{epoch}\r\ncluster_my_epoch:{epoch}\r\n",
        if ok { "ok" } else { "fail" },
        if ok { 16384 } else { 0 },
        if ok { 0 } else { 16384 },
    )))
}

pub(crate) fn split_addr(addr: &str) -> (String, i64) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().unwrap_or(0),
        ),
        None => (addr.to_string(), 0),
    }
}

impl Server {
    /// The members with announced addresses, the leader first.
    async fn topology(&self) -> Result<(Vec<Shown>, u64), Reply> {
        let node = self.single()?;
        let status = node.handle().status().await.map_err(|e| error_reply(&e))?;
        let addrs = node.stale_read(|sm| sm.member_addrs().clone()).await;
        let master = match status.leader_id {
            0 => self.last_leader.load(Ordering::Relaxed),
            l => {
                self.last_leader.store(l, Ordering::Relaxed);
                l
            }
        };
        let up = status.leader_id != 0;
        let mut shown: Vec<Shown> = status
            .members
            .iter()
            .filter_map(|m| {
                let (host, port) = split_addr(addrs.get(&m.id)?);
                Some(Shown {
                    id: m.id,
                    host,
                    port,
                    master: m.id == master,
                    up: m.id == master && up,
                })
            })
            .collect();
        shown.sort_by_key(|s| (!s.master, s.id));
        Ok((shown, status.term))
    }

    /// `CLUSTER ...`.
    pub async fn cluster_command(&self, s: &mut Session, argv: &[Bytes]) -> Reply {
        let node = match self.single() {
            Ok(n) => n,
            Err(r) => return r,
        };
        let sub = String::from_utf8_lossy(&argv[1]).to_ascii_lowercase();
        let uid = node.handle().cluster_uid();
        let me = node.handle().id();
        match (sub.as_str(), argv.len()) {
            ("keyslot", 3) => Reply::Int(redis_protocol::redis_keyslot(&argv[2]).into()),
            ("countkeysinslot", 3) | ("getkeysinslot", 4) => match slot_query(argv) {
                Ok((slot, count)) => node
                    .linearizable_read(|sm| keys_in_slot(sm.keyspace(), slot, count))
                    .await
                    .unwrap_or_else(|e| crate::server::error_reply(&e)),
                Err(e) => e,
            },
            ("myid", 2) => Reply::bulk(node_id(uid, me)),
            ("help", 2) => cluster_help(),
            ("info", 2) => {
                let (nodes, term) = match self.topology().await {
                    Ok(t) => t,
                    Err(e) => return e,
                };
                cluster_info(nodes.first().is_some_and(|n| n.up), nodes.len(), 1, term)
            }
            ("slots" | "shards" | "nodes", 2) => {
                s.cluster = true;
                let (nodes, term) = match self.topology().await {
                    Ok(t) => t,
                    Err(e) => return e,
                };
                if !nodes.first().is_some_and(|n| n.master) {
                    return Reply::Error("CLUSTERDOWN The cluster is down (no leader)".into());
                }
                match sub.as_str() {
                    "slots" => {
                        let mut shard = vec![Reply::Int(0), Reply::Int(LAST_SLOT)];
                        shard.extend(nodes.iter().map(|n| {
                            Reply::Array(vec![
                                Reply::bulk(n.host.clone()),
                                Reply::Int(n.port),
                                Reply::bulk(node_id(uid, n.id)),
                            ])
                        }));
                        Reply::Array(vec![Reply::Array(shard)])
                    }
                    "shards" => {
                        let applied = node.handle().state().applied_index as i64;
                        let shown = nodes
                            .iter()
                            .map(|n| {
                                Reply::Map(vec![
                                    (Reply::bulk("id"), Reply::bulk(node_id(uid, n.id))),
                                    (Reply::bulk("port"), Reply::Int(n.port)),
                                    (Reply::bulk("ip"), Reply::bulk(n.host.clone())),
                                    (Reply::bulk("endpoint"), Reply::bulk(n.host.clone())),
                                    (
                                        Reply::bulk("role"),
                                        Reply::bulk(if n.master { "master" } else { "replica" }),
                                    ),
                                    (Reply::bulk("replication-offset"), Reply::Int(applied)),
                                    (
                                        Reply::bulk("health"),
                                        Reply::bulk(if n.master && !n.up {
                                            "fail"
                                        } else {
                                            "online"
                                        }),
                                    ),
                                ])
                            })
                            .collect();
                        Reply::Array(vec![Reply::Map(vec![
                            (
                                Reply::bulk("slots"),
                                Reply::Array(vec![Reply::Int(0), Reply::Int(LAST_SLOT)]),
                            ),
                            (Reply::bulk("nodes"), Reply::Array(shown)),
                        ])])
                    }
                    _ => {
                        let leader_id = node_id(uid, nodes[0].id);
                        let lines: String = nodes
                            .iter()
                            .map(|n| {
                                let myself = if n.id == me { "myself," } else { "" };
                                let (role, master, slots) = if n.master && n.up {
                                    ("master", "-".to_string(), " 0-16383")
                                } else if n.master {
                                    ("master,fail?", "-".to_string(), " 0-16383")
                                } else {
                                    ("slave", leader_id.clone(), "")
                                };
                                format!(
                                    "{} {}:{}@{} {myself}{role} {master} 0 {} {term} connected{slots}\n",
                                    node_id(uid, n.id),
                                    n.host,
                                    n.port,
                                    n.port + 10000,
                                    unix_ms()
                                )
                            })
                            .collect();
                        Reply::Bulk(Bytes::from(lines))
                    }
                }
            }
            (_, 2) | (_, 3) => Reply::err(format!("unknown subcommand '{sub}'. Try CLUSTER HELP.")),
            _ => errors::arity(&format!("cluster|{sub}")),
        }
    }

    /// For a connection that discovered the cluster: `-MOVED` to the
    /// leader for a write on a follower (None: serve it here, forwarding).
    pub async fn moved(&self, s: &Session, argv: &[Bytes], keys: &[usize]) -> Option<Reply> {
        let node = self.node.as_ref()?;
        if !s.cluster || node.handle().is_leader() {
            return None;
        }
        let key = argv.get(*keys.first()?)?;
        let leader = node.handle().state().leader_id;
        if leader == 0 {
            return Some(Reply::Error(
                "CLUSTERDOWN The cluster is down (no leader)".into(),
            ));
        }
        let addr = node
            .stale_read(|sm| sm.member_addrs().get(&leader).cloned())
            .await?;
        Some(Reply::Error(format!(
            "MOVED {} {addr}",
            redis_protocol::redis_keyslot(key)
        )))
    }
}

//! `raftify-redis --sharded`: the key space spread over many Raft groups
//! ([`raftify_shard::ShardHost`]), each command routed by its keys' hash
//! slot to this node's replica of the group that owns it.
//!
//! * A command's keys must share one slot (`-CROSSSLOT` otherwise, as
//!   Redis Cluster answers); a transaction's and a `WATCH`'s too.
//! * This node hosts no replica of the owning group: `-MOVED slot addr`
//!   to the group's leader (or one of its replicas when the leader is not
//!   known here). A cluster client's write on a follower replica: `-MOVED`
//!   to the leader; a plain client's is forwarded to the leader.
//! * Slots being moved (see [`raftify_cache::migrate`]) go chunk by chunk:
//!   a chunk being copied refuses writes with `-TRYAGAIN` (reads are
//!   served); a chunk the target holds is answered `-ASK slot addr` (the
//!   target group's leader), and the target serves a command on it right
//!   after `ASKING`, as Redis Cluster's importing node does; a transaction
//!   on it is refused with `-EXECABORT TRYAGAIN` until the move ends. A
//!   slot moved away reads and writes `-TRYAGAIN` (the group's state
//!   machine decides, in log order): the client asks again and finds the
//!   new owner.
//! * `CLUSTER SLOTS`/`SHARDS`/`NODES` list each run of slots with its
//!   group's leader first; `RAFT REBALANCE` starts a rebalance and answers
//!   `+OK` at once; `RAFT REBALANCE STATUS` answers a bulk string that
//!   starts with `done` when nothing is to move; `RAFT SERVER REMOVE id`
//!   moves a node's replicas to the others, then removes it.
//! * `DBSIZE`, `KEYS`, `RANDOMKEY` and `SCAN` answer for the groups this
//!   node leads (its slots as a primary, as Redis Cluster nodes answer);
//!   `FLUSHALL`/`FLUSHDB` flush them.
//! * `PUBLISH` goes through the metadata group's log, which every node
//!   applies: a subscriber on any node receives every message published
//!   on any node, in one order.
//! * ACL users are the cluster's, kept by the metadata group
//!   ([`raftify_cache::acl::SharedUsers`]).
//! * `RAFT SERVER LIST`, `RAFT INFO`, `RAFT SNAPSHOT NOW` and `INFO` (see
//!   `shard_admin.rs`).
//! * Not yet in sharded mode (answered with an error, nothing done): the
//!   other commands without a key that span the key space, and the other
//!   `RAFT` subcommands (membership and leaders are the rebalancer's).

use crate::cluster::{cluster_help, cluster_info, node_id, split_addr};
use crate::server::{Node, Session};
use bytes::Bytes;
use raftify_cache::{key_slot, CacheEntry, CacheState, Reply};
use raftify_shard::{GroupId, Placement, ShardHost};
use std::collections::BTreeMap;

/// The sharded node a server routes through.
pub struct Shard {
    /// The node's groups.
    pub host: ShardHost<CacheEntry, CacheState>,
    /// The memory its replicas use, in bytes (kept by
    /// [`crate::upkeep::run`] while there is a memory limit).
    pub(crate) used: std::sync::atomic::AtomicU64,
    /// The cluster's ACL users (the metadata group's shared state).
    pub users: std::sync::Arc<raftify_cache::acl::SharedUsers>,
}

/// What a sharded node answers for what it does not do yet.
pub fn unsupported() -> Reply {
    Reply::err("this command is not supported by raftify-redis --sharded yet")
}

/// A run of slots owned by one group (first, last) and the group's nodes,
/// leader first, as `(id, host, port, leads)`.
type Run = (u16, u16, Vec<(u64, String, i64, bool)>);

fn crossslot() -> Reply {
    Reply::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
}

impl Shard {
    /// The sharded node of `host`, whose metadata group shares `users`
    /// ([`raftify_shard::ShardSpec::shared`]).
    pub fn new(
        host: ShardHost<CacheEntry, CacheState>,
        users: std::sync::Arc<raftify_cache::acl::SharedUsers>,
    ) -> Shard {
        Shard {
            host,
            used: Default::default(),
            users,
        }
    }

    /// The memory this node's replicas use together (as last summed; 0
    /// without `--maxmemory`).
    pub fn used_memory(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The memory this node's replicas use together, summed now.
    pub async fn memory(&self) -> u64 {
        let mut used = 0u64;
        for (_, r) in self.host.replicas().await {
            let bytes = r.stale_read(|sm| sm.keyspace().used_memory() as u64).await;
            used = used.saturating_add(bytes);
        }
        used
    }

    /// The node a command on `keys` runs on, or the reply that sends the
    /// client elsewhere (see the module docs).
    pub async fn route(&self, s: &Session, keys: &[&Bytes], write: bool) -> Result<Node, Reply> {
        let Some(first) = keys.first() else {
            return Err(unsupported());
        };
        let slot = key_slot(first);
        if keys.iter().any(|k| key_slot(k) != slot) {
            return Err(crossslot());
        }
        // Borrowed, not copied: the placement is read on every command.
        let placement = self.host.placement();
        let (group, moving) = {
            let p = placement.borrow();
            (p.owner(slot), p.moving().filter(|m| m.slots.contains(slot)))
        };
        if let Some(m) = moving.filter(|_| s.asking) {
            if let Some(node) = self.host.replica(m.to).await {
                // Served only once the slot's chunk is imported there (a
                // client that sends ASKING unasked gets nothing early).
                let slot_in = node.stale_read(|sm| sm.frozen().accepts_asking(slot)).await;
                return if slot_in {
                    Ok(node)
                } else {
                    Err(Reply::Error(format!(
                        "TRYAGAIN slot {slot} is not yet imported in group {}",
                        m.to
                    )))
                };
            }
        }
        let Some(node) = self.host.replica(group).await else {
            return Err(moved(&placement.borrow(), slot, group, None));
        };
        if write && s.cluster && !node.handle().is_leader() {
            let leader = node.handle().state().leader_id;
            if leader == 0 {
                return Err(Reply::Error(
                    "CLUSTERDOWN The cluster is down (no leader)".into(),
                ));
            }
            return Err(moved(&placement.borrow(), slot, group, Some(leader)));
        }
        Ok(node)
    }

    /// The replica a pipelined run of data commands runs on together (one
    /// log entry, or one ReadIndex): when every command's keys hash to
    /// slots of one group, which this node has a replica of (the leader,
    /// for a cluster client's writes). `None`: each command is routed on
    /// its own (`MOVED`, `CROSSSLOT`, ...). Slots that move are refused
    /// by the group itself (`TRYAGAIN` for the whole run, none of it
    /// applied).
    pub async fn batch_node(&self, s: &Session, batch: &[Vec<Bytes>]) -> Option<Node> {
        let (group, writes) = self.batch_group(batch)?;
        let node = self.host.replica(group).await?;
        if writes && s.cluster && !node.handle().is_leader() {
            return None;
        }
        Some(node)
    }

    /// The one group all of `batch`'s keys belong to, and whether the
    /// batch writes (one look at the placement for the whole batch).
    fn batch_group(&self, batch: &[Vec<Bytes>]) -> Option<(GroupId, bool)> {
        let placement = self.host.placement();
        let placement = placement.borrow();
        let mut group = None;
        let mut writes = false;
        for argv in batch {
            let c = raftify_cache::table::lookup(argv.first()?)?;
            writes |= c.is_write();
            let positions = c.key_positions(argv.len());
            let mut keys = positions.iter().filter_map(|&i| argv.get(i));
            let slot = key_slot(keys.next()?);
            if keys.any(|k| key_slot(k) != slot) {
                return None;
            }
            let g = placement.owner(slot);
            if group.is_some_and(|x| x != g) {
                return None;
            }
            group = Some(g);
        }
        Some((group?, writes))
    }

    /// A read without keys on a sharded node — `DBSIZE`, `KEYS`,
    /// `RANDOMKEY`, `SCAN` — answered, as a Redis Cluster node answers,
    /// for the slots this node is the primary of: over the groups it leads
    /// (linearizably). A cluster client sums or merges the nodes' answers.
    /// While a range is being moved its keys are in both groups and may be
    /// counted (or scanned) twice. Others are not supported.
    pub async fn read_led(&self, argv: &[Bytes]) -> Reply {
        let name = crate::server::lower(&argv[0]);
        if name == "scan" {
            return self.scan_led(argv).await;
        }
        if !matches!(name.as_str(), "dbsize" | "keys" | "randomkey") {
            return unsupported();
        }
        let mut replies = Vec::new();
        for (_, node) in self.host.replicas().await {
            if !node.handle().is_leader() {
                continue;
            }
            match node.linearizable_read(|sm| sm.read(argv)).await {
                Ok(r @ Reply::Error(_)) => return r,
                Ok(r) => replies.push(r),
                Err(e) => return crate::server::error_reply(&e),
            }
        }
        match name.as_str() {
            "dbsize" => Reply::Int(
                replies
                    .iter()
                    .map(|r| match r {
                        Reply::Int(n) => *n,
                        _ => 0,
                    })
                    .sum(),
            ),
            "keys" => Reply::Array(
                replies
                    .into_iter()
                    .flat_map(|r| match r {
                        Reply::Array(keys) => keys,
                        _ => Vec::new(),
                    })
                    .collect(),
            ),
            _ => replies
                .into_iter()
                .find(|r| !matches!(r, Reply::Nil))
                .unwrap_or(Reply::Nil),
        }
    }

    /// `SCAN` over the groups this node leads: each group scans from the
    /// same cursor (a position in the keys' common `SCAN` order); the
    /// answer keeps the keys up to the lowest position any unfinished
    /// group stopped at, which is the next cursor (0 once every group is
    /// done). So every key present for the whole iteration is returned,
    /// whatever the groups hold, as a single node's `SCAN` promises.
    async fn scan_led(&self, argv: &[Bytes]) -> Reply {
        let mut scanned: Vec<(Vec<Reply>, u64)> = Vec::new();
        for (_, node) in self.host.replicas().await {
            if !node.handle().is_leader() {
                continue;
            }
            let reply = match node.linearizable_read(|sm| sm.read(argv)).await {
                Ok(r) => r,
                Err(e) => return crate::server::error_reply(&e),
            };
            match reply {
                Reply::Array(mut parts) if parts.len() == 2 => {
                    let (Some(Reply::Array(keys)), Some(Reply::Bulk(next))) =
                        (parts.pop(), parts.pop())
                    else {
                        return Reply::err("a group answered SCAN in an unknown shape");
                    };
                    let next = std::str::from_utf8(&next)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0);
                    scanned.push((keys, next));
                }
                other => return other,
            }
        }
        let bound = scanned.iter().map(|(_, n)| *n).filter(|n| *n != 0).min();
        let keys: Vec<Reply> = scanned
            .into_iter()
            .flat_map(|(keys, _)| keys)
            .filter(|k| match (k, bound) {
                (Reply::Bulk(k), Some(b)) => raftify_cache::commands::scan_position(k) <= b,
                _ => true,
            })
            .collect();
        Reply::Array(vec![
            Reply::bulk(bound.unwrap_or(0).to_string()),
            Reply::Array(keys),
        ])
    }

    /// The replicas a write without keys — `FLUSHALL`, `FLUSHDB` — runs
    /// on: the groups this node leads (a Redis Cluster node flushes its
    /// primary slots; a cluster client sends it to every primary). Refused
    /// with `TRYAGAIN` while slots move (the keys being copied would come
    /// back in their new group).
    pub async fn led_for_write(&self, argv: &[Bytes]) -> Result<Vec<Node>, Reply> {
        let name = crate::server::lower(&argv[0]);
        if !matches!(name.as_str(), "flushall" | "flushdb") {
            return Err(unsupported());
        }
        if self.host.placement().borrow().moving().is_some() {
            return Err(Reply::Error(
                "TRYAGAIN slots are moving between groups; try again".into(),
            ));
        }
        Ok(self
            .host
            .replicas()
            .await
            .into_iter()
            .filter(|(_, n)| n.handle().is_leader())
            .map(|(_, n)| n)
            .collect())
    }

    /// Completes a group's `-ASK slot` (see [`raftify_cache::Refusal`])
    /// with the address of the move's target (its leader when this node
    /// knows it); when the move has ended meanwhile, `-MOVED` to the
    /// slot's owner. Any other reply is returned as it is.
    pub async fn redirect(&self, reply: Reply) -> Reply {
        let slot = match &reply {
            Reply::Error(e) => match e.strip_prefix("ASK ").map(str::parse::<u16>) {
                Some(Ok(slot)) => slot,
                _ => return reply,
            },
            _ => return reply,
        };
        let placement = self.host.placement();
        let (to, moving) = {
            let p = placement.borrow();
            match p.moving().filter(|m| m.slots.contains(slot)) {
                Some(m) => (m.to, true),
                None => (p.owner(slot), false),
            }
        };
        let leader = match self.host.replica(to).await {
            Some(n) => Some(n.handle().state().leader_id).filter(|&l| l != 0),
            None => None,
        };
        let p = placement.borrow();
        match (group_addr(&p, to, leader), moving) {
            (Some(a), true) => Reply::Error(format!("ASK {slot} {a}")),
            (Some(_), false) => moved(&p, slot, to, leader),
            (None, _) => Reply::Error(format!(
                "TRYAGAIN slot {slot} is moving; its target is not known here yet"
            )),
        }
    }

    /// The runs of slots, each with its group's nodes (leader first) as
    /// `(id, host, port, leads)`.
    async fn layout(&self) -> (Placement, Vec<Run>) {
        let p = self.host.placement().borrow().clone();
        let mut leaders: BTreeMap<GroupId, u64> = BTreeMap::new();
        for (g, r) in self.host.replicas().await {
            let l = r.handle().state().leader_id;
            if l != 0 {
                leaders.insert(g, l);
            }
        }
        let mut out = Vec::new();
        for (range, g) in p.ranges() {
            let Some(info) = p.groups().get(&g) else {
                continue;
            };
            let leader = leaders.get(&g).copied();
            let mut nodes: Vec<(u64, String, i64, bool)> = info
                .replicas
                .iter()
                .filter_map(|n| {
                    let (host, port) = split_addr(&p.nodes().get(n)?.client_addr);
                    Some((*n, host, port, Some(*n) == leader))
                })
                .collect();
            nodes.sort_by_key(|(id, _, _, leads)| (!leads, *id));
            out.push((range.start, range.end, nodes));
        }
        (p, out)
    }

    /// `CLUSTER ...` in sharded mode.
    pub async fn cluster_command(&self, s: &mut Session, argv: &[Bytes]) -> Reply {
        let sub = String::from_utf8_lossy(&argv[1]).to_ascii_lowercase();
        let uid = self.host.meta().cluster_uid();
        let me = self.host.id();
        match (sub.as_str(), argv.len()) {
            ("keyslot", 3) => Reply::Int(key_slot(&argv[2]).into()),
            ("countkeysinslot", 3) | ("getkeysinslot", 4) => {
                let (slot, count) = match crate::cluster::slot_query(argv) {
                    Ok(q) => q,
                    Err(e) => return e,
                };
                // The slot's owner, if this node hosts it (a Redis Cluster
                // node answers from its own keys: none for other slots).
                let owner = self.host.placement().borrow().owner(slot);
                match self.host.replica(owner).await {
                    Some(node) => node
                        .linearizable_read(|sm| {
                            crate::cluster::keys_in_slot(sm.keyspace(), slot, count)
                        })
                        .await
                        .unwrap_or_else(|e| crate::server::error_reply(&e)),
                    None => crate::cluster::keys_in_slot(&Default::default(), slot, count),
                }
            }
            ("myid", 2) => Reply::bulk(node_id(uid, me)),
            ("info", 2) => {
                let (p, runs) = self.layout().await;
                let ok = runs.iter().all(|(_, _, n)| n.first().is_some_and(|x| x.3));
                cluster_info(ok, p.nodes().len(), p.groups().len(), p.version())
            }
            ("slots" | "shards" | "nodes", 2) => {
                s.cluster = true;
                let (_, runs) = self.layout().await;
                // Cluster clients take a node listed as a replica anywhere
                // for a replica everywhere (redis-py's `get_primaries`,
                // which `scan_iter` and `keys` use): `SLOTS` lists, after
                // each run's leader, only replicas that lead no group.
                let primaries: std::collections::BTreeSet<u64> = runs
                    .iter()
                    .flat_map(|(_, _, n)| n.iter().filter(|x| x.3).map(|x| x.0))
                    .collect();
                match sub.as_str() {
                    "slots" => Reply::Array(
                        runs.iter()
                            .map(|(a, b, nodes)| {
                                let mut row =
                                    vec![Reply::Int(i64::from(*a)), Reply::Int(i64::from(*b))];
                                let shown = nodes
                                    .iter()
                                    .filter(|(id, _, _, leads)| *leads || !primaries.contains(id));
                                row.extend(shown.map(|(id, host, port, _)| {
                                    Reply::Array(vec![
                                        Reply::bulk(host.clone()),
                                        Reply::Int(*port),
                                        Reply::bulk(node_id(uid, *id)),
                                    ])
                                }));
                                Reply::Array(row)
                            })
                            .collect(),
                    ),
                    "shards" => Reply::Array(
                        runs.iter()
                            .map(|(a, b, nodes)| {
                                let shown = nodes
                                    .iter()
                                    .map(|(id, host, port, leads)| {
                                        Reply::Map(vec![
                                            (Reply::bulk("id"), Reply::bulk(node_id(uid, *id))),
                                            (Reply::bulk("port"), Reply::Int(*port)),
                                            (Reply::bulk("ip"), Reply::bulk(host.clone())),
                                            (Reply::bulk("endpoint"), Reply::bulk(host.clone())),
                                            (
                                                Reply::bulk("role"),
                                                Reply::bulk(if *leads {
                                                    "master"
                                                } else {
                                                    "replica"
                                                }),
                                            ),
                                            (Reply::bulk("health"), Reply::bulk("online")),
                                        ])
                                    })
                                    .collect();
                                Reply::Map(vec![
                                    (
                                        Reply::bulk("slots"),
                                        Reply::Array(vec![
                                            Reply::Int(i64::from(*a)),
                                            Reply::Int(i64::from(*b)),
                                        ]),
                                    ),
                                    (Reply::bulk("nodes"), Reply::Array(shown)),
                                ])
                            })
                            .collect(),
                    ),
                    _ => Reply::Bulk(Bytes::from(self.nodes_lines(uid, me, &runs))),
                }
            }
            ("help", 2) => cluster_help(),
            _ => Reply::err(format!("unknown subcommand '{sub}'. Try CLUSTER HELP.")),
        }
    }

    /// `CLUSTER NODES` lines: a node leading groups is a master with their
    /// slots; one leading none, a replica of the first group's leader; a
    /// node marked down is flagged `fail`, its link `disconnected`.
    fn nodes_lines(&self, uid: u64, me: u64, runs: &[Run]) -> String {
        let placement = self.host.placement().borrow().clone();
        let down = |id: u64| placement.nodes().get(&id).is_some_and(|n| n.down);
        let mut nodes: BTreeMap<u64, (String, i64, Vec<String>, Option<u64>)> = BTreeMap::new();
        for (a, b, shown) in runs {
            let leader = shown.iter().find(|n| n.3).map(|n| n.0);
            for (id, host, port, leads) in shown {
                let e = nodes
                    .entry(*id)
                    .or_insert_with(|| (host.clone(), *port, Vec::new(), None));
                if *leads {
                    e.2.push(if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    });
                } else if e.3.is_none() {
                    e.3 = leader;
                }
            }
        }
        nodes
            .iter()
            .map(|(id, (host, port, slots, master))| {
                let myself = if *id == me { "myself," } else { "" };
                let (role, of) = if !slots.is_empty() {
                    ("master", "-".to_string())
                } else {
                    ("slave", master.map_or("-".into(), |m| node_id(uid, m)))
                };
                let slots: String = slots.iter().map(|s| format!(" {s}")).collect();
                let (fail, link) = if down(*id) {
                    (",fail", "disconnected")
                } else {
                    ("", "connected")
                };
                format!(
                    "{} {host}:{port}@{} {myself}{role}{fail} {of} 0 {} 0 {link}{slots}\n",
                    node_id(uid, *id),
                    port + 10000,
                    raftify_core::unix_ms()
                )
            })
            .collect()
    }
}

/// The client address of `group`'s `leader` when known, else of its
/// first replica.
fn group_addr(p: &Placement, group: GroupId, leader: Option<u64>) -> Option<&str> {
    let to = leader.or_else(|| p.groups().get(&group)?.replicas.iter().next().copied())?;
    p.nodes().get(&to).map(|n| n.client_addr.as_str())
}

/// `-MOVED slot addr`: to `leader` when known, else the first replica of
/// the group.
fn moved(p: &Placement, slot: u16, group: GroupId, leader: Option<u64>) -> Reply {
    match group_addr(p, group, leader) {
        Some(a) => Reply::Error(format!("MOVED {slot} {a}")),
        None => Reply::Error("CLUSTERDOWN Hash slot not served".into()),
    }
}

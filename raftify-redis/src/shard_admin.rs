//! A sharded node's administration over the Redis protocol: `PUBLISH`
//! (through the metadata group), the `RAFT` subcommands of sharded mode
//! (`REBALANCE [STATUS]`, `SERVER LIST | REMOVE`, `INFO`, `LEADER`,
//! `TRANSFER`, `SNAPSHOT NOW | LIST | READ`, `HELP`) and what `INFO`
//! reports of the groups.

use crate::sharded::{unsupported, Shard};
use crate::snapshots::SnapshotCache;
use bytes::Bytes;
use raftify_cache::{commands::parse_i64, errors, Reply};
use raftify_core::RaftHandle;
use raftify_shard::META_GROUP;

impl Shard {
    /// `PUBLISH` in sharded mode: through the metadata group's log, so a
    /// subscriber on any node receives every message, in one order (see
    /// [`crate::pubsub`]). Answers the receivers on the metadata leader,
    /// as a forwarded `PUBLISH` answers the leader's on a single group.
    pub async fn publish(&self, channel: &Bytes, message: &Bytes) -> Reply {
        let Some(b) = crate::pubsub::encode_broadcast(channel, message) else {
            return Reply::err("the channel name is too long");
        };
        match self.host.broadcast(b).await {
            Ok(n) => Reply::Int(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => crate::server::shard_error_reply(&e),
        }
    }

    /// `RAFT ...` in sharded mode: see `RAFT HELP` below.
    pub async fn raft_command(&self, argv: &[Bytes], snapshots: &SnapshotCache) -> Reply {
        let sub = |i: usize| {
            argv.get(i)
                .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        };
        match (sub(1).as_deref(), sub(2).as_deref(), argv.len()) {
            (Some("rebalance"), None, 2) => {
                self.host.rebalance();
                Reply::Ok
            }
            (Some("rebalance"), Some("status"), 3) => {
                Reply::Bulk(Bytes::from(self.host.rebalance_status()))
            }
            (Some("server"), Some("remove"), 4) => {
                let Some(id) = std::str::from_utf8(&argv[3])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|&id| id != 0)
                else {
                    return Reply::err("node id must be a positive integer");
                };
                if !self.host.placement().borrow().nodes().contains_key(&id) {
                    return Reply::err(format!("node {id} is not a member"));
                }
                match self.host.mark_leaving(id).await {
                    Ok(()) => {
                        self.host.rebalance();
                        Reply::Ok
                    }
                    Err(e) => crate::server::shard_error_reply(&e),
                }
            }
            (Some("server"), Some("list"), 3) => self.server_list().await,
            (Some("server"), Some("add" | "promote" | "demote"), _) => Reply::err(
                "in sharded mode nodes join with --join and the rebalancer places replicas \
                 (RAFT REBALANCE); RAFT SERVER REMOVE <id> takes a node out",
            ),
            (Some("transfer"), _, 3 | 4) => {
                let group = match argv.get(3) {
                    None => Some(META_GROUP),
                    Some(g) => parse_i64(g).and_then(|g| u64::try_from(g).ok()),
                };
                match (parse_i64(&argv[2]), group) {
                    (Some(to), Some(group)) if to > 0 => {
                        match self.host.transfer_leader(group, to as u64).await {
                            Ok(()) => Reply::Ok,
                            Err(e) => crate::server::shard_error_reply(&e),
                        }
                    }
                    _ => errors::not_integer(),
                }
            }
            (Some("snapshot"), Some("list"), 3) => self.snapshot_list().await,
            (Some("snapshot"), Some("read"), 4 | 6) => {
                let group = crate::snapshots::group_of(&argv[3]);
                let hosted = match group {
                    Some(g) => self.hosted(g).await,
                    None => None,
                };
                match hosted {
                    Some(h) => {
                        crate::snapshots::read(h.storage().clone(), snapshots, argv, group).await
                    }
                    None => Reply::err(format!(
                        "no snapshot {} here (RAFT SNAPSHOT LIST names this node's)",
                        String::from_utf8_lossy(&argv[3])
                    )),
                }
            }
            (Some("info"), None, 2) => self.raft_info().await,
            (Some("snapshot"), Some("now"), 3) => self.snapshot_all().await,
            (Some("leader"), None, 2) => {
                let state = self.host.meta().state();
                Reply::Array(vec![
                    Reply::Int(state.leader_id as i64),
                    Reply::Bulk(Bytes::from(state.leader_addr.unwrap_or_default())),
                ])
            }
            (Some("help"), None, 2) => Reply::bulks(
                [
                    "RAFT REBALANCE: start moving replicas, slots and leaders to a balance (answers at once)",
                    "RAFT REBALANCE STATUS: 'done ...' when nothing is to move, else what is being done",
                    "RAFT SERVER REMOVE <id>: move a node's replicas to the others, then remove it (a rebalance)",
                    "RAFT LEADER: the metadata group's leader id and raft address",
                    "RAFT INFO: the metadata group as this node sees it, and the placement's version",
                    "RAFT SERVER LIST: the cluster's nodes (id, addresses, metadata role, down, leaving, replicas)",
                    "RAFT SNAPSHOT NOW: a snapshot of every group this node hosts; the count taken",
                    "RAFT SNAPSHOT LIST: the stored snapshot of every group this node hosts (group, id, index, term, size, voters)",
                    "RAFT SNAPSHOT READ <id> [<offset> <count>]: a snapshot LIST names, in raftify's snapshot-file format",
                    "RAFT TRANSFER <id> [<group>]: hand a group's leadership (default: the metadata group's, group 0) to node <id>",
                ]
                .map(|l: &'static str| Bytes::from_static(l.as_bytes()))
                .to_vec(),
            ),
            _ => unsupported(),
        }
    }

    /// This node's replica of `group` (the metadata group's included),
    /// if it hosts one now.
    async fn hosted(&self, group: u64) -> Option<RaftHandle> {
        match group {
            META_GROUP => Some(self.host.meta().clone()),
            g => self.host.group(g).await,
        }
    }

    /// `RAFT SNAPSHOT LIST`: the stored snapshot of the metadata group and
    /// of each data group this node hosts, by group.
    async fn snapshot_list(&self) -> Reply {
        let mut stores = vec![(META_GROUP, self.host.meta().storage().clone())];
        let replicas = self.host.replicas().await;
        stores.extend(
            replicas
                .iter()
                .map(|(g, r)| (*g, r.handle().storage().clone())),
        );
        let mut out = Vec::with_capacity(stores.len());
        for (group, store) in stores {
            match crate::snapshots::listed(store, Some(group)).await {
                Ok(Some(entry)) => out.push(entry),
                Ok(None) => {}
                Err(reply) => return reply,
            }
        }
        Reply::Array(out)
    }

    /// `RAFT SERVER LIST`: the placement's nodes, read after the
    /// metadata group's read index (a node that joined or was removed
    /// through any node shows).
    async fn server_list(&self) -> Reply {
        let meta = self.host.meta();
        if let Err(e) = meta.read_index().await {
            return crate::server::error_reply(&e);
        }
        let status = match meta.status().await {
            Ok(s) => s,
            Err(e) => return crate::server::error_reply(&e),
        };
        let p = self.host.placement().borrow().clone();
        let nodes = p.nodes().iter().map(|(&id, n)| {
            let role = status
                .members
                .iter()
                .find(|m| m.id == id)
                .map_or("none", |m| m.role.as_str());
            Reply::Map(vec![
                (Reply::bulk("id"), Reply::Int(id as i64)),
                (Reply::bulk("raft_addr"), Reply::bulk(n.raft_addr.clone())),
                (
                    Reply::bulk("client_addr"),
                    Reply::bulk(n.client_addr.clone()),
                ),
                (Reply::bulk("role"), Reply::bulk(role)),
                (
                    Reply::bulk("leader"),
                    Reply::Int(i64::from(id == status.leader_id)),
                ),
                (Reply::bulk("down"), Reply::Int(i64::from(n.down))),
                (Reply::bulk("leaving"), Reply::Int(i64::from(n.leaving))),
                (
                    Reply::bulk("replicas"),
                    Reply::Int(p.groups_of(id).len() as i64),
                ),
            ])
        });
        Reply::Array(nodes.collect())
    }

    /// `RAFT INFO`: the metadata group's state on this node, and the
    /// placement's version and size.
    async fn raft_info(&self) -> Reply {
        let st = match self.host.meta().status().await {
            Ok(s) => s,
            Err(e) => return crate::server::error_reply(&e),
        };
        let p = self.host.placement().borrow().clone();
        let int = |k: &'static str, v: u64| (Reply::bulk(k), Reply::Int(v as i64));
        Reply::Map(vec![
            int("id", st.id),
            (
                Reply::bulk("role"),
                Reply::Bulk(Bytes::from(format!("{:?}", st.role).to_lowercase())),
            ),
            int("leader_id", st.leader_id),
            int("term", st.term),
            int("commit_index", st.commit_index),
            int("applied_index", st.applied_index),
            int("placement_version", p.version()),
            int("nodes", p.nodes().len() as u64),
            int("groups", p.groups().len() as u64),
            int("hosted_groups", self.host.replicas().await.len() as u64),
        ])
    }

    /// `RAFT SNAPSHOT NOW`: a snapshot of the metadata group and of every
    /// data group this node hosts; answers how many were taken (the first
    /// failure is the answer otherwise, after trying all).
    async fn snapshot_all(&self) -> Reply {
        let mut handles = vec![self.host.meta().clone()];
        handles.extend(
            self.host
                .replicas()
                .await
                .into_iter()
                .map(|(_, r)| r.handle().clone()),
        );
        let mut taken = 0;
        let mut failed = None;
        for h in handles {
            match h.snapshot().await {
                Ok(_) => taken += 1,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => crate::server::error_reply(&e),
            None => Reply::Int(taken),
        }
    }

    /// The `INFO` of a sharded node: memory over its replicas, keys of
    /// the groups it leads (as `DBSIZE` counts), and the `sharding`
    /// section (the placement and each replica).
    pub(crate) async fn info_facts(&self) -> crate::introspect::InfoFacts {
        let p = self.host.placement().borrow().clone();
        let journal = self.host.journal_stats();
        let mut out = format!(
            "placement_version:{}\r\nnodes:{}\r\nnodes_down:{}\r\ngroups:{}\r\nmeta_group:{META_GROUP}\r\nrebalance:{}\r\njournal_syncs:{}\r\njournal_appends:{}\r\njournal_bytes:{}\r\n",
            p.version(),
            p.nodes().len(),
            p.nodes().values().filter(|n| n.down).count(),
            p.groups().len(),
            self.host.rebalance_status(),
            journal.syncs,
            journal.appends,
            journal.bytes,
        );
        let (mut used, mut keys, mut expiring, mut master) = (0u64, 0u64, 0u64, false);
        for (g, r) in self.host.replicas().await {
            let st = r.handle().state();
            let leads = r.handle().is_leader();
            let (k, e, u) = r
                .stale_read(|sm| {
                    let ks = sm.keyspace();
                    (
                        ks.raw_len() as u64,
                        ks.expiring() as u64,
                        ks.used_memory() as u64,
                    )
                })
                .await;
            used = used.saturating_add(u);
            if leads {
                master = true;
                keys += k;
                expiring += e;
            }
            // The status does not wake a sleeping replica.
            let status = r.handle().status().await.ok();
            let asleep = status.as_ref().is_some_and(|s| s.hibernating);
            let bytes = status.and_then(|s| s.state_bytes).unwrap_or(0);
            out.push_str(&format!(
                "group{g}:slots={},leader={},role={},applied={},asleep={},bytes={bytes}\r\n",
                p.slot_count(g),
                st.leader_id,
                if leads { "leader" } else { "follower" },
                st.applied_index,
                u8::from(asleep)
            ));
        }
        crate::introspect::InfoFacts {
            used_memory: used,
            keys,
            expiring,
            master,
            raft: None,
            sharding: Some(out),
        }
    }
}

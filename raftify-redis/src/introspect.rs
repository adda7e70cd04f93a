//! Introspection and administration commands: `CLIENT`, `CONFIG GET`,
//! `INFO`, `RAFT`, `COMMAND`.

use crate::server::{error_reply, lower, Server, Session, SERVER_COMMANDS};
use bytes::Bytes;
use raftify_cache::table::{lookup, COMMANDS};
use raftify_cache::{errors, Reply};
use std::sync::atomic::Ordering;

impl Server {
    pub(crate) fn client(&self, s: &mut Session, argv: &[Bytes]) -> Reply {
        let sub = lower(&argv[1]);
        match (sub.as_str(), argv.len()) {
            ("id", 2) => Reply::Int(s.id as i64),
            ("setname", 3) => {
                if argv[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                    return Reply::err(
                        "Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                s.name = (!argv[2].is_empty()).then(|| argv[2].clone());
                Reply::Ok
            }
            ("getname", 2) => Reply::opt(s.name.clone()),
            ("setinfo", 4) => Reply::Ok,
            ("info", 2) | ("list", _) => Reply::Bulk(Bytes::from(format!(
                "id={} name={} db=0 resp={} cmd=client|{}\n",
                s.id,
                s.name
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default(),
                if s.resp3 { 3 } else { 2 },
                sub
            ))),
            _ => Reply::err(format!(
                "unknown subcommand or wrong number of arguments for '{sub}'. Try CLIENT HELP."
            )),
        }
    }

    pub(crate) fn config_get(&self, pattern: &[u8]) -> Reply {
        let values = [
            ("maxclients", self.max_clients.to_string()),
            ("proto-max-bulk-len", self.max_bulk.to_string()),
            ("maxmemory", self.maxmemory.to_string()),
            ("maxmemory-policy", self.policy.name().to_string()),
            ("port", self.port.to_string()),
            ("databases", "1".to_string()),
            ("cluster-enabled", "yes".to_string()),
            ("appendonly", "no".to_string()),
            ("save", String::new()),
        ];
        Reply::Map(
            values
                .iter()
                .filter(|(k, _)| {
                    raftify_cache::commands::glob_match(&pattern.to_ascii_lowercase(), k.as_bytes())
                })
                .map(|(k, v)| (Reply::bulk(*k), Reply::Bulk(Bytes::from(v.clone()))))
                .collect(),
        )
    }

    /// `INFO [section]`: the same sections in both modes (`server`,
    /// `clients`, `memory`, `stats`, `replication`, `cluster`,
    /// `keyspace`), then `raft` (a single group) or `sharding`.
    pub(crate) async fn info(&self, section: &str) -> String {
        let facts = match (&self.node, &self.shard) {
            (Some(node), _) => single_facts(node).await,
            (None, Some(shard)) => shard.info_facts().await,
            (None, None) => return String::new(),
        };
        let all = matches!(section, "" | "all" | "everything" | "default");
        let mut out = String::new();
        let mut add = |name: &str, body: String| {
            if all || section == name {
                out.push_str(&format!("# {}\r\n{body}\r\n", capitalize(name)));
            }
        };
        add(
            "server",
            format!(
                "redis_version:7.2.0\r\nraftify_version:{}\r\nredis_mode:cluster\r\nos:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::process::id(),
                self.port,
                self.started.elapsed().as_secs()
            ),
        );
        add(
            "clients",
            format!(
                "connected_clients:{}\r\nmaxclients:{}\r\n",
                self.clients.load(Ordering::Relaxed),
                self.max_clients
            ),
        );
        let used = facts.used_memory;
        add(
            "memory",
            format!(
                "used_memory:{used}\r\nused_memory_dataset:{used}\r\nused_memory_rss:{}\r\nmaxmemory:{}\r\nmaxmemory_policy:{}\r\n",
                rss_bytes(),
                self.maxmemory,
                self.policy.name()
            ),
        );
        add(
            "stats",
            format!(
                "total_commands_processed:{}\r\ntotal_connections_received:{}\r\n",
                self.commands.load(Ordering::Relaxed),
                self.next_client_id.load(Ordering::Relaxed)
            ),
        );
        add(
            "replication",
            format!("role:{}\r\n", if facts.master { "master" } else { "slave" }),
        );
        if let Some(raft) = facts.raft {
            add("raft", raft);
        }
        add("cluster", "cluster_enabled:1\r\n".to_string());
        add(
            "keyspace",
            if facts.keys > 0 {
                format!(
                    "db0:keys={},expires={},avg_ttl=0\r\n",
                    facts.keys, facts.expiring
                )
            } else {
                String::new()
            },
        );
        if let Some(sharding) = facts.sharding {
            add("sharding", sharding);
        }
        out
    }

    pub(crate) async fn raft_command(&self, argv: &[Bytes]) -> Reply {
        let node = match self.single() {
            Ok(n) => n,
            Err(r) => return r,
        };
        let h = node.handle();
        match lower(&argv[1]).as_str() {
            "leader" => match h.state().leader_addr {
                Some(addr) => Reply::Bulk(Bytes::from(addr)),
                None if h.is_leader() => Reply::Bulk(Bytes::from(format!("node {}", h.id()))),
                None => Reply::Error("CLUSTERDOWN The cluster is down (no leader)".into()),
            },
            "info" => match h.status().await {
                Ok(st) => Reply::Map(vec![
                    (Reply::bulk("id"), Reply::Int(st.id as i64)),
                    (
                        Reply::bulk("role"),
                        Reply::Bulk(Bytes::from(format!("{:?}", st.role).to_lowercase())),
                    ),
                    (Reply::bulk("leader_id"), Reply::Int(st.leader_id as i64)),
                    (Reply::bulk("term"), Reply::Int(st.term as i64)),
                    (
                        Reply::bulk("commit_index"),
                        Reply::Int(st.commit_index as i64),
                    ),
                    (
                        Reply::bulk("applied_index"),
                        Reply::Int(st.applied_index as i64),
                    ),
                ]),
                Err(e) => error_reply(&e),
            },
            "transfer" if argv.len() == 3 => match raftify_cache::commands::parse_i64(&argv[2]) {
                Some(id) if id > 0 => match h.transfer_leader(id as u64).await {
                    Ok(()) => Reply::Ok,
                    Err(e) => error_reply(&e),
                },
                _ => errors::not_integer(),
            },
            "snapshot" if argv.len() >= 3 => match (lower(&argv[2]).as_str(), argv.len()) {
                ("now", 3) => match h.snapshot().await {
                    Ok(index) => Reply::Int(index as i64),
                    Err(e) => error_reply(&e),
                },
                ("list", 3) => crate::snapshots::list(h.storage().clone()).await,
                ("read", _) if argv.len() >= 4 => {
                    crate::snapshots::read(h.storage().clone(), &self.snapshot_cache, argv, None)
                        .await
                }
                _ => Reply::err("usage: RAFT SNAPSHOT NOW | LIST | READ <id> [<offset> <count>]"),
            },
            "server" if argv.len() >= 3 => self.raft_server(argv).await,
            "help" => Reply::bulks(
                [
                    "RAFT LEADER",
                    "RAFT INFO",
                    "RAFT SERVER LIST",
                    "RAFT SERVER ADD <id> <raft-addr> [LEARNER]",
                    "RAFT SERVER REMOVE <id>",
                    "RAFT SERVER PROMOTE <id>",
                    "RAFT SERVER DEMOTE <id>",
                    "RAFT TRANSFER <id>",
                    "RAFT SNAPSHOT NOW",
                    "RAFT SNAPSHOT LIST",
                    "RAFT SNAPSHOT READ <id> [<offset> <count>]",
                    "RAFT HELP",
                ]
                .into_iter()
                .map(|s: &'static str| Bytes::from_static(s.as_bytes())),
            ),
            _ => Reply::err("unknown RAFT subcommand or wrong number of arguments. Try RAFT HELP."),
        }
    }

    /// `RAFT SERVER LIST | ADD id addr [LEARNER] | REMOVE id | PROMOTE id |
    /// DEMOTE id`: membership through the core (from any node; changes go
    /// to the leader). A node to add runs with `--wait-to-be-added`.
    async fn raft_server(&self, argv: &[Bytes]) -> Reply {
        let node = match self.single() {
            Ok(n) => n,
            Err(r) => return r,
        };
        let h = node.handle();
        let id = |i: usize| {
            argv.get(i)
                .and_then(|a| raftify_cache::commands::parse_i64(a))
                .filter(|n| *n > 0)
                .map(|n| n as u64)
        };
        let done = |r: raftify::Result<Vec<raftify::Member>>| match r {
            Ok(_) => Reply::Ok,
            Err(e) => error_reply(&e),
        };
        match (lower(&argv[2]).as_str(), argv.len()) {
            ("list", 3) => {
                // Read-your-writes from any node: a membership change
                // answered OK is in the list (RAFT INFO is the local view).
                if let Err(e) = h.read_index().await {
                    return error_reply(&e);
                }
                let status = match h.status().await {
                    Ok(s) => s,
                    Err(e) => return error_reply(&e),
                };
                let addrs = node.stale_read(|sm| sm.member_addrs().clone()).await;
                Reply::Array(
                    status
                        .members
                        .iter()
                        .map(|m| {
                            Reply::Map(vec![
                                (Reply::bulk("id"), Reply::Int(m.id as i64)),
                                (
                                    Reply::bulk("raft_addr"),
                                    Reply::opt(m.addr.clone().map(Bytes::from)),
                                ),
                                (
                                    Reply::bulk("client_addr"),
                                    Reply::opt(addrs.get(&m.id).cloned().map(Bytes::from)),
                                ),
                                (Reply::bulk("role"), Reply::bulk(m.role.as_str())),
                                (
                                    Reply::bulk("leader"),
                                    Reply::Int(i64::from(m.id == status.leader_id)),
                                ),
                            ])
                        })
                        .collect(),
                )
            }
            ("add", 5) | ("add", 6) => {
                let Some(id) = id(3) else {
                    return Reply::err("a node id is a positive integer");
                };
                let addr = String::from_utf8_lossy(&argv[4]).into_owned();
                match argv.get(5).map(|a| lower(a)) {
                    None => done(h.add_voter(id, &addr).await),
                    Some(l) if l == "learner" => done(h.add_learner(id, &addr).await),
                    Some(_) => errors::syntax(),
                }
            }
            ("remove", 4) => match id(3) {
                Some(id) => done(h.remove_node(id).await),
                None => Reply::err("a node id is a positive integer"),
            },
            ("promote", 4) => match id(3) {
                Some(id) => done(h.promote_learner(id).await),
                None => Reply::err("a node id is a positive integer"),
            },
            ("demote", 4) => {
                let Some(id) = id(3) else {
                    return Reply::err("a node id is a positive integer");
                };
                let members = match h.members().await {
                    Ok(m) => m,
                    Err(e) => return error_reply(&e),
                };
                let Some(addr) = members
                    .members
                    .iter()
                    .find(|m| m.id == id)
                    .and_then(|m| m.addr.clone())
                else {
                    return Reply::err(format!("node {id} is not a member with a known address"));
                };
                done(
                    h.change_membership(vec![raftify::MembershipChange::AddLearner { id, addr }])
                        .await,
                )
            }
            _ => Reply::err(
                "unknown RAFT SERVER subcommand or wrong number of arguments. Try RAFT HELP.",
            ),
        }
    }
}

/// This process's resident memory (Linux: `VmRSS` of /proc/self/status;
/// 0 where unknown).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS`.
pub(crate) fn command(argv: &[Bytes]) -> Reply {
    let describe = |name: &str| -> Reply {
        if let Some(c) = lookup(name.as_bytes()) {
            let flag = if c.is_write() { "write" } else { "readonly" };
            return Reply::Array(vec![
                Reply::bulk(c.name),
                Reply::Int(c.arity.into()),
                Reply::Array(vec![Reply::Simple(flag.into())]),
                Reply::Int(c.first_key.into()),
                Reply::Int(c.last_key.into()),
                Reply::Int(c.step.into()),
            ]);
        }
        match SERVER_COMMANDS.iter().find(|(n, _)| *n == name) {
            Some((n, arity)) => Reply::Array(vec![
                Reply::bulk(*n),
                Reply::Int((*arity).into()),
                // Cluster clients route a command flagged `pubsub` by its
                // channel (redis-py's `RedisCluster.publish`).
                Reply::Array(
                    match *n {
                        "publish" | "pubsub" => &["pubsub", "loading", "stale", "fast"][..],
                        _ => &["fast"][..],
                    }
                    .iter()
                    .map(|f| Reply::Simple((*f).into()))
                    .collect(),
                ),
                Reply::Int(0),
                Reply::Int(0),
                Reply::Int(0),
            ]),
            None => Reply::Nil,
        }
    };
    let all = || {
        COMMANDS
            .iter()
            .map(|c| c.name)
            .chain(SERVER_COMMANDS.iter().map(|(n, _)| *n))
    };
    match argv.get(1).map(|a| lower(a)).as_deref() {
        None => Reply::Array(all().map(describe).collect()),
        Some("count") => Reply::Int(all().count() as i64),
        Some("info") => Reply::Array(argv[2..].iter().map(|n| describe(&lower(n))).collect()),
        Some("docs") => Reply::Map(Vec::new()),
        Some("getkeys") if argv.len() >= 3 => match lookup(&argv[2]) {
            Some(c) if c.arity_ok(argv.len() - 2) => {
                let keys = c.key_positions(argv.len() - 2);
                if keys.is_empty() {
                    Reply::err("The command has no key arguments")
                } else {
                    Reply::Array(
                        keys.into_iter()
                            .map(|p| Reply::Bulk(argv[p + 2].clone()))
                            .collect(),
                    )
                }
            }
            Some(_) => Reply::err("Invalid number of arguments specified for command"),
            None => Reply::err("Invalid command specified"),
        },
        Some(sub) => Reply::err(format!("unknown subcommand '{sub}'. Try COMMAND HELP.")),
    }
}

/// What `INFO` reports that depends on the mode (see [`Server::info`]).
pub(crate) struct InfoFacts {
    /// The data's memory on this node.
    pub used_memory: u64,
    /// Keys (and of them with a TTL) of the groups this node leads.
    pub keys: u64,
    /// Of them with a TTL.
    pub expiring: u64,
    /// Whether this node leads (a group).
    pub master: bool,
    /// A single group's `raft` section.
    pub raft: Option<String>,
    /// A sharded node's `sharding` section.
    pub sharding: Option<String>,
}

/// A single group's [`InfoFacts`]: RedisRaft's `raft_*` names where they fit.
async fn single_facts(node: &crate::server::Node) -> InfoFacts {
    let status = node.handle().status().await.ok();
    let (keys, expiring, used) = node
        .stale_read(|sm| {
            let ks = sm.keyspace();
            (ks.raw_len(), ks.expiring(), ks.used_memory())
        })
        .await;
    let raft = status.map(|st| {
        let voters = st
            .members
            .iter()
            .filter(|m| m.role == raftify::MemberRole::Voter)
            .count();
        let voting = st
            .members
            .iter()
            .any(|m| m.id == st.id && m.role == raftify::MemberRole::Voter);
        format!(
            "raft_node_id:{}\r\nraft_state:up\r\nraft_role:{}\r\nraft_is_voting:{}\r\nraft_leader_id:{}\r\nraft_current_term:{}\r\nraft_num_nodes:{}\r\nraft_num_voting_nodes:{}\r\nraft_log_entries:{}\r\nraft_current_index:{}\r\nraft_commit_index:{}\r\nraft_last_applied_index:{}\r\nraft_snapshot_last_idx:{}\r\n",
            st.id,
            format!("{:?}", st.role).to_lowercase(),
            if voting { "yes" } else { "no" },
            st.leader_id,
            st.term,
            st.members.len(),
            voters,
            st.last_index.saturating_sub(st.first_index.saturating_sub(1)),
            st.last_index,
            st.commit_index,
            st.applied_index,
            st.snapshot_index
        )
    });
    InfoFacts {
        used_memory: used as u64,
        keys: keys as u64,
        expiring: expiring as u64,
        master: node.handle().state().leader_id == node.handle().id(),
        raft,
        sharding: None,
    }
}

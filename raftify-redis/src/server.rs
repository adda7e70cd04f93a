//! What a command does: connection and server commands here, data
//! commands through the node (writes proposed to the log, reads served
//! after a ReadIndex), with the answers Redis gives.

use bytes::Bytes;
use raftify::{Error, ErrorClass, Raft};
use raftify_cache::table::lookup;
use raftify_cache::{errors, CacheEntry, CacheState, Op, Reply};
use raftify_core::unix_ms;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The node as the Redis front-end sees it.
pub type Node = Raft<CacheEntry, CacheState>;

/// Settings and counters shared by every connection.
pub struct Server {
    /// The raft node (`None` on a sharded node, whose commands go to the
    /// replica of their slot's group: see [`Server::shard`]).
    pub node: Option<Node>,
    /// `--sharded`: the node's groups and the routing to them.
    pub shard: Option<Arc<crate::sharded::Shard>>,
    /// `--requirepass`.
    pub requirepass: Option<String>,
    /// `--openreads`: reads from this node's copy without a ReadIndex.
    pub openreads: bool,
    /// `--proto-max-bulk-len`.
    pub max_bulk: usize,
    /// `--maxclients`.
    pub max_clients: usize,
    /// The client port.
    pub port: u16,
    /// Connections open now.
    pub clients: AtomicUsize,
    /// This node's subscribers.
    pub hub: Arc<crate::pubsub::Hub>,
    /// The last leader seen (what `CLUSTER SLOTS` shows during an election).
    pub last_leader: AtomicU64,
    /// `--maxmemory` (0: no limit).
    pub maxmemory: u64,
    /// `--maxmemory-policy`.
    pub policy: raftify_cache::eviction::Policy,
    /// Client ids given out.
    pub next_client_id: AtomicU64,
    /// Commands served.
    pub commands: AtomicU64,
    /// When the server started.
    pub started: Instant,
    /// The snapshot file last read by `RAFT SNAPSHOT READ`.
    pub snapshot_cache: crate::snapshots::SnapshotCache,
}

/// One connection's state.
#[derive(Debug, Default)]
pub struct Session {
    /// `CLIENT ID`.
    pub id: u64,
    /// RESP3 after `HELLO 3`.
    pub resp3: bool,
    /// Authenticated (or no password required).
    pub authed: bool,
    /// `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    /// Inside `MULTI`: the commands queued.
    pub multi: Option<Vec<Vec<Bytes>>>,
    /// A command queued in `MULTI` was refused: `EXEC` aborts.
    pub multi_failed: bool,
    /// `WATCH`ed keys and their versions when watched.
    pub watched: Vec<(Bytes, u64)>,
    /// Subscriptions (`SUBSCRIBE`, `PSUBSCRIBE`) and their messages.
    pub inbox: crate::pubsub::Inbox,
    /// `READONLY`: reads may be served from this node's copy.
    pub readonly: bool,
    /// The ACL user authenticated (None: `default`).
    pub user: Option<String>,
    /// `QUIT` was received: close after the reply.
    pub closing: bool,
    /// `ASKING` was the previous command: the next one may run on the
    /// group a slot is being moved to (see [`crate::sharded`]).
    pub asking: bool,
    /// The connection asked for the cluster's layout (`CLUSTER SLOTS`,
    /// `SHARDS` or `NODES`): it is a cluster client, and a follower
    /// answers its writes with `-MOVED` to the leader.
    pub cluster: bool,
}

/// [`error_reply`] for a sharded node's failures: the cluster's own
/// errors mapped as on a single group, the rest (placement, config) as
/// `-ERR`.
pub fn shard_error_reply(e: &raftify_shard::ShardError) -> Reply {
    match e {
        raftify_shard::ShardError::Node(e) => error_reply(e),
        e => Reply::err(e),
    }
}

/// A core error as a Redis error reply. An outcome that is not known is
/// never reported as a definite failure.
pub fn error_reply(e: &Error) -> Reply {
    match e.class() {
        ErrorClass::OutcomeUnknown => Reply::Error(format!(
            "UNKNOWN the write may or may not have been applied: {e}"
        )),
        ErrorClass::RetryLater if matches!(e, Error::NoLeader) => {
            Reply::Error("CLUSTERDOWN The cluster is down (no leader)".into())
        }
        ErrorClass::RetryLater | ErrorClass::Redirect => Reply::Error(format!("TRYAGAIN {e}")),
        ErrorClass::Rejected => Reply::err(e),
        ErrorClass::Fatal => Reply::err(format!("the node cannot serve: {e}")),
    }
}

pub(crate) fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

fn unknown_command(argv: &[Bytes]) -> Reply {
    let args: String = argv[1..]
        .iter()
        .take(20)
        .map(|a| format!("'{}' ", String::from_utf8_lossy(a)))
        .collect();
    Reply::err(format!(
        "unknown command '{}', with args beginning with: {args}",
        String::from_utf8_lossy(&argv[0])
    ))
}

/// Connection and server commands: name, arity (Redis's convention).
pub(crate) const SERVER_COMMANDS: &[(&str, i32)] = &[
    ("ping", -1),
    ("echo", 2),
    ("quit", -1),
    ("reset", 1),
    ("auth", -2),
    ("hello", -1),
    ("select", 2),
    ("client", -2),
    ("command", -1),
    ("info", -1),
    ("config", -2),
    ("time", 1),
    ("multi", 1),
    ("exec", 1),
    ("discard", 1),
    ("readonly", 1),
    ("readwrite", 1),
    ("asking", 1),
    ("publish", 3),
    ("pubsub", -2),
    ("raft", -2),
    ("cluster", -2),
    ("watch", -2),
    ("acl", -2),
    ("unwatch", 1),
];

impl Server {
    /// Answers one command of `session`'s connection.
    pub async fn handle(&self, session: &mut Session, argv: Vec<Bytes>) -> Reply {
        let asking = argv
            .first()
            .is_some_and(|n| n.eq_ignore_ascii_case(b"asking"));
        let reply = self.dispatch(session, argv).await;
        // `ASKING` holds for the one command after it (as in Redis).
        if !asking {
            session.asking = false;
        }
        match &self.shard {
            Some(shard) => shard.redirect(reply).await,
            None => reply,
        }
    }

    async fn dispatch(&self, session: &mut Session, argv: Vec<Bytes>) -> Reply {
        self.commands.fetch_add(1, Ordering::Relaxed);
        let name = lower(&argv[0]);
        if !session.authed && !crate::acl_categories::ALWAYS.contains(&name.as_str()) {
            return Reply::Error("NOAUTH Authentication required.".into());
        }
        if session.multi.is_some()
            && !matches!(
                name.as_str(),
                "exec" | "discard" | "multi" | "quit" | "reset"
            )
        {
            // Refused when queued, as Redis does: the command, then its
            // keys (an unknown command or a wrong arity first, in `queue`).
            let positions = match lookup(&argv[0]) {
                Some(c) if c.arity_ok(argv.len()) => Some(c.key_positions(argv.len())),
                _ if name == "unwatch" => Some(Vec::new()),
                _ => None,
            };
            if let Some(positions) = positions {
                let keys: Vec<&Bytes> = positions.iter().filter_map(|&i| argv.get(i)).collect();
                if let Some(no) = self.refused(session, &argv, &keys).await {
                    session.multi_failed = true;
                    return no;
                }
            }
            return self.queue(session, argv);
        }
        if let Some(&(_, arity)) = SERVER_COMMANDS.iter().find(|(n, _)| *n == name) {
            if !arity_ok(arity, argv.len()) {
                return errors::arity(&name);
            }
            if let Some(no) = self.forbidden(session, &argv).await {
                if name == "exec" {
                    session.multi = None;
                }
                return no;
            }
            return self.server_command(session, &name, argv).await;
        }
        let c = match lookup(&argv[0]) {
            None => return unknown_command(&argv),
            Some(c) if !c.arity_ok(argv.len()) => return errors::arity(c.name),
            Some(c) => c,
        };
        let positions = c.key_positions(argv.len());
        let keys: Vec<&Bytes> = positions.iter().filter_map(|&i| argv.get(i)).collect();
        if let Some(no) = self.refused(session, &argv, &keys).await {
            return no;
        }
        match (&self.shard, keys.is_empty(), c.is_write()) {
            (Some(shard), true, false) => return shard.read_led(&argv).await,
            (Some(shard), true, true) => {
                let nodes = match shard.led_for_write(&argv).await {
                    Ok(nodes) => nodes,
                    Err(r) => return r,
                };
                for node in nodes {
                    let r = self.write(&node, vec![argv.clone()], false).await;
                    if matches!(r, Reply::Error(_)) {
                        return r;
                    }
                }
                return Reply::Ok;
            }
            _ => {}
        }
        let node = match self.node_for(session, &keys, c.is_write()).await {
            Ok(n) => n,
            Err(r) => return r,
        };
        if !c.is_write() {
            return self.read(&node, session, argv).await;
        }
        if self.shard.is_none() {
            if let Some(moved) = self.moved(session, &argv, &positions).await {
                return moved;
            }
        }
        self.write(&node, vec![argv], false).await
    }

    /// The node a command (or transaction, or `WATCH`) on `keys` runs on:
    /// the node, or on a sharded node this node's replica of the group
    /// owning the keys' slot; else the reply that sends the client
    /// elsewhere (see [`crate::sharded`]).
    pub(crate) async fn node_for(
        &self,
        s: &Session,
        keys: &[&Bytes],
        write: bool,
    ) -> Result<Node, Reply> {
        match (&self.node, &self.shard) {
            (Some(n), _) => Ok(n.clone()),
            (None, Some(shard)) => shard.route(s, keys, write).await,
            (None, None) => Err(crate::sharded::unsupported()),
        }
    }

    /// The node of a server that is not sharded (what the commands that
    /// span the whole cluster need), or the error a sharded one answers.
    pub(crate) fn single(&self) -> Result<&Node, Reply> {
        self.node.as_ref().ok_or_else(crate::sharded::unsupported)
    }

    /// Whether `argv` may be answered together with the data commands
    /// around it (see [`Server::run_batch`]).
    ///
    /// A sharded node batches commands with keys (a cluster client's too:
    /// a run is answered together only when all its keys belong to one
    /// group this node serves as [`crate::sharded::Shard::batch_node`]
    /// says, else each command is routed on its own).
    pub fn batchable(&self, s: &Session, argv: &[Bytes]) -> bool {
        let sharded = self.shard.is_some();
        s.authed
            && s.user.is_none()
            && s.multi.is_none()
            && !s.asking
            && s.inbox.count() == 0
            && (sharded || !s.cluster)
            && lookup(&argv[0]).is_some_and(|c| {
                c.arity_ok(argv.len()) && (!sharded || !c.key_positions(argv.len()).is_empty())
            })
    }

    /// Answers pipelined data commands together, in order: with a write
    /// among them, as one log entry (applied atomically on every node,
    /// reads included at their place); all reads, after one ReadIndex.
    pub async fn run_batch(&self, s: &mut Session, batch: Vec<Vec<Bytes>>) -> Vec<Reply> {
        let n = batch.len();
        let node = match (&self.node, &self.shard) {
            (Some(node), _) => node.clone(),
            (None, Some(shard)) => match shard.batch_node(s, &batch).await {
                Some(node) => node,
                None => {
                    // Keys of several groups, or a group served elsewhere:
                    // each command is routed (and counted) on its own.
                    let mut replies = Vec::with_capacity(n);
                    for argv in batch {
                        replies.push(self.handle(s, argv).await);
                    }
                    return replies;
                }
            },
            (None, None) => return vec![crate::sharded::unsupported(); n],
        };
        self.commands.fetch_add(n as u64, Ordering::Relaxed);
        let node = &node;
        let writes = batch
            .iter()
            .any(|a| lookup(&a[0]).is_some_and(|c| c.is_write()));
        let replies = if writes {
            self.write(node, batch, true).await
        } else if self.openreads || s.readonly {
            Reply::Array(
                node.stale_read(|sm| batch.iter().map(|a| sm.read(a)).collect())
                    .await,
            )
        } else {
            match node
                .linearizable_read(|sm| batch.iter().map(|a| sm.read(a)).collect::<Vec<_>>())
                .await
            {
                Ok(r) => Reply::Array(r),
                Err(e) => error_reply(&e),
            }
        };
        let replies = match replies {
            Reply::Array(r) if r.len() == n => r,
            // The entry failed as a whole (no leader, outcome unknown):
            // every command gets that answer.
            other => vec![other; n],
        };
        let Some(shard) = &self.shard else {
            return replies;
        };
        let mut out = Vec::with_capacity(n);
        for r in replies {
            out.push(shard.redirect(r).await);
        }
        out
    }

    fn queue(&self, session: &mut Session, argv: Vec<Bytes>) -> Reply {
        let name = lower(&argv[0]);
        let refused = match lookup(&argv[0]) {
            Some(c) if c.arity_ok(argv.len()) => None,
            Some(c) => Some(errors::arity(c.name)),
            // Refused, but the transaction goes on (as Redis does).
            None if name == "watch" => return Reply::err("WATCH inside MULTI is not allowed"),
            // Queued; EXEC answers OK in its place (see `exec`).
            None if name == "unwatch" && argv.len() == 1 => None,
            None if name == "unwatch" => Some(errors::arity("unwatch")),
            None => Some(unknown_command(&argv)),
        };
        if let Some(r) = refused {
            session.multi_failed = true;
            return r;
        }
        if let Some(q) = session.multi.as_mut() {
            q.push(argv);
        }
        Reply::Simple("QUEUED".into())
    }

    /// Proposes write commands (one, or a transaction) to `node`'s log.
    pub async fn write(&self, node: &Node, commands: Vec<Vec<Bytes>>, transaction: bool) -> Reply {
        self.write_watched(node, commands, transaction, Vec::new())
            .await
    }

    /// `-OOM` when `commands` may add data and memory is over the limit
    /// (see [`crate::eviction`]).
    async fn out_of_memory(&self, node: &Node, commands: &[Vec<Bytes>]) -> Option<Reply> {
        if self.maxmemory == 0
            || !commands
                .iter()
                .any(|a| lookup(&a[0]).is_some_and(|c| c.may_grow()))
        {
            return None;
        }
        // A sharded node's limit is its own, over all its replicas.
        let used = match &self.shard {
            Some(shard) => shard.used_memory(),
            None => {
                node.stale_read(|sm| sm.keyspace().used_memory() as u64)
                    .await
            }
        };
        raftify_cache::eviction::refuses(self.policy, self.maxmemory, used)
            .then(|| Reply::Error("OOM command not allowed when used memory > 'maxmemory'.".into()))
    }

    /// [`Server::write`] for a transaction under `WATCH`: applied only if
    /// no watched key changed since it was watched.
    async fn write_watched(
        &self,
        node: &Node,
        commands: Vec<Vec<Bytes>>,
        transaction: bool,
        watched: Vec<(Bytes, u64)>,
    ) -> Reply {
        if let Some(oom) = self.out_of_memory(node, &commands).await {
            return oom;
        }
        let entry = CacheEntry {
            clock_ms: unix_ms(),
            op: Op::Exec {
                commands,
                transaction,
                watched,
            },
        };
        match node.propose(&entry).await {
            Ok(r) => r,
            Err(e) => error_reply(&e),
        }
    }

    async fn read(&self, node: &Node, session: &Session, argv: Vec<Bytes>) -> Reply {
        if self.openreads || session.readonly {
            return node.stale_read(|sm| sm.read(&argv)).await;
        }
        match node.linearizable_read(|sm| sm.read(&argv)).await {
            Ok(r) => r,
            Err(e) => error_reply(&e),
        }
    }

    async fn server_command(&self, s: &mut Session, name: &str, argv: Vec<Bytes>) -> Reply {
        let arg = |i: usize| argv.get(i).map(|a| lower(a)).unwrap_or_default();
        match name {
            "ping" => match argv.get(1) {
                None => Reply::Simple("PONG".into()),
                Some(m) if argv.len() == 2 => Reply::Bulk(m.clone()),
                Some(_) => errors::arity("ping"),
            },
            "echo" => Reply::Bulk(argv[1].clone()),
            "quit" => {
                s.closing = true;
                Reply::Ok
            }
            "reset" => {
                self.hub.remove(s.id);
                *s = Session {
                    id: s.id,
                    authed: self.requirepass.is_none(),
                    ..Session::default()
                };
                Reply::Simple("RESET".into())
            }
            "auth" => self.auth(s, &argv[1..]).await,
            "hello" => self.hello(s, &argv[1..]).await,
            "select" => match &argv[1][..] {
                b"0" => Reply::Ok,
                _ => Reply::err("SELECT is not allowed in cluster mode"),
            },
            "client" => self.client(s, &argv),
            "command" => crate::introspect::command(&argv),
            "info" => Reply::Bulk(Bytes::from(self.info(&arg(1)).await)),
            "config" => match (arg(1).as_str(), argv.len()) {
                ("get", 3) => self.config_get(&argv[2]),
                ("get", _) => errors::arity("config|get"),
                _ => Reply::err(format!("unknown subcommand '{}'. Try CONFIG HELP.", arg(1))),
            },
            "time" => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Reply::bulks([
                    Bytes::from(now.as_secs().to_string()),
                    Bytes::from(now.subsec_micros().to_string()),
                ])
            }
            "multi" if s.multi.is_some() => Reply::err("MULTI calls can not be nested"),
            "multi" => {
                s.multi = Some(Vec::new());
                s.multi_failed = false;
                Reply::Ok
            }
            "discard" => match s.multi.take() {
                Some(_) => {
                    s.watched.clear();
                    Reply::Ok
                }
                None => Reply::err("DISCARD without MULTI"),
            },
            "watch" => {
                let keys: Vec<Bytes> = argv[1..].to_vec();
                if let Some(no) = self
                    .keys_forbidden(s, &keys.iter().collect::<Vec<_>>())
                    .await
                {
                    return no;
                }
                let node = match self
                    .node_for(s, &keys.iter().collect::<Vec<_>>(), false)
                    .await
                {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                let versions = if self.openreads || s.readonly {
                    Ok(node
                        .stale_read(|sm| {
                            keys.iter()
                                .map(|k| sm.keyspace().version(k))
                                .collect::<Vec<_>>()
                        })
                        .await)
                } else {
                    node.linearizable_read(|sm| {
                        keys.iter()
                            .map(|k| sm.keyspace().version(k))
                            .collect::<Vec<_>>()
                    })
                    .await
                };
                match versions {
                    Ok(v) => {
                        s.watched.extend(keys.into_iter().zip(v));
                        Reply::Ok
                    }
                    Err(e) => error_reply(&e),
                }
            }
            "unwatch" => {
                s.watched.clear();
                Reply::Ok
            }
            "exec" => {
                let Some(queued) = s.multi.take() else {
                    return Reply::err("EXEC without MULTI");
                };
                let watched = std::mem::take(&mut s.watched);
                if std::mem::take(&mut s.multi_failed) {
                    return Reply::Error(
                        "EXECABORT Transaction discarded because of previous errors.".into(),
                    );
                }
                // UNWATCH inside MULTI does nothing at EXEC (the watched
                // keys are checked first) but answers OK in its place.
                let (unwatch, queued): (Vec<_>, Vec<_>) = queued
                    .into_iter()
                    .enumerate()
                    .partition(|(_, a)| a[0].eq_ignore_ascii_case(b"unwatch"));
                let queued: Vec<_> = queued.into_iter().map(|(_, a)| a).collect();
                let replies = if queued.is_empty() && watched.is_empty() {
                    Reply::Array(Vec::new())
                } else {
                    // Every key of the transaction and its WATCH: one slot
                    // on a sharded node.
                    let keys: Vec<&Bytes> = queued
                        .iter()
                        .flat_map(|a| {
                            lookup(&a[0])
                                .map(|c| c.key_positions(a.len()))
                                .unwrap_or_default()
                                .into_iter()
                                .filter_map(move |i| a.get(i))
                        })
                        .chain(watched.iter().map(|(k, _)| k))
                        .collect();
                    // Each queued command as if run alone (a read by a
                    // user with no commands, a key outside its patterns).
                    for a in &queued {
                        if let Some(Reply::Error(e)) = self.forbidden(s, a).await {
                            return Reply::Error(format!("EXECABORT {e}"));
                        }
                    }
                    if let Some(Reply::Error(e)) = self.keys_forbidden(s, &keys).await {
                        return Reply::Error(format!("EXECABORT {e}"));
                    }
                    match self.node_for(s, &keys, true).await {
                        Ok(node) => self.write_watched(&node, queued, true, watched).await,
                        Err(r) => Reply::Error(format!(
                            "EXECABORT {}",
                            match r {
                                Reply::Error(e) => e,
                                other => format!("{other:?}"),
                            }
                        )),
                    }
                };
                match replies {
                    Reply::Array(mut r) => {
                        for (i, _) in unwatch {
                            r.insert(i.min(r.len()), Reply::Ok);
                        }
                        Reply::Array(r)
                    }
                    other => other,
                }
            }
            "readonly" => {
                s.readonly = true;
                Reply::Ok
            }
            "readwrite" => {
                s.readonly = false;
                Reply::Ok
            }
            "asking" => {
                s.asking = true;
                Reply::Ok
            }
            "publish" => {
                if let Some(no) = self.channels_forbidden(s, &argv[1..2], false).await {
                    return no;
                }
                if let Some(shard) = &self.shard {
                    return shard.publish(&argv[1], &argv[2]).await;
                }
                let entry = CacheEntry {
                    clock_ms: unix_ms(),
                    op: Op::Publish {
                        channel: argv[1].clone(),
                        message: argv[2].clone(),
                    },
                };
                let node = match self.single() {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                match node.propose(&entry).await {
                    Ok(r) => r,
                    Err(e) => error_reply(&e),
                }
            }
            "raft" => match &self.shard {
                Some(shard) => shard.raft_command(&argv, &self.snapshot_cache).await,
                None => self.raft_command(&argv).await,
            },
            "cluster" => match &self.shard {
                Some(shard) => shard.cluster_command(s, &argv).await,
                None => self.cluster_command(s, &argv).await,
            },
            "acl" => self.acl_command(s, &argv).await,
            "pubsub" => self.hub.introspect(&argv),
            _ => unknown_command(&argv),
        }
    }

    async fn hello(&self, s: &mut Session, args: &[Bytes]) -> Reply {
        let mut i = 0;
        let mut proto = if s.resp3 { 3 } else { 2 };
        if let Some(v) = args.first() {
            match raftify_cache::commands::parse_i64(v) {
                Some(p @ (2 | 3)) => proto = p,
                Some(_) | None => {
                    return Reply::Error("NOPROTO unsupported protocol version".into());
                }
            }
            i = 1;
        }
        while i < args.len() {
            let opt = lower(&args[i]);
            if opt == "auth" && i + 2 < args.len() + 1 && args.len() >= i + 3 {
                let r = self.auth(s, &args[i + 1..i + 3]).await;
                if r.is_error() {
                    return r;
                }
                i += 3;
            } else if opt == "setname" && i + 1 < args.len() {
                s.name = Some(args[i + 1].clone());
                i += 2;
            } else {
                return Reply::err(format!("Syntax error in HELLO option '{opt}'"));
            }
        }
        if !s.authed {
            return Reply::Error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into());
        }
        s.resp3 = proto == 3;
        let role = if self.node.as_ref().is_none_or(|n| n.handle().is_leader()) {
            "master"
        } else {
            "replica"
        };
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redis")),
            (Reply::bulk("version"), Reply::bulk("7.2.0")),
            (Reply::bulk("proto"), Reply::Int(proto)),
            (Reply::bulk("id"), Reply::Int(s.id as i64)),
            (Reply::bulk("mode"), Reply::bulk("cluster")),
            (Reply::bulk("role"), Reply::bulk(role)),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ])
    }
}

fn arity_ok(arity: i32, argc: usize) -> bool {
    if arity >= 0 {
        argc == arity as usize
    } else {
        argc >= arity.unsigned_abs() as usize
    }
}

/// Shared handle to the server.
pub type Shared = Arc<Server>;

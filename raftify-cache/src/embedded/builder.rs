//! [`CacheBuilder`]: how an embedded cache is configured and started.

use super::ack::WriteAck;
use super::env::{self, EnvSettings};
use super::error::CacheError;
use super::events::Events;
use super::health::{self, Health};
use super::membership::{self, Found, Rejoin};
use super::{Cache, Inner};
use crate::{Bound, CacheState};
use raftify::{launch, NodeSpec, Start, Storage, TlsConfig};
use slog::Logger;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest cache name.
pub const MAX_NAME: usize = 255;

/// One named cache's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheConfig {
    /// TTL of entries put without one (`None`: they live until deleted or
    /// evicted).
    pub ttl: Option<Duration>,
    /// Most entries (0: no bound); the least recently written go first.
    pub max_entries: u64,
    /// Most bytes: keys, values and 96 bytes per entry (0: no bound).
    pub max_bytes: u64,
}

impl CacheConfig {
    /// No TTL, no bound.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries put without a TTL get this one.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Bounds the cache to `n` entries.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Bounds the cache to `n` bytes.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    pub(crate) fn bound(&self) -> Bound {
        Bound {
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
        }
    }
}

/// What a node does with reads that need the cluster while it cannot
/// reach a quorum (no leader). Writes always fail then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QuorumLoss {
    /// Linearizable reads fail with [`CacheError::Unavailable`]; local
    /// reads still answer from this node's copy (the default).
    #[default]
    Refuse,
    /// Linearizable reads answer from this node's copy, marked stale
    /// ([`super::Fetched::stale`]).
    ServeStale,
    /// Every read answers as if the cache were empty until a leader is
    /// back and this node has caught up, as redhac wipes its caches: no
    /// data from before the loss is served. The replicated copy itself is
    /// kept (discarding it would break the log), so nothing needs
    /// rebuilding when the quorum returns.
    Wipe,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// This node's copy, now: fast, may miss recent writes made elsewhere.
    Local,
    /// Every write committed before the call is seen (a ReadIndex round
    /// to the leader): the default.
    #[default]
    Linearizable,
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Consistency::Local),
            "linearizable" => Ok(Consistency::Linearizable),
            _ => Err(format!("{s:?} is not local or linearizable")),
        }
    }
}

/// A change to the launcher's spec, applied before the start.
type SpecChange = Box<dyn FnOnce(&mut NodeSpec) + Send>;

/// Configures and starts a [`Cache`]. With nothing set: one node in
/// memory, its raft port on an ephemeral port of 127.0.0.1, for
/// development.
pub struct CacheBuilder {
    settings: EnvSettings,
    raft_addr: Option<String>,
    caches: BTreeMap<String, CacheConfig>,
    quorum_loss: QuorumLoss,
    write_ack: WriteAck,
    logger: Option<Logger>,
    configure: Vec<SpecChange>,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheBuilder {
    /// A single node in memory with no named caches.
    pub fn new() -> Self {
        CacheBuilder {
            settings: EnvSettings {
                id: 1,
                ..Default::default()
            },
            raft_addr: None,
            caches: BTreeMap::new(),
            quorum_loss: QuorumLoss::default(),
            write_ack: WriteAck::default(),
            logger: None,
            configure: Vec::new(),
        }
    }

    /// Settings from the environment (see [`super::env`]), then `./.env`.
    pub fn from_env() -> Result<Self, CacheError> {
        let lookup = env::process_lookup();
        Self::from_lookup(&lookup)
    }

    /// Settings from variables `lookup` returns (the environment's names).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, CacheError> {
        let mut b = Self::new();
        b.settings = env::settings(lookup)?;
        Ok(b)
    }

    /// Adds (or replaces) the named cache `name`.
    pub fn cache(mut self, name: &str, config: CacheConfig) -> Self {
        self.caches.insert(name.to_string(), config);
        self
    }

    /// This node is `id` of a cluster of `members` (id → raft address,
    /// itself included), started all at once.
    pub fn cluster(mut self, id: u64, members: BTreeMap<u64, String>) -> Self {
        self.settings.id = id;
        self.settings.members = members;
        self
    }

    /// The raft address of a single node (default `127.0.0.1:0`).
    pub fn raft_addr(mut self, addr: &str) -> Self {
        self.raft_addr = Some(addr.to_string());
        self
    }

    /// Binds the raft port here instead of the node's own address.
    pub fn listen_addr(mut self, addr: &str) -> Self {
        self.settings.listen = Some(addr.to_string());
        self
    }

    /// Keeps the log and snapshots in LMDB under `dir` (default: memory).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.data_dir = Some(dir.into());
        self
    }

    /// Skips fsync of the log (an OS crash can lose acknowledged writes).
    pub fn no_sync(mut self, no_sync: bool) -> Self {
        self.settings.no_sync = no_sync;
        self
    }

    /// The token members authenticate each other with.
    pub fn auth_token(mut self, token: &str) -> Self {
        self.settings.token = Some(token.to_string());
        self
    }

    /// A further token accepted from members (never sent), while the
    /// token is rotated (`RAFTIFY_ACCEPT_TOKEN`; docs/SECURITY.md).
    pub fn accept_token(mut self, token: &str) -> Self {
        self.settings.accept_tokens.push(token.to_string());
        self
    }

    /// TLS between members.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.settings.tls = Some(tls);
        self
    }

    /// The raft tick (the election timeout is 10 ticks; default 100 ms).
    pub fn tick(mut self, tick: Duration) -> Self {
        self.settings.tick = Some(tick);
        self
    }

    /// What reads do while the quorum is lost.
    pub fn on_quorum_loss(mut self, mode: QuorumLoss) -> Self {
        self.quorum_loss = mode;
        self
    }

    /// When writes return ([`WriteAck::Local`] by default).
    pub fn write_ack(mut self, ack: WriteAck) -> Self {
        self.write_ack = ack;
        self
    }

    /// Where the node logs (default: raftify's default logger).
    pub fn logger(mut self, logger: Logger) -> Self {
        self.logger = Some(logger);
        self
    }

    /// Changes the launcher's node spec before the start (raft and gRPC
    /// settings this builder does not name).
    pub fn node_spec(mut self, f: impl FnOnce(&mut NodeSpec) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Starts the node (and, with all members started, the cluster).
    pub async fn build(self) -> Result<Cache, CacheError> {
        for (name, c) in &self.caches {
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(CacheError::config(
                    &format!("cache {name:?}"),
                    format!("a cache name must be 1 to {MAX_NAME} bytes"),
                ));
            }
            if c.ttl.is_some_and(|t| t.is_zero()) {
                return Err(CacheError::config(
                    &format!("cache {name:?}"),
                    "a default TTL must be positive",
                ));
            }
        }
        let s = self.settings;
        let mut spec = NodeSpec::new();
        spec.id = Some(s.id);
        spec.storage = match s.data_dir {
            Some(dir) => Storage::Dir(dir),
            None => Storage::Memory,
        };
        spec.no_sync = s.no_sync;
        if s.members.is_empty() {
            spec.start = Start::Single;
            spec.raft_addr = Some(self.raft_addr.unwrap_or_else(|| "127.0.0.1:0".to_string()));
        } else {
            if !s.members.contains_key(&s.id) {
                return Err(CacheError::config(
                    "members",
                    format!("node {} is not one of the members", s.id),
                ));
            }
            spec.raft_addr = s.members.get(&s.id).cloned();
            spec.start = Start::Members(s.members.clone());
        }
        spec.listen_addr = s.listen.clone();
        if let Some(tick) = s.tick {
            spec.config.tick_interval = tick;
        }
        spec.grpc.auth_token = s.token;
        spec.grpc.accept_tokens = s.accept_tokens;
        spec.grpc.tls = s.tls;
        if let Some(logger) = self.logger {
            spec.logger = logger;
        }
        for f in self.configure {
            f(&mut spec);
        }
        let logger = spec.logger.clone();
        // An HA node with empty storage rejoins a cluster that exists.
        let mut rejoin = None;
        if !s.members.is_empty() && !raftify::holds_data(&spec) {
            if let Found::Cluster { member } = membership::probe(&s.members, s.id, &spec.grpc).await
            {
                spec.start = Start::Wait;
                rejoin = Some(member);
            }
        }
        let grpc = spec.grpc.clone();
        let events = Events::new();
        let mut sm = CacheState::new();
        let (on_change, on_publish) = (events.clone(), events.clone());
        sm.set_change_hook(Arc::new(move |c| on_change.on_change(c)));
        sm.set_publish_hook(Arc::new(move |ch, m| on_publish.on_publish(ch, m)));
        let election_timeout = spec.config.election_timeout();
        if let Some(member) = rejoin {
            slog::info!(logger, "rejoining the cluster with empty storage"; "id" => s.id, "was_member" => member);
        }
        if rejoin == Some(true) {
            // The old self goes before the new one runs (see `Rejoin`).
            let (id, addr) = (s.id, spec.raft_addr.clone().unwrap_or_default());
            membership::rejoin(&s.members, id, &addr, Rejoin::RemoveOld, &grpc, &logger).await?;
        }
        let launched = launch(spec, sm, None).await?;
        if rejoin.is_some() {
            let addr = launched.raft_addr.clone();
            let added =
                membership::rejoin(&s.members, s.id, &addr, Rejoin::AddBack, &grpc, &logger).await;
            if let Err(e) = added {
                launched.shutdown().await;
                return Err(e);
            }
        }
        let node = launched.raft.clone();
        let (health_tx, health_rx) = watch::channel(Health::default());
        let mut tasks = vec![
            tokio::spawn(crate::expiry::run(node.clone(), logger.clone())),
            tokio::spawn(health::run(node.clone(), health_tx)),
        ];
        if !s.members.is_empty() {
            tasks.push(tokio::spawn(membership::reconcile(
                node.clone(),
                s.members.clone(),
                logger.clone(),
            )));
        }
        Ok(Cache {
            inner: Arc::new(Inner {
                id: launched.id,
                raft_addr: launched.raft_addr.clone(),
                node,
                launched: tokio::sync::Mutex::new(Some(launched)),
                caches: self.caches,
                health: health_rx,
                events,
                quorum_loss: self.quorum_loss,
                write_ack: self.write_ack,
                grpc,
                peers: Default::default(),
                election_timeout,
                tasks: std::sync::Mutex::new(tasks),
            }),
        })
    }
}

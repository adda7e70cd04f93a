//! The embedded cache: a replicated cache inside each replica of a
//! service, on raftify's consensus.
//!
//! ```no_run
//! use raftify_cache::embedded::{Cache, CacheConfig};
//! use std::time::Duration;
//! # async fn f() -> Result<(), raftify_cache::embedded::CacheError> {
//! // HA_MODE, HA_HOSTS, HOSTNAME, ... or, with none set, one node in memory.
//! let cache = Cache::builder_from_env()?
//!     .cache("sessions", CacheConfig::new().ttl(Duration::from_secs(60)).max_entries(10_000))
//!     .build()
//!     .await?;
//! cache.put("sessions", "alice", &vec![1, 2, 3]).await?;
//! let v: Option<Vec<u8>> = cache.get("sessions", "alice").await?;
//! # Ok(()) }
//! ```
//!
//! * Named caches ([`CacheConfig`]): a default TTL, a bound on entries
//!   and/or bytes; the same entries are evicted on every node.
//! * Values are typed through serde (JSON), or raw bytes (`*_bytes`).
//! * Writes return once committed and applied on this node; reads are
//!   linearizable by default or local per call ([`Consistency`]).
//! * [`Cache::subscribe`] yields every change in log order on every node;
//!   [`Cache::notify`]/[`Cache::listen`] carry messages through the log.
//! * [`Cache::lock`]: distributed locks with fencing tokens.
//! * [`Cache::health`]: quorum state; [`QuorumLoss`] picks what reads do
//!   without a quorum.

mod ack;
mod builder;
pub mod env;
mod error;
mod events;
mod health;
mod lock;
mod membership;

pub use ack::WriteAck;
pub use builder::{CacheBuilder, CacheConfig, Consistency, QuorumLoss, MAX_NAME};
pub use error::CacheError;
pub use events::SUBSCRIBER_BUFFER;
pub use health::Health;
pub use lock::LockGuard;

use crate::named::Change;
use crate::{CacheEntry, CacheState, NamedOp, Op, Reply};
use bytes::Bytes;
use events::Events;
use raftify::Launched;
use raftify_core::{unix_ms, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// A read's answer and whether it may be stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched<T> {
    /// The value, if the key exists.
    pub value: Option<T>,
    /// Served from this node's copy without confirming it is current
    /// (a local read, or a linearizable one under [`QuorumLoss::ServeStale`]
    /// without a quorum).
    pub stale: bool,
}

/// A running node of the embedded cache. Cheap to clone; every clone is
/// the same node. Stop it with [`Cache::shutdown`].
#[derive(Clone)]
pub struct Cache {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    id: u64,
    raft_addr: String,
    node: Raft<CacheEntry, CacheState>,
    launched: tokio::sync::Mutex<Option<Launched<CacheEntry, CacheState>>>,
    caches: BTreeMap<String, CacheConfig>,
    health: watch::Receiver<Health>,
    events: std::sync::Arc<Events>,
    quorum_loss: QuorumLoss,
    write_ack: WriteAck,
    grpc: raftify::GrpcConfig,
    peers: ack::Peers,
    election_timeout: Duration,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Cache {
    /// A builder: one node in memory unless told otherwise.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// A builder configured from the environment ([`env`]), to add named
    /// caches to before [`CacheBuilder::build`].
    pub fn builder_from_env() -> Result<CacheBuilder, CacheError> {
        CacheBuilder::from_env()
    }

    /// Starts a node configured from the environment with one cache,
    /// `default` (no TTL, no bound).
    pub async fn from_env() -> Result<Cache, CacheError> {
        CacheBuilder::from_env()?
            .cache("default", CacheConfig::new())
            .build()
            .await
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The address peers reach this node's raft port at.
    pub fn raft_addr(&self) -> &str {
        &self.inner.raft_addr
    }

    /// The raft node underneath (membership, status, metrics).
    pub fn raft(&self) -> &Raft<CacheEntry, CacheState> {
        &self.inner.node
    }

    /// The configured caches.
    pub fn caches(&self) -> &BTreeMap<String, CacheConfig> {
        &self.inner.caches
    }

    /// The election timeout's lower bound (how soon a lost quorum shows).
    pub fn election_timeout(&self) -> Duration {
        self.inner.election_timeout
    }

    /// The node's health, updated as it changes.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.clone()
    }

    /// Whether this node should receive traffic: a leader is known and it
    /// has caught up.
    pub fn ready(&self) -> bool {
        self.inner.health.borrow().ready()
    }

    /// Stores `value` (serialized as JSON) under `key`, with the cache's
    /// default TTL.
    pub async fn put<T: Serialize + ?Sized>(
        &self,
        cache: &str,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<(), CacheError> {
        self.put_bytes(cache, key, encode(value)?, None).await
    }

    /// Stores `value` under `key` with its own TTL.
    pub async fn put_with_ttl<T: Serialize + ?Sized>(
        &self,
        cache: &str,
        key: impl AsRef<[u8]>,
        value: &T,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.put_bytes(cache, key, encode(value)?, Some(ttl)).await
    }

    /// Stores raw bytes; `ttl` `None` takes the cache's default.
    pub async fn put_bytes(
        &self,
        cache: &str,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        let op = NamedOp::Put {
            key: Bytes::copy_from_slice(key.as_ref()),
            value: value.into(),
            ttl_ms: self.ttl_ms(cache, ttl)?,
            only_if_absent: false,
        };
        self.write(cache, op).await.map(drop)
    }

    /// The value under `key`, read as the node's default (linearizable).
    pub async fn get<T: DeserializeOwned>(
        &self,
        cache: &str,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>, CacheError> {
        Ok(self
            .get_with(cache, key, Consistency::Linearizable)
            .await?
            .value)
    }

    /// The value under `key`, as fresh as `consistency` asks.
    pub async fn get_with<T: DeserializeOwned>(
        &self,
        cache: &str,
        key: impl AsRef<[u8]>,
        consistency: Consistency,
    ) -> Result<Fetched<T>, CacheError> {
        let key = key.as_ref();
        let f = self.get_bytes(cache, key, consistency).await?;
        Ok(Fetched {
            value: f.value.map(|v| decode(cache, key, &v)).transpose()?,
            stale: f.stale,
        })
    }

    /// The raw bytes under `key`.
    pub async fn get_bytes(
        &self,
        cache: &str,
        key: impl AsRef<[u8]>,
        consistency: Consistency,
    ) -> Result<Fetched<Bytes>, CacheError> {
        self.config(cache)?;
        let key = key.as_ref();
        let read = |sm: &CacheState| {
            sm.named()
                .cache(cache.as_bytes())
                .and_then(|c| c.get(key).cloned())
        };
        let mode = self.inner.quorum_loss;
        if mode == QuorumLoss::Wipe && !self.inner.health.borrow().ready() {
            return Ok(Fetched {
                value: None,
                stale: true,
            });
        }
        let local = || async {
            Ok(Fetched {
                value: self.inner.node.stale_read(read).await,
                stale: true,
            })
        };
        if consistency == Consistency::Local {
            return local().await;
        }
        if !self.await_quorum().await {
            return match mode {
                QuorumLoss::ServeStale => local().await,
                _ => Err(no_quorum()),
            };
        }
        let confirmed = self
            .guarded(false, async {
                self.inner.node.handle().read_index().await.map(drop)
            })
            .await;
        match confirmed {
            Ok(()) => Ok(Fetched {
                value: self.inner.node.stale_read(read).await,
                stale: false,
            }),
            Err(CacheError::Unavailable(_) | CacheError::OutcomeUnknown(_))
                if mode == QuorumLoss::ServeStale =>
            {
                local().await
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, cache: &str, key: impl AsRef<[u8]>) -> Result<bool, CacheError> {
        let op = NamedOp::Delete {
            key: Bytes::copy_from_slice(key.as_ref()),
        };
        Ok(matches!(self.write(cache, op).await?, Reply::Int(1)))
    }

    /// The value under `key`, or `make()`'s, stored if the key was missing
    /// (atomically: of two callers at once, both get the value stored
    /// first).
    pub async fn get_or_insert_with<T, F>(
        &self,
        cache: &str,
        key: impl AsRef<[u8]>,
        make: F,
    ) -> Result<T, CacheError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
    {
        let key = key.as_ref();
        if let Some(v) = self.get(cache, key).await? {
            return Ok(v);
        }
        let value = make();
        let op = NamedOp::Put {
            key: Bytes::copy_from_slice(key),
            value: encode(&value)?,
            ttl_ms: self.ttl_ms(cache, None)?,
            only_if_absent: true,
        };
        match self.write(cache, op).await? {
            Reply::Bulk(existing) => decode(cache, key, &existing),
            _ => Ok(value),
        }
    }

    /// Adds `by` to the counter under `key` (missing: 0) and returns the
    /// new value. Not idempotent: after [`CacheError::OutcomeUnknown`] the
    /// increment may have happened.
    pub async fn incr(
        &self,
        cache: &str,
        key: impl AsRef<[u8]>,
        by: i64,
    ) -> Result<i64, CacheError> {
        let op = NamedOp::Incr {
            key: Bytes::copy_from_slice(key.as_ref()),
            by,
            ttl_ms: self.ttl_ms(cache, None)?,
        };
        match self.write(cache, op).await? {
            Reply::Int(n) => Ok(n),
            other => Err(CacheError::Rejected(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sets `key` to `new` only if it holds `expected` (`None`: only if
    /// missing); whether it did. Values are compared as their JSON
    /// encodings.
    pub async fn compare_and_swap<T: Serialize + ?Sized>(
        &self,
        cache: &str,
        key: impl AsRef<[u8]>,
        expected: Option<&T>,
        new: &T,
    ) -> Result<bool, CacheError> {
        let op = NamedOp::Cas {
            key: Bytes::copy_from_slice(key.as_ref()),
            expected: expected.map(encode).transpose()?,
            value: encode(new)?,
            ttl_ms: self.ttl_ms(cache, None)?,
        };
        Ok(matches!(self.write(cache, op).await?, Reply::Int(1)))
    }

    /// Every change to every named cache, in log order, as this node
    /// applies it (the same sequence on every node). A subscriber that
    /// falls [`SUBSCRIBER_BUFFER`] changes behind is told how many it
    /// missed (`RecvError::Lagged`). A node that restarts replays the log
    /// since its last snapshot, so changes may come again with the same
    /// [`Change::index`]; a node brought up to date by a snapshot does not
    /// see the changes the snapshot covers.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.events.subscribe()
    }

    /// Sends `payload` to every listener of `channel` on every node,
    /// through the log (one order everywhere).
    pub async fn notify(&self, channel: &str, payload: impl Into<Bytes>) -> Result<(), CacheError> {
        let entry = CacheEntry {
            clock_ms: unix_ms(),
            op: Op::Publish {
                channel: Bytes::copy_from_slice(channel.as_bytes()),
                message: payload.into(),
            },
        };
        self.propose(entry).await.map(drop)
    }

    /// Messages sent to `channel` from now on.
    pub fn listen(&self, channel: &str) -> broadcast::Receiver<Bytes> {
        self.inner
            .events
            .listen(Bytes::copy_from_slice(channel.as_bytes()))
    }

    /// Stops the node, its server and its tasks.
    pub async fn shutdown(&self) {
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        if let Some(l) = self.inner.launched.lock().await.take() {
            l.shutdown().await;
        }
    }

    fn config(&self, cache: &str) -> Result<&CacheConfig, CacheError> {
        self.inner
            .caches
            .get(cache)
            .ok_or_else(|| CacheError::UnknownCache(cache.to_string()))
    }

    /// The TTL in ms: `ttl`, else the cache's default.
    fn ttl_ms(&self, cache: &str, ttl: Option<Duration>) -> Result<Option<u64>, CacheError> {
        let ttl = ttl.or(self.config(cache)?.ttl);
        match ttl {
            Some(t) if t.is_zero() => Err(CacheError::Rejected("a TTL must be positive".into())),
            Some(t) => Ok(Some(
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1),
            )),
            None => Ok(None),
        }
    }

    /// Proposes a write to a named cache; its reply, or the error it
    /// carries as a rejection.
    async fn write(&self, cache: &str, op: NamedOp) -> Result<Reply, CacheError> {
        let config = self.config(cache)?;
        let entry = CacheEntry {
            clock_ms: unix_ms(),
            op: Op::Named {
                cache: Bytes::copy_from_slice(cache.as_bytes()),
                bound: config.bound(),
                op,
            },
        };
        let (index, reply) = self.propose_indexed(entry).await?;
        if let (Some(index), WriteAck::AllLive) = (index, self.inner.write_ack) {
            let me = self.inner.id;
            let members: Vec<(u64, String)> = match self.inner.node.handle().status().await {
                Ok(st) => st
                    .members
                    .into_iter()
                    .filter(|m| m.id != me)
                    .filter_map(|m| Some((m.id, m.addr?)))
                    .collect(),
                Err(_) => vec![],
            };
            let config = self.inner.node.handle().config();
            self.inner
                .peers
                .all_applied(
                    members,
                    index,
                    &self.inner.grpc,
                    self.inner.election_timeout,
                    config.proposal_timeout,
                )
                .await?;
        }
        match reply {
            Reply::Error(e) => Err(CacheError::Rejected(e)),
            r => Ok(r),
        }
    }

    /// Proposes `entry` and waits until this node applied it; the reply
    /// without its index.
    async fn propose(&self, entry: CacheEntry) -> Result<Reply, CacheError> {
        Ok(self.propose_indexed(entry).await?.1)
    }

    /// [`Cache::propose`], with the entry's log index when its reply
    /// carries one.
    async fn propose_indexed(&self, entry: CacheEntry) -> Result<(Option<u64>, Reply), CacheError> {
        if !self.await_quorum().await {
            return Err(no_quorum());
        }
        let reply = self
            .guarded(true, async { self.inner.node.propose(&entry).await })
            .await?;
        let (index, reply) = match reply {
            Reply::Array(mut v) if v.len() == 2 => match (v.pop(), v.pop()) {
                (Some(r), Some(Reply::Int(i))) => (Some(i as u64), r),
                (r, _) => (None, r.unwrap_or(Reply::Nil)),
            },
            other => (None, other),
        };
        if let Some(index) = index {
            // Committed and applied on the leader: a success whatever
            // happens next. Wait (within the usual bound) until this
            // node applied it too, so a local read sees it.
            let wait = self.inner.node.handle().config().proposal_timeout;
            let _ = self.inner.node.handle().wait_for_applied(index, wait).await;
        }
        Ok((index, reply))
    }

    /// Whether a quorum answers, waiting up to half an election timeout
    /// for one (a node that just started, an election under way): a call
    /// made then waits briefly instead of failing at once, and a lost
    /// quorum still answers well within two election timeouts.
    async fn await_quorum(&self) -> bool {
        if self.inner.health.borrow().quorum {
            return true;
        }
        let mut health = self.inner.health.clone();
        let grace = self.inner.election_timeout / 2;
        let came = tokio::time::timeout(grace, health.wait_for(|h| h.quorum))
            .await
            .is_ok_and(|r| r.is_ok());
        came
    }

    /// Runs `call`, failing it when this node loses its quorum first
    /// ([`Health::quorum`]): a write then has an unknown outcome, a read is
    /// unavailable.
    async fn guarded<T>(
        &self,
        write: bool,
        call: impl Future<Output = raftify_core::Result<T>>,
    ) -> Result<T, CacheError> {
        let mut health = self.inner.health.clone();
        let lost = async move {
            let _ = health.wait_for(|h| !h.quorum).await;
        };
        tokio::select! {
            r = call => r.map_err(CacheError::from_raft),
            () = lost => Err(if write {
                CacheError::OutcomeUnknown(
                    "this node lost its quorum while the write was in flight".into(),
                )
            } else {
                no_quorum()
            }),
        }
    }
}

fn no_quorum() -> CacheError {
    CacheError::Unavailable("this node cannot reach a quorum (no leader, or none answering)".into())
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, CacheError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| CacheError::Serialize(e.to_string()))
}

fn decode<T: DeserializeOwned>(cache: &str, key: &[u8], v: &[u8]) -> Result<T, CacheError> {
    serde_json::from_slice(v).map_err(|e| CacheError::Deserialize {
        cache: cache.to_string(),
        key: String::from_utf8_lossy(key).into_owned(),
        error: e.to_string(),
    })
}

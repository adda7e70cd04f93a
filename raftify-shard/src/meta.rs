//! The metadata group's state machine: the [`Placement`], replicated.
//!
//! Every node of a sharded cluster is a member of the metadata group
//! ([`META_GROUP`](crate::META_GROUP)); its log holds [`MetaEntry`]s, so
//! every node applies the same placement changes in the same order and
//! routes by the same map. Placement changes ([`MetaCommand`]) are JSON
//! (rare, small, readable in a log dump); a command that does not decode is
//! refused by the proposer and never reaches the log.
//!
//! The same log carries broadcasts ([`MetaEntry::Broadcast`]): opaque
//! messages every node hands, as it applies them, to its
//! [`BroadcastHook`] — so every node sees every broadcast, in one order
//! (what a sharded Redis's `PUBLISH` needs). They change no state.

use crate::placement::{Change, Placement, PlacementError};
use async_trait::async_trait;
use raftify_core::{AbstractLogEntry, AbstractStateMachine, BoxError, Payload};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::watch;

/// A placement change, applied only if the placement is still at
/// `expect_version` (when given): a planner's step, planned against one
/// version, is refused once another change got in first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaCommand {
    /// The version the change was planned against.
    pub expect_version: Option<u64>,
    /// The change.
    pub change: Change,
}

impl AbstractLogEntry for MetaCommand {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(self)?)
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// An entry of the metadata group's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaEntry {
    /// A placement change (JSON in the log).
    Change(MetaCommand),
    /// A message for every node's [`BroadcastHook`] (in the log: the tag
    /// byte [`BROADCAST_TAG`], then the message as is).
    Broadcast(Vec<u8>),
}

/// The first byte of a broadcast in the log. A placement change is a JSON
/// object, whose first byte is `{`: the two never collide, and logs
/// written before broadcasts existed read as they were.
pub const BROADCAST_TAG: u8 = 0xB0;

impl AbstractLogEntry for MetaEntry {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        match self {
            MetaEntry::Change(cmd) => cmd.encode(),
            MetaEntry::Broadcast(msg) => {
                let mut out = Vec::with_capacity(msg.len() + 1);
                out.push(BROADCAST_TAG);
                out.extend_from_slice(msg);
                Ok(out)
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        match bytes.split_first() {
            Some((&BROADCAST_TAG, msg)) => Ok(MetaEntry::Broadcast(msg.to_vec())),
            _ => Ok(MetaEntry::Change(MetaCommand::decode(bytes)?)),
        }
    }
}

/// What applying a [`MetaEntry`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOutcome {
    /// A change: the new version, or why it was refused (nothing changed).
    Change(Result<u64, PlacementError>),
    /// A broadcast: what the applying node's hook answered (0 without
    /// one).
    Broadcast(u64),
}

/// A broadcast's outcome on the wire.
#[derive(Serialize, Deserialize)]
enum BroadcastOutcome {
    Broadcast(u64),
}

/// A change's outcome is sent as the bare `Result` (as before broadcasts
/// existed, so nodes of either version read each other's answers); a
/// broadcast's as `{"Broadcast": n}`.
impl Payload for MetaOutcome {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(match self {
            MetaOutcome::Change(r) => serde_json::to_vec(r)?,
            MetaOutcome::Broadcast(n) => serde_json::to_vec(&BroadcastOutcome::Broadcast(*n))?,
        })
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        match serde_json::from_slice(bytes) {
            Ok(r) => Ok(MetaOutcome::Change(r)),
            Err(_) => {
                let BroadcastOutcome::Broadcast(n) = serde_json::from_slice(bytes)?;
                Ok(MetaOutcome::Broadcast(n))
            }
        }
    }
}

/// What a node does with each broadcast as it applies it (on every node,
/// in log order, on the apply path: it must not block). Its answer (say,
/// how many receivers it reached) is the broadcast's outcome on the node
/// that applied it for the proposer.
pub type BroadcastHook = Arc<dyn Fn(&[u8]) -> u64 + Send + Sync>;

/// The replicated placement. Readers follow it through
/// [`MetaStore::subscribe`]: a watch that holds the placement as last
/// applied on this node (routing reads it without a lock on the state
/// machine).
pub struct MetaStore {
    placement: Placement,
    tx: watch::Sender<Placement>,
    on_broadcast: Option<BroadcastHook>,
}

impl Default for MetaStore {
    fn default() -> Self {
        let (tx, _) = watch::channel(Placement::default());
        MetaStore {
            placement: Placement::default(),
            tx,
            on_broadcast: None,
        }
    }
}

impl MetaStore {
    /// An empty placement (not bootstrapped).
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands every broadcast applied from now on to `hook`.
    pub fn on_broadcast(&mut self, hook: BroadcastHook) {
        self.on_broadcast = Some(hook);
    }

    /// The placement as applied.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// A watch of the placement, updated after every applied change and
    /// every restore.
    pub fn subscribe(&self) -> watch::Receiver<Placement> {
        self.tx.subscribe()
    }

    fn publish(&self) {
        self.tx.send_replace(self.placement.clone());
    }
}

#[async_trait]
impl AbstractStateMachine<MetaEntry> for MetaStore {
    type Output = MetaOutcome;

    async fn apply(&mut self, entry: MetaEntry) -> Result<MetaOutcome, BoxError> {
        let cmd = match entry {
            MetaEntry::Change(cmd) => cmd,
            MetaEntry::Broadcast(msg) => {
                let n = self.on_broadcast.as_ref().map_or(0, |hook| hook(&msg));
                return Ok(MetaOutcome::Broadcast(n));
            }
        };
        let before = self.placement.version();
        let outcome = self.placement.apply(cmd.expect_version, cmd.change);
        if self.placement.version() != before {
            self.publish();
        }
        Ok(MetaOutcome::Change(outcome))
    }

    async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(&self.placement)?)
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError> {
        self.placement = if snapshot.is_empty() {
            Placement::default()
        } else {
            serde_json::from_slice(&snapshot)?
        };
        self.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{NodeInfo, Settings};

    fn boot() -> MetaEntry {
        MetaEntry::Change(MetaCommand {
            expect_version: Some(0),
            change: Change::Bootstrap {
                node: 1,
                info: NodeInfo {
                    raft_addr: "127.0.0.1:7001".into(),
                    client_addr: "127.0.0.1:6001".into(),
                    leaving: false,
                    down: false,
                },
                settings: Settings::default(),
            },
        })
    }

    #[tokio::test]
    async fn commands_apply_publish_and_survive_a_snapshot() {
        let mut store = MetaStore::new();
        let mut watch = store.subscribe();
        let cmd = MetaEntry::decode(&boot().encode().unwrap()).unwrap();
        assert_eq!(store.apply(cmd).await.unwrap(), MetaOutcome::Change(Ok(1)));
        assert!(watch.has_changed().unwrap());
        assert_eq!(watch.borrow_and_update().version(), 1);
        // Refused: same version, nothing published.
        let again = store.apply(boot()).await.unwrap();
        assert!(matches!(
            again,
            MetaOutcome::Change(Err(PlacementError::Stale { .. }))
        ));
        assert!(!watch.has_changed().unwrap());
        let out = Payload::decode(&again.encode().unwrap()).unwrap();
        assert_eq!(again, out);

        let snap = store.snapshot().await.unwrap();
        let mut other = MetaStore::new();
        other.restore(snap).await.unwrap();
        assert_eq!(other.placement(), store.placement());
        other.restore(Vec::new()).await.unwrap();
        assert!(!other.placement().is_bootstrapped());
        assert!(other.restore(b"{not json".to_vec()).await.is_err());
        assert!(MetaEntry::decode(b"\x00\x01").is_err());
    }

    #[tokio::test]
    async fn broadcasts_reach_the_hook_in_order_and_change_nothing() {
        let mut store = MetaStore::new();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook_seen = seen.clone();
        store.on_broadcast(Arc::new(move |m: &[u8]| {
            let mut seen = hook_seen.lock().unwrap();
            seen.push(m.to_vec());
            seen.len() as u64
        }));
        store.apply(boot()).await.unwrap();
        let watch = store.subscribe();
        for (i, m) in [&b"one"[..], b"", b"{\"not\": \"a change\"}"]
            .iter()
            .enumerate()
        {
            let entry = MetaEntry::decode(&MetaEntry::Broadcast(m.to_vec()).encode().unwrap());
            let out = store.apply(entry.unwrap()).await.unwrap();
            assert_eq!(out, MetaOutcome::Broadcast(i as u64 + 1));
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                b"one".to_vec(),
                Vec::new(),
                b"{\"not\": \"a change\"}".to_vec()
            ]
        );
        assert_eq!(store.placement().version(), 1);
        assert!(!watch.has_changed().unwrap());
        let out = MetaOutcome::Broadcast(7);
        assert_eq!(MetaOutcome::decode(&out.encode().unwrap()).unwrap(), out);
        assert_eq!(
            MetaOutcome::decode(b"{\"Ok\":3}").unwrap(),
            MetaOutcome::Change(Ok(3))
        );
        assert!(MetaOutcome::decode(b"{\"Other\":3}").is_err());
        // Without a hook a broadcast reaches nobody.
        let mut bare = MetaStore::new();
        let out = bare.apply(MetaEntry::Broadcast(b"x".to_vec())).await;
        assert_eq!(out.unwrap(), MetaOutcome::Broadcast(0));
    }
}

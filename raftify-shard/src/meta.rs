//! The metadata group's state machine: the [`Placement`], replicated.
//!
//! Every node of a sharded cluster is a member of the metadata group
//! ([`META_GROUP`](crate::META_GROUP)); its log holds [`MetaEntry`]s, so
//! every node applies the same placement changes in the same order and
//! routes by the same map. Placement changes ([`MetaCommand`]) are JSON
//! (rare, small, readable in a log dump). An entry a node cannot decode
//! (one of a newer version, proposed through a node that has it) is
//! skipped by that node, and its proposer told the outcome is unknown.
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
    /// A command of the application's [`SharedState`] (in the log: the
    /// tag byte [`SHARED_TAG`], then the command as is).
    Shared(Vec<u8>),
}

/// The first byte of a broadcast in the log. A placement change is a JSON
/// object, whose first byte is `{`: the kinds never collide, and logs
/// written before broadcasts existed read as they were.
pub const BROADCAST_TAG: u8 = 0xB0;

/// The first byte of a [`MetaEntry::Shared`] command in the log.
pub const SHARED_TAG: u8 = 0xB1;

/// Cluster-wide state of the application (say, its users), replicated by
/// the metadata group beside the placement: every node applies the same
/// commands in the same order, and it travels in the metadata group's
/// snapshots. The application keeps a handle to read it (interior
/// mutability: the metadata group applies through `&self`).
pub trait SharedState: Send + Sync + 'static {
    /// Applies a command; the answer goes to the proposer. Deterministic:
    /// the same on every node.
    fn apply(&self, command: &[u8]) -> Vec<u8>;
    /// The whole state (empty: nothing to keep).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's (empty: the initial state).
    fn restore(&self, snapshot: &[u8]) -> Result<(), BoxError>;
}

/// The start of a metadata snapshot that carries shared state: the magic,
/// the placement's JSON length (8 bytes, big-endian), the placement, then
/// the shared state. A snapshot without shared state is the placement's
/// JSON alone, as before shared state existed.
const SNAPSHOT_MAGIC: &[u8; 8] = b"RFTYMET2";

impl AbstractLogEntry for MetaEntry {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        match self {
            MetaEntry::Change(cmd) => cmd.encode(),
            MetaEntry::Broadcast(msg) => Ok(tagged(BROADCAST_TAG, msg)),
            MetaEntry::Shared(cmd) => Ok(tagged(SHARED_TAG, cmd)),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        match bytes.split_first() {
            Some((&BROADCAST_TAG, msg)) => Ok(MetaEntry::Broadcast(msg.to_vec())),
            Some((&SHARED_TAG, cmd)) => Ok(MetaEntry::Shared(cmd.to_vec())),
            _ => Ok(MetaEntry::Change(MetaCommand::decode(bytes)?)),
        }
    }
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(body);
    out
}

/// What applying a [`MetaEntry`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOutcome {
    /// A change: the new version, or why it was refused (nothing changed).
    Change(Result<u64, PlacementError>),
    /// A broadcast: what the applying node's hook answered (0 without
    /// one).
    Broadcast(u64),
    /// A shared-state command: the state's answer (empty without one).
    Shared(Vec<u8>),
}

/// A broadcast's or shared command's outcome on the wire.
#[derive(Serialize, Deserialize)]
enum OtherOutcome {
    Broadcast(u64),
    Shared(Vec<u8>),
}

/// A change's outcome is sent as the bare `Result` (as before broadcasts
/// existed, so nodes of either version read each other's answers); a
/// broadcast's as `{"Broadcast": n}`.
impl Payload for MetaOutcome {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(match self {
            MetaOutcome::Change(r) => serde_json::to_vec(r)?,
            MetaOutcome::Broadcast(n) => serde_json::to_vec(&OtherOutcome::Broadcast(*n))?,
            MetaOutcome::Shared(b) => serde_json::to_vec(&OtherOutcome::Shared(b.clone()))?,
        })
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        match serde_json::from_slice(bytes) {
            Ok(r) => Ok(MetaOutcome::Change(r)),
            Err(_) => Ok(match serde_json::from_slice(bytes)? {
                OtherOutcome::Broadcast(n) => MetaOutcome::Broadcast(n),
                OtherOutcome::Shared(b) => MetaOutcome::Shared(b),
            }),
        }
    }
}

/// What a node does with each broadcast as it applies it (on every node,
/// in log order, on the apply path: it must not block). Its answer (say,
/// how many receivers it reached) is the broadcast's outcome on the node
/// that applied it for the proposer.
pub type BroadcastHook = Arc<dyn Fn(&[u8]) -> u64 + Send + Sync>;

/// What a node does with every placement it applies (each change, each
/// restore), on the apply path: it must not block. The watch
/// ([`MetaStore::subscribe`]) shows the latest only; this sees each
/// version (a simulation checks them all).
pub type PlacementHook = Arc<dyn Fn(&Placement) + Send + Sync>;

/// The replicated placement. Readers follow it through
/// [`MetaStore::subscribe`]: a watch that holds the placement as last
/// applied on this node (routing reads it without a lock on the state
/// machine).
pub struct MetaStore {
    placement: Placement,
    tx: watch::Sender<Placement>,
    on_broadcast: Option<BroadcastHook>,
    on_placement: Option<PlacementHook>,
    shared: Option<Arc<dyn SharedState>>,
}

impl Default for MetaStore {
    fn default() -> Self {
        let (tx, _) = watch::channel(Placement::default());
        MetaStore {
            placement: Placement::default(),
            tx,
            on_broadcast: None,
            on_placement: None,
            shared: None,
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

    /// Hands every placement applied from now on to `hook`.
    pub fn on_placement(&mut self, hook: PlacementHook) {
        self.on_placement = Some(hook);
    }

    /// Replicates `state` beside the placement (see [`SharedState`]).
    pub fn share(&mut self, state: Arc<dyn SharedState>) {
        self.shared = Some(state);
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
        if let Some(hook) = &self.on_placement {
            hook(&self.placement);
        }
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
            MetaEntry::Shared(cmd) => {
                let out = self.shared.as_ref().map(|s| s.apply(&cmd));
                return Ok(MetaOutcome::Shared(out.unwrap_or_default()));
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
        let placement = serde_json::to_vec(&self.placement)?;
        let shared = self
            .shared
            .as_ref()
            .map(|s| s.snapshot())
            .unwrap_or_default();
        if shared.is_empty() {
            return Ok(placement);
        }
        let mut out = Vec::with_capacity(16 + placement.len() + shared.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&(placement.len() as u64).to_be_bytes());
        out.extend_from_slice(&placement);
        out.extend_from_slice(&shared);
        Ok(out)
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError> {
        let (placement, shared) = match snapshot.strip_prefix(SNAPSHOT_MAGIC) {
            Some(rest) => {
                let (len, rest) = rest
                    .split_first_chunk::<8>()
                    .ok_or("a metadata snapshot cut short")?;
                let len = usize::try_from(u64::from_be_bytes(*len))?;
                if rest.len() < len {
                    return Err("a metadata snapshot cut short".into());
                }
                rest.split_at(len)
            }
            None => (&snapshot[..], &[][..]),
        };
        let placement = if placement.is_empty() {
            Placement::default()
        } else {
            serde_json::from_slice(placement)?
        };
        if let Some(s) = &self.shared {
            s.restore(shared)?;
        }
        self.placement = placement;
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

    /// A shared state of test: the commands applied, in order.
    #[derive(Default)]
    struct Log(std::sync::Mutex<Vec<u8>>);

    impl SharedState for Log {
        fn apply(&self, command: &[u8]) -> Vec<u8> {
            let mut log = self.0.lock().unwrap();
            log.extend_from_slice(command);
            log.clone()
        }
        fn snapshot(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
        fn restore(&self, snapshot: &[u8]) -> Result<(), BoxError> {
            if snapshot == b"bad" {
                return Err("bad".into());
            }
            *self.0.lock().unwrap() = snapshot.to_vec();
            Ok(())
        }
    }

    #[tokio::test]
    async fn shared_state_applies_in_order_and_travels_in_snapshots() {
        let log = Arc::new(Log::default());
        let mut store = MetaStore::new();
        store.share(log.clone());
        // An empty shared state leaves the snapshot as it was: the JSON.
        store.apply(boot()).await.unwrap();
        let plain = store.snapshot().await.unwrap();
        assert_eq!(plain.first(), Some(&b'{'));
        for cmd in [&b"ab"[..], b"c"] {
            let entry = MetaEntry::decode(&MetaEntry::Shared(cmd.to_vec()).encode().unwrap());
            store.apply(entry.unwrap()).await.unwrap();
        }
        assert_eq!(*log.0.lock().unwrap(), b"abc");
        let out = MetaOutcome::Shared(b"abc".to_vec());
        assert_eq!(MetaOutcome::decode(&out.encode().unwrap()).unwrap(), out);

        let snap = store.snapshot().await.unwrap();
        assert!(snap.starts_with(SNAPSHOT_MAGIC));
        let other_log = Arc::new(Log::default());
        let mut other = MetaStore::new();
        other.share(other_log.clone());
        other.restore(snap.clone()).await.unwrap();
        assert_eq!(other.placement(), store.placement());
        assert_eq!(*other_log.0.lock().unwrap(), b"abc");
        // A snapshot from before shared state: the initial shared state.
        other.restore(plain).await.unwrap();
        assert!(other_log.0.lock().unwrap().is_empty());
        assert_eq!(other.placement(), store.placement());
        // Cut short, or refused by the shared state: nothing changes.
        let version = other.placement().version();
        assert!(other.restore(snap[..12].to_vec()).await.is_err());
        assert!(other
            .restore(snap[..snap.len() - 5].to_vec())
            .await
            .is_err());
        let mut bad = snap[..snap.len() - 3].to_vec();
        bad.extend_from_slice(b"bad");
        assert!(other.restore(bad).await.is_err());
        assert_eq!(other.placement().version(), version);
        // Without a shared state its commands answer nothing.
        let mut bare = MetaStore::new();
        let out = bare.apply(MetaEntry::Shared(b"x".to_vec())).await.unwrap();
        assert_eq!(out, MetaOutcome::Shared(Vec::new()));
    }
}

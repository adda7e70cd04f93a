//! The metadata group's state machine: the [`Placement`], replicated.
//!
//! Every node of a sharded cluster is a member of the metadata group
//! ([`META_GROUP`](crate::META_GROUP)); its log holds [`MetaCommand`]s, so
//! every node applies the same placement changes in the same order and
//! routes by the same map. Commands are JSON (rare, small, readable in a
//! log dump); a command that does not decode is refused by the proposer
//! and never reaches the log.

use crate::placement::{Change, Placement, PlacementError};
use async_trait::async_trait;
use raftify_core::{AbstractLogEntry, AbstractStateMachine, BoxError, Payload};
use serde::{Deserialize, Serialize};
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

/// What applying a [`MetaCommand`] gave: the new version, or why it was
/// refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaOutcome(pub Result<u64, PlacementError>);

impl Payload for MetaOutcome {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(&self.0)?)
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(MetaOutcome(serde_json::from_slice(bytes)?))
    }
}

/// The replicated placement. Readers follow it through
/// [`MetaStore::subscribe`]: a watch that holds the placement as last
/// applied on this node (routing reads it without a lock on the state
/// machine).
pub struct MetaStore {
    placement: Placement,
    tx: watch::Sender<Placement>,
}

impl Default for MetaStore {
    fn default() -> Self {
        let (tx, _) = watch::channel(Placement::default());
        MetaStore {
            placement: Placement::default(),
            tx,
        }
    }
}

impl MetaStore {
    /// An empty placement (not bootstrapped).
    pub fn new() -> Self {
        Self::default()
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
impl AbstractStateMachine<MetaCommand> for MetaStore {
    type Output = MetaOutcome;

    async fn apply(&mut self, cmd: MetaCommand) -> Result<MetaOutcome, BoxError> {
        let before = self.placement.version();
        let outcome = self.placement.apply(cmd.expect_version, cmd.change);
        if self.placement.version() != before {
            self.publish();
        }
        Ok(MetaOutcome(outcome))
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

    fn boot() -> MetaCommand {
        MetaCommand {
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
        }
    }

    #[tokio::test]
    async fn commands_apply_publish_and_survive_a_snapshot() {
        let mut store = MetaStore::new();
        let mut watch = store.subscribe();
        let cmd = MetaCommand::decode(&boot().encode().unwrap()).unwrap();
        assert_eq!(store.apply(cmd).await.unwrap(), MetaOutcome(Ok(1)));
        assert!(watch.has_changed().unwrap());
        assert_eq!(watch.borrow_and_update().version(), 1);
        // Refused: same version, nothing published.
        let again = store.apply(boot()).await.unwrap();
        assert!(matches!(again.0, Err(PlacementError::Stale { .. })));
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
        assert!(MetaCommand::decode(b"\x00\x01").is_err());
    }
}

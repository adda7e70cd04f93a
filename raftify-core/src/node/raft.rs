//! [`Raft`]: a running node, typed by its log entry and state machine.

use super::builder::RaftBuilder;
use super::handle::RaftHandle;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine, Payload};
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::RwLock;

/// A running node, typed by its log entry and state machine.
///
/// Writes ([`Raft::propose`]) and reads ([`Raft::linearizable_read`],
/// [`Raft::stale_read`]) go through it; everything that does not need the
/// user's types — membership, status, leadership, shutdown — is on its
/// [`RaftHandle`] ([`Raft::handle`]). The state machine is only ever
/// changed through the log: callers get shared access for reads, never a
/// write lock.
pub struct Raft<E, SM> {
    handle: RaftHandle,
    sm: Arc<RwLock<SM>>,
    _entry: PhantomData<fn() -> E>,
}

impl<E, SM> Clone for Raft<E, SM> {
    fn clone(&self) -> Self {
        Raft {
            handle: self.handle.clone(),
            sm: self.sm.clone(),
            _entry: PhantomData,
        }
    }
}

impl<E, SM> Raft<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    /// Starts building a node with `config` and the user's state machine.
    pub fn builder(config: Config, state_machine: SM) -> RaftBuilder<E, SM> {
        RaftBuilder::new(config, state_machine)
    }

    pub(super) fn from_parts(handle: RaftHandle, sm: Arc<RwLock<SM>>) -> Self {
        Raft {
            handle,
            sm,
            _entry: PhantomData,
        }
    }

    /// The untyped handle: membership, status, leadership, shutdown, and
    /// what transports and servers hold.
    pub fn handle(&self) -> &RaftHandle {
        &self.handle
    }

    /// Replicates `entry` and returns the state machine's output once it is
    /// committed and applied. On a follower the entry goes to the leader
    /// (with the other writes forwarded at the same time). See
    /// [`Raft::propose_local`] to refuse instead.
    pub async fn propose(&self, entry: &E) -> Result<SM::Output> {
        let encoded = entry.encode().map_err(|e| Error::Encode(e.to_string()))?;
        output::<E, SM>(self.handle.propose(encoded).await?)
    }

    /// Like [`Raft::propose`], with an idempotency key: applied at most
    /// once while the key is remembered, a repeat answering the first
    /// answer (see [`RaftHandle::propose_with_key`]).
    pub async fn propose_with_key(&self, key: &str, entry: &E) -> Result<SM::Output> {
        let encoded = entry.encode().map_err(|e| Error::Encode(e.to_string()))?;
        output::<E, SM>(self.handle.propose_with_key(key, encoded).await?)
    }

    /// Like [`Raft::propose`], but only on this node: a follower answers
    /// [`Error::NotLeader`], which names the leader.
    pub async fn propose_local(&self, entry: &E) -> Result<SM::Output> {
        let encoded = entry.encode().map_err(|e| Error::Encode(e.to_string()))?;
        output::<E, SM>(self.handle.propose_here(&encoded).await?)
    }

    /// Runs `read` on the state machine after confirming, through raft's
    /// ReadIndex, that it reflects every write committed before the call.
    pub async fn linearizable_read<T>(&self, read: impl FnOnce(&SM) -> T) -> Result<T> {
        self.handle.read_index().await?;
        let sm = self.sm.read().await;
        Ok(read(&sm))
    }

    /// Runs `read` on the local state machine now (may be stale).
    pub async fn stale_read<T>(&self, read: impl FnOnce(&SM) -> T) -> T {
        let sm = self.sm.read().await;
        read(&sm)
    }
}

/// The state machine's output, from the bytes the applying node sent.
fn output<E, SM>(bytes: Vec<u8>) -> Result<SM::Output>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    // Applied, but what it gave is unreadable here (a node of another
    // version answered): not a failure, an outcome this caller cannot know.
    SM::Output::decode(&bytes).map_err(|e| {
        Error::Interrupted(format!(
            "the entry was applied, but its output does not decode: {e}"
        ))
    })
}

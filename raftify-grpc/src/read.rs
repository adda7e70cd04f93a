//! [`ReadHandler`]: how the client service's `Read` call queries the
//! state machine.

use async_trait::async_trait;
use raftify_core::{AbstractLogEntry, AbstractStateMachine, BoxError};
use std::sync::Arc;

/// Answers `Read` RPCs: runs an application query on the local state
/// machine, after the server has confirmed a linearizable read index.
#[async_trait]
pub trait ReadHandler: Send + Sync + 'static {
    /// Executes `query` on the local state machine.
    async fn read(&self, query: &[u8]) -> std::result::Result<Vec<u8>, BoxError>;
}

struct SmReader<E, SM, F> {
    raft: raftify_core::Raft<E, SM>,
    f: F,
}

#[async_trait]
impl<E, SM, F> ReadHandler for SmReader<E, SM, F>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
    F: Fn(&SM, &[u8]) -> std::result::Result<Vec<u8>, BoxError> + Send + Sync + 'static,
{
    async fn read(&self, query: &[u8]) -> std::result::Result<Vec<u8>, BoxError> {
        self.raft.stale_read(|sm| (self.f)(sm, query)).await
    }
}

/// A [`ReadHandler`] that runs `f` on the state machine of `raft`.
pub fn state_machine_reader<E, SM, F>(
    raft: &raftify_core::Raft<E, SM>,
    f: F,
) -> Arc<dyn ReadHandler>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
    F: Fn(&SM, &[u8]) -> std::result::Result<Vec<u8>, BoxError> + Send + Sync + 'static,
{
    Arc::new(SmReader {
        raft: raft.clone(),
        f,
    })
}

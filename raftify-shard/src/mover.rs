//! [`SlotMover`]: the application's part of a slot move.

use crate::placement::GroupId;
use crate::reach::GroupTransport;
use crate::slots::SlotRange;
use async_trait::async_trait;
use raftify_core::BoxError;
use raftify_grpc::RaftClient;

/// Moves the data of slots between two groups (what a slot move needs
/// besides the placement change): the application's, since only it knows
/// its state machine.
#[async_trait]
pub trait SlotMover: Send + Sync + 'static {
    /// Copies every key of `slots` from group `from` to group `to` (through
    /// their leaders, with `transport`'s views of them: `transport.group(g)`). Called with the
    /// move begun; may be called again for the same move after a crash.
    async fn copy(
        &self,
        transport: &dyn GroupTransport,
        from: (GroupId, Vec<String>),
        to: (GroupId, Vec<String>),
        slots: SlotRange,
    ) -> Result<(), BoxError>;

    /// Deletes the keys of `slots` from group `from`, once the move
    /// committed (they belong to the target now).
    async fn purge(
        &self,
        transport: &dyn GroupTransport,
        from: (GroupId, Vec<String>),
        slots: SlotRange,
    ) -> Result<(), BoxError>;

    /// How many bytes each slot of a group holds (slot, bytes; in slot
    /// order, slots holding nothing left out), asked of the group's
    /// leader at `leader` through `client` (the group's view; a stale
    /// read is enough). Asked with a size limit
    /// ([`crate::Settings::max_group_bytes`]) only, so that a group whose
    /// bytes sit in few slots (hash tags) is split where its bytes are,
    /// not by slot count. `Ok(None)`, the default: this mover cannot
    /// tell, and groups are split by slot count alone.
    async fn weigh(
        &self,
        client: &RaftClient,
        leader: &str,
    ) -> Result<Option<Vec<(u16, u64)>>, BoxError> {
        let _ = (client, leader);
        Ok(None)
    }
}

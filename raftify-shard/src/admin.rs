//! A sharded node's administrative requests beyond rebalancing: moving a
//! group's leadership by hand.

use crate::host::{ShardError, ShardHost};
use crate::placement::{GroupId, NodeId, PlacementError, META_GROUP};
use raftify_core::{AbstractLogEntry, AbstractStateMachine};

impl<E, SM> ShardHost<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    /// Hands `group`'s leadership to node `to` ([`META_GROUP`]: the
    /// metadata group's), from any node: the group's current leader is
    /// found through its replicas and asked, as the rebalancer does. Fails
    /// when `to` holds no replica of the group (the placement says), or
    /// with the leader's answer (e.g. `to` is a learner or not caught up
    /// in time). A later rebalance may spread leaders differently again.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(), ShardError> {
        let p = self.placement().borrow().clone();
        let holds = match group {
            META_GROUP => p.nodes().contains_key(&to),
            g => p
                .groups()
                .get(&g)
                .ok_or(PlacementError::UnknownGroup(g))?
                .replicas
                .contains(&to),
        };
        if !holds {
            return Err(ShardError::Config(format!(
                "node {to} holds no voting replica of group {group}"
            )));
        }
        crate::step::transfer_leader(self.transport(), &p, group, to).await
    }
}

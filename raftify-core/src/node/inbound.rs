//! What a peer's (or a forwarding node's) request does on this node: the
//! node's [`Inbound`], which transports deliver to. Requests run here and
//! are never forwarded again — the sender chose this node.

use super::RaftHandle;
use crate::error::Result;
use crate::membership::{JoinTicket, MembershipChange};
use crate::transport::{ClusterApi, Inbound, Membership, Outcome};
use async_trait::async_trait;
use raft::eraftpb::Message;
use std::sync::Arc;

/// A node as its transport sees it.
struct NodeInbound(RaftHandle);

impl RaftHandle {
    /// This node's receiving side, for transports: raft messages and the
    /// cluster requests peers send it (run here, not forwarded).
    pub fn inbound(&self) -> Arc<dyn Inbound> {
        Arc::new(NodeInbound(self.clone()))
    }
}

impl Inbound for NodeInbound {
    fn step_from(&self, from_addr: Option<String>, msgs: Vec<Message>) -> Result<()> {
        self.0.step_from(from_addr, msgs)
    }
}

#[async_trait]
impl ClusterApi for NodeInbound {
    async fn propose(&self, entry: Vec<u8>) -> Result<Vec<u8>> {
        self.0.propose_here(&entry).await
    }
    async fn propose_batch(&self, entries: Vec<Vec<u8>>) -> Result<Vec<Outcome>> {
        self.0.propose_batch_here(entries).await
    }
    async fn read_index(&self) -> Result<u64> {
        self.0.read_index().await
    }
    async fn request_id(&self, addr: String) -> Result<JoinTicket> {
        self.0.request_id_here(&addr).await
    }
    async fn change_membership(&self, changes: Vec<MembershipChange>) -> Result<Membership> {
        self.0.change_membership_here(changes).await
    }
    async fn transfer_leader(&self, to: u64) -> Result<()> {
        self.0.transfer_leader_here(to).await
    }
    async fn members(&self) -> Result<Membership> {
        self.0.members().await
    }
}

//! The node's cluster API, two ways: its [`Inbound`] — what a peer's (or a
//! forwarding node's) request does here, never forwarded again, since the
//! sender chose this node — and the routed API a client service serves,
//! where writes and membership changes go to the leader.

use super::RaftHandle;
use crate::error::{Error, Result};
use crate::error_info::ErrorInfo;
use crate::membership::{JoinTicket, MembershipChange};
use crate::sessions::SessionWrite;
use crate::transport::{ClusterApi, Inbound, Membership, Outcome};
use async_trait::async_trait;
use raft::eraftpb::Message;
use std::sync::Arc;

/// A node as its transport sees it.
struct NodeInbound(RaftHandle);

/// A node as its clients see it: requests go to the leader.
struct Routed(RaftHandle);

impl RaftHandle {
    /// This node's receiving side, for transports: raft messages and the
    /// cluster requests peers send it (run here, not forwarded).
    pub fn inbound(&self) -> Arc<dyn Inbound> {
        Arc::new(NodeInbound(self.clone()))
    }

    /// This node's cluster API as a client service serves it: writes,
    /// membership changes, transfers and id reservations go to the leader
    /// (this node when it leads); reads confirm with it.
    pub fn routed(&self) -> Arc<dyn ClusterApi> {
        Arc::new(Routed(self.clone()))
    }
}

#[async_trait]
impl ClusterApi for Routed {
    async fn propose(&self, entry: Vec<u8>) -> Result<Vec<u8>> {
        self.0.propose(entry).await
    }
    async fn propose_batch(&self, entries: Vec<Vec<u8>>) -> Result<Vec<Outcome>> {
        // Proposed concurrently (on a follower the forwarder batches them
        // again); one outcome each, in order.
        let h = &self.0;
        Ok(each_spawned(entries, |e| {
            let h = h.clone();
            async move { h.propose(e).await }
        })
        .await)
    }
    async fn propose_session_batch(
        &self,
        writes: Vec<(SessionWrite, Vec<u8>)>,
    ) -> Result<Vec<Outcome>> {
        let h = &self.0;
        Ok(each_spawned(writes, |(w, e)| {
            let h = h.clone();
            async move { h.propose_in_session(w, e).await }
        })
        .await)
    }
    async fn read_index(&self) -> Result<u64> {
        self.0.read_index().await
    }
    async fn request_id(&self, addr: String) -> Result<JoinTicket> {
        self.0.request_id(&addr).await
    }
    async fn change_membership(&self, changes: Vec<MembershipChange>) -> Result<Membership> {
        let members = self.0.change_membership(changes).await?;
        Ok(Membership {
            leader_id: self.0.leader_id().unwrap_or(0),
            members,
            node_id: self.0.id(),
            cluster_uid: self.0.cluster_uid(),
        })
    }
    async fn transfer_leader(&self, to: u64) -> Result<()> {
        self.0.transfer_leader(to).await
    }
    async fn members(&self) -> Result<Membership> {
        self.0.members().await
    }
    async fn open_session(&self) -> Result<u64> {
        self.0.open_session().await
    }
    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>> {
        self.0.propose_in_session(w, entry).await
    }
    async fn propose_with_key(&self, key: String, entry: Vec<u8>) -> Result<Vec<u8>> {
        self.0.propose_with_key(&key, entry).await
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
    async fn propose_session_batch(
        &self,
        writes: Vec<(SessionWrite, Vec<u8>)>,
    ) -> Result<Vec<Outcome>> {
        self.0.propose_session_batch_here(writes).await
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
    async fn open_session(&self) -> Result<u64> {
        self.0.open_session_here().await
    }
    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>> {
        self.0.propose_in_session_here(w, &entry).await
    }
    async fn propose_with_key(&self, key: String, entry: Vec<u8>) -> Result<Vec<u8>> {
        self.0.propose_with_key_here(&key, &entry).await
    }
}

/// Runs `op` on every item in a task of its own; their outcomes, in order.
async fn each_spawned<I, F, Fut>(items: Vec<I>, op: F) -> Vec<Outcome>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>> + Send + 'static,
{
    let tasks: Vec<_> = items.into_iter().map(|i| tokio::spawn(op(i))).collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        let outcome = t
            .await
            .unwrap_or_else(|_| Err(Error::Interrupted("the proposing task ended".into())));
        outcomes.push(outcome.map_err(|e| ErrorInfo::from(&e)));
    }
    outcomes
}

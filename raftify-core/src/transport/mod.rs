//! The transport contract: how raft messages and cluster requests travel.
//!
//! The core knows no network. A [`Transport`] sends batches of raft messages
//! to peers by id (it learns their addresses from [`Transport::set_peer`],
//! which the node calls whenever its replicated address book changes) and
//! performs [`ClusterRequest`]s against a node by address, which is how a
//! follower forwards work to the leader and how a new node joins.
//!
//! Messages arriving from the network go into the receiving node through
//! [`RaftHandle::step`](crate::RaftHandle::step); cluster requests through
//! [`RaftHandle::handle_request`](crate::RaftHandle::handle_request).
//!
//! raftify-core ships [`InProcNetwork`] (nodes in one process, with fault
//! injection); `raftify-grpc` provides gRPC.

mod inproc;

pub use inproc::{InProcNetwork, InProcTransport};

use crate::error::Result;
use crate::membership::{JoinTicket, Member, MembershipChange};
use async_trait::async_trait;
use raft::eraftpb::Message;
use raft::SnapshotStatus;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Delivery outcomes a transport reports back to the node, so raft can
/// slow down probing an unreachable peer and retry snapshots.
#[derive(Clone)]
pub struct Feedback {
    pub(crate) tx: mpsc::UnboundedSender<FeedbackEvent>,
}

#[derive(Debug)]
pub(crate) enum FeedbackEvent {
    Unreachable(u64),
    Snapshot(u64, SnapshotStatus),
}

impl Feedback {
    /// A message to `peer` could not be delivered.
    pub fn unreachable(&self, peer: u64) {
        let _ = self.tx.send(FeedbackEvent::Unreachable(peer)); // node gone: nothing to tell
    }

    /// A snapshot sent to `peer` was (`ok`) or was not installed.
    pub fn snapshot(&self, peer: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        let _ = self.tx.send(FeedbackEvent::Snapshot(peer, status)); // node gone: nothing to tell
    }

    /// A feedback sink that discards everything (for tests of transports).
    pub fn discard() -> Self {
        let (tx, _rx) = mpsc::unbounded_channel();
        Feedback { tx }
    }
}

/// A request one node (or a client) makes of a cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterRequest {
    /// Propose an encoded user entry; answered with the apply output.
    Propose(Vec<u8>),
    /// Propose several encoded user entries at once (what a follower sends
    /// the leader for the proposals it forwards); answered with
    /// [`ClusterResponse::Outputs`], one outcome per entry, in order. Only
    /// the node that receives it proposes them: a follower answers
    /// [`crate::Error::NotLeader`] for the whole batch.
    ProposeBatch(Vec<Vec<u8>>),
    /// Confirm leadership and return a read index (for linearizable reads).
    ReadIndex,
    /// Reserve a node id and return a join ticket for the node at `addr`.
    RequestId {
        /// Raft address of the node that wants to join.
        addr: String,
    },
    /// Change the membership (atomically when several changes are given).
    ChangeMembership(Vec<MembershipChange>),
    /// Transfer leadership to the given node.
    TransferLeader(u64),
    /// The current members.
    Members,
}

/// The answer to a [`ClusterRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterResponse {
    /// The state machine's output for a proposal.
    Output(Vec<u8>),
    /// The outcome of each entry of a [`ClusterRequest::ProposeBatch`].
    Outputs(Vec<std::result::Result<Vec<u8>, crate::ErrorInfo>>),
    /// A confirmed read index.
    ReadIndex(u64),
    /// A join ticket.
    Ticket(JoinTicket),
    /// The membership after the request.
    Members {
        /// The leader, 0 when unknown.
        leader_id: u64,
        /// Every voter and learner.
        members: Vec<Member>,
    },
    /// Done, nothing to return.
    Done,
}

/// Moves raft messages and cluster requests between nodes.
///
/// `send` must not block: queue the messages and return. When a queue is
/// full or a peer cannot be reached, drop the messages and report it through
/// `feedback`; raft retransmits.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Learn (or update) a peer's address.
    fn set_peer(&self, id: u64, addr: &str);
    /// Forget a peer (removed from the cluster).
    fn remove_peer(&self, id: u64);
    /// Queue a batch of raft messages for one peer.
    fn send(&self, to: u64, msgs: Vec<Message>, feedback: &Feedback);
    /// Perform a cluster request on the node at `addr`.
    async fn call(&self, addr: &str, request: ClusterRequest) -> Result<ClusterResponse>;
}

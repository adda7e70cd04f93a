//! The transport contract: how raft messages and cluster requests travel.
//!
//! The core knows no network. A [`Transport`] sends batches of raft messages
//! to peers by id (it learns their addresses from [`Transport::set_peer`],
//! which the node calls whenever its replicated address book changes) and
//! gives the typed [`ClusterApi`] of a node by address, which is how a
//! follower forwards work to the leader and how a new node joins.
//!
//! On the receiving side a transport hands what arrives to the node's
//! [`Inbound`] ([`RaftHandle::inbound`](crate::RaftHandle::inbound)): raft
//! messages to [`Inbound::step_from`], requests to its [`ClusterApi`].
//!
//! raftify-core ships [`InProcNetwork`] (nodes in one process, with fault
//! injection); `raftify-grpc` provides gRPC.

mod client;
mod inproc;
mod liveness;

pub use client::{call_cluster, request_join_ticket};
pub use inproc::{InProcNetwork, InProcTransport};
pub use liveness::PeerLiveness;

use crate::error::Result;
use crate::error_info::ErrorInfo;
use crate::membership::{JoinTicket, Member, MembershipChange};
use crate::sessions::SessionWrite;
use async_trait::async_trait;
use raft::eraftpb::Message;
use raft::SnapshotStatus;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
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

/// One entry's outcome in a [`ClusterApi::propose_batch`]: the state
/// machine's output, or the error as data.
pub type Outcome = std::result::Result<Vec<u8>, ErrorInfo>;

/// The members of a cluster and its leader, as one node knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The leader, 0 when unknown.
    pub leader_id: u64,
    /// Every voter and learner.
    pub members: Vec<Member>,
    /// The node that answered (0: unknown). A leader checks it before it
    /// adds a node: the address must answer as the node being added.
    #[serde(default)]
    pub node_id: u64,
    /// The cluster the answering node belongs to (0: none yet).
    #[serde(default)]
    pub cluster_uid: u64,
}

/// The requests a node serves for its peers and clients, each typed with
/// its own answer. A transport gives the API of a remote node
/// ([`Transport::node`]); a node's own executor is its [`Inbound`]. A
/// request sent this way runs on the node that receives it: it is not
/// forwarded again.
#[async_trait]
pub trait ClusterApi: Send + Sync {
    /// Proposes an encoded user entry (the receiver must lead); answers the
    /// state machine's output.
    async fn propose(&self, entry: Vec<u8>) -> Result<Vec<u8>>;
    /// Proposes several encoded entries together (what a follower sends for
    /// the proposals it forwards); one outcome per entry, in order. A
    /// follower answers [`crate::Error::NotLeader`] for the whole batch.
    async fn propose_batch(&self, entries: Vec<Vec<u8>>) -> Result<Vec<Outcome>>;
    /// Confirms leadership and returns a read index.
    async fn read_index(&self) -> Result<u64>;
    /// Reserves a node id through the log and returns a join ticket for the
    /// node at `addr`.
    async fn request_id(&self, addr: String) -> Result<JoinTicket>;
    /// Changes the membership (atomically when several changes are given).
    async fn change_membership(&self, changes: Vec<MembershipChange>) -> Result<Membership>;
    /// Transfers leadership to node `to` and waits until it leads.
    async fn transfer_leader(&self, to: u64) -> Result<()>;
    /// The members and leader as the receiver knows them.
    async fn members(&self) -> Result<Membership>;
    /// Opens a client session through the log (the receiver must lead);
    /// answers its id.
    async fn open_session(&self) -> Result<u64>;
    /// Proposes an encoded user entry as write `w` of a session (the
    /// receiver must lead); applied at most once however often it is sent.
    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>>;
    /// Proposes several session writes together (what a follower sends for
    /// the proposals it forwards in its session); one outcome per write, in
    /// order. A follower answers [`crate::Error::NotLeader`] for the whole
    /// batch.
    async fn propose_session_batch(
        &self,
        writes: Vec<(SessionWrite, Vec<u8>)>,
    ) -> Result<Vec<Outcome>>;
    /// Proposes an encoded user entry with idempotency key `key` (the
    /// receiver must lead); applied at most once while the key is
    /// remembered, a repeat answering the first answer.
    async fn propose_with_key(&self, key: String, entry: Vec<u8>) -> Result<Vec<u8>>;
}

/// What a transport delivers to a node: raft messages, and the cluster
/// requests it executes.
pub trait Inbound: ClusterApi {
    /// Delivers raft messages received from the network, with the sender's
    /// raft address when the transport knows it. Never blocks: a full inbox
    /// drops the batch with [`crate::Error::Overloaded`] (raft resends).
    fn step_from(&self, from_addr: Option<String>, msgs: Vec<Message>) -> Result<()>;
}

/// Moves raft messages and cluster requests between nodes.
///
/// `send` must not block: queue the messages and return. When a queue is
/// full or a peer cannot be reached, drop the messages and report it through
/// `feedback`; raft retransmits.
pub trait Transport: Send + Sync + 'static {
    /// Learn (or update) a peer's address.
    fn set_peer(&self, id: u64, addr: &str);
    /// Forget a peer (removed from the cluster).
    fn remove_peer(&self, id: u64);
    /// The cluster this node belongs to (see `ClusterMeta::cluster_uid`;
    /// 0 while unknown), to carry on what it sends so receivers can refuse
    /// another cluster's traffic. The default ignores it.
    fn set_cluster_uid(&self, uid: u64) {
        let _ = uid;
    }
    /// Queue a batch of raft messages for one peer.
    fn send(&self, to: u64, msgs: Vec<Message>, feedback: &Feedback);
    /// The cluster API of the node at `addr`, through this transport.
    fn node(&self, addr: &str) -> Result<Arc<dyn ClusterApi>>;
    /// How this transport tells whether peer processes are up, for
    /// replicas that hibernate ([`Config::hibernate`](crate::Config::hibernate)).
    /// `None` (the default): replicas on this transport never hibernate.
    fn liveness(&self) -> Option<Arc<dyn PeerLiveness>> {
        None
    }
}

//! The peer service: what other members send — raft messages, snapshots,
//! and the cluster requests one member makes of another. Every call runs
//! on this node (the sender did the routing); none is forwarded again.

use crate::auth::RefusalLog;
use crate::calls::{self, st, Answer};
use crate::config::GrpcConfig;
use crate::convert::{decode_msg, session_write_from_pb};
use crate::groups::{group_of, Groups, Served};
use crate::identity::PeerIdentity;
use crate::net::{cluster_of, outcome_to_pb};
use crate::pb;
use crate::pb::raft_peer_server::RaftPeer;
use crate::snapshot_rx::Receiving;
use async_trait::async_trait;
use raftify_core::membership::validate_addr;
use raftify_core::raft::eraftpb::{Message, MessageType};
use raftify_core::{Error, Result};
use slog::{debug, info, Logger};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

pub(crate) struct PeerService {
    /// The groups served; each call goes to the node of the group it
    /// names.
    pub(crate) groups: Groups,
    /// Where refusals are logged (rate-limited).
    pub(crate) refusals: Arc<RefusalLog>,
    pub(crate) config: GrpcConfig,
    pub(crate) logger: Logger,
    /// Snapshot installs in progress (at most
    /// [`GrpcConfig::max_concurrent_snapshot_installs`]).
    pub(crate) installs: Arc<tokio::sync::Semaphore>,
    /// Turns true when the server shuts down: long-lived message streams
    /// end then, instead of holding the graceful shutdown up.
    pub(crate) stopping: watch::Receiver<bool>,
}

impl PeerService {
    /// Refuses what a node of another cluster sent (a node given another
    /// cluster's member list, or a data dir reused from another cluster):
    /// both ends know their cluster and they differ.
    fn check_cluster(
        &self,
        group: &Served,
        theirs: u64,
        remote: Option<std::net::SocketAddr>,
    ) -> std::result::Result<(), Status> {
        let mine = group.handle.cluster_uid();
        if theirs == 0 || mine == 0 || theirs == mine {
            return Ok(());
        }
        let reason = "refused raft traffic from a node of another cluster (cluster ID mismatch)";
        self.refusals.refused(reason, "peer", remote);
        Err(Status::failed_precondition(format!(
            "cluster ID mismatch: this node belongs to cluster {mine:016x}, the sender to \
             {theirs:016x} (another cluster's member, or a data dir reused from one)"
        )))
    }

    /// The group a node-to-node request is for; refuses it when this
    /// process hosts no replica of the group, or when it comes from a node
    /// of another cluster (its [`crate::net::CLUSTER_HEADER`]).
    fn check_call<T>(&self, req: &Request<T>) -> std::result::Result<Arc<Served>, Status> {
        let group = self.groups.serving(req)?;
        self.check_cluster(&group, cluster_of(req), req.remote_addr())?;
        Ok(group)
    }

    /// The next chunk of a snapshot stream, or an error once the sender has
    /// been silent for [`GrpcConfig::snapshot_idle_timeout`].
    async fn next_chunk(
        &self,
        stream: &mut Streaming<pb::SnapshotChunk>,
    ) -> std::result::Result<Option<pb::SnapshotChunk>, Status> {
        let idle = self.config.snapshot_idle_timeout;
        match tokio::time::timeout(idle, stream.message()).await {
            Ok(chunk) => chunk,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "snapshot stream idle for {idle:?}; cut off"
            ))),
        }
    }

    /// Decodes a batch of raft messages and checks their senders against
    /// the peer's certificate.
    fn decode_batch(
        batch: &pb::MessageBatch,
        identity: &PeerIdentity,
    ) -> std::result::Result<Vec<Message>, Status> {
        let msgs = batch
            .messages
            .iter()
            .map(|b| decode_msg(b))
            .collect::<Result<Vec<_>>>()
            .map_err(st)?;
        for m in &msgs {
            identity.check(m.from)?;
        }
        Ok(msgs)
    }

    /// Hands a decoded batch to the group's node.
    fn step_batch(
        &self,
        group: &Served,
        from_addr: String,
        msgs: Vec<Message>,
    ) -> std::result::Result<(), Status> {
        if msgs.is_empty() {
            return Ok(());
        }
        let from_addr = validate_addr(&from_addr).is_ok().then_some(from_addr);
        match group.inbound.step_from(from_addr, msgs) {
            Ok(()) => Ok(()),
            // A full inbox drops this batch, as the network could: raft
            // sends again.
            Err(Error::Overloaded(n)) => {
                debug!(self.logger, "inbox full, raft messages dropped"; "capacity" => n);
                Ok(())
            }
            Err(e) => Err(st(e)),
        }
    }
}

#[async_trait]
impl RaftPeer for PeerService {
    async fn send_messages(
        &self,
        req: Request<pb::MessageBatch>,
    ) -> std::result::Result<Response<pb::Ack>, Status> {
        if req.get_ref().messages.is_empty() {
            // A liveness probe (see `liveness.rs`): the process answers.
            return Ok(Response::new(pb::Ack {}));
        }
        let id = group_of(&req)?;
        let identity = PeerIdentity::of(&req);
        let msgs = Self::decode_batch(req.get_ref(), &identity)?;
        let group = self.groups.serving_raft(id, &msgs).await?;
        self.check_cluster(&group, req.get_ref().cluster_uid, req.remote_addr())?;
        self.step_batch(&group, req.into_inner().from_addr, msgs)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn message_stream(
        &self,
        req: Request<Streaming<pb::MessageBatch>>,
    ) -> std::result::Result<Response<pb::Ack>, Status> {
        let id = group_of(&req)?;
        // Resolved on the first batch: a replica this process does not host
        // yet may be created from it (see `Groups::serving_raft`).
        let mut group = None;
        let remote = req.remote_addr();
        let identity = PeerIdentity::of(&req);
        let mut stream = req.into_inner();
        let mut stopping = self.stopping.clone();
        // A frame that does not decode ends the stream with its error; the
        // sender opens a new one.
        loop {
            let batch = tokio::select! {
                m = stream.message() => match m? {
                    Some(batch) => batch,
                    None => break,
                },
                _ = stopping.wait_for(|s| *s) => break,
            };
            let msgs = Self::decode_batch(&batch, &identity)?;
            let served = match &group {
                Some(g) => Arc::clone(g),
                None => {
                    let g = self.groups.serving_raft(id, &msgs).await?;
                    group = Some(g.clone());
                    g
                }
            };
            self.check_cluster(&served, batch.cluster_uid, remote)?;
            self.step_batch(&served, batch.from_addr, msgs)?;
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> std::result::Result<Response<pb::Ack>, Status> {
        let id = group_of(&req)?;
        let remote = req.remote_addr();
        let identity = PeerIdentity::of(&req);
        // Held until the snapshot is handed to the node: installs beyond
        // the cap are refused at once, and the leader sends again later.
        let Ok(_slot) = self.installs.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{} snapshot installs already in progress",
                self.config.max_concurrent_snapshot_installs
            )));
        };
        let mut stream = req.into_inner();
        let first = self
            .next_chunk(&mut stream)
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let mut msg = decode_msg(&first.header).map_err(st)?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "the first chunk is not a snapshot message",
            ));
        }
        identity.check(msg.from)?;
        let group = self
            .groups
            .serving_raft(id, std::slice::from_ref(&msg))
            .await?;
        self.check_cluster(&group, first.cluster_uid, remote)?;
        let total = first.total_size;
        if total > self.config.max_snapshot_size {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {total} bytes exceeds the limit of {} (max_snapshot_size)",
                self.config.max_snapshot_size
            )));
        }
        let cap =
            usize::try_from(total).map_err(|_| Status::resource_exhausted("snapshot too large"))?;
        let mut receiving = Receiving::new(cap, self.config.snapshot_spool_dir.as_deref())?;
        receiving.push(first.data).await?;
        while let Some(chunk) = self.next_chunk(&mut stream).await? {
            receiving.push(chunk.data).await?;
        }
        msg.mut_snapshot().data = receiving.finish(first.checksum).await?;
        let from_addr = validate_addr(&first.from_addr)
            .is_ok()
            .then_some(first.from_addr);
        info!(self.logger, "snapshot received"; "from" => first.from_id, "bytes" => cap);
        group.inbound.step_from(from_addr, vec![msg]).map_err(st)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Answer<pb::ProposeReply> {
        let group = self.check_call(&req)?;
        calls::propose(&*group.inbound, req).await
    }

    async fn propose_batch(
        &self,
        req: Request<pb::ProposeBatchRequest>,
    ) -> Answer<pb::ProposeBatchReply> {
        let group = self.check_call(&req)?;
        let entries = req.into_inner().entries;
        let outcomes = group.inbound.propose_batch(entries).await.map_err(st)?;
        Ok(Response::new(pb::ProposeBatchReply {
            outcomes: outcomes.into_iter().map(outcome_to_pb).collect(),
        }))
    }

    async fn propose_session_batch(
        &self,
        req: Request<pb::SessionBatchRequest>,
    ) -> Answer<pb::ProposeBatchReply> {
        let group = self.check_call(&req)?;
        let writes = req
            .into_inner()
            .writes
            .into_iter()
            .map(session_write_from_pb)
            .collect();
        let outcomes = group
            .inbound
            .propose_session_batch(writes)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::ProposeBatchReply {
            outcomes: outcomes.into_iter().map(outcome_to_pb).collect(),
        }))
    }

    async fn read_index(&self, req: Request<pb::Empty>) -> Answer<pb::ReadIndexReply> {
        let group = self.check_call(&req)?;
        calls::read_index(&*group.inbound).await
    }

    async fn request_id(&self, req: Request<pb::RequestIdRequest>) -> Answer<pb::JoinTicketReply> {
        let group = self.check_call(&req)?;
        calls::request_id(&*group.inbound, req).await
    }

    async fn change_config(
        &self,
        req: Request<pb::ChangeConfigRequest>,
    ) -> Answer<pb::MembersReply> {
        let group = self.check_call(&req)?;
        calls::change_config(&*group.inbound, req).await
    }

    async fn transfer_leader(&self, req: Request<pb::TransferLeaderRequest>) -> Answer<pb::Empty> {
        let group = self.check_call(&req)?;
        calls::transfer_leader(&*group.inbound, req).await
    }

    async fn open_session(&self, req: Request<pb::Empty>) -> Answer<pb::OpenSessionReply> {
        let group = self.check_call(&req)?;
        calls::open_session(&*group.inbound).await
    }

    async fn propose_in_session(
        &self,
        req: Request<pb::SessionProposeRequest>,
    ) -> Answer<pb::ProposeReply> {
        let group = self.check_call(&req)?;
        calls::propose_in_session(&*group.inbound, req).await
    }

    async fn propose_with_key(
        &self,
        req: Request<pb::KeyedProposeRequest>,
    ) -> Answer<pb::ProposeReply> {
        let group = self.check_call(&req)?;
        calls::propose_with_key(&*group.inbound, req).await
    }

    async fn members(&self, req: Request<pb::Empty>) -> Answer<pb::MembersReply> {
        let group = self.check_call(&req)?;
        calls::members(&*group.inbound).await
    }
}

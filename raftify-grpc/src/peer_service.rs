//! The peer service: what other members send — raft messages, snapshots,
//! and the cluster requests one member makes of another. Every call runs
//! on this node (the sender did the routing); none is forwarded again.

use crate::auth::RefusalLog;
use crate::calls::{self, st, Answer};
use crate::config::GrpcConfig;
use crate::convert::decode_msg;
use crate::net::outcome_to_pb;
use crate::pb;
use crate::pb::raft_peer_server::RaftPeer;
use async_trait::async_trait;
use raftify_core::membership::validate_addr;
use raftify_core::raft::eraftpb::MessageType;
use raftify_core::{Error, Inbound, RaftHandle, Result};
use slog::{debug, info, Logger};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

pub(crate) struct PeerService {
    /// The node's receiving side.
    pub(crate) inbound: Arc<dyn Inbound>,
    /// The node, for its cluster identity.
    pub(crate) handle: RaftHandle,
    /// Where refusals are logged (rate-limited).
    pub(crate) refusals: Arc<RefusalLog>,
    pub(crate) config: GrpcConfig,
    pub(crate) logger: Logger,
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
        theirs: u64,
        remote: Option<std::net::SocketAddr>,
    ) -> std::result::Result<(), Status> {
        let mine = self.handle.cluster_uid();
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

    /// Decodes a batch of raft messages and hands it to the node.
    fn step_batch(&self, batch: pb::MessageBatch) -> Result<()> {
        let msgs = batch
            .messages
            .iter()
            .map(|b| decode_msg(b))
            .collect::<Result<Vec<_>>>()?;
        if msgs.is_empty() {
            return Ok(());
        }
        let from_addr = validate_addr(&batch.from_addr)
            .is_ok()
            .then_some(batch.from_addr);
        self.inbound.step_from(from_addr, msgs)
    }
}

#[async_trait]
impl RaftPeer for PeerService {
    async fn send_messages(
        &self,
        req: Request<pb::MessageBatch>,
    ) -> std::result::Result<Response<pb::Ack>, Status> {
        self.check_cluster(req.get_ref().cluster_uid, req.remote_addr())?;
        self.step_batch(req.into_inner()).map_err(st)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn message_stream(
        &self,
        req: Request<Streaming<pb::MessageBatch>>,
    ) -> std::result::Result<Response<pb::Ack>, Status> {
        let remote = req.remote_addr();
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
            self.check_cluster(batch.cluster_uid, remote)?;
            match self.step_batch(batch) {
                Ok(()) => {}
                // A full inbox drops this batch, as the network could:
                // raft sends again. The stream stays open.
                Err(Error::Overloaded(n)) => {
                    debug!(self.logger, "inbox full, raft messages dropped"; "capacity" => n)
                }
                Err(e) => return Err(st(e)),
            }
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> std::result::Result<Response<pb::Ack>, Status> {
        let remote = req.remote_addr();
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check_cluster(first.cluster_uid, remote)?;
        let mut msg = decode_msg(&first.header).map_err(st)?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "the first chunk is not a snapshot message",
            ));
        }
        let total = first.total_size;
        if total > self.config.max_snapshot_size {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {total} bytes exceeds the limit of {}",
                self.config.max_snapshot_size
            )));
        }
        let cap =
            usize::try_from(total).map_err(|_| Status::resource_exhausted("snapshot too large"))?;
        let mut data = Vec::with_capacity(cap.min(64 * 1024 * 1024));
        data.extend_from_slice(&first.data);
        while let Some(chunk) = stream.message().await? {
            if data.len() + chunk.data.len() > cap {
                return Err(Status::invalid_argument(
                    "snapshot data exceeds its announced size",
                ));
            }
            data.extend_from_slice(&chunk.data);
        }
        if data.len() != cap {
            return Err(Status::invalid_argument(format!(
                "truncated snapshot: {} of {cap} bytes",
                data.len()
            )));
        }
        msg.mut_snapshot().data = data.into();
        let from_addr = validate_addr(&first.from_addr)
            .is_ok()
            .then_some(first.from_addr);
        info!(self.logger, "snapshot received"; "from" => first.from_id, "bytes" => cap);
        self.inbound.step_from(from_addr, vec![msg]).map_err(st)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Answer<pb::ProposeReply> {
        calls::propose(&*self.inbound, req).await
    }

    async fn propose_batch(
        &self,
        req: Request<pb::ProposeBatchRequest>,
    ) -> Answer<pb::ProposeBatchReply> {
        let entries = req.into_inner().entries;
        let outcomes = self.inbound.propose_batch(entries).await.map_err(st)?;
        Ok(Response::new(pb::ProposeBatchReply {
            outcomes: outcomes.into_iter().map(outcome_to_pb).collect(),
        }))
    }

    async fn read_index(&self, _req: Request<pb::Empty>) -> Answer<pb::ReadIndexReply> {
        calls::read_index(&*self.inbound).await
    }

    async fn request_id(&self, req: Request<pb::RequestIdRequest>) -> Answer<pb::JoinTicketReply> {
        calls::request_id(&*self.inbound, req).await
    }

    async fn change_config(
        &self,
        req: Request<pb::ChangeConfigRequest>,
    ) -> Answer<pb::MembersReply> {
        calls::change_config(&*self.inbound, req).await
    }

    async fn transfer_leader(&self, req: Request<pb::TransferLeaderRequest>) -> Answer<pb::Empty> {
        calls::transfer_leader(&*self.inbound, req).await
    }

    async fn members(&self, _req: Request<pb::Empty>) -> Answer<pb::MembersReply> {
        calls::members(&*self.inbound).await
    }
}

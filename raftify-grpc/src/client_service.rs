//! The client service: what applications and operators call. Writes and
//! membership changes made on a follower go to the leader (the node does
//! the routing); reads are confirmed with ReadIndex.

use crate::calls::{self, st, Answer};
use crate::pb;
use crate::pb::raft_client_server::RaftClient;
use crate::read::ReadHandler;
use async_trait::async_trait;
use raftify_core::{ClusterApi, Error, RaftHandle};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub(crate) struct ClientService {
    pub(crate) handle: RaftHandle,
    /// The node's API with requests routed to the leader.
    pub(crate) routed: Arc<dyn ClusterApi>,
    pub(crate) reader: Option<Arc<dyn ReadHandler>>,
}

#[async_trait]
impl RaftClient for ClientService {
    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Answer<pb::ProposeReply> {
        calls::propose(&*self.routed, req).await
    }

    async fn read_index(&self, _req: Request<pb::Empty>) -> Answer<pb::ReadIndexReply> {
        calls::read_index(&*self.routed).await
    }

    async fn open_session(&self, _req: Request<pb::Empty>) -> Answer<pb::OpenSessionReply> {
        calls::open_session(&*self.routed).await
    }

    async fn propose_in_session(
        &self,
        req: Request<pb::SessionProposeRequest>,
    ) -> Answer<pb::ProposeReply> {
        calls::propose_in_session(&*self.routed, req).await
    }

    async fn propose_with_key(
        &self,
        req: Request<pb::KeyedProposeRequest>,
    ) -> Answer<pb::ProposeReply> {
        calls::propose_with_key(&*self.routed, req).await
    }

    async fn request_id(&self, req: Request<pb::RequestIdRequest>) -> Answer<pb::JoinTicketReply> {
        calls::request_id(&*self.routed, req).await
    }

    async fn change_config(
        &self,
        req: Request<pb::ChangeConfigRequest>,
    ) -> Answer<pb::MembersReply> {
        calls::change_config(&*self.routed, req).await
    }

    async fn leave(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::Empty>, Status> {
        self.handle.leave().await.map_err(st)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn transfer_leader(&self, req: Request<pb::TransferLeaderRequest>) -> Answer<pb::Empty> {
        calls::transfer_leader(&*self.routed, req).await
    }

    async fn members(&self, _req: Request<pb::Empty>) -> Answer<pb::MembersReply> {
        calls::members(&*self.routed).await
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> std::result::Result<Response<pb::ReadReply>, Status> {
        let Some(reader) = &self.reader else {
            return Err(Status::unimplemented("this server has no read handler"));
        };
        if !req.get_ref().stale {
            self.handle.read_index().await.map_err(st)?;
        }
        let data = reader
            .read(&req.get_ref().query)
            .await
            .map_err(|e| st(Error::StateMachine(format!("read: {e}"))))?;
        Ok(Response::new(pb::ReadReply { data }))
    }

    async fn get_leader(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::LeaderReply>, Status> {
        let state = self.handle.state();
        Ok(Response::new(pb::LeaderReply {
            leader_id: state.leader_id,
            leader_addr: state.leader_addr.unwrap_or_default(),
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::StatusReply>, Status> {
        let status = self.handle.status().await.map_err(st)?;
        let json = |v: std::result::Result<String, serde_json::Error>| {
            v.map_err(|e| Status::internal(format!("status to JSON: {e}")))
        };
        Ok(Response::new(pb::StatusReply {
            id: status.id,
            role: status.role.as_str().to_string(),
            term: status.term,
            leader_id: status.leader_id,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            status_json: json(serde_json::to_string(&status))?,
            metrics_json: json(serde_json::to_string(&self.handle.metrics()))?,
        }))
    }

    async fn create_snapshot(
        &self,
        _req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::CreateSnapshotReply>, Status> {
        let index = self.handle.snapshot().await.map_err(st)?;
        Ok(Response::new(pb::CreateSnapshotReply { index }))
    }
}

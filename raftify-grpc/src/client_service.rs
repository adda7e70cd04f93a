//! The client service: what applications and operators call. Writes and
//! membership changes made on a follower go to the leader (the node does
//! the routing); reads are confirmed with ReadIndex.

use crate::calls::{self, st, Answer};
use crate::groups::Groups;
use crate::pb;
use crate::pb::raft_client_server::RaftClient;
use async_trait::async_trait;
use raftify_core::Error;
use tonic::{Request, Response, Status};

pub(crate) struct ClientService {
    /// The groups served; each call goes to the node of the group it
    /// names.
    pub(crate) groups: Groups,
    /// Snapshot downloads (backups) and their limits.
    pub(crate) downloads: crate::backup::Downloads,
}

#[async_trait]
impl RaftClient for ClientService {
    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Answer<pb::ProposeReply> {
        let g = self.groups.serving(&req)?;
        calls::propose(&*g.routed, req).await
    }

    async fn read_index(&self, req: Request<pb::Empty>) -> Answer<pb::ReadIndexReply> {
        let g = self.groups.serving(&req)?;
        calls::read_index(&*g.routed).await
    }

    async fn open_session(&self, req: Request<pb::Empty>) -> Answer<pb::OpenSessionReply> {
        let g = self.groups.serving(&req)?;
        calls::open_session(&*g.routed).await
    }

    async fn propose_in_session(
        &self,
        req: Request<pb::SessionProposeRequest>,
    ) -> Answer<pb::ProposeReply> {
        let g = self.groups.serving(&req)?;
        calls::propose_in_session(&*g.routed, req).await
    }

    async fn propose_with_key(
        &self,
        req: Request<pb::KeyedProposeRequest>,
    ) -> Answer<pb::ProposeReply> {
        let g = self.groups.serving(&req)?;
        calls::propose_with_key(&*g.routed, req).await
    }

    async fn request_id(&self, req: Request<pb::RequestIdRequest>) -> Answer<pb::JoinTicketReply> {
        let g = self.groups.serving(&req)?;
        calls::request_id(&*g.routed, req).await
    }

    async fn change_config(
        &self,
        req: Request<pb::ChangeConfigRequest>,
    ) -> Answer<pb::MembersReply> {
        let g = self.groups.serving(&req)?;
        calls::change_config(&*g.routed, req).await
    }

    async fn leave(
        &self,
        req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::Empty>, Status> {
        self.groups
            .serving(&req)?
            .handle
            .leave()
            .await
            .map_err(st)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn transfer_leader(&self, req: Request<pb::TransferLeaderRequest>) -> Answer<pb::Empty> {
        let g = self.groups.serving(&req)?;
        calls::transfer_leader(&*g.routed, req).await
    }

    async fn members(&self, req: Request<pb::Empty>) -> Answer<pb::MembersReply> {
        let g = self.groups.serving(&req)?;
        calls::members(&*g.routed).await
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> std::result::Result<Response<pb::ReadReply>, Status> {
        let g = self.groups.serving(&req)?;
        let Some(reader) = &g.reader else {
            return Err(Status::unimplemented("this server has no read handler"));
        };
        if !req.get_ref().stale {
            g.handle.read_index().await.map_err(st)?;
        }
        let data = reader
            .read(&req.get_ref().query)
            .await
            .map_err(|e| st(Error::StateMachine(format!("read: {e}"))))?;
        Ok(Response::new(pb::ReadReply { data }))
    }

    async fn get_leader(
        &self,
        req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::LeaderReply>, Status> {
        let state = self.groups.serving(&req)?.handle.state();
        Ok(Response::new(pb::LeaderReply {
            leader_id: state.leader_id,
            leader_addr: state.leader_addr.unwrap_or_default(),
        }))
    }

    async fn status(
        &self,
        req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::StatusReply>, Status> {
        let handle = &self.groups.serving(&req)?.handle;
        let status = handle.status().await.map_err(st)?;
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
            metrics_json: json(serde_json::to_string(&handle.metrics()))?,
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::Empty>,
    ) -> std::result::Result<Response<pb::CreateSnapshotReply>, Status> {
        let index = self
            .groups
            .serving(&req)?
            .handle
            .snapshot()
            .await
            .map_err(st)?;
        Ok(Response::new(pb::CreateSnapshotReply { index }))
    }

    type DownloadSnapshotStream = crate::backup::SnapshotFileStream;

    async fn download_snapshot(
        &self,
        req: Request<pb::Empty>,
    ) -> Answer<Self::DownloadSnapshotStream> {
        let store = self.groups.serving(&req)?.handle.storage().clone();
        self.downloads.serve(store).await
    }
}

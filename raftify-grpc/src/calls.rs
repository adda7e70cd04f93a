//! The calls the peer service and the client service share, written once
//! over a node's [`ClusterApi`]: the peer service passes the node's
//! `Inbound` (run here), the client service its routed API (to the leader).

use crate::convert::{change_from_pb, members_to_pb, session_write_from_pb, ticket_to_pb};
use crate::error::error_to_status;
use crate::pb;
use raftify_core::{ClusterApi, Error, Result};
use tonic::{Request, Response, Status};

/// A call's answer on the wire.
pub(crate) type Answer<T> = std::result::Result<Response<T>, Status>;

pub(crate) fn st(e: Error) -> Status {
    error_to_status(&e)
}

pub(crate) async fn propose(
    api: &dyn ClusterApi,
    req: Request<pb::ProposeRequest>,
) -> Answer<pb::ProposeReply> {
    let output = api.propose(req.into_inner().data).await.map_err(st)?;
    Ok(Response::new(pb::ProposeReply { output }))
}

pub(crate) async fn open_session(api: &dyn ClusterApi) -> Answer<pb::OpenSessionReply> {
    let session = api.open_session().await.map_err(st)?;
    Ok(Response::new(pb::OpenSessionReply { session }))
}

pub(crate) async fn propose_in_session(
    api: &dyn ClusterApi,
    req: Request<pb::SessionProposeRequest>,
) -> Answer<pb::ProposeReply> {
    let (w, data) = session_write_from_pb(req.into_inner());
    let output = api.propose_in_session(w, data).await.map_err(st)?;
    Ok(Response::new(pb::ProposeReply { output }))
}

pub(crate) async fn propose_with_key(
    api: &dyn ClusterApi,
    req: Request<pb::KeyedProposeRequest>,
) -> Answer<pb::ProposeReply> {
    let r = req.into_inner();
    let output = api.propose_with_key(r.key, r.data).await.map_err(st)?;
    Ok(Response::new(pb::ProposeReply { output }))
}

pub(crate) async fn read_index(api: &dyn ClusterApi) -> Answer<pb::ReadIndexReply> {
    let index = api.read_index().await.map_err(st)?;
    Ok(Response::new(pb::ReadIndexReply { index }))
}

pub(crate) async fn request_id(
    api: &dyn ClusterApi,
    req: Request<pb::RequestIdRequest>,
) -> Answer<pb::JoinTicketReply> {
    let ticket = api.request_id(req.into_inner().addr).await.map_err(st)?;
    Ok(Response::new(ticket_to_pb(&ticket)))
}

pub(crate) async fn change_config(
    api: &dyn ClusterApi,
    req: Request<pb::ChangeConfigRequest>,
) -> Answer<pb::MembersReply> {
    let changes = req
        .get_ref()
        .changes
        .iter()
        .map(change_from_pb)
        .collect::<Result<Vec<_>>>()
        .map_err(st)?;
    let membership = api.change_membership(changes).await.map_err(st)?;
    Ok(Response::new(members_to_pb(&membership)))
}

pub(crate) async fn transfer_leader(
    api: &dyn ClusterApi,
    req: Request<pb::TransferLeaderRequest>,
) -> Answer<pb::Empty> {
    api.transfer_leader(req.get_ref().to).await.map_err(st)?;
    Ok(Response::new(pb::Empty {}))
}

pub(crate) async fn members(api: &dyn ClusterApi) -> Answer<pb::MembersReply> {
    let membership = api.members().await.map_err(st)?;
    Ok(Response::new(members_to_pb(&membership)))
}

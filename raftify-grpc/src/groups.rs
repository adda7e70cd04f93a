//! [`Groups`]: the Raft groups one server serves, by group id.
//!
//! A process that hosts replicas of many Raft groups (sharding) serves them
//! all on one port: every request names its group in the [`GROUP_HEADER`]
//! metadata entry (absent: group 0, what a single-group node serves), and
//! the server hands it to that group's node. Transports and clients name
//! their group with [`GrpcTransport::for_group`](crate::GrpcTransport::for_group)
//! and [`RaftClient::for_group`](crate::RaftClient::for_group).

use crate::error::error_to_status;
use crate::read::ReadHandler;
use async_trait::async_trait;
use raftify_core::raft::eraftpb::{Message, MessageType};
use raftify_core::{ClusterApi, Error, Inbound, RaftHandle};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// The request header naming the Raft group a call is for (decimal; absent
/// means group 0).
pub const GROUP_HEADER: &str = "raftify-group";

/// The header value naming `group` (None for group 0, which is the
/// default and goes without a header).
pub(crate) fn group_value(group: u64) -> Option<MetadataValue<Ascii>> {
    if group == 0 {
        return None;
    }
    MetadataValue::try_from(group.to_string()).ok()
}

/// The group a request names ([`GROUP_HEADER`]; 0 when absent).
pub(crate) fn group_of<T>(req: &Request<T>) -> Result<u64, Status> {
    match req.metadata().get(GROUP_HEADER) {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Status::invalid_argument(format!("{GROUP_HEADER}: not a group id"))),
    }
}

/// One group's node as the server sees it.
pub(crate) struct Served {
    pub(crate) handle: RaftHandle,
    /// The node's receiving side (peer calls).
    pub(crate) inbound: Arc<dyn Inbound>,
    /// The node's API with requests routed to the leader (client calls).
    pub(crate) routed: Arc<dyn ClusterApi>,
    pub(crate) reader: Option<Arc<dyn ReadHandler>>,
}

/// Creates this process's replica of a group it does not host yet, when a
/// leader of that group first sends it raft messages (the leader added
/// this node as a learner): the way a replica comes to a new node without
/// anyone calling it first, as TiKV creates a peer on its first message.
///
/// The factory decides: it should create a replica only of a group the
/// placement says this node is being given (a message from a group this
/// node left, still in flight, must not bring the replica back), and
/// start it with [`Bootstrap::None`](raftify_core::Bootstrap::None) so that
/// it waits for the leader's log or snapshot.
#[async_trait]
pub trait ReplicaFactory: Send + Sync + 'static {
    /// The new replica of `group` and its read handler, or `None` to
    /// refuse (the sender gets [`Error::NoSuchGroup`]).
    async fn create(&self, group: u64) -> Option<(RaftHandle, Option<Arc<dyn ReadHandler>>)>;
}

/// The Raft groups a [`RaftGrpcServer`](crate::RaftGrpcServer) serves, by
/// group id; groups come and go while it serves (a replica added to this
/// process, or moved away), and with a [`ReplicaFactory`] a replica is
/// created when its group's leader first sends to it.
///
/// Cheap to clone; clones share the map.
#[derive(Clone, Default)]
pub struct Groups {
    map: Arc<RwLock<HashMap<u64, Arc<Served>>>>,
    factory: Arc<RwLock<Option<Arc<dyn ReplicaFactory>>>>,
    /// Held while a replica is created: one creation at a time, so that
    /// two streams of the same new group create it once.
    creating: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").field("ids", &self.ids()).finish()
    }
}

impl Groups {
    /// No groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `handle` as group `group`, its `Read` calls with `reader`
    /// (replacing a node served as that group before).
    pub fn insert(&self, group: u64, handle: RaftHandle, reader: Option<Arc<dyn ReadHandler>>) {
        let served = Arc::new(Served {
            inbound: handle.inbound(),
            routed: handle.routed(),
            handle,
            reader,
        });
        self.write().insert(group, served);
    }

    /// Creates replicas on demand with `factory` (see [`ReplicaFactory`]).
    pub fn set_factory(&self, factory: Arc<dyn ReplicaFactory>) {
        *self.factory.write().unwrap_or_else(|p| p.into_inner()) = Some(factory);
    }

    /// Stops serving group `group`; whether it was served. Calls for it are
    /// refused from now on (calls in progress finish).
    pub fn remove(&self, group: u64) -> bool {
        self.write().remove(&group).is_some()
    }

    /// The node serving group `group`.
    pub fn get(&self, group: u64) -> Option<RaftHandle> {
        self.read().get(&group).map(|s| s.handle.clone())
    }

    /// The read handler group `group` is served with.
    pub fn reader_of(&self, group: u64) -> Option<Arc<dyn ReadHandler>> {
        self.read().get(&group).and_then(|s| s.reader.clone())
    }

    /// The ids of the groups served, ascending.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// How many groups are served.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no group is served.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The group a request is for, or the status refusing it: a group this
    /// process does not host answers as a node that is not a member would
    /// ([`Error::NoSuchGroup`]), so a sender learns its placement is stale.
    pub(crate) fn serving<T>(&self, req: &Request<T>) -> Result<Arc<Served>, Status> {
        let group = group_of(req)?;
        self.read()
            .get(&group)
            .cloned()
            .ok_or_else(|| error_to_status(&Error::NoSuchGroup(group)))
    }

    /// The group raft messages `msgs` are for: as [`Groups::serving`], but
    /// a group this process does not host is created by the factory when
    /// the messages come from a leader (appends, heartbeats, a snapshot).
    pub(crate) async fn serving_raft(
        &self,
        group: u64,
        msgs: &[Message],
    ) -> Result<Arc<Served>, Status> {
        if let Some(s) = self.read().get(&group) {
            return Ok(s.clone());
        }
        let refused = || error_to_status(&Error::NoSuchGroup(group));
        let from_leader = msgs.iter().any(|m| {
            matches!(
                m.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
            )
        });
        let factory = self
            .factory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(factory) = factory.filter(|_| from_leader) else {
            return Err(refused());
        };
        let _one = self.creating.lock().await;
        if let Some(s) = self.read().get(&group) {
            return Ok(s.clone());
        }
        let (handle, reader) = factory.create(group).await.ok_or_else(refused)?;
        self.insert(group, handle, reader);
        self.read().get(&group).cloned().ok_or_else(refused)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Arc<Served>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Arc<Served>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_header_round_trips_and_garbage_is_refused() {
        assert!(group_value(0).is_none());
        let mut req = Request::new(());
        assert_eq!(group_of(&req).unwrap(), 0);
        req.metadata_mut()
            .insert(GROUP_HEADER, group_value(4711).unwrap());
        assert_eq!(group_of(&req).unwrap(), 4711);
        req.metadata_mut()
            .insert(GROUP_HEADER, MetadataValue::from_static("x1"));
        assert_eq!(
            group_of(&req).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn an_unknown_group_is_refused_as_no_such_group() {
        let groups = Groups::new();
        let err = match groups.serving(&Request::new(())) {
            Err(e) => e,
            Ok(_) => panic!("an empty map serves nothing"),
        };
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(matches!(
            crate::status_to_error(&err),
            Error::NoSuchGroup(0)
        ));
    }
}

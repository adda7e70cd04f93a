//! [`GroupTransport`]: how the rebalancer and a [`crate::SlotMover`] reach
//! the replicas of any group — over gRPC in a sharded process
//! ([`GrpcTransport`], one port for every group), or on an in-process
//! network in a simulation ([`InProcTransport`]).

use crate::placement::GroupId;
use raftify_core::{InProcTransport, Transport};
use raftify_grpc::GrpcTransport;
use std::sync::Arc;

/// A node's transport for every group it reaches: `group(g)` is the
/// transport whose nodes answer as their replica of `g`.
pub trait GroupTransport: Send + Sync {
    /// The transport to `group`'s replicas.
    fn group(&self, group: GroupId) -> Arc<dyn Transport>;
}

impl GroupTransport for GrpcTransport {
    fn group(&self, group: GroupId) -> Arc<dyn Transport> {
        Arc::new(self.for_group(group))
    }
}

impl GroupTransport for InProcTransport {
    fn group(&self, group: GroupId) -> Arc<dyn Transport> {
        self.for_group(group)
    }
}

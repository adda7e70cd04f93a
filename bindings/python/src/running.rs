//! A started node's parts (`Running`), the futures `Node`'s methods run on
//! them that need more than the node's `RaftHandle`, and stopping them.

use crate::runtime::Rt;
use crate::sm::PyStateMachine;
use pyo3::prelude::*;
use raftify_core::{Error, JoinTicket as CoreTicket, Member, Raft};
use raftify_grpc::ServerHandle;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

pub type NodeRaft = Raft<Vec<u8>, PyStateMachine>;

/// A started node.
pub struct Running {
    pub raft: NodeRaft,
    pub server: Mutex<Option<ServerHandle>>,
    pub id: u64,
    pub raft_addr: String,
    // Last: dropped after the node's parts.
    pub rt: Rt,
}

pub fn read_future(
    r: &Running,
    query: Py<PyAny>,
) -> impl Future<Output = Result<PyResult<Py<PyAny>>, Error>> + Send + 'static {
    let raft = r.raft.clone();
    async move {
        raft.linearizable_read(move |sm| Python::attach(|py| sm.read_py(py, query.bind(py))))
            .await
    }
}

/// Proposes `data`: forwarded to the leader unless `forward` is false,
/// and applied at most once per `key` when one is given (a keyed write
/// always goes to the leader).
pub fn propose_future(
    r: &Running,
    data: Vec<u8>,
    forward: bool,
    key: Option<String>,
) -> impl Future<Output = Result<Vec<u8>, Error>> + Send + 'static {
    let raft = r.raft.clone();
    async move {
        match (key, forward) {
            (Some(key), true) => raft.propose_with_key(&key, &data).await,
            (Some(_), false) => Err(Error::InvalidArgument(
                "idempotency_key needs forward=True: a keyed write is always sent to the leader"
                    .into(),
            )),
            (None, true) => raft.propose(&data).await,
            (None, false) => raft.propose_local(&data).await,
        }
    }
}

pub fn wait_leader_future(
    r: &Running,
    timeout: f64,
) -> impl Future<Output = Result<u64, Error>> + Send + 'static {
    let raft = r.raft.clone();
    let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
    async move { raft.handle().wait_for_leader(timeout).await }
}

/// Joins the cluster of `ticket` at the node's raft address, unless the
/// node's storage already holds a membership that includes it.
pub fn join_future(
    r: &Running,
    ticket: CoreTicket,
    as_learner: bool,
) -> impl Future<Output = Result<Vec<Member>, Error>> + Send + 'static {
    let raft = r.raft.clone();
    let addr = r.raft_addr.clone();
    let id = r.id;
    async move {
        let status = raft.handle().status().await?;
        if status.members.iter().any(|m| m.id == id) {
            return Err(Error::InvalidArgument(format!(
                "node {id} already belongs to a cluster (its storage holds a membership); \
                 join_cluster is for a node started with bootstrap=\"none\""
            )));
        }
        raft.handle().join_cluster(&ticket, &addr, as_learner).await
    }
}

pub fn stop_running(r: &Running) {
    r.rt.get().block_on(async {
        r.raft.handle().shutdown().await;
        let server = r.server.lock().ok().and_then(|mut s| s.take());
        if let Some(server) = server {
            server.shutdown().await;
        }
    });
}

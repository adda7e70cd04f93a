//! `raftify.JoinTicket` and `raftify.request_join_ticket`: the id a
//! cluster reserves for a new node, and how to ask a cluster for one.

use crate::config::{grpc_of, seconds_arg, Config};
use crate::convert::addr_list;
use crate::errors::raftify_msg;
use crate::runtime::Rt;
use pyo3::prelude::*;
use raftify_core::JoinTicket as CoreTicket;
use raftify_grpc::GrpcTransport;
use std::collections::BTreeMap;

/// A join ticket: the node id a cluster reserved for a new node, and the
/// cluster's members.
#[pyclass(module = "raftify", frozen, get_all, eq, from_py_object)]
#[derive(Clone, Debug, PartialEq)]
pub struct JoinTicket {
    pub reserved_id: u64,
    pub cluster_id: String,
    pub leader_id: u64,
    pub peers: BTreeMap<u64, String>,
    /// The cluster's identity (0: unknown).
    pub cluster_uid: u64,
}

impl From<CoreTicket> for JoinTicket {
    fn from(t: CoreTicket) -> Self {
        JoinTicket {
            reserved_id: t.reserved_id,
            cluster_id: t.cluster_id,
            leader_id: t.leader_id,
            peers: t.peers,
            cluster_uid: t.cluster_uid,
        }
    }
}

impl From<&JoinTicket> for CoreTicket {
    fn from(t: &JoinTicket) -> Self {
        CoreTicket {
            reserved_id: t.reserved_id,
            cluster_id: t.cluster_id.clone(),
            leader_id: t.leader_id,
            peers: t.peers.clone(),
            cluster_uid: t.cluster_uid,
        }
    }
}

#[pymethods]
impl JoinTicket {
    #[new]
    #[pyo3(signature = (reserved_id, cluster_id, leader_id, peers, cluster_uid = 0))]
    fn new(
        reserved_id: u64,
        cluster_id: String,
        leader_id: u64,
        peers: BTreeMap<u64, String>,
        cluster_uid: u64,
    ) -> Self {
        JoinTicket {
            reserved_id,
            cluster_id,
            leader_id,
            peers,
            cluster_uid,
        }
    }

    /// The ticket as JSON (to hand it to another process).
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        serde_json::to_string(&CoreTicket::from(self))
            .map_err(|e| raftify_msg(py, "CodecError", e.to_string()))
    }

    /// A ticket from `to_json`'s output.
    #[staticmethod]
    fn from_json(py: Python<'_>, data: &str) -> PyResult<JoinTicket> {
        serde_json::from_str::<CoreTicket>(data)
            .map(Into::into)
            .map_err(|e| {
                raftify_msg(
                    py,
                    "InvalidArgumentError",
                    format!("not a join ticket: {e}"),
                )
            })
    }

    fn __repr__(&self) -> String {
        format!(
            "JoinTicket(reserved_id={}, cluster_id={:?}, leader_id={}, peers={:?})",
            self.reserved_id, self.cluster_id, self.leader_id, self.peers
        )
    }
}

/// Asks a cluster (any member's address; followers forward) for a join
/// ticket for a node that will listen on `self_addr`. TLS and the auth
/// token come from `config`.
#[pyfunction]
#[pyo3(signature = (member_addrs, self_addr, *, config = None, timeout = 30.0))]
pub fn request_join_ticket(
    py: Python<'_>,
    member_addrs: &Bound<'_, PyAny>,
    self_addr: String,
    config: Option<Config>,
    timeout: f64,
) -> PyResult<JoinTicket> {
    let addrs = addr_list(member_addrs)?;
    let grpc = grpc_of(py, config.as_ref())?;
    let timeout = seconds_arg(py, "timeout", timeout)?;
    let ticket = Rt::current_thread()?.block(py, async {
        let transport = GrpcTransport::new(self_addr.clone(), grpc)?;
        raftify_core::request_join_ticket(&transport, &addrs, &self_addr, timeout).await
    })?;
    Ok(ticket.into())
}

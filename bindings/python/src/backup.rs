//! `raftify.save_snapshot`: a backup of a running node's state, saved over
//! the network (what `raftify-cli snapshot ADDR --save FILE` does).

use crate::config::{grpc_of, seconds_arg, Config};
use crate::runtime::Rt;
use pyo3::prelude::*;
use raftify_grpc::RaftClient;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Takes a snapshot on the node at `addr` (its raft address; unless `take`
/// is false) and saves the node's newest snapshot to `path`, in raftify's
/// snapshot-file format (what `--restore-snapshot-from` starts a node
/// from): written whole and checked, or not at all. TLS and the client
/// token come from `config`; the transfer may take `timeout` seconds.
/// Answers `{"index", "term", "size"}`.
#[pyfunction]
#[pyo3(signature = (addr, path, *, config = None, take = true, timeout = 300.0))]
pub fn save_snapshot(
    py: Python<'_>,
    addr: String,
    path: PathBuf,
    config: Option<Config>,
    take: bool,
    timeout: f64,
) -> PyResult<BTreeMap<String, u64>> {
    let mut grpc = grpc_of(py, config.as_ref())?;
    let timeout = seconds_arg(py, "timeout", timeout)?;
    grpc.snapshot_timeout = timeout;
    grpc.request_timeout = grpc.request_timeout.min(timeout);
    let saved = Rt::current_thread()?.block(py, async {
        let client = RaftClient::new([addr.clone()], grpc)?;
        if take {
            client.snapshot(&addr).await?;
        }
        client.save_snapshot(&addr, &path).await
    })?;
    Ok(BTreeMap::from([
        ("index".to_string(), saved.index),
        ("term".to_string(), saved.term),
        ("size".to_string(), saved.size),
    ]))
}

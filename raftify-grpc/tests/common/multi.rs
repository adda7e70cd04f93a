//! Processes hosting many groups: each a gRPC server for all its groups
//! and one transport whose connections every group's transport shares.

use super::{bind_members, kv_reader, no_tweak};
use raftify_core::testkit::{test_config, test_logger, KvStore, Node};
use raftify_core::{Bootstrap, Config, MemStore, Raft};
use raftify_grpc::{Groups, GrpcConfig, GrpcTransport, RaftGrpcServer, ServerHandle};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One process.
pub struct Process {
    pub addr: String,
    pub groups: Groups,
    /// Its replica of each group, by group id.
    pub nodes: BTreeMap<u64, Node>,
    /// Taken when the process is stopped.
    pub server: Option<ServerHandle>,
}

impl Process {
    /// Stops its server, then its replicas.
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        for node in self.nodes.values() {
            node.handle().shutdown().await;
        }
    }
}

/// A replica of `group` over `base`'s connections, with a KvStore in
/// memory.
pub async fn start_replica(
    config: Config,
    base: &GrpcTransport,
    group: u64,
    bootstrap: Bootstrap,
) -> Node {
    Raft::builder(config, KvStore::default())
        .storage(Arc::new(MemStore::new()))
        .transport(Arc::new(base.for_group(group)))
        .bootstrap(bootstrap)
        .logger(test_logger())
        .start()
        .await
        .unwrap()
}

/// `n` processes, each with a replica of groups `1..=groups` (every group
/// on every process, bootstrapped together), configured by `tweak`.
pub async fn start_processes(
    n: u64,
    groups: u64,
    grpc: &GrpcConfig,
    tweak: fn(&mut Config),
) -> Vec<Process> {
    let (listeners, members) = bind_members(n).await;
    let mut processes = Vec::new();
    for (i, (listener, addr)) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let base = GrpcTransport::new(addr.clone(), grpc.clone()).unwrap();
        let served = Groups::new();
        let mut nodes = BTreeMap::new();
        for g in 1..=groups {
            let mut config = test_config(id);
            tweak(&mut config);
            let raft = start_replica(config, &base, g, Bootstrap::Members(members.clone())).await;
            served.insert(g, raft.handle().clone(), Some(kv_reader(&raft)));
            nodes.insert(g, raft);
        }
        let metrics = nodes[&1].handle().server_metrics("grpc");
        let server = RaftGrpcServer::for_groups(served.clone(), metrics, grpc.clone())
            .logger(test_logger())
            .spawn(listener)
            .unwrap();
        processes.push(Process {
            addr,
            groups: served,
            nodes,
            server: Some(server),
        });
    }
    processes
}

/// [`start_processes`] with the test configuration unchanged.
pub async fn start_plain(n: u64, groups: u64, grpc: &GrpcConfig) -> Vec<Process> {
    start_processes(n, groups, grpc, no_tweak).await
}

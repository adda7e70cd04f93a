//! The gRPC test cluster: real nodes, real gRPC servers on 127.0.0.1
//! ephemeral ports, in-memory storage. Every wait is bounded.
#![allow(dead_code)] // each test binary uses its own part of the helpers

use raftify_core::testkit::{test_config, test_logger, KvCmd, KvStore, Node};
use raftify_core::{request_join_ticket, AbstractLogEntry, Bootstrap, Config, MemStore, Raft};
use raftify_grpc::{
    state_machine_reader, GrpcConfig, GrpcTransport, RaftClient, RaftGrpcServer, ServerHandle,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub const WAIT: Duration = Duration::from_secs(15);

pub struct GNode {
    pub raft: Node,
    pub server: ServerHandle,
    pub addr: String,
}

pub struct GCluster {
    pub nodes: BTreeMap<u64, GNode>,
    pub grpc: GrpcConfig,
    pub tweak: fn(&mut Config),
}

pub fn no_tweak(_: &mut Config) {}

pub mod multi;

/// Listeners on ephemeral ports for nodes `1..=n`, and the members map
/// (id → address) a cluster of them bootstraps with.
pub async fn bind_members(n: u64) -> (Vec<(TcpListener, String)>, BTreeMap<u64, String>) {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(bind().await);
    }
    let members = listeners
        .iter()
        .enumerate()
        .map(|(i, (_, a))| (i as u64 + 1, a.clone()))
        .collect();
    (listeners, members)
}

pub async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Reads a key from the KvStore (the query is the key).
pub fn kv_reader(node: &Node) -> Arc<dyn raftify_grpc::ReadHandler> {
    state_machine_reader(node, |s: &KvStore, q: &[u8]| {
        let key = std::str::from_utf8(q)?;
        Ok(s.map.get(key).cloned().unwrap_or_default().into_bytes())
    })
}

pub async fn start_node(
    id: u64,
    listener: TcpListener,
    addr: &str,
    bootstrap: Bootstrap,
    grpc: &GrpcConfig,
    tweak: fn(&mut Config),
) -> GNode {
    let transport = GrpcTransport::new(addr, grpc.clone()).unwrap();
    start_node_with(id, listener, addr, bootstrap, grpc, tweak, transport).await
}

pub async fn start_node_with(
    id: u64,
    listener: TcpListener,
    addr: &str,
    bootstrap: Bootstrap,
    grpc: &GrpcConfig,
    tweak: fn(&mut Config),
    transport: GrpcTransport,
) -> GNode {
    let mut config = test_config(id);
    tweak(&mut config);
    let raft = Raft::builder(config, KvStore::default())
        .storage(Arc::new(MemStore::new()))
        .transport(Arc::new(transport))
        .bootstrap(bootstrap)
        .logger(test_logger())
        .start()
        .await
        .unwrap();
    let server = RaftGrpcServer::new(raft.handle().clone(), grpc.clone())
        .logger(test_logger())
        .reader(kv_reader(&raft))
        .spawn(listener)
        .unwrap();
    GNode {
        raft,
        server,
        addr: addr.to_string(),
    }
}

impl GCluster {
    pub async fn start(n: u64, grpc: GrpcConfig, tweak: fn(&mut Config)) -> GCluster {
        let each = grpc.clone();
        Self::start_each(n, grpc, move |_| each.clone(), tweak).await
    }

    /// Like `start`, node `id` with `grpc_of(id)` (its own certificate, say);
    /// `grpc` is what `client()` and `join` use.
    pub async fn start_each(
        n: u64,
        grpc: GrpcConfig,
        grpc_of: impl Fn(u64) -> GrpcConfig,
        tweak: fn(&mut Config),
    ) -> GCluster {
        let (listeners, members) = bind_members(n).await;
        let mut nodes = BTreeMap::new();
        for (i, (l, addr)) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let node = start_node(
                id,
                l,
                &addr,
                Bootstrap::Members(members.clone()),
                &grpc_of(id),
                tweak,
            )
            .await;
            nodes.insert(id, node);
        }
        GCluster { nodes, grpc, tweak }
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id].raft
    }

    pub fn addr(&self, id: u64) -> String {
        self.nodes[&id].addr.clone()
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.clone()).collect()
    }

    pub fn client(&self) -> RaftClient {
        RaftClient::new(self.addrs(), self.grpc.clone()).unwrap()
    }

    pub async fn wait_leader(&self, among: &[u64]) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leaders: Vec<Option<u64>> = among
                .iter()
                .map(|id| self.node(*id).handle().leader_id())
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if among.contains(l)
                    && leaders.iter().all(|x| *x == Some(*l))
                    && self.node(*l).handle().is_leader()
                {
                    return *l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no common leader among {among:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_converged(&self, ids: &[u64], min_len: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut maps = Vec::new();
            for id in ids {
                maps.push(self.node(*id).stale_read(|s| s.map.clone()).await);
            }
            if maps[0].len() >= min_len && maps.iter().all(|m| *m == maps[0]) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nodes {ids:?} did not converge to {min_len} keys: {:?}",
                maps.iter().map(|m| m.len()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts an empty node that joins with a ticket from `request_join_ticket`
    /// (through the new node's own transport) and `join_cluster`.
    pub async fn join(&mut self, as_learner: bool) -> u64 {
        let (l, addr) = bind().await;
        let transport = GrpcTransport::new(addr.clone(), self.grpc.clone()).unwrap();
        let ticket = request_join_ticket(&transport, &self.addrs(), &addr, WAIT)
            .await
            .unwrap();
        let id = ticket.reserved_id;
        let node = start_node_with(
            id,
            l,
            &addr,
            Bootstrap::None,
            &self.grpc,
            self.tweak,
            transport,
        )
        .await;
        node.raft
            .handle()
            .join_cluster(&ticket, &addr, as_learner)
            .await
            .unwrap();
        self.nodes.insert(id, node);
        id
    }

    pub async fn stop(&mut self, id: u64) {
        if let Some(n) = self.nodes.remove(&id) {
            n.raft.handle().shutdown().await;
            n.server.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

pub fn put(key: &str, value: &str) -> Vec<u8> {
    KvCmd::Put {
        key: key.into(),
        value: value.into(),
    }
    .encode()
    .unwrap()
}

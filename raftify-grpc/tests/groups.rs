//! Many Raft groups per process: three "processes" (one gRPC server, one
//! port and one set of connections each) host a replica of every group;
//! requests name their group and reach that group's node only.

mod common;

use common::{bind, kv_reader, WAIT};
use raftify_core::testkit::{test_config, test_logger, KvCmd, KvStore, Node};
use raftify_core::{AbstractLogEntry, Bootstrap, Error, MemStore, Raft};
use raftify_grpc::{Groups, GrpcConfig, GrpcTransport, RaftClient, RaftGrpcServer, ServerHandle};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One process: a server for all its groups, one transport whose
/// connections every group's transport shares.
struct Process {
    addr: String,
    groups: Groups,
    nodes: BTreeMap<u64, Node>,
    server: ServerHandle,
}

const GROUPS: u64 = 8;

async fn start(n: u64, grpc: &GrpcConfig) -> Vec<Process> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(bind().await);
    }
    let members: BTreeMap<u64, String> = listeners
        .iter()
        .enumerate()
        .map(|(i, (_, a))| (i as u64 + 1, a.clone()))
        .collect();
    let mut processes = Vec::new();
    for (i, (listener, addr)) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let base = GrpcTransport::new(addr.clone(), grpc.clone()).unwrap();
        let groups = Groups::new();
        let mut nodes = BTreeMap::new();
        for g in 1..=GROUPS {
            let raft = Raft::builder(test_config(id), KvStore::default())
                .storage(Arc::new(MemStore::new()))
                .transport(Arc::new(base.for_group(g)))
                .bootstrap(Bootstrap::Members(members.clone()))
                .logger(test_logger())
                .start()
                .await
                .unwrap();
            groups.insert(g, raft.handle().clone(), Some(kv_reader(&raft)));
            nodes.insert(g, raft);
        }
        let metrics = nodes[&1].handle().server_metrics("grpc");
        let server = RaftGrpcServer::for_groups(groups.clone(), metrics, grpc.clone())
            .logger(test_logger())
            .spawn(listener)
            .unwrap();
        processes.push(Process {
            addr,
            groups,
            nodes,
            server,
        });
    }
    processes
}

fn put(key: &str, value: &str) -> Vec<u8> {
    KvCmd::Put {
        key: key.into(),
        value: value.into(),
    }
    .encode()
    .unwrap()
}

/// The `raftify_connections{server="grpc"}` gauge of a process.
fn connections(p: &Process) -> u64 {
    let text = p.nodes[&1].handle().metrics_registry().encode();
    text.lines()
        .find(|l| l.starts_with("raftify_connections{") && l.contains("server=\"grpc\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_share_a_port_and_connections_and_stay_apart() {
    let grpc = GrpcConfig::default();
    let processes = start(3, &grpc).await;
    for p in &processes {
        for node in p.nodes.values() {
            node.handle().wait_for_leader(WAIT).await.unwrap();
        }
    }
    let addrs: Vec<String> = processes.iter().map(|p| p.addr.clone()).collect();
    let client = RaftClient::new(addrs.clone(), grpc.clone()).unwrap();

    // Each group gets its own value under the same key.
    for g in 1..=GROUPS {
        let c = client.for_group(g);
        c.propose(put("k", &format!("group {g}"))).await.unwrap();
    }
    for g in 1..=GROUPS {
        let c = client.for_group(g);
        let got = c.read(b"k".to_vec()).await.unwrap();
        assert_eq!(got, format!("group {g}").into_bytes(), "group {g}");
    }

    // A write sent to a process that does not lead the group is forwarded
    // to that group's leader (the forwarded call names the group too).
    for g in 1..=GROUPS {
        let leader = processes[0].nodes[&g].handle().state().leader_id;
        let follower = processes
            .iter()
            .position(|p| p.nodes[&g].handle().id() != leader)
            .unwrap();
        let at_follower = RaftClient::new([addrs[follower].clone()], grpc.clone())
            .unwrap()
            .for_group(g);
        at_follower
            .propose(put("f", &format!("via a follower of {g}")))
            .await
            .unwrap();
        let got = client.for_group(g).read(b"f".to_vec()).await.unwrap();
        assert_eq!(got, format!("via a follower of {g}").into_bytes());
    }

    // Every group's replicas applied only their own group's writes.
    for g in 1..=GROUPS {
        for p in &processes {
            let read = p.nodes[&g].linearizable_read(|s| s.map.get("k").cloned());
            let value = read.await.unwrap();
            assert_eq!(value.as_deref(), Some(format!("group {g}").as_str()));
        }
    }

    // A group this process does not host is a distinct, retryable error.
    let err = client
        .for_group(GROUPS + 1)
        .status(&addrs[0])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NoSuchGroup(g) if g == GROUPS + 1),
        "{err:?}"
    );
    assert!(err.class().may_retry(false));

    // One HTTP/2 connection per peer process and one from the client, not
    // one per group: 2 peers + 2 clients (the shared one, the follower
    // one) at most.
    for p in &processes {
        let n = connections(p);
        assert!((1..=4).contains(&n), "{n} connections on {}", p.addr);
    }

    // A group removed from a process: its calls are refused there, the
    // other groups keep working.
    assert!(processes[2].groups.remove(GROUPS));
    let err = client
        .for_group(GROUPS)
        .status(&addrs[2])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchGroup(_)), "{err:?}");
    client
        .for_group(1)
        .propose(put("k", "again"))
        .await
        .unwrap();

    for p in processes {
        p.server.shutdown().await;
        for node in p.nodes.values() {
            node.handle().shutdown().await;
        }
    }
}

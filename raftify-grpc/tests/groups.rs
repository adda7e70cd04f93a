//! Many Raft groups per process: three "processes" (one gRPC server, one
//! port and one set of connections each) host a replica of every group;
//! requests name their group and reach that group's node only; a
//! replica comes into being on the first message from its leader.

mod common;

use common::multi::{start_plain, start_replica, Process};
use common::{bind, kv_reader, WAIT};
use raftify_core::testkit::{test_config, test_logger, KvCmd, KvStore, Node};
use raftify_core::{AbstractLogEntry, Bootstrap, Error, MemStore, Raft};
use raftify_grpc::{Groups, GrpcConfig, GrpcTransport, RaftClient, RaftGrpcServer, ReplicaFactory};
use std::collections::BTreeMap;
use std::sync::Arc;

const GROUPS: u64 = 8;

async fn start(n: u64, grpc: &GrpcConfig) -> Vec<Process> {
    start_plain(n, GROUPS, grpc).await
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

    for mut p in processes {
        p.stop().await;
    }
}

/// Creates a replica (waiting to be added: no membership) of the groups in
/// `allowed`, on the first message from their leader.
struct Factory {
    id: u64,
    transport: GrpcTransport,
    allowed: Vec<u64>,
    created: std::sync::Mutex<Vec<Node>>,
}

#[async_trait::async_trait]
impl ReplicaFactory for Factory {
    async fn create(
        &self,
        group: u64,
    ) -> Option<(
        raftify_core::RaftHandle,
        Option<Arc<dyn raftify_grpc::ReadHandler>>,
    )> {
        if !self.allowed.contains(&group) {
            return None;
        }
        let raft = Raft::builder(test_config(self.id), KvStore::default())
            .storage(Arc::new(MemStore::new()))
            .transport(Arc::new(self.transport.for_group(group)))
            .bootstrap(Bootstrap::None)
            .logger(test_logger())
            .start()
            .await
            .ok()?;
        let served = (raft.handle().clone(), Some(kv_reader(&raft)));
        self.created.lock().unwrap().push(raft);
        Some(served)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_created_when_its_leader_first_sends_to_it() {
    let grpc = GrpcConfig::default();
    // Groups 1 and 2 on processes 1 and 2; process 3 hosts nothing yet and
    // may be given group 1 only.
    let (mut listeners, mut addrs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (l, a) = bind().await;
        listeners.push(l);
        addrs.push(a);
    }
    let members: BTreeMap<u64, String> = [(1, addrs[0].clone()), (2, addrs[1].clone())].into();
    let mut nodes: BTreeMap<(u64, u64), Node> = BTreeMap::new();
    let mut servers = Vec::new();
    let mut factory = None;
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let base = GrpcTransport::new(addrs[i].clone(), grpc.clone()).unwrap();
        let groups = Groups::new();
        let mut metrics = None;
        if id < 3 {
            for g in [1, 2] {
                let bootstrap = Bootstrap::Members(members.clone());
                let raft = start_replica(test_config(id), &base, g, bootstrap).await;
                groups.insert(g, raft.handle().clone(), Some(kv_reader(&raft)));
                metrics.get_or_insert_with(|| raft.handle().server_metrics("grpc"));
                nodes.insert((id, g), raft);
            }
        } else {
            let f = Arc::new(Factory {
                id,
                transport: base.clone(),
                allowed: vec![1],
                created: std::sync::Mutex::new(Vec::new()),
            });
            groups.set_factory(f.clone());
            factory = Some(f);
        }
        // Process 3 counts its connections in a throwaway node's metrics.
        let metrics = match metrics {
            Some(m) => m,
            None => raftify_core::metrics::Metrics::default().server("grpc"),
        };
        servers.push(
            RaftGrpcServer::for_groups(groups, metrics, grpc.clone())
                .logger(test_logger())
                .spawn(listener)
                .unwrap(),
        );
    }
    let factory = factory.unwrap();
    for node in nodes.values() {
        node.handle().wait_for_leader(WAIT).await.unwrap();
    }
    let client = RaftClient::new(addrs[..2].to_vec(), grpc.clone()).unwrap();
    client.for_group(1).propose(put("k", "one")).await.unwrap();

    // Before anyone adds it, process 3 has no replica: not created by a
    // client call.
    let at3 = RaftClient::new([addrs[2].clone()], grpc.clone()).unwrap();
    let err = at3.for_group(1).status(&addrs[2]).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchGroup(1)), "{err:?}");

    // Group 1's leader adds node 3 as a learner: its first append creates
    // the replica, which catches up.
    let leader = nodes[&(1, 1)].handle().state().leader_id;
    nodes[&(leader, 1)]
        .handle()
        .add_learner(3, &addrs[2])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = at3
            .for_group(1)
            .read_stale_at(&addrs[2], b"k".to_vec())
            .await;
        if got.as_deref().ok() == Some(b"one".as_slice()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up: {got:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(factory.created.lock().unwrap().len(), 1);

    // The factory refuses group 2: adding node 3 there leaves it without a
    // replica, and nothing is created.
    let leader2 = nodes[&(1, 2)].handle().state().leader_id;
    nodes[&(leader2, 2)]
        .handle()
        .add_learner(3, &addrs[2])
        .await
        .unwrap();
    client.for_group(2).propose(put("k", "two")).await.unwrap();
    let err = at3.for_group(2).status(&addrs[2]).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchGroup(2)), "{err:?}");
    assert_eq!(factory.created.lock().unwrap().len(), 1);

    for s in servers {
        s.shutdown().await;
    }
    for node in nodes.values() {
        node.handle().shutdown().await;
    }
    let created: Vec<Node> = std::mem::take(&mut *factory.created.lock().unwrap());
    for node in created {
        node.handle().shutdown().await;
    }
}

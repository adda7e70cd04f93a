//! Cluster scenarios over real gRPC on 127.0.0.1 ephemeral ports. Every
//! wait is bounded.

use raftify_core::testkit::KvCmd;
use raftify_core::{
    AbstractLogEntry, Bootstrap, Config, Error, MemberRole, MembershipChange, Transport,
};
use raftify_grpc::pb::raft_client_client::RaftClientClient;
use raftify_grpc::pb::raft_peer_client::RaftPeerClient;
use raftify_grpc::testkit::TestPki;
use raftify_grpc::{pb, GrpcConfig, GrpcTransport, RaftClient, TlsConfig};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_cluster_forwards_follower_proposals_and_serves_reads_and_status() {
    let c = GCluster::start(3, GrpcConfig::default(), no_tweak).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };

    // A client that only knows a follower: the follower forwards.
    let client = RaftClient::new([c.addr(follower)], GrpcConfig::default()).unwrap();
    assert_eq!(client.propose(put("k", "v1")).await.unwrap(), b"");
    assert_eq!(
        client.propose(put("k", "v2")).await.unwrap(),
        b"v1",
        "the output is the leader's apply output"
    );
    // The state machine's error travels back as StateMachine.
    match client.propose(KvCmd::Fail.encode().unwrap()).await {
        Err(Error::StateMachine(m)) => assert!(m.contains("always fails"), "{m}"),
        other => panic!("expected a state machine error, got {other:?}"),
    }
    // Linearizable read on a follower.
    assert_eq!(
        client
            .read_at(&c.addr(follower), b"k".to_vec())
            .await
            .unwrap(),
        b"v2"
    );
    assert!(client.read_index().await.unwrap() > 0);

    let members = client.members().await.unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.role == MemberRole::Voter));
    let info = client.leader().await.unwrap().unwrap();
    assert_eq!(info.id, leader);
    assert_eq!(info.addr.as_deref(), Some(c.addr(leader).as_str()));
    let status = client.status(&c.addr(follower)).await.unwrap();
    assert_eq!(status.id, follower);
    assert_eq!(status.leader_id, leader);

    // A follower refuses a forwarded (node-to-node) proposal and names the
    // leader: NotLeader survives the wire for call_cluster.
    let t = GrpcTransport::new("127.0.0.1:1", GrpcConfig::default()).unwrap();
    match t
        .node(&c.addr(follower))
        .unwrap()
        .propose(put("x", "y"))
        .await
    {
        Err(Error::NotLeader {
            leader_id,
            leader_addr,
        }) => {
            assert_eq!(leader_id, leader);
            assert_eq!(leader_addr, Some(c.addr(leader)));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // A batch of proposals over the wire: one outcome each, in order.
    let batch = vec![put("b", "1"), KvCmd::Fail.encode().unwrap(), put("b", "2")];
    match t
        .node(&c.addr(leader))
        .unwrap()
        .propose_batch(batch.clone())
        .await
    {
        Ok(o) => {
            assert_eq!(o.len(), 3);
            assert_eq!(o[0], Ok(Vec::new()));
            assert!(
                matches!(&o[1], Err(e) if e.kind == "state_machine"),
                "{o:?}"
            );
            assert_eq!(o[2], Ok(b"1".to_vec()), "the second put sees the first");
        }
        other => panic!("expected outcomes, got {other:?}"),
    }
    // ... which a follower refuses whole, naming the leader.
    match t
        .node(&c.addr(follower))
        .unwrap()
        .propose_batch(batch)
        .await
    {
        Err(Error::NotLeader { leader_id, .. }) => assert_eq!(leader_id, leader),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // Concurrent writes on the follower reach the leader in shared
    // ProposeBatch requests, over gRPC.
    let node = c.nodes[&follower].raft.clone();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            node.propose(&KvCmd::Put {
                key: format!("c{i}"),
                value: "v".into(),
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), b"");
    }
    let m = c.nodes[&follower].raft.handle().metrics();
    assert!(m.forwarded_proposals >= 64, "{m:?}");
    assert!(m.forward_batches < m.forwarded_proposals, "{m:?}");
    // An on-demand snapshot through the client.
    assert!(client.snapshot(&c.addr(leader)).await.unwrap() > 0);
    c.wait_converged(&[1, 2, 3], 1).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_dynamically_with_tickets() {
    let (l, addr) = bind().await;
    let grpc = GrpcConfig::default();
    let first = start_node(
        1,
        l,
        &addr,
        Bootstrap::Single { addr: addr.clone() },
        &grpc,
        no_tweak,
    )
    .await;
    let mut c = GCluster {
        nodes: BTreeMap::from([(1, first)]),
        grpc: grpc.clone(),
        tweak: no_tweak,
    };
    c.wait_leader(&[1]).await;
    let client = c.client();
    client.propose(put("before", "1")).await.unwrap();

    // One node through request_join_ticket + join_cluster...
    let a = c.join(false).await;
    // ...and one whose ticket comes from RaftClient::request_id.
    let (l, addr) = bind().await;
    let ticket = client.request_id(&addr).await.unwrap();
    assert_ne!(ticket.reserved_id, a, "ids are unique");
    assert_eq!(ticket.cluster_id, "raftify");
    let b = ticket.reserved_id;
    let node = start_node(b, l, &addr, Bootstrap::None, &grpc, no_tweak).await;
    node.raft
        .handle()
        .join_cluster(&ticket, &addr, false)
        .await
        .unwrap();
    c.nodes.insert(b, node);

    let members = client.members().await.unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    let client = c.client();
    client.propose(put("after", "2")).await.unwrap();
    c.wait_converged(&[1, a, b], 2).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_replaced_and_the_client_keeps_writing() {
    let mut c = GCluster::start(3, GrpcConfig::default(), no_tweak).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let client = c.client();
    for i in 0..5 {
        client.propose(put(&format!("k{i}"), "a")).await.unwrap();
    }
    c.stop(leader).await;
    let rest: Vec<u64> = c.nodes.keys().copied().collect();
    let new_leader = c.wait_leader(&rest).await;
    assert_ne!(new_leader, leader);
    for i in 5..10 {
        client.propose(put(&format!("k{i}"), "b")).await.unwrap();
    }
    c.wait_converged(&rest, 10).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_promoted_takes_leadership_and_leaves() {
    let mut c = GCluster::start(3, GrpcConfig::default(), no_tweak).await;
    c.wait_leader(&[1, 2, 3]).await;
    let client = c.client();
    client.propose(put("a", "1")).await.unwrap();

    let learner = c.join(true).await;
    // The node asked may be a follower that has not applied the change yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let members = client.members().await.unwrap();
        if let Some(m) = members.into_iter().find(|m| m.id == learner) {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "learner {learner} never listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(m.role, MemberRole::Learner);
    c.wait_converged(&[1, 2, 3, learner], 1).await;

    let members = client
        .change_config(vec![MembershipChange::AddVoter {
            id: learner,
            addr: c.addr(learner),
        }])
        .await
        .unwrap();
    assert!(members
        .iter()
        .any(|m| m.id == learner && m.role == MemberRole::Voter));

    // Leadership transfer to the promoted node.
    client.transfer_leader(learner).await.unwrap();
    assert_eq!(c.wait_leader(&[1, 2, 3, learner]).await, learner);
    client.propose(put("b", "2")).await.unwrap();

    // The leader leaves: it hands leadership over, then is removed.
    client.leave(&c.addr(learner)).await.unwrap();
    c.stop(learner).await;
    let new_leader = c.wait_leader(&[1, 2, 3]).await;
    assert_ne!(new_leader, learner);
    // The node asked may not have applied the removal yet.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ids: Vec<u64> = client
            .members()
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        if ids == vec![1, 2, 3] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "members {ids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.propose(put("c", "3")).await.unwrap();
    c.wait_converged(&[1, 2, 3], 3).await;
    c.shutdown().await;
}

fn compact_often(c: &mut Config) {
    c.snapshot_threshold = 5;
    c.snapshot_log_retention = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_compaction_gets_a_chunked_snapshot() {
    // Received into a spool file (streamed to disk), as launched nodes do.
    let spool = tempfile::tempdir().unwrap();
    let grpc = GrpcConfig {
        snapshot_chunk_size: 128 * 1024,
        snapshot_spool_dir: Some(spool.path().to_path_buf()),
        ..GrpcConfig::default()
    };
    let mut c = GCluster::start(3, grpc, compact_often).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let client = c.client();
    // ~1 MiB of state: the snapshot needs 8+ chunks.
    let big = "x".repeat(100 * 1024);
    for i in 0..10 {
        client.propose(put(&format!("big{i}"), &big)).await.unwrap();
    }
    client.snapshot(&c.addr(leader)).await.unwrap();
    let status = client.status(&c.addr(leader)).await.unwrap();
    assert!(status.first_index > 1, "the log is compacted: {status:?}");

    let new = c.join(false).await;
    c.wait_converged(&[1, 2, 3, new], 10).await;
    // The metric is bumped right after the state machine is restored.
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.node(new).handle().metrics().snapshots_installed == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot installed: {:?}",
            c.node(new).handle().metrics()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = client.status(&c.addr(new)).await.unwrap();
    assert!(status.snapshot_index > 1, "{status:?}");
    client.propose(put("after", "1")).await.unwrap();
    c.wait_converged(&[1, 2, 3, new], 11).await;
    // The spool file was removed once the snapshot was handed over.
    let left: Vec<_> = std::fs::read_dir(spool.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_over_mutual_tls_with_a_token() {
    let pki = TestPki::generate().expect("a test PKI");
    let tls = TlsConfig {
        cert_pem: Some(pki.node_cert.clone()),
        key_pem: Some(pki.node_key.clone()),
        ca_pem: Some(pki.ca.clone()),
        domain: None,
    };
    let grpc = GrpcConfig {
        tls: Some(tls.clone()),
        auth_token: Some("s3cret-token".into()),
        ..GrpcConfig::default()
    };
    let c = GCluster::start(3, grpc.clone(), no_tweak).await;
    c.wait_leader(&[1, 2, 3]).await;
    let client = RaftClient::new(
        c.addrs(),
        GrpcConfig {
            tls: Some(TlsConfig {
                domain: Some("localhost".into()),
                ..tls.clone()
            }),
            ..grpc.clone()
        },
    )
    .unwrap();
    client.propose(put("k", "tls")).await.unwrap();
    c.wait_converged(&[1, 2, 3], 1).await;

    let short = Duration::from_millis(1500);
    let failing = |tls: TlsConfig| {
        RaftClient::new(
            [c.addr(1)],
            GrpcConfig {
                tls: Some(tls),
                request_timeout: short,
                ..grpc.clone()
            },
        )
        .unwrap()
    };
    // No client certificate: the mTLS server refuses the handshake.
    let no_cert = failing(TlsConfig {
        cert_pem: None,
        key_pem: None,
        ..tls.clone()
    });
    assert!(no_cert.members().await.is_err());
    // A server certificate from an unknown CA is refused by the client.
    let wrong_ca = failing(TlsConfig {
        ca_pem: Some(pki.other_ca.clone()),
        ..tls.clone()
    });
    assert!(wrong_ca.members().await.is_err());
    // The server name must match the certificate.
    let wrong_name = failing(TlsConfig {
        domain: Some("not-the-node.example".into()),
        ..tls.clone()
    });
    assert!(wrong_name.members().await.is_err());
    // Plaintext to a TLS port fails.
    let plain = RaftClient::new(
        [c.addr(1)],
        GrpcConfig {
            request_timeout: short,
            auth_token: grpc.auth_token.clone(),
            ..GrpcConfig::default()
        },
    )
    .unwrap();
    assert!(plain.members().await.is_err());
    // The cluster still serves.
    client.propose(put("k2", "tls")).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_garbage_bytes_are_rejected_and_the_node_keeps_serving() {
    let grpc = GrpcConfig {
        auth_token: Some("right-token".into()),
        ..GrpcConfig::default()
    };
    let c = GCluster::start(1, grpc.clone(), no_tweak).await;
    c.wait_leader(&[1]).await;
    let addr = c.addr(1);
    let url = format!("http://{addr}");

    // No token and a wrong token: Unauthenticated.
    let mut api = RaftClientClient::connect(url.clone()).await.unwrap();
    let mut raw = RaftPeerClient::connect(url.clone()).await.unwrap();
    let err = api.get_leader(pb::Empty {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::Empty {});
    req.metadata_mut()
        .insert("authorization", "Bearer wrong-token".parse().unwrap());
    let err = api.get_leader(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // RaftClient with a wrong token fails fast, without retrying.
    let wrong = RaftClient::new(
        [addr.clone()],
        GrpcConfig {
            auth_token: Some("wrong-token".into()),
            ..GrpcConfig::default()
        },
    )
    .unwrap();
    match wrong.propose(put("x", "y")).await {
        Err(Error::Unauthenticated(m)) => assert!(m.contains("auth token"), "{m}"),
        other => panic!("expected an auth failure, got {other:?}"),
    }

    // Malformed payloads with the right token: InvalidArgument.
    fn authed<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", "Bearer right-token".parse().unwrap());
        r
    }
    let err = raw
        .send_messages(authed(pb::MessageBatch {
            from_id: 9,
            from_addr: "127.0.0.1:9".into(),
            messages: vec![vec![0xff, 0xff, 0xff, 0x01, 0x02]],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // The same on a message stream: an empty batch is fine, then the batch
    // that does not decode ends the stream with InvalidArgument.
    let batches = vec![
        pb::MessageBatch::default(),
        pb::MessageBatch {
            from_id: 9,
            from_addr: "127.0.0.1:9".into(),
            messages: vec![vec![0xff, 0xff, 0xff, 0x01, 0x02]],
            ..Default::default()
        },
    ];
    let err = raw
        .message_stream(authed(tokio_stream::iter(batches)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Without the token a stream is refused before any batch is read.
    let err = raw
        .message_stream(tonic::Request::new(tokio_stream::iter(vec![
            pb::MessageBatch::default(),
        ])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let chunks = vec![pb::SnapshotChunk {
        header: vec![0x0a, 0xff, 0xff],
        ..Default::default()
    }];
    let err = raw
        .install_snapshot(authed(tokio_stream::iter(chunks)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A snapshot stream that ends before its announced size: refused.
    let mut header = raftify_core::raft::eraftpb::Message::default();
    header.set_msg_type(raftify_core::raft::eraftpb::MessageType::MsgSnapshot);
    header.from = 9;
    header.to = 1;
    let chunks = vec![pb::SnapshotChunk {
        from_id: 9,
        header: raftify_core::protobuf::Message::write_to_bytes(&header).unwrap(),
        total_size: 1000,
        data: vec![1u8; 10].into(),
        ..Default::default()
    }];
    let err = raw
        .install_snapshot(authed(tokio_stream::iter(chunks)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("truncated"), "{err:?}");
    let err = raw
        .change_config(authed(pb::ChangeConfigRequest {
            changes: vec![pb::Change {
                kind: 42,
                id: 7,
                addr: String::new(),
            }],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Raw garbage on the port: random bytes, a truncated HTTP/2 preface, a
    // full preface followed by junk frames.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut junk = vec![0u8; 4096];
    for b in junk.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let payloads: Vec<Vec<u8>> = vec![
        junk.clone(),
        preface[..10].to_vec(),
        [&preface[..], &junk[..]].concat(),
    ];
    for p in payloads {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(&p).await; // the server may close first
        let _ = s.shutdown().await;
    }
    // A message over the 64 MiB limit is refused by the server.
    let err = api
        .propose(authed(pb::ProposeRequest {
            data: vec![b'z'; 65 * 1024 * 1024],
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
        ),
        "{err:?}"
    );

    let client = RaftClient::new([addr.clone()], grpc.clone()).unwrap();
    // An entry over the core's max_entry_size (8 MiB by default) but within
    // gRPC's 64 MiB message limit: refused before it enters the log.
    match client.propose(vec![b'z'; 9 * 1024 * 1024]).await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("max_entry_size"), "{m}"),
        other => panic!("expected a size refusal, got {other:?}"),
    }
    // Still serving.
    assert_eq!(client.propose(put("k", "v")).await.unwrap(), b"");
    assert_eq!(client.read(b"k".to_vec()).await.unwrap(), b"v");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_and_clients_have_separate_credentials() {
    let grpc = GrpcConfig {
        auth_token: Some("client-secret".into()),
        peer_token: Some("peer-secret".into()),
        ..GrpcConfig::default()
    };
    // Peers talk with the peer token: the cluster elects and replicates.
    let c = GCluster::start(3, grpc.clone(), no_tweak).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    // Clients use the client token; a follower forwards their writes to
    // the leader over the peer service.
    let client = RaftClient::new([c.addr(follower)], grpc.clone()).unwrap();
    assert_eq!(client.propose(put("k", "v")).await.unwrap(), b"");

    fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }
    let url = format!("http://{}", c.addr(leader));
    let mut peer = RaftPeerClient::connect(url.clone()).await.unwrap();
    let mut api = RaftClientClient::connect(url).await.unwrap();
    // The client token does not open the peer service: no raft messages,
    // no snapshots, no node-to-node requests.
    let err = peer
        .send_messages(bearer(pb::MessageBatch::default(), "client-secret"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = peer
        .message_stream(bearer(
            tokio_stream::iter(vec![pb::MessageBatch::default()]),
            "client-secret",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = peer
        .install_snapshot(bearer(
            tokio_stream::iter(vec![pb::SnapshotChunk::default()]),
            "client-secret",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = peer
        .propose(bearer(
            pb::ProposeRequest {
                data: put("x", "y"),
            },
            "client-secret",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // ... and the peer token does not open the client service.
    let err = api
        .propose(bearer(
            pb::ProposeRequest {
                data: put("x", "y"),
            },
            "peer-secret",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // Each token opens its own service.
    let ok = peer
        .members(bearer(pb::Empty {}, "peer-secret"))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().members.len(), 3);
    let ok = api
        .members(bearer(pb::Empty {}, "client-secret"))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().members.len(), 3);
    // Nothing was applied by the refused calls.
    c.wait_converged(&[1, 2, 3], 1).await;
    let keys = c.node(leader).stale_read(|s| s.map.len()).await;
    assert_eq!(keys, 1);
    c.shutdown().await;
}

/// Counts the records whose message contains a word.
struct CountingDrain(std::sync::Arc<std::sync::atomic::AtomicUsize>, &'static str);

impl slog::Drain for CountingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, r: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if r.msg().to_string().contains(self.1) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_is_refused_without_flooding_the_log() {
    use raftify_core::testkit::{test_config, KvStore};
    use raftify_core::{MemStore, Raft};
    use raftify_grpc::RaftGrpcServer;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let grpc = GrpcConfig {
        auth_token: Some("right".into()),
        ..GrpcConfig::default()
    };
    let (listener, addr) = bind().await;
    let raft = Raft::builder(test_config(1), KvStore::default())
        .storage(Arc::new(MemStore::new()))
        .transport(Arc::new(
            GrpcTransport::new(addr.clone(), grpc.clone()).unwrap(),
        ))
        .bootstrap(Bootstrap::Single { addr: addr.clone() })
        .logger(raftify_core::discard_logger())
        .start()
        .await
        .unwrap();
    let lines = Arc::new(AtomicUsize::new(0));
    let logger = slog::Logger::root(
        slog::Drain::fuse(CountingDrain(lines.clone(), "rejected")),
        slog::o!(),
    );
    let server = RaftGrpcServer::new(raft.handle().clone(), grpc.clone())
        .logger(logger)
        .spawn(listener)
        .unwrap();
    let mut api = RaftClientClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for _ in 0..300 {
        let mut req = tonic::Request::new(pb::Empty {});
        req.metadata_mut()
            .insert("authorization", "Bearer wrong".parse().unwrap());
        let err = api.get_leader(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    let logged = lines.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&logged),
        "300 refusals from one address wrote {logged} lines"
    );
    server.shutdown().await;
    raft.handle().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_the_connection_cap_holds() {
    use tokio::io::AsyncReadExt;
    let grpc = GrpcConfig {
        max_connections: 3,
        ..GrpcConfig::default()
    };
    let c = GCluster::start(1, grpc.clone(), no_tweak).await;
    c.wait_leader(&[1]).await;
    let addr = c.addr(1);
    // Silent connections take the slots; once the three are taken, the
    // next is closed at once (a held one times out on a short read, a
    // refused one reads EOF).
    let started = tokio::time::Instant::now();
    let mut silent = Vec::new();
    let mut buf = [0u8; 16];
    loop {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // A served connection gets the server's SETTINGS frame (or nothing
        // yet); a refused one is closed at once.
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) | Err(_) => silent.push(s),
        }
        assert!(silent.len() <= 3, "more connections held than the cap");
    }
    assert!(!silent.is_empty());
    // Each is closed once it has not sent the preface within 10 s (after
    // whatever the server sent first).
    for mut s in silent {
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection stayed open");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The slots are free: clients are served.
    let client = RaftClient::new([addr], grpc).unwrap();
    assert_eq!(client.propose(put("k", "v")).await.unwrap(), b"");
    c.shutdown().await;
}

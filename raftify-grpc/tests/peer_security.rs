//! The peer service against a credentialed but misbehaving (or misplaced)
//! sender, over real gRPC on 127.0.0.1: mTLS identities bound to raft
//! senders, snapshots checked and bounded, node-to-node calls and join
//! tickets carrying the cluster identity, new members asked who they are,
//! and leadership that cannot be made to flap.

use raftify_core::protobuf::Message as _;
use raftify_core::raft::eraftpb::{ConfState, Message, MessageType};
use raftify_core::{Bootstrap, Error, Rejection};
use raftify_grpc::pb::raft_peer_client::RaftPeerClient;
use raftify_grpc::testkit::TestCa;
use raftify_grpc::{pb, GrpcConfig, TlsConfig};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

mod common;
use common::*;

const PEER_TOKEN: &str = "peer-secret";

fn bearer<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {PEER_TOKEN}").parse().expect("header"),
    );
    r
}

fn peer_grpc() -> GrpcConfig {
    GrpcConfig {
        peer_token: Some(PEER_TOKEN.into()),
        auth_token: Some("client-secret".into()),
        ..GrpcConfig::default()
    }
}

async fn peer_client(addr: &str) -> RaftPeerClient<Channel> {
    RaftPeerClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// A raft message encoded as the peer service expects it.
fn encoded(m: &Message) -> Vec<u8> {
    m.write_to_bytes().expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_certificate_naming_a_node_may_only_speak_as_that_node() {
    let ca = TestCa::new("raftify test CA").expect("a CA");
    let certs: BTreeMap<u64, (String, String)> = (1..=3)
        .map(|id| {
            (
                id,
                ca.issue(&[&format!("raftify-node-{id}"), "localhost"])
                    .expect("a certificate"),
            )
        })
        .collect();
    let grpc_of = |id: u64| {
        let (cert, key) = certs[&id].clone();
        GrpcConfig {
            tls: Some(TlsConfig {
                cert_pem: Some(cert),
                key_pem: Some(key),
                ca_pem: Some(ca.pem()),
                domain: Some("localhost".into()),
            }),
            ..peer_grpc()
        }
    };
    // Nodes bound to their names elect and replicate as usual.
    let c = GCluster::start_each(3, peer_grpc(), grpc_of, no_tweak).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    c.node(leader)
        .handle()
        .propose(put("k", "v"))
        .await
        .expect("a write");
    let (target, speaker, impersonated) = match leader {
        1 => (1, 3, 2),
        2 => (2, 3, 1),
        _ => (3, 1, 2),
    };
    // A client holding node `speaker`'s certificate (and the peer token).
    let (cert, key) = &certs[&speaker];
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", c.addr(target)))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect over mTLS");
    let mut peer = RaftPeerClient::new(channel);
    let term = c.node(target).handle().status().await.expect("status").term;
    let heartbeat_from = |from: u64| {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeatResponse);
        m.from = from;
        m.to = target;
        m.term = term;
        pb::MessageBatch {
            from_id: from,
            messages: vec![encoded(&m)],
            ..Default::default()
        }
    };
    // Speaking as another node is refused; as itself, accepted.
    let err = peer
        .send_messages(bearer(heartbeat_from(impersonated)))
        .await
        .expect_err("impersonation refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("raftify-node-"), "{err:?}");
    peer.send_messages(bearer(heartbeat_from(speaker)))
        .await
        .expect("speaking as itself");
    let err = peer
        .message_stream(bearer(tokio_stream::iter(vec![heartbeat_from(
            impersonated,
        )])))
        .await
        .expect_err("impersonation refused on the stream too");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    c.node(leader)
        .handle()
        .propose(put("k2", "v"))
        .await
        .expect("still serving");
    c.shutdown().await;
}

/// A snapshot message from `from` to `to` in `term`, without data.
fn snapshot_header(from: u64, to: u64, term: u64, index: u64) -> Vec<u8> {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = from;
    m.to = to;
    m.term = term;
    let meta = m.mut_snapshot().mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(ConfState {
        voters: vec![from, to],
        ..Default::default()
    });
    encoded(&m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installs_are_checked_and_bounded_in_memory() {
    snapshot_installs_are_checked_and_bounded(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installs_are_checked_and_bounded_on_disk() {
    let spool = tempfile::tempdir().expect("tempdir");
    snapshot_installs_are_checked_and_bounded(Some(spool.path())).await;
    // Refused and cut-off streams leave no spool file behind.
    let left: Vec<_> = std::fs::read_dir(spool.path())
        .expect("spool dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

async fn snapshot_installs_are_checked_and_bounded(spool: Option<&std::path::Path>) {
    let grpc = GrpcConfig {
        max_snapshot_size: 1024 * 1024,
        max_concurrent_snapshot_installs: 1,
        snapshot_idle_timeout: Duration::from_millis(500),
        snapshot_spool_dir: spool.map(|p| p.to_path_buf()),
        ..peer_grpc()
    };
    let c = GCluster::start(1, grpc, no_tweak).await;
    c.wait_leader(&[1]).await;
    let node = c.node(1).handle().clone();
    node.propose(put("k", "before")).await.expect("write");
    let status = node.status().await.expect("status");
    let (term, applied) = (status.term, status.applied_index);
    let addr = c.addr(1);
    let mut peer = peer_client(&addr).await;
    let chunk = |data: Vec<u8>, total: u64, checksum: Option<u32>| pb::SnapshotChunk {
        from_id: 2,
        header: snapshot_header(2, 1, term, applied + 100),
        total_size: total,
        data: data.into(),
        checksum,
        ..Default::default()
    };

    // Announcing more than the limit: refused before anything is read.
    let err = peer
        .install_snapshot(bearer(tokio_stream::iter(vec![chunk(
            vec![],
            2 * 1024 * 1024,
            None,
        )])))
        .await
        .expect_err("too large");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

    // Data that does not match its checksum: refused, nothing installed.
    let data = b"RFS2 definitely not a snapshot".to_vec();
    let wrong = raftify_core::codec::crc32(&data) ^ 1;
    let err = peer
        .install_snapshot(bearer(tokio_stream::iter(vec![chunk(
            data.clone(),
            data.len() as u64,
            Some(wrong),
        )])))
        .await
        .expect_err("checksum mismatch");
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");

    // Garbage with a valid checksum reaches the node, which refuses to
    // install what does not decode: its state is unchanged.
    let right = raftify_core::codec::crc32(&data);
    peer.install_snapshot(bearer(tokio_stream::iter(vec![chunk(
        data.clone(),
        data.len() as u64,
        Some(right),
    )])))
    .await
    .expect("delivered");

    // A stalled stream holds the only install slot until it is cut off;
    // meanwhile another install is refused at once. (Which of the two the
    // server takes first is a race: a stalled stream refused because the
    // probe held the slot is started again.)
    let stall = || {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let first = chunk(vec![0; 10], 100, None);
        let addr = addr.clone();
        let call = tokio::spawn(async move {
            let mut client = peer_client(&addr).await;
            tx.send(first).await.expect("send");
            let answer = client
                .install_snapshot(bearer(tokio_stream::wrappers::ReceiverStream::new(rx)))
                .await;
            drop(tx);
            answer
        });
        (Instant::now(), call)
    };
    let (mut started, mut stalled) = stall();
    let mut refused = false;
    for _ in 0..100 {
        if stalled.is_finished() {
            (started, stalled) = stall();
        }
        match peer
            .install_snapshot(bearer(tokio_stream::iter(vec![chunk(vec![], 10, None)])))
            .await
        {
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(refused, "a second install was never refused");
    let err = stalled
        .await
        .expect("join")
        .expect_err("the stalled stream is cut off");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Nothing was installed; the node serves and keeps its data.
    node.propose(put("k2", "after"))
        .await
        .expect("still serving");
    let now = node.status().await.expect("status");
    assert!(now.applied_index < applied + 100, "{now:?}");
    assert_eq!(
        c.node(1).stale_read(|s| s.map.get("k").cloned()).await,
        Some("before".into())
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_to_node_calls_and_join_tickets_carry_the_cluster_identity() {
    let mut c = GCluster::start(1, peer_grpc(), no_tweak).await;
    c.wait_leader(&[1]).await;
    let uid = c.node(1).handle().cluster_uid();
    assert_ne!(uid, 0);
    let mut peer = peer_client(&c.addr(1)).await;
    let with_cluster = |uid: u64| {
        let mut r = bearer(pb::Empty {});
        r.metadata_mut().insert(
            "raftify-cluster-uid",
            format!("{uid:016x}").parse().expect("header"),
        );
        r
    };
    let err = peer
        .members(with_cluster(uid ^ 0xdead))
        .await
        .expect_err("another cluster");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("cluster ID mismatch"), "{err:?}");
    let answer = peer
        .members(with_cluster(uid))
        .await
        .expect("same cluster")
        .into_inner();
    assert_eq!((answer.node_id, answer.cluster_uid), (1, uid));

    // A joining node learns the identity from its ticket.
    let id = c.join(false).await;
    assert_eq!(c.node(id).handle().cluster_uid(), uid);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_must_answer_as_itself_before_it_is_added() {
    let c = GCluster::start(3, peer_grpc(), no_tweak).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let handle = c.node(leader).handle().clone();
    // Nothing listens there.
    let dead = {
        let (l, addr) = bind().await;
        drop(l);
        addr
    };
    let err = handle.add_voter(9, &dead).await.expect_err("dead address");
    assert!(
        matches!(&err, Error::ConfChangeRejected(Rejection::Invalid(m)) if m.contains("did not answer")),
        "{err:?}"
    );
    // A node of another cluster (same token, same name): it refuses the
    // question, and is not added.
    let other = GCluster::start(1, peer_grpc(), no_tweak).await;
    other.wait_leader(&[1]).await;
    let err = handle
        .add_learner(9, &other.addr(1))
        .await
        .expect_err("another cluster");
    assert!(
        matches!(&err, Error::ConfChangeRejected(Rejection::Invalid(m)) if m.contains("cluster ID mismatch")),
        "{err:?}"
    );
    // A node of no cluster yet, but another id (a typo in the id or the
    // address): refused.
    let (l, addr) = bind().await;
    let waiting = start_node(1, l, &addr, Bootstrap::None, &peer_grpc(), no_tweak).await;
    let err = handle
        .add_learner(9, &addr)
        .await
        .expect_err("answers as node 1");
    assert!(
        matches!(&err, Error::ConfChangeRejected(Rejection::Invalid(m)) if m.contains("answers as node 1")),
        "{err:?}"
    );
    waiting.raft.handle().shutdown().await;
    waiting.server.shutdown().await;
    // Nothing changed.
    let members = handle.members().await.expect("members").members;
    assert_eq!(members.len(), 3);
    other.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_one_transfer_at_a_time_after_a_tenure() {
    let c = GCluster::start(3, peer_grpc(), no_tweak).await;
    let first = c.wait_leader(&[1, 2, 3]).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != first).collect();
    let config = raftify_core::testkit::test_config(1);
    let tenure = config.tick_interval * config.election_tick as u32;
    // Many concurrent requests to move leadership back and forth: each is
    // served in turn, none fails, and leadership moves no faster than one
    // tenure per move.
    let handle = c.node(first).handle().clone();
    let term_before = handle.status().await.expect("status").term;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let h = handle.clone();
        let to = others[i % 2];
        tasks.push(tokio::spawn(async move { h.transfer_leader(to).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("every transfer is served");
    }
    let elapsed = started.elapsed();
    // Each move is one election (one term).
    let moves = handle.status().await.expect("status").term - term_before;
    assert!(moves >= 1, "no transfer happened");
    assert!(
        elapsed >= tenure * (moves as u32 - 1),
        "{moves} elections in {elapsed:?} (tenure {tenure:?})"
    );
    c.shutdown().await;
}

//! Rotating a token without a window of refusals, over real gRPC on
//! 127.0.0.1: a cluster caught half-way through a rolling restart, its
//! nodes presenting different tokens, each accepting the other's
//! (`GrpcConfig::accept_tokens`, `accept_peer_tokens`). Leadership moves
//! so that both sides send to each other, writes go through followers
//! (forwarded over the peer service), and every node ends with the same
//! keys; clients holding either token are served, any other refused.

use raftify_core::Error;
use raftify_grpc::pb::raft_peer_client::RaftPeerClient;
use raftify_grpc::{pb, GrpcConfig, RaftClient};

mod common;
use common::*;

fn grpc(auth: &str, peer: Option<&str>, accept: &[&str], accept_peer: &[&str]) -> GrpcConfig {
    GrpcConfig {
        auth_token: Some(auth.into()),
        peer_token: peer.map(Into::into),
        accept_tokens: accept.iter().map(|&t| t.into()).collect(),
        accept_peer_tokens: accept_peer.iter().map(|&t| t.into()).collect(),
        ..GrpcConfig::default()
    }
}

/// A cluster half-way through a rolling restart: node 1 restarted with
/// `restarted`, nodes 2 and 3 still on `waiting`; clients use `waiting`.
async fn half_way(restarted: GrpcConfig, waiting: GrpcConfig) -> GCluster {
    let each = waiting.clone();
    let c = GCluster::start_each(
        3,
        waiting,
        move |id| {
            if id == 1 {
                restarted.clone()
            } else {
                each.clone()
            }
        },
        no_tweak,
    )
    .await;
    c.wait_leader(&[1, 2, 3]).await;
    c
}

fn client_with(c: &GCluster, token: &str) -> RaftClient {
    let cfg = GrpcConfig {
        auth_token: Some(token.into()),
        ..GrpcConfig::default()
    };
    RaftClient::new(c.addrs(), cfg).unwrap()
}

/// Leadership to each node in turn, and a write through another node
/// each time: every node both sends and receives raft traffic and
/// forwarded writes with every other. Returns the writes made.
async fn writes_across(c: &GCluster, client: &RaftClient) -> usize {
    let mut n = 0;
    for to in [1, 2, 3] {
        client.transfer_leader(to).await.unwrap();
        assert_eq!(c.wait_leader(&[1, 2, 3]).await, to);
        let via = if to == 1 { 2 } else { 1 };
        let follower = RaftClient::new([c.addr(via)], c.grpc.clone()).unwrap();
        follower.propose(put(&format!("k{to}"), "v")).await.unwrap();
        n += 1;
    }
    c.wait_converged(&[1, 2, 3], n).await;
    n
}

async fn refused(client: &RaftClient) {
    match client.propose(put("refused", "x")).await {
        Err(Error::Unauthenticated(m)) => assert!(m.contains("auth token"), "{m}"),
        other => panic!("expected an auth failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_token_rotates_with_each_side_accepting_the_other() {
    // Node 1 restarted with the new token (the old one accepted); nodes 2
    // and 3 still on the old one, already accepting the new.
    let c = half_way(
        grpc("new-token", None, &["old-token"], &[]),
        grpc("old-token", None, &["new-token"], &[]),
    )
    .await;
    let n = writes_across(&c, &c.client()).await;
    // Clients on either token are served by every node.
    for token in ["old-token", "new-token"] {
        for id in [1, 2, 3] {
            let one = RaftClient::new(
                [c.addr(id)],
                GrpcConfig {
                    auth_token: Some(token.into()),
                    ..GrpcConfig::default()
                },
            )
            .unwrap();
            let members = one.members().await.unwrap();
            assert_eq!(members.len(), 3, "{token} on node {id}");
        }
    }
    refused(&client_with(&c, "other-token")).await;
    // The refused write changed nothing.
    c.wait_converged(&[1, 2, 3], n).await;
    let keys = c.node(1).stale_read(|s| s.map.len()).await;
    assert_eq!(keys, n);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_accepted_token_the_new_one_is_refused() {
    // The control: a node that accepts only its own token refuses the new
    // one (what the rotation's first step is for).
    let c = GCluster::start(3, grpc("old-token", None, &[], &[]), no_tweak).await;
    c.wait_leader(&[1, 2, 3]).await;
    refused(&client_with(&c, "new-token")).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_token_rotates_while_clients_keep_theirs() {
    // Node 1 presents the new peer token (accepting the old); nodes 2 and
    // 3 the old one (accepting the new). Clients keep one token.
    let c = half_way(
        grpc("client-token", Some("peer-new"), &[], &["peer-old"]),
        grpc("client-token", Some("peer-old"), &[], &["peer-new"]),
    )
    .await;
    writes_across(&c, &c.client()).await;
    // Peer tokens, old or new, stay refused on the client service ...
    for token in ["peer-old", "peer-new"] {
        refused(&client_with(&c, token)).await;
    }
    // ... and the client token on the peer service, where both peer
    // tokens open it.
    let mut peer = RaftPeerClient::connect(format!("http://{}", c.addr(1)))
        .await
        .unwrap();
    for (token, opens) in [
        ("client-token", false),
        ("other-token", false),
        ("peer-old", true),
        ("peer-new", true),
    ] {
        let mut req = tonic::Request::new(pb::Empty {});
        let value = format!("Bearer {token}").parse().unwrap();
        req.metadata_mut().insert("authorization", value);
        match peer.members(req).await {
            Ok(m) => assert!(opens && m.into_inner().members.len() == 3, "{token}"),
            Err(e) => assert!(
                !opens && e.code() == tonic::Code::Unauthenticated,
                "{token}: {e:?}"
            ),
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_token_moves_to_a_peer_token_of_its_own() {
    // Half-way through the second step: node 1 presents its new peer
    // token and still accepts the shared one; nodes 2 and 3 share one
    // token still, and accept the new peer token.
    let c = half_way(
        grpc("client-token", Some("peer-token"), &[], &["client-token"]),
        grpc("client-token", None, &[], &["peer-token"]),
    )
    .await;
    writes_across(&c, &c.client()).await;
    refused(&client_with(&c, "peer-token")).await;
    c.shutdown().await;
}

//! `RaftClient::save_snapshot` over real gRPC on 127.0.0.1: a node's
//! stored snapshot arrives in chunks as the very bytes of a snapshot file,
//! appears whole or not at all, and needs the client token.

use raftify_core::{Bootstrap, Error};
use raftify_grpc::{GrpcConfig, RaftClient};

mod common;
use common::*;

fn grpc() -> GrpcConfig {
    GrpcConfig {
        auth_token: Some("client-token".into()),
        snapshot_chunk_size: 64 * 1024,
        ..GrpcConfig::default()
    }
}

fn nothing_left(dir: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_snapshot_is_saved_whole_as_a_snapshot_file() {
    let c = GCluster::start(3, grpc(), no_tweak).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let client = c.client();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");

    // A node not yet in a cluster has no snapshot to give: an error, no file.
    let (l, addr) = bind().await;
    let lone = start_node(9, l, &addr, Bootstrap::None, &grpc(), no_tweak).await;
    match client.save_snapshot(&addr, &file).await {
        Err(e) => assert!(e.to_string().contains("no snapshot yet"), "{e}"),
        Ok(s) => panic!("saved {s:?} before any snapshot"),
    }
    nothing_left(dir.path());
    lone.raft.handle().shutdown().await;
    lone.server.shutdown().await;

    // ~1 MiB of state: sixteen chunks.
    let big = "x".repeat(100 * 1024);
    for i in 0..10 {
        client.propose(put(&format!("big{i}"), &big)).await.unwrap();
    }
    c.wait_converged(&[1, 2, 3], 10).await;
    let index = client.snapshot(&c.addr(follower)).await.unwrap();
    let saved = client
        .save_snapshot(&c.addr(follower), &file)
        .await
        .unwrap();
    assert!(saved.index >= index, "{saved:?} < {index}");
    assert_eq!(saved.size, std::fs::metadata(&file).unwrap().len());
    assert!(
        saved.size > 15 * 64 * 1024,
        "more than 15 chunks: {saved:?}"
    );
    // The file is the node's snapshot, byte for byte in what it holds.
    let read = raftify_storage::read_snapshot_file(&file).unwrap();
    let stored = c.node(follower).handle().storage().snapshot().unwrap();
    assert_eq!(read.get_metadata(), stored.get_metadata());
    assert_eq!(read.data, stored.data);
    assert_eq!(read.get_metadata().index, saved.index);
    assert_eq!(read.get_metadata().term, saved.term);

    // Saved again over it: replaced, and only it in the directory.
    client.propose(put("after", "1")).await.unwrap();
    c.wait_converged(&[1, 2, 3], 11).await;
    client.snapshot(&c.addr(follower)).await.unwrap();
    let again = client
        .save_snapshot(&c.addr(follower), &file)
        .await
        .unwrap();
    assert!(again.index > saved.index, "{again:?} after {saved:?}");
    let read = raftify_storage::read_snapshot_file(&file).unwrap();
    assert_eq!(read.get_metadata().index, again.index);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["backup.snap"]);

    // Without the client token: refused, and the last backup stays as it was.
    let anonymous = RaftClient::new([c.addr(follower)], GrpcConfig::default()).unwrap();
    match anonymous.save_snapshot(&c.addr(follower), &file).await {
        Err(Error::Unauthenticated(_)) => {}
        other => panic!("expected an auth failure, got {other:?}"),
    }
    let read = raftify_storage::read_snapshot_file(&file).unwrap();
    assert_eq!(read.get_metadata().index, again.index);

    // A path that cannot be written: an error naming it, nothing left.
    let missing = dir.path().join("no-such-dir").join("backup.snap");
    match client.save_snapshot(&c.addr(follower), &missing).await {
        Err(e) => assert!(e.to_string().contains("no-such-dir"), "{e}"),
        Ok(s) => panic!("saved {s:?} into a missing directory"),
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_limited_and_a_stalled_one_is_cut_off() {
    use raftify_grpc::pb::raft_client_client::RaftClientClient;
    let grpc = GrpcConfig {
        max_concurrent_snapshot_downloads: 1,
        // Long enough for the second download below to find the first
        // still in place on a loaded machine.
        snapshot_idle_timeout: std::time::Duration::from_secs(2),
        ..grpc()
    };
    let c = GCluster::start(3, grpc, no_tweak).await;
    c.wait_leader(&[1, 2, 3]).await;
    let client = c.client();
    // 12 MB of state: more than HTTP/2's windows hold for a client that
    // does not read.
    let big = "x".repeat(200 * 1024);
    for i in 0..60 {
        client.propose(put(&format!("big{i}"), &big)).await.unwrap();
    }
    c.wait_converged(&[1, 2, 3], 60).await;
    client.snapshot(&c.addr(1)).await.unwrap();

    // A client that takes one chunk and stops reading holds the only
    // download there is ...
    let mut raw = RaftClientClient::connect(format!("http://{}", c.addr(1)))
        .await
        .unwrap();
    let mut req = tonic::Request::new(raftify_grpc::pb::Empty {});
    let token = "Bearer client-token".parse().unwrap();
    req.metadata_mut().insert("authorization", token);
    let mut stalled = raw.download_snapshot(req).await.unwrap().into_inner();
    let first = stalled.message().await.unwrap().unwrap();
    assert_eq!(first.offset, 0);
    assert!(first.size > 12_000_000, "{}", first.size);
    // ... so another is refused at once, leaving no file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    match client.save_snapshot(&c.addr(1), &file).await {
        Err(e) => assert!(e.to_string().contains("too many snapshot downloads"), "{e}"),
        Ok(s) => panic!("a second download ran: {s:?}"),
    }
    nothing_left(dir.path());
    // Stalled past snapshot_idle_timeout (the stall is what is tested),
    // the download is cut off: its stream ends short of the snapshot, and
    // its place is free again.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let mut got = first.data.len() as u64;
    let ended = loop {
        match stalled.message().await {
            Ok(Some(chunk)) => got += chunk.data.len() as u64,
            other => break other,
        }
    };
    assert!(got < first.size, "{got} of {}", first.size);
    match ended {
        Err(e) => {
            assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
            assert!(e.message().contains("cut off"), "{e:?}");
        }
        Ok(end) => panic!("the stream ended without saying why: {end:?}"),
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let saved = loop {
        match client.save_snapshot(&c.addr(1), &file).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("too many"), "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the download's place was not freed: {e}"),
        }
    };
    assert_eq!(saved.size, first.size);
    c.shutdown().await;
}

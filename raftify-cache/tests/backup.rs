//! An embedded cache's backup: a snapshot saved over the network from a
//! running member (`RaftClient::save_snapshot`, what `raftify-cli snapshot
//! --save` does), and a new member started from the file alone
//! (`NodeSpec::restore`, what `--restore-snapshot-from` does).

use raftify::Restore;
use raftify_cache::embedded::{Cache, CacheConfig};
use raftify_core::testkit::{free_port, test_logger};
use raftify_grpc::{GrpcConfig, RaftClient};
use std::time::Duration;

const TOKEN: &str = "s3cret";

fn builder(dir: &std::path::Path, addr: &str) -> raftify_cache::embedded::CacheBuilder {
    Cache::builder()
        .cache("default", CacheConfig::new())
        .cache(
            "sessions",
            CacheConfig::new().ttl(Duration::from_secs(3600)),
        )
        .logger(test_logger())
        .tick(Duration::from_millis(20))
        .data_dir(dir)
        .raft_addr(addr)
        .auth_token(TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_starts_from_a_backup_saved_over_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let c = builder(&dir.path().join("a"), &addr).build().await.unwrap();
    for i in 0..100u32 {
        c.put("default", format!("k{i}"), &i).await.unwrap();
    }
    c.put("sessions", "s1", &"alice").await.unwrap();
    assert_eq!(c.incr("default", "n", 7).await.unwrap(), 7);

    let client = RaftClient::new(
        [addr.clone()],
        GrpcConfig {
            auth_token: Some(TOKEN.into()),
            ..GrpcConfig::default()
        },
    )
    .unwrap();
    client.snapshot(&addr).await.unwrap();
    let file = dir.path().join("cache.snap");
    let saved = client.save_snapshot(&addr, &file).await.unwrap();
    assert!(saved.index > 100, "{saved:?}");
    c.shutdown().await;

    // A new member on another address and an empty data dir, from the file.
    let restored_addr = format!("127.0.0.1:{}", free_port());
    let from = file.clone();
    let r = builder(&dir.path().join("b"), &restored_addr)
        .node_spec(move |s| s.restore = Some(Restore::SnapshotFrom(from)))
        .build()
        .await
        .unwrap();
    for i in 0..100u32 {
        let v: Option<u32> = r.get("default", format!("k{i}")).await.unwrap();
        assert_eq!(v, Some(i), "k{i}");
    }
    let s: Option<String> = r.get("sessions", "s1").await.unwrap();
    assert_eq!(s.as_deref(), Some("alice"));
    // It takes writes again.
    assert_eq!(r.incr("default", "n", 1).await.unwrap(), 8);
    r.shutdown().await;
}

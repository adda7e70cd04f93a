//! `raftify-cli shards` against two sharded nodes (in this process, real
//! gRPC on loopback) after a rebalance: every slot in exactly one group,
//! each group's leader and replicas shown, in JSON and as text.

use raftify::{Start, Storage};
use raftify_core::testkit::{KvCmd, KvStore};
use raftify_shard::{testkit, Settings, ShardHost};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

type Host = ShardHost<KvCmd, KvStore>;

async fn start(id: Option<u64>, start: Start) -> Host {
    let settings = Settings {
        replicas: 2,
        groups_per_node: 1,
        max_group_bytes: 0,
    };
    let spec = testkit::spec(id, start, "127.0.0.1:0", Storage::Memory, settings, true);
    ShardHost::start(spec, Arc::new(|_| KvStore::default()), None, None)
        .await
        .unwrap()
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftify-cli"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_shows_groups_slots_leaders_and_replicas() {
    let first = start(Some(1), Start::Single).await;
    let addr = first.raft_addr().to_string();
    let second = start(None, testkit::join(&addr)).await;
    // Two nodes, two replicas, one group per node; no slot mover, so the
    // rebalance stops at the move (the new group owns no slots): what is
    // shown is what the placement holds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = first.placement().borrow().clone();
        let replicated =
            p.groups().len() == 2 && p.groups().values().all(|g| g.replicas.len() == 2);
        if replicated {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for g in [1, 2] {
        for h in [&first, &second] {
            let r = loop {
                if let Some(r) = h.group(g).await {
                    break r;
                }
                assert!(tokio::time::Instant::now() < deadline, "no replica of {g}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            r.wait_for_leader(Duration::from_secs(30)).await.unwrap();
        }
    }

    let (ok, out, err) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || cli(&["shards", &addr, "--json"])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2, "{v}");
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");
    let slots: u64 = groups.iter().map(|g| g["slots"].as_u64().unwrap()).sum();
    assert_eq!(slots, 16384);
    for g in groups {
        let replicas = g["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 2, "{g}");
        assert!(g["leader"].as_u64().is_some(), "{g}");
        assert!(replicas.iter().all(|r| r["lag"].as_u64().is_some()), "{g}");
        assert!(replicas.iter().all(|r| r["asleep"].is_boolean()), "{g}");
        assert!(
            replicas.iter().all(|r| r["log_entries"].as_u64().is_some()),
            "{g}"
        );
    }
    assert!(
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["down"] == false),
        "{v}"
    );

    let (ok, out, err) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || cli(&["shards", &addr])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("placement version "), "{out}");
    assert!(out.contains("0-16383") || out.contains("0-"), "{out}");
    assert!(out.contains("\nrebalance: "), "{out}");

    // A rebalance asked through the second node is committed to the
    // placement (the metadata leader carries it out); --status says where
    // it stands.
    let asked = first.placement().borrow().rebalances_asked();
    let second_addr = second.raft_addr().to_string();
    let (ok, out, err) = tokio::task::spawn_blocking({
        let addr = second_addr.clone();
        move || cli(&["rebalance", &addr])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("requested (placement version "), "{out}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while first.placement().borrow().rebalances_asked() <= asked {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || cli(&["rebalance", &second_addr, "--status"]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    let status = out.trim();
    assert!(
        status.starts_with("done") || status.starts_with("moving") || status == "requested",
        "{status}"
    );

    // A backup of each group's replica on the first node: `--group` picks
    // the group (0, the metadata group), and the file is that replica's
    // snapshot, not another group's.
    let dir = tempfile::tempdir().unwrap();
    for g in [0u64, 1] {
        let file = dir.path().join(format!("group-{g}.snap"));
        let (ok, out, err) = tokio::task::spawn_blocking({
            let (addr, file) = (addr.clone(), file.clone());
            move || {
                let file = file.to_str().unwrap().to_string();
                cli(&[
                    "snapshot",
                    &addr,
                    "--group",
                    &g.to_string(),
                    "--save",
                    &file,
                ])
            }
        })
        .await
        .unwrap();
        assert!(ok, "{err}");
        assert!(out.contains("saved the snapshot at index"), "{out}");
        let saved = raftify_storage::read_snapshot_file(&file).unwrap();
        let replica = match g {
            0 => first.meta().storage().snapshot().unwrap(),
            _ => {
                let r = first.group(g).await.unwrap();
                r.storage().snapshot().unwrap()
            }
        };
        assert_eq!(saved.get_metadata(), replica.get_metadata(), "group {g}");
        assert_eq!(saved.data, replica.data, "group {g}");
    }

    second.shutdown().await;
    first.shutdown().await;
}

/// `debug persisted DIR/groups --group ID`: a data group's log in a
/// sharded node's shared environment, read-only while the node runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_persisted_shows_a_group_of_a_sharded_node() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        replicas: 1,
        groups_per_node: 1,
        max_group_bytes: 0,
    };
    let storage = Storage::Dir(dir.path().to_path_buf());
    let spec = testkit::spec(
        Some(1),
        Start::Single,
        "127.0.0.1:0",
        storage,
        settings,
        true,
    );
    let host: Host = ShardHost::start(spec, Arc::new(|_| KvStore::default()), None, None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let g1 = loop {
        if let Some(r) = host.group(1).await {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica of group 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    g1.wait_for_leader(Duration::from_secs(30)).await.unwrap();
    let last = g1.status().await.unwrap().last_index;
    assert!(last > 0);
    let groups = dir.path().join("groups");
    let groups = groups.to_str().unwrap().to_string();
    let (ok, out, err) = tokio::task::spawn_blocking({
        let groups = groups.clone();
        move || cli(&["debug", "persisted", &groups, "--group", "1", "--json"])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["group"], 1, "{v}");
    assert!(v["last_index"].as_u64().unwrap() >= last, "{v}");
    assert_eq!(v["identity"]["node_id"], 1, "{v}");
    // Without --group, the environment is not taken for a store.
    let (ok, _, err) = tokio::task::spawn_blocking(move || cli(&["debug", "persisted", &groups]))
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.contains("--group"), "{err}");
    drop(g1);
    host.shutdown().await;
}

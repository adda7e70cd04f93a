//! `--maxmemory` on `raftify-redis --sharded`: the limit is each node's,
//! every group's leader evicting from its group down to the group's share
//! (`raftify_redis::upkeep::group_budget`), so after a cluster client fills
//! three nodes with three times what they may hold, each node holds about
//! its limit, the newest keys stay and the oldest went; under
//! `noeviction`, writes that add data are refused with `-OOM` and deletes
//! still work.

mod common;

use common::{info_field, show, wait_for, Frame, Node, T};
use redis::Commands;
use std::time::Duration;

/// 1,000-byte values.
fn value() -> String {
    "x".repeat(1000)
}

fn used_memory(n: &Node) -> u64 {
    info_field(n, "used_memory")
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

#[test]
fn each_node_of_a_sharded_cluster_evicts_down_to_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 60 * 1024;
    let nodes = common::sharded_three(
        dir.path(),
        &[
            "--no-sync",
            "--maxmemory",
            "60kb",
            "--maxmemory-policy",
            "allkeys-lru",
            "--auto-rebalance",
        ],
    );
    wait_for("three groups, balanced", Duration::from_secs(120), || {
        let status = show(&nodes[0].client().cmd(&["RAFT", "REBALANCE", "STATUS"]));
        (info_field(&nodes[0], "groups").as_deref() == Some("3") && status.contains("done"))
            .then_some(())
    });
    let mut con = common::cluster_connection(&nodes.iter().collect::<Vec<_>>());
    let v = value();
    let written = 540;
    for i in 0..written {
        let key = format!("k{i}");
        let mut tries = 0;
        loop {
            match con.set::<_, _, ()>(&key, &v) {
                Ok(()) => break,
                // Over the limit by 10 %: the writer waits for the evictor.
                Err(e) if e.to_string().contains("OOM") && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("SET {key}: {e}"),
            }
        }
    }
    // Each node comes down to about its limit (the evictor's target is 95
    // % of each group's share; a share is a third of a node's limit).
    for (i, n) in nodes.iter().enumerate() {
        wait_for(&format!("node {} under its limit", i + 1), T, || {
            (used_memory(n) <= limit + limit / 10).then_some(())
        });
        let info = show(&n.client().cmd(&["INFO", "memory"]));
        assert!(info.contains("maxmemory:61440"), "{info}");
    }
    let keys: i64 = nodes
        .iter()
        .map(|n| match n.client().cmd(&["DBSIZE"]) {
            Frame::Integer(k) => k,
            other => panic!("DBSIZE: {}", show(&other)),
        })
        .sum();
    // Three nodes of 60 KB, every group on each: room for about 60 keys
    // of 1 KB in all (each key is on all three nodes).
    assert!((20..=80).contains(&keys), "{keys} keys left of {written}");
    let used: Vec<u64> = nodes.iter().map(used_memory).collect();
    eprintln!("{keys} keys left of {written}; used memory per node {used:?} (limit {limit})");
    let newest: Option<String> = con.get(format!("k{}", written - 1)).unwrap();
    assert_eq!(newest, Some(v.clone()), "the newest key stays");
    let oldest: Option<String> = con.get("k0").unwrap();
    assert_eq!(oldest, None, "the oldest key went");
}

#[test]
fn a_sharded_node_under_noeviction_refuses_writes_that_add_data() {
    let dir = tempfile::tempdir().unwrap();
    let raft = format!("127.0.0.1:{}", common::free_port());
    let n = Node::spawn(
        1,
        common::free_port(),
        &raft,
        dir.path(),
        &["--sharded", "--no-sync", "--maxmemory", "20kb"],
    );
    let mut c = n.client();
    wait_for("the node to serve", T, || {
        (show(&c.cmd(&["SET", "probe", "1"])) == "+OK").then_some(())
    });
    let v = value();
    // The limit is checked against the memory summed every 100 ms: keep
    // writing until a write is refused.
    let mut i = 0;
    let refused = wait_for("a write refused", T, || {
        i += 1;
        let r = show(&c.cmd(&["SET", &format!("k{i}"), &v]));
        (r != "+OK").then_some(r)
    });
    assert_eq!(
        refused,
        "-OOM command not allowed when used memory > 'maxmemory'."
    );
    assert_eq!(show(&c.cmd(&["DEL", "probe"])), ":1", "deletes still work");
    assert!(used_memory(&n) >= 20 * 1024);
}

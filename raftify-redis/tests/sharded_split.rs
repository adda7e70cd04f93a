//! `--max-group-mb` on `raftify-redis --sharded` with a range made hot by
//! hash tags: the rebalance splits groups where their bytes are (each
//! group's bytes per slot, weighed by the rebalancer), not only by slot
//! count, so no group is left holding the hot range whole; every key is
//! still there afterwards.

mod common;

use common::{free_port, show, wait_for, Frame, Node};
use std::collections::BTreeMap;
use std::time::Duration;

/// Each group's `bytes=` from `INFO sharding` (`group<g>:...,bytes=N`).
fn group_bytes(n: &Node) -> BTreeMap<u64, u64> {
    let info = show(&n.client().cmd(&["INFO", "sharding"]));
    info.split("\r\n")
        .filter_map(|l| {
            let (g, fields) = l.strip_prefix("group")?.split_once(':')?;
            let bytes = fields.split(',').find_map(|f| f.strip_prefix("bytes="))?;
            Some((g.parse().ok()?, bytes.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_range_made_hot_by_hash_tags_is_split_where_its_bytes_are() {
    let dir = tempfile::tempdir().unwrap();
    let raft = format!("127.0.0.1:{}", free_port());
    let flags = ["--sharded", "--no-sync", "--max-group-mb", "1"];
    let node = Node::spawn(1, free_port(), &raft, &dir.path().join("n1"), &flags);
    let mut c = node.client();
    wait_for("the node to serve", common::T, || {
        (show(&c.cmd(&["SET", "probe", "1"])) == "+OK").then_some(())
    });
    // Six hash tags whose slots lie within the first 400: 200 keys of
    // 1,000 bytes under each (~1.3 MB in a few slots of one range), and
    // 700 keys spread over every slot (~0.8 MB).
    let tags: Vec<String> = (0..)
        .map(|i| format!("t{i}"))
        .filter(|t| raftify_cache::key_slot(t.as_bytes()) < 400)
        .take(6)
        .collect();
    let value = "v".repeat(1000);
    let mut keys: Vec<String> = tags
        .iter()
        .flat_map(|t| (0..200).map(move |i| format!("{{{t}}}:{i}")))
        .collect();
    keys.extend((0..700).map(|i| format!("spread:{i}")));
    for chunk in keys.chunks(100) {
        for k in chunk {
            c.send(&[b"SET", k.as_bytes(), value.as_bytes()]).unwrap();
        }
        for k in chunk {
            assert_eq!(show(&c.read().unwrap()), "+OK", "SET {k}");
        }
    }
    let one_tag = group_bytes(&node).values().sum::<u64>() / keys.len() as u64 * 200;

    assert_eq!(show(&c.cmd(&["RAFT", "REBALANCE"])), "+OK");
    let sizes = wait_for("the rebalance to end", Duration::from_secs(120), || {
        let status = show(&c.cmd(&["RAFT", "REBALANCE", "STATUS"]));
        let sizes = group_bytes(&node);
        (status.starts_with("$done") && sizes.len() >= 3).then_some(sizes)
    });
    // Split by slot count alone, the group owning slots 0-5460 would hold
    // the hot keys and its share of the rest: ~1.6 MB. Split by bytes,
    // every group is within the limit but for at most one tag's keys.
    let limit = 1024 * 1024;
    assert!(
        sizes.values().all(|&b| b <= limit + one_tag),
        "{sizes:?} (one tag: {one_tag} bytes)"
    );
    let Frame::Array(slots) = c.cmd(&["CLUSTER", "SLOTS"]) else {
        panic!("CLUSTER SLOTS");
    };
    assert!(slots.len() >= 3, "{}", show(&Frame::Array(slots)));
    for k in &keys {
        assert_eq!(show(&c.cmd(&["GET", k])), format!("${value}"), "GET {k}");
    }
    assert_eq!(show(&c.cmd(&["DBSIZE"])), format!(":{}", keys.len() + 1));
}

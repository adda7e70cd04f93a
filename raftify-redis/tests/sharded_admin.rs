//! The administration of `raftify-redis --sharded` over the Redis
//! protocol: `RAFT SERVER LIST` (the placement's nodes, from any node),
//! `RAFT INFO`, `RAFT SNAPSHOT NOW | LIST | READ`, `RAFT TRANSFER`, and
//! `INFO` with the sections a
//! single-group node has (`server`, `clients`, `memory`, `keyspace`, ...)
//! plus `sharding`.

mod common;

use common::{show, wait_for, Frame, T};

/// A RESP2 map (a flat array) as `key=value` pairs.
fn pairs(f: &Frame) -> Vec<String> {
    let Frame::Array(items) = f else {
        panic!("not a map: {}", show(f));
    };
    items
        .chunks(2)
        .map(|kv| {
            let v = show(&kv[1]);
            format!(
                "{}={}",
                show(&kv[0]).trim_start_matches('$'),
                v.trim_start_matches(['$', ':'])
            )
        })
        .collect()
}

#[test]
fn raft_server_list_info_and_snapshots_on_a_sharded_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = common::sharded_three(dir.path(), &["--no-sync"]);
    for n in &nodes {
        let mut c = n.client();
        let Frame::Array(list) = c.cmd(&["RAFT", "SERVER", "LIST"]) else {
            panic!("RAFT SERVER LIST");
        };
        assert_eq!(list.len(), 3, "three nodes");
        let servers: Vec<Vec<String>> = list.iter().map(pairs).collect();
        let leaders = servers
            .iter()
            .filter(|s| s.contains(&"leader=1".to_string()))
            .count();
        assert_eq!(leaders, 1, "{servers:?}");
        for node in &nodes {
            // Ids are given as nodes join: found by address.
            let s = servers
                .iter()
                .find(|s| s.contains(&format!("raft_addr={}", node.raft)))
                .unwrap_or_else(|| panic!("{} in {servers:?}", node.raft));
            assert!(s.contains(&format!("client_addr={}", node.addr())), "{s:?}");
            let up = s.contains(&"down=0".to_string()) && s.contains(&"role=voter".to_string());
            assert!(up, "{s:?}");
        }
        let info = pairs(&c.cmd(&["RAFT", "INFO"]));
        assert!(
            info.iter().any(|p| p.starts_with("placement_version=")),
            "{info:?}"
        );
        assert!(info.contains(&"nodes=3".to_string()), "{info:?}");
    }
    // Node 1 hosts the only data group (no rebalance asked) and the
    // metadata group: two snapshots.
    let mut c1 = nodes[0].client();
    assert_eq!(show(&c1.cmd(&["SET", "k", "v"])), "+OK");
    assert_eq!(show(&c1.cmd(&["RAFT", "SNAPSHOT", "NOW"])), ":2");
    // Keys per slot: on the node hosting the slot's group; none elsewhere.
    let slot = show(&c1.cmd(&["CLUSTER", "KEYSLOT", "k"]));
    let slot = slot.trim_start_matches(':');
    assert_eq!(show(&c1.cmd(&["CLUSTER", "COUNTKEYSINSLOT", slot])), ":1");
    assert_eq!(
        show(&c1.cmd(&["CLUSTER", "GETKEYSINSLOT", slot, "5"])),
        "[$k]"
    );
    let mut c2 = nodes[1].client();
    assert_eq!(show(&c2.cmd(&["CLUSTER", "COUNTKEYSINSLOT", slot])), ":0");
    let info = show(&c1.cmd(&["INFO"]));
    for field in [
        "redis_version:",
        "connected_clients:",
        "used_memory:",
        "role:master",
        "cluster_enabled:1",
        "db0:keys=2",
        "placement_version:",
        "group1:slots=16384",
        "journal_syncs:",
        "journal_appends:",
    ] {
        assert!(info.contains(field), "{field} in {info}");
    }
    let sharding = show(&c1.cmd(&["INFO", "sharding"]));
    assert!(
        sharding.contains("# Sharding") && !sharding.contains("# Server"),
        "{sharding}"
    );
    // Another node leads nothing: a replica, no keys of its own.
    wait_for("node 2's INFO", T, || {
        let info = show(&nodes[1].client().cmd(&["INFO", "replication"]));
        info.contains("role:slave").then_some(())
    });

    // RAFT SNAPSHOT LIST: one snapshot per group this node hosts, each
    // readable by its id in raftify's snapshot-file format.
    let Frame::Array(list) = c1.cmd(&["RAFT", "SNAPSHOT", "LIST"]) else {
        panic!("LIST is an array");
    };
    let listed: Vec<Vec<String>> = list.iter().map(pairs).collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed[0].contains(&"group=0".to_string()), "{listed:?}");
    assert!(listed[1].contains(&"group=1".to_string()), "{listed:?}");
    let field = |s: &[String], k: &str| {
        let found = s.iter().find_map(|p| p.strip_prefix(&format!("{k}=")));
        found.unwrap_or_else(|| panic!("{k} in {s:?}")).to_string()
    };
    let id = field(&listed[1], "id");
    assert!(id.starts_with("g1-"), "{id}");
    let Frame::BulkString(file) = c1.cmd(&["RAFT", "SNAPSHOT", "READ", &id]) else {
        panic!("READ answers the file");
    };
    assert_eq!(&file[..8], b"RFTYSNP2");
    assert_eq!(file.len().to_string(), field(&listed[1], "size"));
    let head = c1.cmd(&["RAFT", "SNAPSHOT", "READ", &id, "0", "8"]);
    assert_eq!(head, Frame::BulkString(b"RFTYSNP2".to_vec().into()));
    for wrong in ["g9-1-1", "1-1", "g1-99-99"] {
        let r = show(&c1.cmd(&["RAFT", "SNAPSHOT", "READ", wrong]));
        assert!(r.starts_with("-ERR no snapshot"), "{wrong}: {r}");
    }

    // RAFT TRANSFER: the metadata group's leadership to another node, asked
    // of any node; a data group's only to a node holding a replica of it.
    let mut id_of = |node: &common::Node| {
        let Frame::Array(list) = c1.cmd(&["RAFT", "SERVER", "LIST"]) else {
            panic!("RAFT SERVER LIST");
        };
        let servers: Vec<Vec<String>> = list.iter().map(pairs).collect();
        let s = servers
            .iter()
            .find(|s| s.contains(&format!("raft_addr={}", node.raft)));
        field(s.unwrap_or_else(|| panic!("{servers:?}")), "id")
    };
    let two = id_of(&nodes[1]);
    assert_eq!(show(&c2.cmd(&["RAFT", "TRANSFER", &two])), "+OK");
    wait_for("node 2 leads the metadata group", T, || {
        let leader = show(&c1.cmd(&["RAFT", "LEADER"]));
        leader.starts_with(&format!("[:{two},")).then_some(())
    });
    let refused = show(&c1.cmd(&["RAFT", "TRANSFER", &two, "1"]));
    assert!(
        refused.contains("holds no voting replica of group 1"),
        "{refused}"
    );
    let unknown = show(&c1.cmd(&["RAFT", "TRANSFER", &two, "77"]));
    assert!(
        unknown.starts_with("-ERR") && unknown.contains("77"),
        "{unknown}"
    );
    let bad = show(&c1.cmd(&["RAFT", "TRANSFER", "x"]));
    assert!(bad.starts_with("-ERR value is not an integer"), "{bad}");
    let add = show(&c1.cmd(&["RAFT", "SERVER", "ADD", "9", "127.0.0.1:1"]));
    assert!(add.contains("--join"), "{add}");
}

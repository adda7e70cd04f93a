//! Network partitions (RedisRaft's Jepsen setting): three nodes, each in
//! its own network namespace, under concurrent INCRs and `MULTI` appends
//! from clients on the host, while the leader is cut off from the others
//! (both ways) and healed, round after round. Checked: every acknowledged
//! increment and append present exactly once on every node, no definite
//! error for a write that may have been applied, and no read from the
//! cut-off old leader (it cannot reach a quorum for its ReadIndex, so it
//! must not answer with its stale copy).
//!
//! Needs root and `ip` (iproute2); elsewhere it says why and returns. CI
//! runs as root with iproute2 installed (`.ci/run`); there
//! `RAFTIFY_REQUIRE_NETNS=1` makes a missing namespace a failure.

mod common;

use common::workload::{check_writes, Writers};
use common::*;
use raftify_reliability::netns::Netns;
use redis_protocol::resp2::types::BytesFrame as Frame;
use std::time::Duration;

const PORT: u16 = 6379;
const RAFT_PORT: u16 = 7000;

/// The leader the nodes in `ids` agree on (reports through their client
/// ports, reachable from the host whatever the cuts).
fn agreed_leader(nodes: &[Node], ids: &[u64]) -> Option<u64> {
    let seen: Vec<Option<u64>> = ids
        .iter()
        .map(|id| nodes[*id as usize - 1].leader())
        .collect();
    match seen.first() {
        Some(Some(l)) if seen.iter().all(|s| s == &Some(*l)) => Some(*l),
        _ => None,
    }
}

/// Three network namespaces, or None (said why) where they cannot be
/// made and `RAFTIFY_REQUIRE_NETNS` is not 1.
fn three_namespaces() -> Option<Netns> {
    match Netns::setup(3) {
        Ok(n) => Some(n),
        Err(why) => {
            assert!(
                std::env::var("RAFTIFY_REQUIRE_NETNS").as_deref() != Ok("1"),
                "network namespaces are required (RAFTIFY_REQUIRE_NETNS=1): {why}"
            );
            eprintln!("skipped: no network namespaces ({why})");
            None
        }
    }
}

fn counter(c: &mut Client) -> Option<i64> {
    match c.call(&["GET", "counter"]).ok()? {
        Frame::BulkString(b) => String::from_utf8_lossy(&b).parse().ok(),
        _ => None,
    }
}

#[test]
fn partitions_lose_no_acknowledged_write_and_serve_no_stale_read() {
    let Some(net) = three_namespaces() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let peers = (1..=3)
        .map(|i| format!("{i}={}:{RAFT_PORT}", net.ip(i)))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<Node> = (1..=3)
        .map(|i| {
            Node::spawn_in(
                Some(&net.ns(i)),
                &net.ip(i),
                i,
                PORT,
                &format!("{}:{RAFT_PORT}", net.ip(i)),
                &dir.path().join(format!("n{i}")),
                &["--peers", &peers],
            )
        })
        .collect();
    let all = [1, 2, 3];
    let mut leader = wait_for("a leader", T, || agreed_leader(&nodes, &all));

    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let writers = Writers::start(&addrs, 4);

    for round in 0..3 {
        let others: Vec<u64> = all.iter().copied().filter(|i| *i != leader).collect();
        let mut probe = nodes[others[0] as usize - 1].client();
        let start = wait_for("increments before the cut", T, || {
            counter(&mut probe).filter(|n| *n > 0)
        });
        // Cut the leader off, both ways.
        for o in &others {
            net.cut(leader, *o);
            net.cut(*o, leader);
        }
        let new = wait_for(
            &format!("round {round}: a leader among {others:?}"),
            T,
            || agreed_leader(&nodes, &others).filter(|l| *l != leader),
        );
        let moved = wait_for("increments by the majority", T, || {
            counter(&mut probe).filter(|n| *n >= start + 50)
        });
        // The old leader, alone, must not serve its stale copy.
        let mut old = nodes[leader as usize - 1].client();
        old.stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .ok();
        match old.call(&["GET", "counter"]) {
            Ok(Frame::BulkString(b)) => {
                let seen: i64 = String::from_utf8_lossy(&b).parse().expect("a number");
                assert!(seen >= moved, "round {round}: stale read {seen} < {moved} from the cut-off old leader {leader}");
            }
            Ok(Frame::Error(_)) | Err(_) => {}
            Ok(other) => panic!("unexpected reply {other:?}"),
        }
        net.heal();
        // Healed: one leader again (most often `new`; pre-vote keeps the
        // old leader from disrupting it, but the test needs only one).
        leader = wait_for(&format!("round {round}: healed"), T, || {
            agreed_leader(&nodes, &all)
        });
        eprintln!("round {round}: {leader} leads after the heal ({new} led the majority)");
    }
    let tallies = writers.stop();
    wait_for("a leader after the last heal", T, || {
        agreed_leader(&nodes, &all)
    });
    check_writes(&nodes.iter().collect::<Vec<_>>(), &tallies);
}

/// The setting above with `--sharded`: keys on node 1, two nodes join,
/// and while the rebalance moves slots, node 1 — the metadata leader, the
/// source of the moves, a leader of groups — is cut off both ways for a
/// while; the writers go on through the others. Healed, the rebalance
/// finishes with every slot served; every acknowledged increment and
/// append is present exactly once on every node, every key written
/// before is readable.
#[test]
fn a_partition_during_a_sharded_rebalance_loses_nothing() {
    let Some(net) = three_namespaces() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let raft1 = format!("{}:{RAFT_PORT}", net.ip(1));
    let spawn = |i: u64, extra: &[&str]| {
        Node::spawn_in(
            Some(&net.ns(i)),
            &net.ip(i),
            if i == 1 { 1 } else { 0 },
            PORT,
            &format!("{}:{RAFT_PORT}", net.ip(i)),
            &dir.path().join(format!("n{i}")),
            extra,
        )
    };
    let n1 = spawn(1, &["--sharded"]);
    let mut c1 = n1.client();
    wait_for("node 1 to serve writes", T, || {
        (show(&c1.cmd(&["SET", "probe", "1"])) == "+OK").then_some(())
    });
    for i in 0..300 {
        assert_eq!(show(&c1.cmd(&["SET", &format!("key:{i}"), "v"])), "+OK");
    }
    let join = ["--sharded", "--join", raft1.as_str()];
    let nodes = [n1, spawn(2, &join), spawn(3, &join)];
    wait_for("three nodes", T, || {
        (info_field(&nodes[0], "nodes").as_deref() == Some("3")).then_some(())
    });

    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let writers = Writers::start(&addrs, 4);
    assert_eq!(show(&c1.cmd(&["RAFT", "REBALANCE"])), "+OK");
    let at = wait_for("a slot move", T * 4, || {
        let s = show(&c1.cmd(&["RAFT", "REBALANCE", "STATUS"]));
        (s.contains("MoveSlots") || s.contains("Purge") || s.contains("done")).then_some(s)
    });
    for o in [2, 3] {
        net.cut(1, o);
        net.cut(o, 1);
    }
    eprintln!("node 1 cut off during: {at}");
    // The majority elects a metadata leader of its own and keeps serving.
    let meta_leader = |n: &Node| match n.client().cmd(&["RAFT", "LEADER"]) {
        Frame::Array(f) => match f.first() {
            Some(Frame::Integer(id)) => Some(*id),
            _ => None,
        },
        _ => None,
    };
    wait_for("a metadata leader among 2 and 3", T, || {
        let l = meta_leader(&nodes[1])?;
        (l == 2 || l == 3).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    net.heal();

    wait_for("the rebalance to finish after the heal", T * 8, || {
        for n in &nodes {
            let _ = n.client().call(&["RAFT", "REBALANCE"]);
        }
        let states: Vec<(Option<String>, String)> = nodes
            .iter()
            .map(|n| {
                let s = show(&n.client().cmd(&["RAFT", "REBALANCE", "STATUS"]));
                (info_field(n, "groups"), s)
            })
            .collect();
        // Done on the metadata leader (the others say what they last did:
        // `requested`, or node 1 `interrupted` by the cut).
        let done = states.iter().any(|(_, s)| s.starts_with("$done"));
        let settled = states
            .iter()
            .all(|(g, s)| g.as_deref() == Some("3") && !s.contains("moving"));
        (done && settled).then_some(())
    });
    let tallies = writers.stop();
    check_writes(&nodes.iter().collect::<Vec<_>>(), &tallies);
    // Every slot owned by one group with a leader, the runs cover all.
    let Frame::Array(runs) = nodes[1].client().cmd(&["CLUSTER", "SLOTS"]) else {
        panic!("CLUSTER SLOTS")
    };
    let covered: i64 = runs
        .iter()
        .map(|r| match r {
            Frame::Array(f) => match (&f[0], &f[1]) {
                (Frame::Integer(a), Frame::Integer(b)) => b - a + 1,
                _ => panic!("a run's bounds"),
            },
            _ => panic!("a run"),
        })
        .sum();
    assert_eq!(covered, 16384, "{runs:?}");
    for n in &nodes {
        let mut c = n.client();
        for i in (0..300).step_by(7) {
            assert_eq!(show(&c.cmd(&["GET", &format!("key:{i}")])), "$v", "key:{i}");
        }
    }
}

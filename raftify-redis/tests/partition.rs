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

fn counter(c: &mut Client) -> Option<i64> {
    match c.call(&["GET", "counter"]).ok()? {
        Frame::BulkString(b) => String::from_utf8_lossy(&b).parse().ok(),
        _ => None,
    }
}

#[test]
fn partitions_lose_no_acknowledged_write_and_serve_no_stale_read() {
    let net = match Netns::setup(3) {
        Ok(n) => n,
        Err(why) => {
            assert!(
                std::env::var("RAFTIFY_REQUIRE_NETNS").as_deref() != Ok("1"),
                "network namespaces are required (RAFTIFY_REQUIRE_NETNS=1): {why}"
            );
            eprintln!("skipped: no network namespaces ({why})");
            return;
        }
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

//! Hibernation over real gRPC: idle groups sleep (no ticks, no
//! heartbeats), wake for writes and reads, and elect when the process
//! their leader lives in stops answering (the transport's liveness probe,
//! one per peer process).

mod common;

use common::multi::{start_processes, Process};
use common::WAIT;
use raftify_core::testkit::{KvCmd, KvStore, Node};
use raftify_core::Role;
use raftify_grpc::GrpcConfig;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

const GROUPS: u64 = 12;

fn grpc() -> GrpcConfig {
    GrpcConfig {
        probe_interval: Duration::from_millis(50),
        peer_down_after: Duration::from_millis(300),
        ..GrpcConfig::default()
    }
}

async fn start() -> Vec<Process> {
    start_processes(3, GROUPS, &grpc(), |c| c.hibernate = true).await
}

fn put(key: &str, value: &str) -> KvCmd {
    KvCmd::Put {
        key: key.into(),
        value: value.into(),
    }
}

/// Waits until every replica of the running processes sleeps; the number
/// of replicas that did.
async fn all_asleep(processes: &[Process]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut asleep = 0;
        let mut awake = Vec::new();
        for p in processes.iter().filter(|p| p.server.is_some()) {
            for (g, n) in &p.nodes {
                let s = n.handle().status().await.unwrap();
                if s.hibernating {
                    asleep += 1;
                } else {
                    awake.push((*g, s.id, s.role));
                }
            }
        }
        if awake.is_empty() {
            return asleep;
        }
        assert!(
            Instant::now() < deadline,
            "replicas still awake (group, node, role): {awake:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node leading group `g`, as the replicas of running processes agree.
async fn leader_of(processes: &[Process], g: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        for p in processes.iter().filter(|p| p.server.is_some()) {
            let s = p.nodes[&g].handle().status().await.unwrap();
            if s.role == Role::Leader {
                return s.id;
            }
        }
        assert!(Instant::now() < deadline, "group {g} has no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn value(node: &Node, key: &str) -> Option<String> {
    node.stale_read(|s: &KvStore| s.map.get(key).cloned()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_sleep_wake_for_work_and_elect_when_the_leaders_process_dies() {
    let mut processes = start().await;
    for p in &processes {
        for n in p.nodes.values() {
            n.handle().wait_for_leader(WAIT).await.unwrap();
        }
    }
    assert_eq!(all_asleep(&processes).await, 3 * GROUPS as usize);

    // A write to a sleeping group wakes it and reaches every replica; a
    // linearizable read on a sleeping follower confirms with the leader.
    let mut leaders = BTreeMap::new();
    for g in 1..=GROUPS {
        let leader = leader_of(&processes, g).await;
        leaders.insert(g, leader);
        let node = &processes[leader as usize - 1].nodes[&g];
        node.propose(&put("k", &format!("v{g}"))).await.unwrap();
    }
    assert_eq!(all_asleep(&processes).await, 3 * GROUPS as usize);
    for g in 1..=GROUPS {
        for p in &processes {
            let n = &p.nodes[&g];
            let got = n
                .linearizable_read(|s: &KvStore| s.map.get("k").cloned())
                .await
                .unwrap();
            assert_eq!(got, Some(format!("v{g}")), "group {g}");
        }
    }
    assert_eq!(all_asleep(&processes).await, 3 * GROUPS as usize);

    // Process 1 dies (its port closes, its replicas stop). The groups it
    // led wake through the liveness probe and elect among the other two;
    // nothing acknowledged is lost.
    processes[0].stop().await;
    let orphaned: Vec<u64> = leaders
        .iter()
        .filter(|(_, l)| **l == 1)
        .map(|(g, _)| *g)
        .collect();
    let t0 = Instant::now();
    for g in 1..=GROUPS {
        let leader = leader_of(&processes, g).await;
        assert_ne!(leader, 1, "group {g}");
        let node = &processes[leader as usize - 1].nodes[&g];
        node.propose(&put("k2", &format!("w{g}"))).await.unwrap();
        assert_eq!(value(node, "k").await, Some(format!("v{g}")), "group {g}");
    }
    println!(
        "{} groups led by the dead process re-elected in {:?}",
        orphaned.len(),
        t0.elapsed()
    );
    // The survivors go back to sleep.
    assert_eq!(all_asleep(&processes).await, 2 * GROUPS as usize);

    for p in &mut processes {
        p.stop().await;
    }
}

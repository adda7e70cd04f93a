//! Cluster scenarios on in-process nodes: real raft-rs, real async loops,
//! faults injected through the in-process network. Every wait is bounded.
//!
//! The storage comes from `crate::factory()`: raftify-core runs these on
//! `MemStore`, raftify-storage runs the very same file on LMDB.

use raftify_core::testkit::{Cluster, KvCmd, Node, WAIT};

fn start(n: u64) -> impl std::future::Future<Output = raftify_core::Result<Cluster>> {
    Cluster::start_with(n, crate::factory(), |_| {})
}
use raftify_core::retry::Idempotence;
use raftify_core::{AbstractLogEntry, Error, ErrorClass, MemberRole, MembershipChange, Role};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_is_elected_and_all_agree() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let leaders: Vec<_> = c
        .ids()
        .iter()
        .filter(|id| c.node(**id).handle().is_leader())
        .copied()
        .collect();
    assert_eq!(leaders, vec![leader]);
    let term = c.node(leader).handle().state().term;
    for id in c.ids() {
        assert_eq!(
            c.node(id).handle().state().term,
            term,
            "node {id} is in another term"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_to_every_node_and_return_the_apply_output() {
    let c = start(3).await.unwrap();
    c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    assert_eq!(c.put("k", "v1").await.unwrap(), b"");
    assert_eq!(
        c.put("k", "v2").await.unwrap(),
        b"v1",
        "output is the previous value"
    );
    let cas = KvCmd::Cas {
        key: "k".into(),
        expected: Some("v2".into()),
        new: "v3".into(),
    };
    assert_eq!(c.write(cas.clone()).await.unwrap(), b"ok");
    assert_eq!(c.write(cas).await.unwrap(), b"mismatch");
    for i in 0..50 {
        c.put(&format!("key{i}"), &i.to_string()).await.unwrap();
    }
    c.wait_converged(&[1, 2, 3], 51, WAIT).await.unwrap();
    assert_eq!(c.map_of(2).await.get("k").map(String::as_str), Some("v3"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_all_complete_with_their_own_output() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let node = c.node(leader).clone();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("c{i}");
            node.propose(&KvCmd::Put {
                key: key.clone(),
                value: "a".into(),
            })
            .await
            .unwrap();
            // The second write's output must be this key's own previous value.
            node.propose(&KvCmd::Put {
                key,
                value: format!("b{i}"),
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), b"a");
    }
    let m = node.handle().metrics();
    assert!(
        m.storage_writes < m.persisted_entries,
        "proposals share storage writes: {m:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_on_a_follower_are_forwarded_together_each_with_its_own_outcome() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let node = c.node(follower).clone();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            if i % 50 == 7 {
                return node.propose(&KvCmd::Fail).await;
            }
            let key = format!("f{i}");
            node.propose(&KvCmd::Put {
                key: key.clone(),
                value: "a".into(),
            })
            .await?;
            node.propose(&KvCmd::Put {
                key,
                value: format!("b{i}"),
            })
            .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Err(Error::StateMachine(m)) if i % 50 == 7 => {
                assert!(m.contains("always fails"), "{m}")
            }
            // Each proposer gets its own key's previous value back.
            Ok(out) if i % 50 != 7 => assert_eq!(out, b"a", "proposal {i}"),
            other => panic!("proposal {i}: {other:?}"),
        }
    }
    let m = node.handle().metrics();
    assert_eq!(m.forwarded_proposals, 196 * 2 + 4, "{m:?}");
    assert!(
        m.forward_batches < m.forwarded_proposals,
        "concurrent proposals share requests: {m:?}"
    );
    // The batch request itself is for the leader only: nothing is proposed.
    match node
        .handle()
        .inbound()
        .propose_batch(vec![b"x".to_vec()])
        .await
    {
        Err(Error::NotLeader { leader_id, .. }) => assert_eq!(leader_id, leader),
        other => panic!("a follower must refuse a batch: {other:?}"),
    }
    c.wait_converged(&[1, 2, 3], 196, WAIT).await.unwrap();
    assert_eq!(
        c.map_of(leader).await.get("f0").map(String::as_str),
        Some("b0")
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_proposal_on_a_follower_names_the_leader_and_propose_forwards() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let cmd = KvCmd::Put {
        key: "f".into(),
        value: "1".into(),
    };
    match c.node(follower).propose_local(&cmd).await {
        Err(Error::NotLeader {
            leader_id,
            leader_addr,
        }) => {
            assert_eq!(leader_id, leader);
            assert_eq!(leader_addr, Some(c.net.addr_of(leader)));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    c.node(follower).propose(&cmd).await.unwrap();
    let out = c
        .node(follower)
        .propose(&KvCmd::Put {
            key: "f".into(),
            value: "2".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        out, b"1",
        "the forwarded write returns the leader's apply output"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failure_elects_a_new_leader_and_loses_no_committed_entry() {
    let mut c = start(3).await.unwrap();
    let old = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    for i in 0..20 {
        c.put(&format!("k{i}"), "v").await.unwrap();
    }
    let crashed_at = Instant::now();
    c.crash(old).await;
    let rest: Vec<u64> = c.ids();
    let new = c.wait_leader(&rest, WAIT).await.unwrap();
    let took = crashed_at.elapsed();
    assert_ne!(new, old);
    // Election timeout is randomized in [200, 400) ms; allow for pre-vote
    // rounds and a split vote on a loaded machine.
    assert!(took < Duration::from_secs(3), "new leader took {took:?}");
    c.put("after", "crash").await.unwrap();
    c.wait_converged(&rest, 21, WAIT).await.unwrap();
    let map = c.map_of(new).await;
    for i in 0..20 {
        assert!(map.contains_key(&format!("k{i}")), "committed k{i} lost");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_the_majority_continues_and_healing_converges() {
    let c = start(5).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3, 4, 5], WAIT).await.unwrap();
    c.put("before", "1").await.unwrap();
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    let minority = [leader, others[0]];
    let majority = [others[1], others[2], others[3]];
    c.net.partition(&[&minority, &majority]);

    // The old leader cannot commit: its proposal fails (leadership lost
    // once check-quorum steps it down) or times out; never succeeds.
    let r = c
        .node(leader)
        .propose(&KvCmd::Put {
            key: "minority".into(),
            value: "x".into(),
        })
        .await;
    assert!(r.is_err(), "a minority leader committed a write: {r:?}");

    let new = c.wait_leader(&majority, WAIT).await.unwrap();
    for i in 0..10 {
        c.node(new)
            .propose(&KvCmd::Put {
                key: format!("maj{i}"),
                value: "y".into(),
            })
            .await
            .unwrap();
    }
    c.net.heal();
    c.wait_converged(&[1, 2, 3, 4, 5], 11, WAIT).await.unwrap();
    let map = c.map_of(leader).await;
    assert!(
        !map.contains_key("minority"),
        "uncommitted minority write survived"
    );
    assert_eq!(map.get("maj9").map(String::as_str), Some("y"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_with_tickets_get_unique_ids_and_can_be_removed() {
    let mut c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    c.put("k", "v").await.unwrap();

    // Two tickets requested concurrently, one through a follower.
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let (addr_a, addr_b) = (c.net.addr_of(100), c.net.addr_of(101));
    let (a, b) = tokio::join!(
        c.node(leader).handle().request_id(&addr_a),
        c.node(follower).handle().request_id(&addr_b),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.reserved_id, b.reserved_id, "two joins got the same id");
    assert!(a.reserved_id >= 4 && b.reserved_id >= 4);
    assert_eq!(a.peers.len(), 3);

    let id = a.reserved_id;
    c.start_empty(id).await.unwrap();
    let members = c
        .node(id)
        .handle()
        .join_cluster(&a, &c.net.addr_of(id), false)
        .await
        .unwrap();
    assert!(members
        .iter()
        .any(|m| m.id == id && m.role == MemberRole::Voter));
    c.wait_converged(&[1, 2, 3, id], 1, WAIT).await.unwrap();

    // A ticket for another cluster or another id is refused.
    let mut wrong = b.clone();
    wrong.cluster_id = "other".into();
    assert!(matches!(
        c.node(id).handle().join_cluster(&wrong, "x:1", false).await,
        Err(Error::InvalidArgument(_))
    ));

    let members = c.node(leader).handle().remove_node(id).await.unwrap();
    assert!(!members.iter().any(|m| m.id == id));
    c.put("after-remove", "v").await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_added_receives_the_log_and_is_promoted() {
    let mut c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    c.put("k", "v").await.unwrap();
    c.start_empty(4).await.unwrap();
    let members = c
        .node(leader)
        .handle()
        .add_learner(4, &c.net.addr_of(4))
        .await
        .unwrap();
    assert!(members
        .iter()
        .any(|m| m.id == 4 && m.role == MemberRole::Learner));
    c.wait_converged(&[1, 4], 1, WAIT).await.unwrap();
    assert!(c
        .node(4)
        .handle()
        .status()
        .await
        .unwrap()
        .learners()
        .contains(&4));

    let members = c.node(leader).handle().promote_learner(4).await.unwrap();
    assert!(members
        .iter()
        .any(|m| m.id == 4 && m.role == MemberRole::Voter));
    let st = c.node(leader).handle().status().await.unwrap();
    assert_eq!(st.voters(), vec![1, 2, 3, 4]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_change_at_once_through_joint_consensus() {
    let mut c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let removed = *c.ids().iter().find(|id| **id != leader).unwrap();
    c.start_empty(4).await.unwrap();
    c.start_empty(5).await.unwrap();
    let changes = vec![
        MembershipChange::AddVoter {
            id: 4,
            addr: c.net.addr_of(4),
        },
        MembershipChange::AddVoter {
            id: 5,
            addr: c.net.addr_of(5),
        },
        MembershipChange::Remove { id: removed },
    ];
    c.node(leader)
        .handle()
        .change_membership(changes)
        .await
        .unwrap();
    // The joint configuration is left automatically.
    let deadline = Instant::now() + WAIT;
    loop {
        let st = c.node(leader).handle().status().await.unwrap();
        if !st.joint {
            let mut expect: Vec<u64> = [1, 2, 3, 4, 5]
                .into_iter()
                .filter(|id| *id != removed)
                .collect();
            expect.sort();
            assert_eq!(st.voters(), expect);
            break;
        }
        assert!(Instant::now() < deadline, "joint configuration never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.put("after-joint", "v").await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_membership_changes_are_refused_and_the_node_keeps_serving() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let n = c.node(leader);
    assert!(matches!(
        n.handle().add_voter(7, "not an address").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        n.handle().add_voter(0, "127.0.0.1:1").await,
        Err(Error::InvalidArgument(_))
    ));
    let dup = vec![
        MembershipChange::AddVoter {
            id: 8,
            addr: "127.0.0.1:1".into(),
        },
        MembershipChange::Remove { id: 8 },
    ];
    assert!(matches!(
        n.handle().change_membership(dup).await,
        Err(Error::InvalidArgument(_))
    ));
    // Removing every voter is impossible.
    let all = vec![
        MembershipChange::Remove { id: 1 },
        MembershipChange::Remove { id: 2 },
        MembershipChange::Remove { id: 3 },
    ];
    assert!(matches!(
        n.handle().change_membership(all).await,
        Err(Error::ConfChangeRejected(_))
    ));
    assert!(matches!(
        c.write(KvCmd::Fail).await,
        Err(Error::StateMachine(_))
    ));
    c.put("still", "serving").await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_transferred_on_request() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    c.put("k", "v").await.unwrap();
    let target = *c.ids().iter().find(|id| **id != leader).unwrap();
    // Asked through a follower: forwarded to the leader.
    let via = *c
        .ids()
        .iter()
        .find(|id| **id != leader && **id != target)
        .unwrap();
    c.node(via).handle().transfer_leader(target).await.unwrap();
    assert_eq!(c.wait_leader(&[1, 2, 3], WAIT).await.unwrap(), target);
    c.put("k2", "v").await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_compacted_log_catches_up_by_snapshot() {
    let c = Cluster::start_with(3, crate::factory(), |cfg| {
        cfg.snapshot_threshold = 20;
        cfg.snapshot_log_retention = 5;
    })
    .await
    .unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let lagging = *c.ids().iter().find(|id| **id != leader).unwrap();
    c.net.isolate(lagging);
    for i in 0..100 {
        c.put(&format!("k{i}"), "v").await.unwrap();
    }
    let st = c.node(leader).handle().status().await.unwrap();
    assert!(st.snapshot_index >= 80, "leader took no snapshot: {st:?}");
    assert!(st.first_index > 10, "leader log not compacted: {st:?}");
    c.net.heal();
    c.wait_converged(&[1, 2, 3], 100, WAIT).await.unwrap();
    assert!(
        c.node(lagging).handle().metrics().snapshots_installed >= 1,
        "caught up without a snapshot"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resumes_from_its_storage() {
    let mut c = Cluster::start_with(3, crate::factory(), |cfg| {
        cfg.snapshot_threshold = 15;
        cfg.snapshot_log_retention = 3;
    })
    .await
    .unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    for i in 0..40 {
        c.put(&format!("k{i}"), "v").await.unwrap();
    }
    let node = *c.ids().iter().find(|id| **id != leader).unwrap();
    c.wait_converged(&[1, 2, 3], 40, WAIT).await.unwrap();
    c.crash(node).await;
    for i in 40..50 {
        c.put(&format!("k{i}"), "v").await.unwrap();
    }
    c.restart(node).await.unwrap();
    // Its state machine is rebuilt from snapshot + log before any new write.
    c.wait_converged(&[1, 2, 3], 50, WAIT).await.unwrap();
    assert_eq!(c.node(node).stale_read(|s| s.applied).await, 50);

    // A full restart of every node keeps every write.
    for id in c.ids() {
        c.crash(id).await;
    }
    for id in 1..=3 {
        c.restart(id).await.unwrap();
    }
    c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    c.put("after", "restart").await.unwrap();
    c.wait_converged(&[1, 2, 3], 51, WAIT).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_on_a_follower_sees_a_write_made_on_the_leader() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    // Slow the follower's replication so a stale read would miss the write.
    for i in 0..20 {
        let v = i.to_string();
        c.node(leader)
            .propose(&KvCmd::Put {
                key: "x".into(),
                value: v.clone(),
            })
            .await
            .unwrap();
        let seen = c
            .node(follower)
            .linearizable_read(|s| s.map.get("x").cloned())
            .await
            .unwrap();
        assert_eq!(seen, Some(v), "linearizable read missed a completed write");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_in_a_minority_cannot_serve_a_linearizable_read() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    c.put("x", "old").await.unwrap();
    c.net.isolate(leader);
    let rest: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    let new = c.wait_leader(&rest, WAIT).await.unwrap();
    c.node(new)
        .propose(&KvCmd::Put {
            key: "x".into(),
            value: "new".into(),
        })
        .await
        .unwrap();
    let r = c
        .node(leader)
        .linearizable_read(|s| s.map.get("x").cloned())
        .await;
    assert!(r.is_err(), "isolated old leader served a read: {r:?}");
    // Its stale read still answers, with the old value.
    assert_eq!(
        c.node(leader)
            .stale_read(|s| s.map.get("x").cloned())
            .await
            .as_deref(),
        Some("old")
    );
    c.net.heal();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_leaves_after_handing_over_leadership() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    c.put("k", "v").await.unwrap();
    c.node(leader).handle().leave().await.unwrap();
    let rest: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    let new = c.wait_leader(&rest, WAIT).await.unwrap();
    let st = c.node(new).handle().status().await.unwrap();
    assert!(
        !st.voters().contains(&leader),
        "left node still a voter: {st:?}"
    );
    c.node(new)
        .propose(&KvCmd::Put {
            key: "k2".into(),
            value: "v".into(),
        })
        .await
        .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_proposals_fail_clearly_when_leadership_is_lost_and_on_shutdown() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    c.net.isolate(leader);
    let started = Instant::now();
    let r = c
        .node(leader)
        .propose(&KvCmd::Put {
            key: "lost".into(),
            value: "x".into(),
        })
        .await;
    assert!(
        matches!(r, Err(Error::LeadershipLost) | Err(Error::Timeout(_))),
        "got {r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    c.net.heal();
    let n = c.node(1).clone();
    c.shutdown().await;
    assert!(matches!(
        n.propose(&KvCmd::Fail).await,
        Err(Error::Shutdown)
    ));
    assert_eq!(n.handle().state().role, Role::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_snapshot_compacts_and_survives_restart() {
    let mut c = start(1).await.unwrap();
    c.wait_leader(&[1], WAIT).await.unwrap();
    for i in 0..30 {
        c.put(&format!("k{i}"), "v").await.unwrap();
    }
    let idx = c.node(1).handle().snapshot().await.unwrap();
    let st = c.node(1).handle().status().await.unwrap();
    assert_eq!(st.snapshot_index, idx);
    assert!(idx >= 31);
    c.crash(1).await;
    c.restart(1).await.unwrap();
    c.wait_leader(&[1], WAIT).await.unwrap();
    assert_eq!(c.map_of(1).await.len(), 30);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_based_reads_serve_fresh_values() {
    let c = Cluster::start_with(3, crate::factory(), |cfg| {
        cfg.read_mode = raftify_core::ReadMode::LeaseBased;
    })
    .await
    .unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    for i in 0..10 {
        let v = i.to_string();
        c.node(leader)
            .propose(&KvCmd::Put {
                key: "x".into(),
                value: v.clone(),
            })
            .await
            .unwrap();
        for id in c.ids() {
            let seen = c
                .node(id)
                .linearizable_read(|s| s.map.get("x").cloned())
                .await
                .unwrap();
            assert_eq!(seen, Some(v.clone()), "node {id} read a stale value");
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_and_reads_time_out_when_no_quorum_answers() {
    let c = Cluster::start_with(3, crate::factory(), |cfg| {
        // Without check-quorum the cut-off leader keeps believing it leads,
        // so only the deadline can answer its callers.
        cfg.check_quorum = false;
        cfg.proposal_timeout = Duration::from_millis(300);
        cfg.read_timeout = Duration::from_millis(300);
    })
    .await
    .unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    c.net.isolate(leader);
    let started = Instant::now();
    let r = c
        .node(leader)
        .propose(&KvCmd::Put {
            key: "k".into(),
            value: "v".into(),
        })
        .await;
    assert!(matches!(r, Err(Error::Timeout(_))), "got {r:?}");
    let r = c.node(leader).handle().read_index().await;
    assert!(matches!(r, Err(Error::Timeout(_))), "got {r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    c.net.heal();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_hands_leadership_over_first() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    c.put("k", "v").await.unwrap();
    // Asked of the leader itself: it must not keep leading a cluster it left.
    let members = c.node(leader).handle().remove_node(leader).await.unwrap();
    assert!(!members.iter().any(|m| m.id == leader), "{members:?}");
    let rest: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    let new = c.wait_leader(&rest, WAIT).await.unwrap();
    assert_ne!(new, leader);
    c.node(new)
        .propose(&KvCmd::Put {
            key: "k2".into(),
            value: "v".into(),
        })
        .await
        .unwrap();
    assert!(!c.node(leader).handle().is_leader());
    c.shutdown().await;
}

/// Counter `n` as a linearizable read on `node` sees it.
async fn counter(node: &Node) -> Option<String> {
    node.linearizable_read(|s| s.map.get("n").cloned())
        .await
        .unwrap()
}

/// Waits until `node` has applied counter `n` up to `value`.
async fn wait_counter(node: &Node, value: &str) {
    let deadline = Instant::now() + WAIT;
    while node
        .stale_read(|s| s.map.get("n").cloned())
        .await
        .as_deref()
        != Some(value)
    {
        assert!(Instant::now() < deadline, "never applied {value}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_whose_answer_is_lost_is_retried_in_the_nodes_session_and_applied_once() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let incr = KvCmd::Incr { key: "n".into() };
    let node = c.node(leader).clone();
    // The follower's first forwarded write opens its session.
    let put = KvCmd::Put {
        key: "k".into(),
        value: "v".into(),
    };
    c.node(follower).propose(&put).await.unwrap();

    // A follower forwards the increment; the leader applies it, but the
    // answer is lost on the way back, as when a connection breaks after
    // the request left. The follower's own session sends it again with
    // the same number once answers flow: the first application's answer.
    c.net.lose_replies_from(leader);
    let pending = {
        let (f, incr) = (c.node(follower).clone(), incr.clone());
        tokio::spawn(async move { f.propose(&incr).await })
    };
    wait_counter(&node, "1").await;
    c.net.heal();
    assert_eq!(pending.await.unwrap().unwrap(), b"1");

    // The same through a session on the cluster client, from outside.
    let outside = c.net.transport(99);
    let addrs = vec![c.net.addr_of(follower), c.net.addr_of(leader)];
    let session = raftify_core::cluster_session(outside.clone(), addrs.clone(), WAIT);
    let encoded = incr.encode().unwrap();
    assert_eq!(session.propose(encoded.clone()).await.unwrap(), b"2");
    c.net.lose_replies_from(leader);
    c.net.lose_replies_from(follower);
    let pending = {
        let encoded = encoded.clone();
        tokio::spawn(async move { session.propose(encoded).await })
    };
    wait_counter(&node, "3").await;
    c.net.heal();
    assert_eq!(pending.await.unwrap().unwrap(), b"3");

    // A plain call through the cluster client is not sent again: its
    // outcome is reported as unknown.
    c.net.lose_replies_from(leader);
    let err = raftify_core::call_cluster(
        outside.as_ref(),
        &[c.net.addr_of(leader)],
        WAIT,
        Idempotence::NotIdempotent,
        |node| {
            let e = encoded.clone();
            async move { node.propose(e).await }
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown, "{err}");
    c.net.heal();

    // Each was applied once.
    assert_eq!(counter(&node).await.as_deref(), Some("4"));
    assert_eq!(c.write(incr).await.unwrap(), b"5");
    c.wait_converged(&[1, 2, 3], 1, WAIT).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_forwarding_sessions_a_write_whose_answer_is_lost_is_reported_as_unknown() {
    let c = Cluster::start_with(3, crate::factory(), |config| {
        config.forward_in_session = false
    })
    .await
    .unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let incr = KvCmd::Incr { key: "n".into() };
    c.net.lose_replies_from(leader);
    let err = c.node(follower).propose(&incr).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown, "{err}");
    c.net.heal();
    // Delivered once and applied once: never resent.
    assert_eq!(counter(c.node(leader)).await.as_deref(), Some("1"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_be_moved_to_another_address_nor_an_address_given_twice() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let node = c.node(follower).handle().clone();
    let before = node.members().await.unwrap().members;

    // An existing voter "re-added" at another address: refused before it
    // enters the log, whichever node is asked.
    for target in [leader, follower] {
        let err = c
            .node(target)
            .handle()
            .add_voter(follower, "127.0.0.1:9")
            .await
            .unwrap_err();
        match err {
            Error::ConfChangeRejected(raftify_core::Rejection::Invalid(m)) => {
                assert!(m.contains("cannot move"), "{m}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // A new node at an existing member's address: refused too.
    let taken = c.net.addr_of(leader);
    let err = node.add_learner(9, &taken).await.unwrap_err();
    assert!(
        matches!(&err, Error::ConfChangeRejected(raftify_core::Rejection::Invalid(m)) if m.contains("address of member")),
        "{err:?}"
    );
    // Re-adding a member at its own address (a promotion) is fine, and
    // nothing changed.
    let again = node
        .add_voter(follower, &c.net.addr_of(follower))
        .await
        .unwrap();
    assert_eq!(again, before);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_over_the_size_limit_is_refused_everywhere_before_the_log() {
    let c = Cluster::start_with(3, crate::factory(), |cfg| cfg.max_entry_size = 1024)
        .await
        .unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let big = KvCmd::Put {
        key: "big".into(),
        value: "x".repeat(2000),
    };
    for id in [leader, follower] {
        match c.node(id).propose(&big).await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("max_entry_size"), "{m}"),
            other => panic!("node {id}: expected a refusal, got {other:?}"),
        }
    }
    // A forwarded batch is checked on the leader too.
    let outcomes = c
        .node(leader)
        .handle()
        .inbound()
        .propose_batch(vec![big.encode().unwrap()])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[0], Err(e) if e.kind == "invalid_argument"),
        "{outcomes:?}"
    );
    let last = c.node(leader).handle().status().await.unwrap().last_index;
    c.put("small", "ok").await.unwrap();
    assert_eq!(
        c.node(leader).handle().status().await.unwrap().last_index,
        last + 1,
        "only the small entry entered the log"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_terms_and_commits_from_a_peer_neither_stall_nor_kill_the_cluster() {
    use raftify_core::raft::eraftpb::{Message, MessageType};
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let followers: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    let term = c.node(a).handle().state().term;
    let forged = |from: u64, to: u64, term: u64, commit: u64| {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = term;
        m.commit = commit;
        m
    };
    // A voter that does not lead claims a commit far beyond the log: not
    // the leader this node follows, so it is dropped, not fatal.
    let msgs = vec![forged(b, a, term, 1_000_000)];
    c.node(a).handle().inbound().step_from(None, msgs).unwrap();
    // A term near 2^63: every node would follow it, and then refuse each
    // other's next election. Dropped.
    for id in [a, b, leader] {
        let msgs = vec![forged(leader, id, (1 << 63) - 2, 0)];
        c.node(id).handle().inbound().step_from(None, msgs).unwrap();
    }
    c.put("after", "forgery").await.unwrap();
    for id in c.ids() {
        let state = c.node(id).handle().state();
        assert_ne!(state.role, Role::Stopped, "node {id}");
        assert!(
            state.term < 1 << 20,
            "node {id} took a forged term: {state:?}"
        );
    }
    // Elections still work: move leadership, write again.
    c.node(leader).handle().transfer_leader(a).await.unwrap();
    c.put("after", "election").await.unwrap();
    c.wait_converged(&[1, 2, 3], 1, WAIT).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_as_the_leader_dies_follows_the_next_leader() {
    for _ in 0..3 {
        let mut c = start(3).await.unwrap();
        let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
        let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
        c.crash(leader).await;
        // Sent while the follower still names the dead leader: the retries
        // go to whichever node leads next, not to the dead one until the
        // proposal times out.
        let put = KvCmd::Put {
            key: "k".into(),
            value: "after".into(),
        }
        .encode()
        .unwrap();
        let answer = c.node(follower).handle().propose(put).await;
        assert!(answer.is_ok(), "{answer:?}");
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_write_whose_answer_is_lost_is_retried_and_applied_once() {
    let c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let incr = KvCmd::Incr { key: "n".into() }.encode().unwrap();
    let session = c.node(follower).handle().session().await.unwrap();

    // The leader applies the forwarded increment; its answer is lost.
    c.net.lose_replies_from(leader);
    let pending = {
        let incr = incr.clone();
        tokio::spawn(async move { session.propose(incr).await.map(|out| (out, session)) })
    };
    let node = c.node(leader).clone();
    wait_counter(&node, "1").await;
    c.net.heal();
    // The session retries with the same number: the answer of the first
    // application, and no second one.
    let (out, session) = pending.await.unwrap().unwrap();
    assert_eq!(out, b"1");
    assert_eq!(session.propose(incr.clone()).await.unwrap(), b"2");
    assert_eq!(counter(&node).await.as_deref(), Some("2"));

    // A write sent again with a number already applied is answered from
    // the session table; one older than it keeps, or in an unknown
    // session, is refused — never applied again.
    let h = c.node(leader).handle();
    let w = |seq, acked| raftify_core::SessionWrite {
        session: session.id(),
        seq,
        acked,
    };
    assert_eq!(
        h.propose_in_session(w(2, 2), incr.clone()).await.unwrap(),
        b"2"
    );
    assert!(matches!(
        h.propose_in_session(w(1, 2), incr.clone()).await,
        Err(Error::SessionExpired(_))
    ));
    let unknown = raftify_core::SessionWrite {
        session: 999_999,
        seq: 1,
        acked: 1,
    };
    assert!(matches!(
        h.propose_in_session(unknown, incr.clone()).await,
        Err(Error::SessionExpired(_))
    ));
    // Every node holds the same table (it is replicated state) and the
    // same counter.
    c.wait_converged(&[1, 2, 3], 1, WAIT).await.unwrap();
    let value = node.stale_read(|s| s.map.get("n").cloned()).await;
    assert_eq!(value.as_deref(), Some("2"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_snapshots_restarts_and_leader_changes() {
    let mut c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let incr = KvCmd::Incr { key: "n".into() }.encode().unwrap();
    let session = c.node(leader).handle().session().await.unwrap();
    assert_eq!(session.propose(incr.clone()).await.unwrap(), b"1");
    // Every node snapshots (the table goes into the snapshot), and the one
    // that restarts rebuilds it from there.
    c.wait_converged(&[1, 2, 3], 1, WAIT).await.unwrap();
    for id in c.ids() {
        c.node(id).handle().snapshot().await.unwrap();
    }
    let other = *c.ids().iter().find(|id| **id != leader).unwrap();
    c.crash(other).await;
    c.restart(other).await.unwrap();
    c.wait_converged(&[1, 2, 3], 1, WAIT).await.unwrap();
    // The restarted node leads now; the write sent again is answered from
    // its table, not applied a second time.
    c.node(leader)
        .handle()
        .transfer_leader(other)
        .await
        .unwrap();
    let w = raftify_core::SessionWrite {
        session: session.id(),
        seq: 1,
        acked: 1,
    };
    let h = c.node(other).handle();
    assert_eq!(h.propose_in_session(w, incr.clone()).await.unwrap(), b"1");
    assert_eq!(counter(c.node(other)).await.as_deref(), Some("1"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_is_applied_once_per_key_through_lost_answers_and_restarts() {
    let mut c = start(3).await.unwrap();
    let leader = c.wait_leader(&[1, 2, 3], WAIT).await.unwrap();
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let incr = KvCmd::Incr { key: "n".into() }.encode().unwrap();
    let node = c.node(leader).clone();

    // The leader applies the forwarded increment; its answer is lost, and
    // the follower retries it with the same key.
    c.net.lose_replies_from(leader);
    let pending = {
        let (h, incr) = (c.node(follower).handle().clone(), incr.clone());
        tokio::spawn(async move { h.propose_with_key("order-1", incr).await })
    };
    wait_counter(&node, "1").await;
    c.net.heal();
    assert_eq!(pending.await.unwrap().unwrap(), b"1");
    // Sent again: the first answer, nothing applied; another key applies.
    let h = c.node(follower).handle();
    assert_eq!(
        h.propose_with_key("order-1", incr.clone()).await.unwrap(),
        b"1"
    );
    assert_eq!(
        h.propose_with_key("order-2", incr.clone()).await.unwrap(),
        b"2"
    );
    assert!(matches!(
        h.propose_with_key("", incr.clone()).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        h.propose_with_key(&"k".repeat(257), incr.clone()).await,
        Err(Error::InvalidArgument(_))
    ));

    // The keys go into snapshots: a node restarted from one, leading,
    // answers both from its table.
    c.wait_converged(&[1, 2, 3], 1, WAIT).await.unwrap();
    for id in c.ids() {
        c.node(id).handle().snapshot().await.unwrap();
    }
    c.crash(follower).await;
    c.restart(follower).await.unwrap();
    c.wait_converged(&[1, 2, 3], 1, WAIT).await.unwrap();
    c.node(leader)
        .handle()
        .transfer_leader(follower)
        .await
        .unwrap();
    let h = c.node(follower).handle();
    assert_eq!(
        h.propose_with_key("order-2", incr.clone()).await.unwrap(),
        b"2"
    );
    assert_eq!(
        h.propose_with_key("order-1", incr.clone()).await.unwrap(),
        b"1"
    );
    assert_eq!(counter(c.node(follower)).await.as_deref(), Some("2"));
    c.shutdown().await;
}

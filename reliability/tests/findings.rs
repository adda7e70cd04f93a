//! Reproducers of bugs the suite found in other crates, kept as regression
//! tests now that they are fixed.

use raftify_core::{Bootstrap, Config, InProcNetwork, MemStore, Raft, Role};
use raftify_reliability::sm::{ApplyOracle, Cmd, RecKv, SimNode};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Found by the simulation (seed 24 with leader removal on): a leader that
/// applies its own removal (`remove_node(leader)`, e.g. `DELETE
/// /cluster/members/{leader}` in memstore) stays leader — raft-rs 0.7's
/// `post_conf_change` does not step it down — and the next time it advances
/// its commit index raft-rs panics in `maybe_commit`
/// (`prs().get_mut(self_id).unwrap()` on a removed self, raft.rs:943): the
/// raft loop task dies. Meanwhile the remaining voters keep following it.
/// Suspected fix in raftify-core: refuse (or transfer leadership before) a
/// membership change that removes the current leader, or step down right
/// after applying it (as `leave()` already transfers first).
#[test]
fn removing_the_leader_does_not_kill_it_and_the_rest_elect_a_new_one() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let net = InProcNetwork::new(3);
        let members: BTreeMap<u64, String> = (1..=4).map(|id| (id, net.addr_of(id))).collect();
        let oracle = ApplyOracle::new(Default::default());
        let mut nodes = Vec::new();
        for id in 1..=4 {
            let mut c = Config::new(id);
            c.tick_interval = Duration::from_millis(50);
            let n: SimNode = Raft::builder(c, RecKv::new(id, oracle.clone()))
                .storage(Arc::new(MemStore::new()))
                .transport(net.transport(id))
                .bootstrap(Bootstrap::Members(members.clone()))
                .logger(raftify_core::discard_logger())
                .start()
                .await
                .unwrap();
            net.register(id, n.handle().inbound());
            nodes.push(n);
        }
        let mut leader = None;
        for _ in 0..200 {
            leader = nodes.iter().find(|n| n.handle().state().role == Role::Leader).cloned();
            if leader.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let leader = leader.expect("a leader");
        // Writes in flight while the removal commits: entries after the
        // conf change commit once it is applied, through maybe_commit.
        let l = leader.clone();
        let removal = tokio::spawn(async move { l.handle().remove_node(l.handle().id()).await });
        let mut writes = Vec::new();
        for i in 0..20 {
            let l = leader.clone();
            writes.push(tokio::spawn(async move {
                let put = Cmd::Put { key: "k".into(), value: i.to_string() };
                let _ = tokio::time::timeout(Duration::from_secs(2), l.propose(&put)).await;
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = removal.await;
        for w in writes {
            let _ = w.await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let others: Vec<&SimNode> = nodes.iter().filter(|n| n.handle().id() != leader.handle().id()).collect();
        let new_leader = others.iter().find(|n| n.handle().state().role == Role::Leader);
        assert!(
            new_leader.is_some(),
            "no remaining voter leads 5 s after the leader's removal; removed leader state: {:?}, others see leader {:?}",
            leader.handle().state(),
            others.iter().map(|n| n.handle().leader_id()).collect::<Vec<_>>()
        );
    });
}

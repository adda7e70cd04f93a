//! The checker catches what it must: a stale read served by a deposed
//! leader (reads that skip ReadIndex) makes the recorded history
//! non-linearizable, while the same read through ReadIndex is refused.

use raftify_core::{Bootstrap, Config, InProcNetwork, MemStore, Raft, Role};
use raftify_reliability::history::{History, Op, Outcome, Ret};
use raftify_reliability::sm::{ApplyOracle, Cmd, RecKv, SimNode};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

async fn cluster(net: &InProcNetwork) -> Vec<SimNode> {
    let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, net.addr_of(id))).collect();
    let oracle = ApplyOracle::new(Default::default());
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut c = Config::new(id);
        c.tick_interval = Duration::from_millis(50);
        c.read_timeout = Duration::from_secs(2);
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
    nodes
}

async fn leader_among(nodes: &[&SimNode]) -> SimNode {
    for _ in 0..400 {
        if let Some(n) = nodes
            .iter()
            .find(|n| n.handle().state().role == Role::Leader)
        {
            return (*n).clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader elected");
}

async fn write(h: &History, thread: u64, node: &SimNode, value: &str) {
    let id = h.invoke(thread, "x", Op::Write(value.into()));
    let cmd = Cmd::Put {
        key: "x".into(),
        value: value.into(),
    };
    node.propose(&cmd).await.unwrap();
    h.end(id, Outcome::Ok(Ret::WriteOk));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stale_read_on_a_deposed_leader_is_caught_and_readindex_refuses_it() {
    let net = InProcNetwork::new(7);
    let nodes = cluster(&net).await;
    let old = leader_among(&nodes.iter().collect::<Vec<_>>()).await;
    let h = History::new();
    write(&h, 1, &old, "a").await;

    // The old leader is cut off; the others elect a new one and write "b".
    net.isolate(old.handle().id());
    let others: Vec<&SimNode> = nodes
        .iter()
        .filter(|n| n.handle().id() != old.handle().id())
        .collect();
    let new = leader_among(&others).await;
    assert_ne!(new.handle().id(), old.handle().id());
    write(&h, 2, &new, "b").await;

    // Through ReadIndex, the deposed leader refuses to answer.
    let id = h.invoke(3, "x", Op::Read);
    let r = old.linearizable_read(|s| s.map.get("x").cloned()).await;
    assert!(
        r.is_err(),
        "an isolated node must not serve a linearizable read: {r:?}"
    );
    h.end(id, Outcome::Failed);
    let checked = h
        .check()
        .expect("history without stale reads is linearizable");
    assert_eq!(checked.ok, 2);

    // Skipping ReadIndex, it serves "a" after "b" was acknowledged.
    let id = h.invoke(3, "x", Op::Read);
    let stale = old.stale_read(|s| s.map.get("x").cloned()).await;
    assert_eq!(stale.as_deref(), Some("a"));
    h.end(id, Outcome::Ok(Ret::Read(stale)));
    let err = h
        .check()
        .expect_err("the checker must reject the stale read");
    assert!(err.contains("not linearizable"), "{err}");
    println!("checker verdict on the stale read:\n{err}");

    // After healing, a linearizable read on any node sees "b".
    net.heal();
    for _ in 0..100 {
        if let Ok(v) = old.linearizable_read(|s| s.map.get("x").cloned()).await {
            assert_eq!(v.as_deref(), Some("b"));
            for n in &nodes {
                n.handle().shutdown().await;
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the healed node never served a linearizable read");
}

//! `raftify-redis --sharded`, the seed's demo at test scale with the real
//! binary: keys written to one node; two more join with `--join`; `RAFT
//! REBALANCE` answers `+OK` at once and `RAFT REBALANCE STATUS` says
//! `done` when the groups, slots and leaders are spread; meanwhile a
//! cluster client (redis-rs) reading the keys never gets a wrong or
//! missing value; after it, `CLUSTER SLOTS` gives each node a third of the
//! slots to lead and every key reads back through the cluster client.

mod common;

use common::{free_port, show, wait_for, Node, T};
use redis::Commands;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEYS: usize = 600;

fn info_field(node: &Node, field: &str) -> Option<String> {
    let info = show(&node.client().cmd(&["INFO"]));
    info.split("\\r\\n")
        .chain(info.split("\r\n"))
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_string))
}

#[test]
fn keys_on_one_node_spread_over_three_with_a_cluster_client_reading_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let raft1 = format!("127.0.0.1:{}", free_port());
    let n1 = Node::spawn(
        1,
        free_port(),
        &raft1,
        &dir.path().join("n1"),
        &["--sharded"],
    );
    let mut c1 = n1.client();
    wait_for("the first node to serve writes", T, || {
        (show(&c1.cmd(&["SET", "probe", "1"])) == "+OK").then_some(())
    });
    for i in 0..KEYS {
        let (k, v) = (format!("key:{i}"), format!("value:{i}"));
        assert_eq!(show(&c1.cmd(&["SET", &k, &v])), "+OK");
    }
    // A multi-key command over several slots is refused as Redis Cluster
    // refuses it; within one hash tag it works.
    assert!(show(&c1.cmd(&["MSET", "a", "1", "b", "2"])).starts_with("-CROSSSLOT"));
    assert_eq!(show(&c1.cmd(&["MSET", "{t}a", "1", "{t}b", "2"])), "+OK");

    let join = ["--sharded", "--join", raft1.as_str()];
    let raft2 = format!("127.0.0.1:{}", free_port());
    let raft3 = format!("127.0.0.1:{}", free_port());
    let n2 = Node::spawn(2, free_port(), &raft2, &dir.path().join("n2"), &join);
    let n3 = Node::spawn(3, free_port(), &raft3, &dir.path().join("n3"), &join);
    wait_for("both nodes in the placement", T, || {
        (info_field(&n1, "nodes")? == "3").then_some(())
    });

    // A cluster client reads every key over and over while the rebalance
    // runs: a value is right or the read fails (TRYAGAIN, a redirection
    // being followed); never missing, never another key's.
    let urls: Vec<String> = [&n1, &n2, &n3]
        .iter()
        .map(|n| format!("redis://{}/", n.addr()))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, urls) = (stop.clone(), urls.clone());
        std::thread::spawn(move || {
            let client = redis::cluster::ClusterClient::builder(urls)
                .retries(10)
                .build()
                .unwrap();
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut con = client.get_connection().unwrap();
            while !stop.load(Ordering::Relaxed) {
                for i in (0..KEYS).step_by(7) {
                    match con.get::<_, Option<String>>(format!("key:{i}")) {
                        Ok(v) => {
                            assert_eq!(v, Some(format!("value:{i}")), "key:{i}");
                            ok += 1;
                        }
                        Err(_) => failed += 1,
                    }
                }
            }
            (ok, failed)
        })
    };

    assert_eq!(show(&c1.cmd(&["RAFT", "REBALANCE"])), "+OK");
    wait_for("the rebalance to finish", Duration::from_secs(120), || {
        let status = show(&c1.cmd(&["RAFT", "REBALANCE", "STATUS"]));
        let groups = info_field(&n1, "groups")?;
        (status.starts_with("$") && status.contains("done") && groups == "3").then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = reader.join().unwrap();
    assert!(ok > 0, "the reader read nothing ({failed} failures)");

    // CLUSTER SLOTS: three runs, each led by another node, a third each.
    let client = redis::cluster::ClusterClient::builder(urls)
        .retries(10)
        .build()
        .unwrap();
    let mut plain = redis::Client::open(format!("redis://{}/", n2.addr()))
        .unwrap()
        .get_connection()
        .unwrap();
    let slots: Vec<(i64, i64, Vec<redis::Value>)> = wait_for("leaders spread", T, || {
        let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut plain).ok()?;
        let redis::Value::Array(runs) = v else {
            return None;
        };
        let mut out = Vec::new();
        let mut leaders = BTreeSet::new();
        for run in runs {
            let redis::Value::Array(fields) = run else {
                return None;
            };
            let (redis::Value::Int(a), redis::Value::Int(b)) = (&fields[0], &fields[1]) else {
                return None;
            };
            let redis::Value::Array(first) = &fields[2] else {
                return None;
            };
            leaders.insert(format!("{:?}", first[1]));
            out.push((*a, *b, fields[2..].to_vec()));
        }
        (out.len() == 3 && leaders.len() == 3).then_some(out)
    });
    for (a, b, nodes) in &slots {
        let n = b - a + 1;
        assert!((4915..=6007).contains(&n), "a third of 16384 (±10 %): {n}");
        assert_eq!(nodes.len(), 3, "three replicas");
    }
    let mut con = client.get_connection().unwrap();
    for i in 0..KEYS {
        let v: Option<String> = con.get(format!("key:{i}")).unwrap();
        assert_eq!(v, Some(format!("value:{i}")));
    }
    let _: () = con.set("after", "yes").unwrap();
    let after: String = con.get("after").unwrap();
    assert_eq!(after, "yes");
}

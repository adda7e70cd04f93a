//! redis-rs, the Rust Redis client, against raftify-redis: the plain
//! client (commands, a pipeline, an atomic pipeline) on a follower, and
//! the cluster client following a leader that is SIGKILLed.

mod common;

use common::*;
use redis::Commands;

#[test]
fn redis_rs_plain_and_cluster_clients() {
    let mut c = Cluster::start(3, &["--no-sync"]);
    let leader = c.wait_leader();
    let follower = c.follower_of(leader);
    let url = format!("redis://{}/", c.node(follower).addr());
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut con = client.get_connection().expect("connection");
    let _: () = con.set("k", "v").expect("SET");
    let v: String = con.get("k").expect("GET");
    assert_eq!(v, "v");
    let n: i64 = con.incr("n", 5).expect("INCRBY");
    assert_eq!(n, 5);
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("n", 1)
        .incr("n", 1)
        .query(&mut con)
        .expect("MULTI/EXEC");
    assert_eq!((a, b), (6, 7));
    let lens: Vec<i64> = redis::pipe()
        .rpush("l", "a")
        .rpush("l", "b")
        .query(&mut con)
        .expect("pipeline");
    assert_eq!(lens, vec![1, 2]);
    let err = redis::cmd("NOSUCH")
        .query::<()>(&mut con)
        .expect_err("unknown command");
    assert!(err.to_string().contains("unknown command"), "{err}");

    // The cluster client: discovers the leader, follows a new one.
    wait_for("every member in CLUSTER SLOTS", T, || {
        let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).ok()?;
        match slots {
            redis::Value::Array(shards) => match shards.first() {
                Some(redis::Value::Array(s)) if s.len() == 5 => Some(()),
                _ => None,
            },
            _ => None,
        }
    });
    let nodes: Vec<String> = c
        .nodes
        .values()
        .map(|n| format!("redis://{}/", n.addr()))
        .collect();
    let cluster = redis::cluster::ClusterClient::builder(nodes)
        .retries(20)
        .build()
        .expect("cluster client");
    let mut cc = cluster.get_connection().expect("cluster connection");
    let _: () = cc.set("ck", "1").expect("cluster SET");
    // A leadership transfer: writes go on through the same connection.
    let to = c.follower_of(leader);
    let mut admin = c.node(to).client();
    assert_eq!(
        show(&admin.cmd(&["RAFT", "TRANSFER", &to.to_string()])),
        "+OK"
    );
    for _ in 0..20 {
        let _: i64 = cc.incr("ck", 1).expect("cluster INCR across a transfer");
    }
    // A SIGKILLed leader: redis-rs's synchronous cluster client retries a
    // refused connection on the same node (it refreshes its slot map on
    // -MOVED only), so a new connection finds the new leader.
    let now = c.wait_leader();
    c.nodes.get_mut(&now).expect("leader").kill();
    let survivors: Vec<String> = c
        .nodes
        .values()
        .filter(|n| n.child.is_some())
        .map(|n| format!("redis://{}/", n.addr()))
        .collect();
    let after = wait_for(
        "a write through a new cluster connection after the kill",
        T,
        || {
            let cluster = redis::cluster::ClusterClient::builder(survivors.clone())
                .build()
                .ok()?;
            let mut cc = cluster.get_connection().ok()?;
            cc.incr::<_, _, i64>("ck", 1).ok()
        },
    );
    assert!(after >= 22, "{after}");
}

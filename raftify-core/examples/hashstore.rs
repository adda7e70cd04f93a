//! A three-node replicated hash map in one process: write, lose the leader,
//! keep writing, read linearizably from a follower.
//!
//! Run: `cargo run -p raftify-core --example hashstore`

use raftify_core::testkit::{Cluster, KvCmd, WAIT};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let leader = cluster.wait_leader(&[1, 2, 3], WAIT).await?;
    println!("node {leader} leads a 3-node cluster");

    for i in 0..100 {
        cluster
            .put(&format!("key{i}"), &format!("value{i}"))
            .await?;
    }
    println!("100 writes committed and applied");

    cluster.crash(leader).await;
    let survivors = cluster.ids();
    let new_leader = cluster.wait_leader(&survivors, WAIT).await?;
    println!("node {leader} stopped; node {new_leader} leads now");

    let previous = cluster
        .write(KvCmd::Put {
            key: "key0".into(),
            value: "changed".into(),
        })
        .await?;
    println!(
        "key0 overwritten; its previous value was {:?}",
        String::from_utf8_lossy(&previous)
    );

    let follower = *survivors
        .iter()
        .find(|id| **id != new_leader)
        .unwrap_or(&new_leader);
    let value = cluster
        .node(follower)
        .linearizable_read(|s| s.map.get("key0").cloned())
        .await?;
    println!("linearizable read on node {follower}: key0 = {value:?}");

    cluster.restart(leader).await?;
    cluster.wait_converged(&[1, 2, 3], 100, WAIT).await?;
    println!("node {leader} restarted and caught up; all three nodes hold the same 100 keys");
    cluster.shutdown().await;
    Ok(())
}

//! `shards`: a sharded cluster's placement as one of its nodes applied it
//! — nodes (down ones marked), groups with their slot ranges, leaders,
//! replicas, how far each replica's apply lags its leader's commit (in
//! entries), whether it sleeps (an idle group), its log's length and its
//! state's size — and the move in progress.

use crate::live::ConnArgs;
use anyhow::{anyhow, Result};
use raftify_core::{AbstractLogEntry, Payload};
use raftify_shard::{
    gather, rebalance_summary, Change, MetaCommand, MetaEntry, MetaOutcome, Placement, META_GROUP,
    PLACEMENT_QUERY,
};

/// The placement as the node at `addr` applied it.
async fn placement(
    client: &raftify_grpc::RaftClient,
    addr: &str,
    conn: &ConnArgs,
) -> Result<Placement> {
    let raw = client
        .for_group(META_GROUP)
        .read(PLACEMENT_QUERY.to_vec())
        .await
        .map_err(|e| conn.explain(e, addr, "shards (is it a sharded node?)"))?;
    serde_json::from_slice(&raw)
        .map_err(|e| anyhow!("{addr} answered a placement that does not parse: {e}"))
}

/// `rebalance`: asks the cluster for a rebalance (committed to the
/// placement; the metadata leader carries it out), or with `status_only`
/// says where one stands.
pub async fn rebalance(addr: &str, conn: &ConnArgs, status_only: bool) -> Result<()> {
    let client = conn.connect(addr).await?;
    if status_only {
        let p = placement(&client, addr, conn).await?;
        println!("{}", rebalance_summary(&p));
        return Ok(());
    }
    let ask = MetaEntry::Change(MetaCommand {
        expect_version: None,
        change: Change::AskRebalance,
    })
    .encode()
    .map_err(|e| anyhow!("{e}"))?;
    let out = client
        .for_group(META_GROUP)
        .propose(ask)
        .await
        .map_err(|e| conn.explain(e, addr, "rebalance (is it a sharded node?)"))?;
    match MetaOutcome::decode(&out).map_err(|e| anyhow!("{addr}: {e}"))? {
        MetaOutcome::Change(Ok(version)) => {
            println!("requested (placement version {version}); `raftify-cli rebalance {addr} --status` follows it");
            Ok(())
        }
        MetaOutcome::Change(Err(e)) => Err(anyhow!("the placement refused it: {e}")),
        other => Err(anyhow!("{addr} answered {other:?}")),
    }
}

/// `shards`.
pub async fn shards(addr: &str, conn: &ConnArgs, json_out: bool) -> Result<()> {
    let client = conn.connect(addr).await?;
    let p = placement(&client, addr, conn).await?;
    let report = gather(&client, &p).await;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "placement version {}: {} nodes, {} groups, {} replicas each, move: {}{}",
        report.version,
        report.nodes.len(),
        report.groups.len(),
        report.settings.replicas,
        report
            .moving
            .map(|m| m.to_string())
            .unwrap_or_else(|| "none".into()),
        if report.purging.is_empty() {
            String::new()
        } else {
            format!(", {} moved ranges to purge", report.purging.len())
        }
    );
    if let Some(r) = &report.rebalance {
        println!("rebalance: {r}");
    }
    println!();
    println!(
        "{:>5}  {:<22} {:<22} {:>11}",
        "node", "raft", "client", "slots led"
    );
    for n in &report.nodes {
        let leaving = match (n.leaving, n.down) {
            (true, true) => " (leaving, down)",
            (true, false) => " (leaving)",
            (false, true) => " (down)",
            (false, false) => "",
        };
        println!(
            "{:>5}  {:<22} {:<22} {:>11}{leaving}",
            n.id, n.raft_addr, n.client_addr, n.slots_led
        );
    }
    println!();
    println!(
        "{:>5}  {:>6}  {:<24} {:>6} {:>10}  replicas (lag in entries; * learner, z asleep)",
        "group", "slots", "ranges", "leader", "size"
    );
    for g in &report.groups {
        let reps: Vec<String> = g
            .replicas
            .iter()
            .map(|r| {
                let star = if r.learner { "*" } else { "" };
                let z = if r.asleep == Some(true) { " z" } else { "" };
                match r.lag {
                    Some(lag) => format!("{}{star} ({lag}{z})", r.node),
                    None => format!("{}{star} (down?)", r.node),
                }
            })
            .collect();
        let size = g
            .leader_replica()
            .and_then(|r| r.state_bytes)
            .map_or_else(|| "-".to_string(), human_bytes);
        println!(
            "{:>5}  {:>6}  {:<24} {:>6} {size:>10}  {}",
            g.id,
            g.slots,
            g.ranges.join(","),
            g.leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
            reps.join(" ")
        );
    }
    Ok(())
}

/// `bytes` as B, KiB, MiB or GiB with one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1023), "1023 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(super::human_bytes(3 << 40), "3072.0 GiB");
    }
}

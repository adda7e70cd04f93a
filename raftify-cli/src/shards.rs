//! `shards`: a sharded cluster's placement as one of its nodes applied it
//! — nodes (down ones marked), groups with their slot ranges, leaders,
//! replicas, how far each replica's apply lags its leader's commit (in
//! entries), whether it sleeps (an idle group), its log's length and its
//! state's size — and the move in progress.

use crate::live::ConnArgs;
use anyhow::{anyhow, Result};
use raftify_shard::{NodeId, Placement, SlotRange, META_GROUP, PLACEMENT_QUERY};
use serde_json::json;
use std::collections::BTreeMap;

/// One replica as its node reports it.
struct Replica {
    node: NodeId,
    applied: Option<u64>,
    commit: Option<u64>,
    asleep: Option<bool>,
    log_entries: Option<u64>,
    state_bytes: Option<u64>,
}

/// `shards`.
pub async fn shards(addr: &str, conn: &ConnArgs, json_out: bool) -> Result<()> {
    let client = conn.connect(addr).await?;
    let meta = client.for_group(META_GROUP);
    let raw = meta
        .read(PLACEMENT_QUERY.to_vec())
        .await
        .map_err(|e| conn.explain(e, addr, "shards (is it a sharded node?)"))?;
    let p: Placement = serde_json::from_slice(&raw)
        .map_err(|e| anyhow!("{addr} answered a placement that does not parse: {e}"))?;
    let ranges = p.ranges();
    let mut groups = Vec::new();
    for (&g, info) in p.groups() {
        let c = client.for_group(g);
        let leader = c.leader().await.ok().flatten().map(|l| l.id);
        let mut replicas = Vec::new();
        for &n in info.replicas.iter().chain(&info.learners) {
            let status = match p.nodes().get(&n) {
                Some(node) => c.status(&node.raft_addr).await.ok(),
                None => None,
            };
            replicas.push(Replica {
                node: n,
                applied: status.as_ref().map(|s| s.applied_index),
                commit: status.as_ref().map(|s| s.commit_index),
                asleep: status.as_ref().map(|s| s.hibernating),
                log_entries: status
                    .as_ref()
                    .map(|s| (s.last_index + 1).saturating_sub(s.first_index)),
                state_bytes: status.as_ref().and_then(|s| s.state_bytes),
            });
        }
        let own: Vec<SlotRange> = ranges
            .iter()
            .filter(|(_, o)| *o == g)
            .map(|(r, _)| *r)
            .collect();
        groups.push((g, own, leader, replicas, info.learners.clone()));
    }
    let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (_, own, leader, _, _) in &groups {
        if let Some(l) = leader {
            *leads.entry(*l).or_default() += own.iter().map(|r| r.len()).sum::<usize>();
        }
    }
    if json_out {
        let out = json!({
            "version": p.version(),
            "settings": p.settings(),
            "moving": p.moving(),
            "purging": p.purging(),
            "nodes": p.nodes().iter().map(|(id, n)| json!({
                "id": id,
                "raft_addr": n.raft_addr,
                "client_addr": n.client_addr,
                "leaving": n.leaving,
                "down": n.down,
                "slots_led": leads.get(id).copied().unwrap_or(0),
            })).collect::<Vec<_>>(),
            "groups": groups.iter().map(|(g, own, leader, replicas, learners)| {
                let leader_commit = replicas
                    .iter()
                    .find(|r| Some(r.node) == *leader)
                    .and_then(|r| r.commit);
                json!({
                    "id": g,
                    "slots": own.iter().map(|r| r.len()).sum::<usize>(),
                    "ranges": own.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                    "leader": leader,
                    "replicas": replicas.iter().map(|r| json!({
                        "node": r.node,
                        "learner": learners.contains(&r.node),
                        "applied_index": r.applied,
                        "lag": leader_commit.zip(r.applied).map(|(c, a)| c.saturating_sub(a)),
                        "asleep": r.asleep,
                        "log_entries": r.log_entries,
                        "state_bytes": r.state_bytes,
                    })).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "placement version {}: {} nodes, {} groups, {} replicas each, move: {}{}",
        p.version(),
        p.nodes().len(),
        p.groups().len(),
        p.settings().replicas,
        p.moving()
            .map(|m| m.to_string())
            .unwrap_or_else(|| "none".into()),
        if p.purging().is_empty() {
            String::new()
        } else {
            format!(", {} moved ranges to purge", p.purging().len())
        }
    );
    println!();
    println!(
        "{:>5}  {:<22} {:<22} {:>11}",
        "node", "raft", "client", "slots led"
    );
    for (id, n) in p.nodes() {
        let leaving = match (n.leaving, n.down) {
            (true, true) => " (leaving, down)",
            (true, false) => " (leaving)",
            (false, true) => " (down)",
            (false, false) => "",
        };
        println!(
            "{id:>5}  {:<22} {:<22} {:>11}{leaving}",
            n.raft_addr,
            n.client_addr,
            leads.get(id).copied().unwrap_or(0)
        );
    }
    println!();
    println!(
        "{:>5}  {:>6}  {:<24} {:>6} {:>10}  replicas (lag in entries; * learner, z asleep)",
        "group", "slots", "ranges", "leader", "size"
    );
    for (g, own, leader, replicas, learners) in &groups {
        let leader_commit = replicas
            .iter()
            .find(|r| Some(r.node) == *leader)
            .and_then(|r| r.commit);
        let reps: Vec<String> = replicas
            .iter()
            .map(|r| {
                let star = if learners.contains(&r.node) { "*" } else { "" };
                let z = if r.asleep == Some(true) { " z" } else { "" };
                match leader_commit.zip(r.applied) {
                    Some((c, a)) => format!("{}{star} ({}{z})", r.node, c.saturating_sub(a)),
                    None => format!("{}{star} (down?)", r.node),
                }
            })
            .collect();
        let ranges: Vec<String> = own.iter().map(|r| r.to_string()).collect();
        let size = replicas
            .iter()
            .find(|r| Some(r.node) == *leader)
            .and_then(|r| r.state_bytes)
            .map_or_else(|| "-".to_string(), human_bytes);
        println!(
            "{g:>5}  {:>6}  {:<24} {:>6} {size:>10}  {}",
            own.iter().map(|r| r.len()).sum::<usize>(),
            ranges.join(","),
            leader.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
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

//! The background work of a sharded node's replicas: the cache's expiry
//! loop for each, the evictor of `--maxmemory` for each (acting while this
//! node leads the group), and the node's memory in use (what `INFO memory`
//! reports and what `-OOM` is judged against).
//!
//! `--maxmemory` is per node, as in Redis Cluster. A node holds replicas
//! of several groups, and each group's leader evicts from its group for
//! every replica at once, so the limit is turned into a share per group
//! that every node computes alike from the placement ([`group_budget`]):
//! on each node, `--maxmemory` shared among the groups it hosts by their
//! slots, and for a group the smallest of its nodes' shares — so no
//! node's groups may hold more than `--maxmemory` together.

use crate::eviction::Budget;
use crate::server::Node;
use crate::sharded::Shard;
use raftify_cache::eviction::Policy;
use raftify_shard::{GroupId, Placement};
use slog::Logger;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the replicas are checked (new ones given their loops) and,
/// with a memory limit, the node's memory summed.
const TICK: Duration = Duration::from_millis(100);

/// The memory `group` may hold on each of its replicas under a per-node
/// limit of `max`: on each node hosting it (and not down), the node's
/// limit shared among the groups it hosts by their slots — `max × slots /
/// (slots of the groups on that node)` — and of those the smallest, so
/// that no node's groups together may hold more than `max`, however
/// replicas are spread (a node just joined, one down whose replicas went
/// elsewhere). `None` (do not evict) for a group that owns no slots, that
/// moves slots in or out, or whose moved-out keys await their purge: its
/// data is then briefly in two places, and evicting against a share that
/// is about to change would drop keys the move is carrying.
pub fn group_budget(p: &Placement, group: GroupId, max: u64) -> Option<u64> {
    budget_with(p, &hosted_slots(p), group, max)
}

/// Slots of the groups each node hosts.
fn hosted_slots(p: &Placement) -> BTreeMap<u64, u128> {
    let counts = p.slot_counts();
    let mut hosted: BTreeMap<u64, u128> = BTreeMap::new();
    for (id, g) in p.groups() {
        let slots = counts.get(id).copied().unwrap_or(0) as u128;
        for &n in &g.replicas {
            *hosted.entry(n).or_default() += slots;
        }
    }
    hosted
}

/// [`group_budget`] given [`hosted_slots`].
fn budget_with(
    p: &Placement,
    hosted: &BTreeMap<u64, u128>,
    group: GroupId,
    max: u64,
) -> Option<u64> {
    let info = p.groups().get(&group)?;
    let slots = p.slot_count(group) as u128;
    let busy = p.moving().is_some_and(|m| m.from == group || m.to == group)
        || p.purging().iter().any(|m| m.from == group);
    if slots == 0 || busy {
        return None;
    }
    let share = info
        .replicas
        .iter()
        .filter(|n| p.nodes().get(n).is_some_and(|i| !i.down))
        .map(|n| u128::from(max) * slots / hosted.get(n).copied().unwrap_or(0).max(1))
        .min()?;
    Some(u64::try_from(share).unwrap_or(u64::MAX))
}

/// [`group_budget`] for every group, computed once per placement version
/// (each evictor asks every 100 ms; the placement changes rarely).
#[derive(Default)]
pub struct Budgets {
    /// The placement version they were computed at, and the budgets.
    cached: std::sync::Mutex<(Option<u64>, BTreeMap<GroupId, u64>)>,
}

impl Budgets {
    /// `group`'s budget under `p`.
    pub fn get(&self, p: &Placement, group: GroupId, max: u64) -> Option<u64> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != Some(p.version()) {
            let hosted = hosted_slots(p);
            let all = p
                .groups()
                .keys()
                .filter_map(|&g| budget_with(p, &hosted, g, max).map(|b| (g, b)))
                .collect();
            *cached = (Some(p.version()), all);
        }
        cached.1.get(&group).copied()
    }
}

/// Runs until aborted: each replica this node hosts gets the expiry loop
/// and, with `limit` (`--maxmemory-policy`, `--maxmemory`; not
/// `noeviction`), an evictor, for as long as it is hosted; with a limit,
/// [`Shard::used_memory`] is kept current.
pub async fn run(shard: Arc<Shard>, limit: Option<(Policy, u64)>, logger: Logger) {
    let limit = limit.filter(|&(_, max)| max > 0);
    let mut running: BTreeMap<GroupId, Vec<tokio::task::JoinHandle<()>>> = BTreeMap::new();
    let budgets = Arc::new(Budgets::default());
    loop {
        let now: BTreeMap<GroupId, Node> = shard.host.replicas().await.into_iter().collect();
        running.retain(|g, tasks| {
            let keep = now.contains_key(g) && !tasks.iter().any(|t| t.is_finished());
            if !keep {
                tasks.iter().for_each(|t| t.abort());
            }
            keep
        });
        for (&g, node) in &now {
            running.entry(g).or_insert_with(|| {
                let mut tasks = vec![tokio::spawn(raftify_cache::expiry::run(
                    node.clone(),
                    logger.clone(),
                ))];
                if let Some((policy, max)) = limit.filter(|(p, _)| *p != Policy::NoEviction) {
                    let placement = shard.host.placement();
                    let budgets = budgets.clone();
                    let budget: Budget = Arc::new(move || budgets.get(&placement.borrow(), g, max));
                    tasks.push(tokio::spawn(crate::eviction::run(
                        node.clone(),
                        policy,
                        budget,
                        logger.clone(),
                    )));
                }
                tasks
            });
        }
        if limit.is_some() {
            shard.used.store(shard.memory().await, Ordering::Relaxed);
        }
        let pause = if limit.is_some() { TICK } else { TICK * 5 };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftify_shard::{Change, NodeInfo, Settings, SlotMove, SlotRange};
    use std::collections::BTreeSet;

    fn node(n: u64) -> NodeInfo {
        NodeInfo {
            raft_addr: format!("127.0.0.1:{n}"),
            client_addr: format!("127.0.0.1:{}", n + 100),
            leaving: false,
            down: false,
        }
    }

    #[test]
    fn each_group_gets_its_share_of_the_clusters_memory_by_slots() {
        let mut p = Placement::default();
        let boot = Change::Bootstrap {
            node: 1,
            info: node(1),
            settings: Settings::default(),
        };
        p.apply(None, boot).unwrap();
        // One node, one group with every slot: the whole limit.
        let g1 = *p.groups().keys().next().unwrap();
        assert_eq!(group_budget(&p, g1, 1000), Some(1000));
        for n in [2, 3] {
            p.apply(
                None,
                Change::AddNode {
                    node: n,
                    info: node(n),
                },
            )
            .unwrap();
        }
        let all = BTreeSet::from([1, 2, 3]);
        let set = Change::SetReplicas {
            group: g1,
            replicas: all.clone(),
        };
        p.apply(None, set).unwrap();
        // Three nodes, one group on all three: each replica may hold 1000.
        assert_eq!(group_budget(&p, g1, 1000), Some(1000));
        let g2 = p.next_group();
        let create = Change::CreateGroup {
            group: g2,
            replicas: all,
        };
        p.apply(None, create).unwrap();
        // A group with no slots is not evicted from; nor are groups moving.
        assert_eq!(group_budget(&p, g2, 1000), None);
        let m = SlotMove {
            slots: SlotRange::new(8192, 16383).unwrap(),
            from: g1,
            to: g2,
        };
        p.apply(None, Change::BeginMove(m)).unwrap();
        assert_eq!(group_budget(&p, g1, 1000), None);
        p.apply(None, Change::CommitMove(m)).unwrap();
        assert_eq!(group_budget(&p, g1, 1000), None, "awaiting its purge");
        assert_eq!(group_budget(&p, g2, 1000), Some(500));
        p.apply(None, Change::Purged(m)).unwrap();
        assert_eq!(group_budget(&p, g1, 1000), Some(500));
        assert_eq!(group_budget(&p, 99, 1000), None);
        // A node hosting fewer groups does not raise a group's share above
        // what its busiest node can give: node 3 now hosts only g2, nodes
        // 1 and 2 both groups.
        let set = Change::SetReplicas {
            group: g1,
            replicas: BTreeSet::from([1, 2]),
        };
        p.apply(None, set).unwrap();
        assert_eq!(group_budget(&p, g2, 1000), Some(500));
        // A node down is not counted: node 1 down leaves g1 and g2 on node
        // 2 (both) and g2 on node 3.
        p.apply(
            None,
            Change::SetDown {
                node: 1,
                down: true,
            },
        )
        .unwrap();
        assert_eq!(group_budget(&p, g1, 1000), Some(500));
        let budgets = Budgets::default();
        assert_eq!(budgets.get(&p, g2, 1000), Some(500));
        assert_eq!(budgets.get(&p, 99, 1000), None);
    }
}

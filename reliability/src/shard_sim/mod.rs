//! The seeded simulation's multi-group mode: a sharded cluster of three
//! nodes on one [`InProcNetwork`] (every group's messages carry their
//! group, and a fault strikes a node's every group), in a paused-clock
//! tokio runtime, under a seeded nemesis.
//!
//! Three or four nodes; each runs a replica of the metadata group (raftify-shard's real
//! [`MetaStore`]: the placement) and replicas of the data groups the
//! placement gives it (raftify-cache's real [`CacheState`]), started and
//! stopped as the placement changes, as a sharded host does. The real
//! planner ([`plan`]) picks each step, the real executor
//! ([`Rebalancing::execute`]) and the cache's real [`CacheSlotMover`]
//! carry it out from whichever node leads the metadata group — a step is
//! cut short when that node crashes or stops leading — while the cluster is told now and
//! then to aim for a different number of groups per node, so that group 1
//! is split into several, slot ranges move between groups and groups
//! empty and go, throughout the run. Clients write and read registers
//! (`SET`/`GET`), routed by their node's placement as a cluster client
//! and the sharded server route them (`MOVED` followed to a node hosting
//! the group, `ASK` to the move's target once it holds the slot,
//! `TRYAGAIN` retried).
//!
//! Checked:
//! * every placement any node applies (each version, as applied:
//!   `MetaStore::on_placement`) passes [`Placement::check`] (every slot
//!   owned by exactly one existing group, ...) and is the same on every
//!   node at the same version;
//! * the history is linearizable per key, final reads of every key
//!   included (no acknowledged write lost, no stale read across a move);
//! * at the end (faults healed, the rebalance settled): every key lives
//!   in exactly the group that owns its slot.

mod client;
mod driver;
mod nemesis;
mod node;

use crate::history::{Checked, History, Outcome};
use crate::rng::SimRng;
use client::keys;
use node::{boot, crash, lock, meta_leader, World};
use raftify_cache::{CacheEntry, CacheState};
use raftify_core::{InProcNetwork, Raft};
use raftify_shard::{
    key_slot, Change, GroupId, MetaEntry, MetaStore, NodeInfo, Settings, META_GROUP,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(super) type Data = Raft<CacheEntry, CacheState>;
pub(super) type Meta = Raft<MetaEntry, MetaStore>;

/// Replicas per data group.
pub(super) const REPLICAS: usize = 3;
/// How long one client operation may take.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one rebalance step may run before it is cut short (longer
/// than the executor's own wait for a new replica, 60 s, so that its
/// handling of a replica that never catches up runs).
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(75);
/// How long the rebalance may take to settle once faults stop.
pub(super) const SETTLE: Duration = Duration::from_secs(180);

/// What a run does; derived from the seed by [`ShardSimOptions::from_seed`].
#[derive(Debug, Clone)]
pub struct ShardSimOptions {
    /// The seed every random choice comes from.
    pub seed: u64,
    /// How long (cluster time) clients, moves and faults run.
    pub fault_time: Duration,
    /// Concurrent clients.
    pub clients: u64,
    /// Registers (keys) the clients use, spread over the slots.
    pub keys: u64,
    /// Slots a move copies per round ([`CacheSlotMover::chunk`]).
    pub chunk: u16,
    /// Snapshot every N applied entries.
    pub snapshot_threshold: u64,
    /// Every message's delay, when set (a slower network keeps each step
    /// of a move open longer for clients to run into).
    pub latency: Option<Duration>,
    /// Nodes (3: every node hosts every group; 4: groups have 3 of them,
    /// so replicas are added and removed as the rebalancer spreads them).
    pub nodes: u64,
}

impl ShardSimOptions {
    /// The options seed `seed` stands for.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = SimRng::new(seed ^ 0x5AAD_0001);
        ShardSimOptions {
            seed,
            fault_time: Duration::from_millis(r.range(8_000, 16_000)),
            clients: r.range(2, 4),
            keys: r.range(4, 10),
            chunk: [256, 512, 1024, 4096][r.below(4) as usize],
            snapshot_threshold: r.range(20, 80),
            latency: r.chance(0.8).then(|| Duration::from_millis(r.range(2, 12))),
            // Drawn last: earlier draws keep their values.
            nodes: r.range(3, 4),
        }
    }
}

/// The outcome and figures of one run.
#[derive(Debug, Clone)]
pub struct ShardRunReport {
    /// The options (and seed) of the run.
    pub options: ShardSimOptions,
    /// History figures.
    pub ops: Checked,
    /// The linearizability verdict.
    pub linearizable: Result<(), String>,
    /// Every violation seen (placement, ownership, settling, panics).
    pub violations: Vec<String>,
    /// Rebalance steps carried out, by kind.
    pub steps: BTreeMap<&'static str, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Placement versions applied (seen by any node).
    pub versions: u64,
    /// Data groups most at once, and at the end.
    pub groups: (usize, usize),
    /// Cluster time the run took.
    pub virtual_time: Duration,
}

impl ShardRunReport {
    /// Why the run failed (empty: it passed).
    pub fn failed(&self) -> Vec<String> {
        let mut f: Vec<String> = self.violations.clone();
        if let Err(e) = &self.linearizable {
            f.push(format!("[linearizability] {e}"));
        }
        f
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "seed {} nodes {} clients {} keys {} chunk {} latency {:?}: ops ok {} failed {} unknown {} (inconclusive keys {:?}), placement versions {}, groups max {} end {}, steps {:?}, faults {:?}, {:?} cluster time, {}",
            self.options.seed,
            self.options.nodes,
            self.options.clients,
            self.options.keys,
            self.options.chunk,
            self.options.latency,
            self.ops.ok,
            self.ops.failed,
            self.ops.unknown,
            self.ops.inconclusive,
            self.versions,
            self.groups.0,
            self.groups.1,
            self.steps,
            self.faults,
            self.virtual_time,
            if self.failed().is_empty() { "ok" } else { "FAILED" }
        )
    }
}

/// Bootstraps the placement on the metadata leader and records the other
/// nodes in it.
async fn enter_all(w: &Arc<World>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut node = 1;
    while node <= w.opts.nodes {
        if Instant::now() > deadline {
            return Err(format!("node {node} did not enter the placement"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(v) = meta_leader(w) else {
            continue;
        };
        let info = NodeInfo {
            raft_addr: w.net.addr_of(node),
            client_addr: format!("client-{node}:6379"),
            leaving: false,
            down: false,
        };
        let entered = {
            let p = v.placement.borrow();
            p.is_bootstrapped() && p.nodes().contains_key(&node)
        };
        if entered {
            // An earlier proposal whose answer was lost took effect.
            node += 1;
            continue;
        }
        let change = if node == 1 {
            Change::Bootstrap {
                node,
                info,
                settings: Settings {
                    replicas: REPLICAS,
                    groups_per_node: 1,
                    max_group_bytes: 0,
                },
            }
        } else {
            Change::AddNode { node, info }
        };
        let net = w.net.transport_in(META_GROUP, v.id);
        if v.rebalancing(&net).change(None, change).await.is_ok() {
            node += 1;
        }
    }
    Ok(())
}

/// Runs the rebalance until nothing is left to do; false if it does not
/// settle within [`SETTLE`].
async fn settle(w: &Arc<World>) -> bool {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if driver::drive_once(w).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Every key held by each group's leader lies in a slot the group owns.
async fn check_ownership(w: &World) -> Result<(), String> {
    let v = meta_leader(w).ok_or("no metadata leader at the end")?;
    let p = v.placement.borrow().clone();
    for &g in p.groups().keys() {
        let mut done = false;
        for id in w.running() {
            let Some(r) = w.view(id).and_then(|v| v.data.get(&g).cloned()) else {
                continue;
            };
            let read = r.linearizable_read(|sm| {
                sm.keyspace()
                    .iter()
                    .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                    .collect::<Vec<_>>()
            });
            let Ok(Ok(held)) = tokio::time::timeout(OP_TIMEOUT, read).await else {
                continue;
            };
            for k in held {
                let owner = p.owner(key_slot(k.as_bytes()));
                if owner != g {
                    return Err(format!(
                        "key {k} is in group {g}, but its slot belongs to group {owner}"
                    ));
                }
            }
            done = true;
            break;
        }
        if !done {
            return Err(format!("group {g} could not be read at the end"));
        }
    }
    Ok(())
}

/// Runs one seed with the options it stands for.
pub fn run_seed(seed: u64) -> ShardRunReport {
    run(ShardSimOptions::from_seed(seed))
}

/// Runs one simulation on a fresh paused current-thread runtime.
pub fn run(opts: ShardSimOptions) -> ShardRunReport {
    crate::sim::install_panic_counter();
    crate::sim::paused_runtime().block_on(run_async(opts))
}

async fn run_async(opts: ShardSimOptions) -> ShardRunReport {
    let panics = crate::sim::panics();
    let started = Instant::now();
    let mut rng = SimRng::new(opts.seed);
    let w = Arc::new(World {
        net: InProcNetwork::new(rng.next_u64()),
        nodes: Mutex::new(BTreeMap::new()),
        life: (1..=opts.nodes)
            .map(|id| (id, tokio::sync::Mutex::new(())))
            .collect(),
        history: History::new(),
        violations: Mutex::new(Vec::new()),
        versions: Mutex::new(BTreeMap::new()),
        steps: Mutex::new(BTreeMap::new()),
        faults: Mutex::new(BTreeMap::new()),
        most_groups: Mutex::new(0),
        opts: opts.clone(),
    });
    w.heal();
    for id in 1..=opts.nodes {
        boot(&w, id).await;
    }
    if let Err(e) = enter_all(&w).await {
        w.violation(format!("[startup] {e}"));
    }
    let (stop, churn) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let stop_driver = Arc::new(AtomicBool::new(false));
    let driver = tokio::spawn(driver::driver(
        w.clone(),
        rng.fork(),
        churn.clone(),
        stop_driver.clone(),
    ));
    let clients: Vec<JoinHandle<()>> = (1..=opts.clients)
        .map(|cid| {
            tokio::spawn(client::client(
                w.clone(),
                cid,
                rng.fork(),
                stop.clone(),
                started,
            ))
        })
        .collect();
    nemesis::nemesis(w.clone(), rng.fork(), Instant::now() + opts.fault_time).await;
    churn.store(false, Ordering::Release);
    stop.store(true, Ordering::Release);
    for c in clients {
        let _ = c.await;
    }
    stop_driver.store(true, Ordering::Release);
    let _ = driver.await;
    w.heal();
    if !settle(&w).await {
        w.violation("[liveness] the rebalance did not settle after the faults".into());
    }
    // Final reads of every key (through the routed path), checked with
    // the rest of the history.
    for key in keys(opts.keys) {
        let mut read = false;
        for attempt in 0..20 {
            // Through the metadata leader (a node that left has a stale
            // placement for good).
            let Some(v) = meta_leader(&w) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let thread = 9_000_000 + attempt;
            read = matches!(
                client::operate(&w, &v, thread, &key, None, started).await,
                Outcome::Ok(_)
            );
            if read {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !read {
            w.violation(format!("[liveness] key {key} could not be read at the end"));
        }
    }
    if let Err(e) = check_ownership(&w).await {
        w.violation(format!("[ownership] {e}"));
    }
    let groups_end = meta_leader(&w).map_or(0, |v| v.placement.borrow().groups().len());
    for id in 1..=opts.nodes {
        crash(&w, id).await;
    }
    let checked = w.history.check();
    let (linearizable, ops) = match checked {
        Ok(c) => (Ok(()), c),
        Err(e) => (Err(e), w.history.stats()),
    };
    let new_panics = crate::sim::panics() - panics;
    if new_panics > 0 {
        w.violation(format!("[panic] {new_panics} panics in node tasks"));
    }
    let most = *lock(&w.most_groups);
    let versions = lock(&w.versions).len() as u64;
    let report = ShardRunReport {
        options: opts,
        ops,
        linearizable,
        violations: lock(&w.violations).clone(),
        steps: lock(&w.steps).clone(),
        faults: lock(&w.faults).clone(),
        versions,
        groups: (most, groups_end),
        virtual_time: started.elapsed(),
    };
    report
}

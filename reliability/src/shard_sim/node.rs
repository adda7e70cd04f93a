//! The simulated nodes: each one's metadata replica, the data replicas
//! its placement gives it (started and stopped as the placement changes,
//! every placement checked), crashes and restarts.

use super::*;
use raftify_core::{Bootstrap, Config, InProcNetwork, InProcTransport, LogStore, MemStore, Role};
use raftify_shard::{MetaStore, Placement, Rebalancing, META_GROUP};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// One node's process: its replicas while it runs, its stores always.
#[derive(Default)]
pub(super) struct Node {
    pub(super) meta: Option<(Meta, watch::Receiver<Placement>)>,
    pub(super) data: BTreeMap<GroupId, Data>,
    pub(super) stores: BTreeMap<GroupId, Arc<MemStore>>,
    /// The placement watcher (starts and stops replicas).
    pub(super) watcher: Option<JoinHandle<()>>,
    /// The rebalance step this node runs, if any (cut short by a crash).
    pub(super) driving: Option<AbortHandle>,
}

/// What a client or the driver uses of a running node.
#[derive(Clone)]
pub(super) struct View {
    pub(super) id: u64,
    pub(super) meta: Meta,
    pub(super) placement: watch::Receiver<Placement>,
    pub(super) data: BTreeMap<GroupId, Data>,
}

impl View {
    /// What rebalance steps and placement changes act through on this
    /// node (`net`: its transport, [`InProcNetwork::transport_in`]).
    pub(super) fn rebalancing<'a>(&'a self, net: &'a InProcTransport) -> Rebalancing<'a> {
        Rebalancing {
            meta: &self.meta,
            placement: &self.placement,
            net,
        }
    }
}

pub(super) struct World {
    pub(super) opts: ShardSimOptions,
    pub(super) net: InProcNetwork,
    pub(super) nodes: Mutex<BTreeMap<u64, Node>>,
    /// Held while a node starts, stops or changes its replicas.
    pub(super) life: BTreeMap<u64, tokio::sync::Mutex<()>>,
    pub(super) history: History,
    pub(super) violations: Mutex<Vec<String>>,
    /// Each placement version applied, as JSON.
    pub(super) versions: Mutex<BTreeMap<u64, String>>,
    pub(super) steps: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) faults: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) most_groups: Mutex<usize>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    /// Removes the nemesis's faults, keeping the run's latency.
    pub(super) fn heal(&self) {
        self.net.heal();
        self.net.set_delay(self.opts.latency);
    }

    pub(super) fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    pub(super) fn count(map: &Mutex<BTreeMap<&'static str, u64>>, kind: &'static str) {
        *lock(map).entry(kind).or_default() += 1;
    }

    pub(super) fn view(&self, id: u64) -> Option<View> {
        let nodes = lock(&self.nodes);
        let n = nodes.get(&id)?;
        let (meta, placement) = n.meta.clone()?;
        Some(View {
            id,
            meta,
            placement,
            data: n.data.clone(),
        })
    }

    pub(super) fn running(&self) -> Vec<u64> {
        lock(&self.nodes)
            .iter()
            .filter(|(_, n)| n.meta.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    pub(super) fn config(&self, id: u64, group: GroupId) -> Config {
        let mut c = crate::sim::timing(id);
        c.snapshot_threshold = self.opts.snapshot_threshold;
        c.snapshot_log_retention = 4;
        c.election_seed = Some(self.opts.seed ^ group.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        c
    }

    pub(super) fn addrs(&self, ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, String> {
        ids.into_iter().map(|i| (i, self.net.addr_of(i))).collect()
    }
}

/// Starts node `id`: its metadata replica (over its store), then, as its
/// placement says, its data replicas; whether it runs.
pub(super) async fn boot(w: &Arc<World>, id: u64) -> bool {
    let _life = w.life[&id].lock().await;
    let store = {
        let mut nodes = lock(&w.nodes);
        let n = nodes.entry(id).or_default();
        n.stores
            .entry(META_GROUP)
            .or_insert_with(|| Arc::new(MemStore::new()))
            .clone()
    };
    let mut sm = MetaStore::new();
    // Every version this node applies is checked as it is applied (the
    // watch below shows only the latest). Weak: the store lives in the
    // world's nodes.
    let world = Arc::downgrade(w);
    sm.on_placement(Arc::new(move |p: &Placement| {
        if let Some(w) = world.upgrade() {
            check_placement(&w, id, p);
        }
    }));
    let placement = sm.subscribe();
    let started = Raft::builder(w.config(id, META_GROUP), sm)
        .storage(store)
        .transport(w.net.transport_in(META_GROUP, id))
        .bootstrap(Bootstrap::Members(w.addrs(1..=w.opts.nodes)))
        .logger(crate::sim::logger())
        .start()
        .await;
    let meta = match started {
        Ok(m) => m,
        Err(e) => {
            w.violation(format!("[startup] node {id}: {e}"));
            return false;
        }
    };
    w.net
        .register_group(META_GROUP, id, meta.handle().inbound());
    let watcher = tokio::spawn(watch_placement(w.clone(), id, placement.clone()));
    let mut nodes = lock(&w.nodes);
    let n = nodes.entry(id).or_default();
    n.meta = Some((meta, placement));
    n.watcher = Some(watcher);
    true
}

/// Starts or stops node `id`'s replicas as its placement changes.
pub(super) async fn watch_placement(w: Arc<World>, id: u64, mut rx: watch::Receiver<Placement>) {
    loop {
        let p = rx.borrow_and_update().clone();
        reconcile(&w, id, &p).await;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Checks a placement node `id` applied: its invariants, and that every
/// node applied the same at its version.
fn check_placement(w: &World, id: u64, p: &Placement) {
    if let Err(e) = p.check() {
        w.violation(format!(
            "[placement] node {id}, version {}: {e}",
            p.version()
        ));
    }
    let json = serde_json::to_string(p).unwrap_or_default();
    let differs = {
        let mut versions = lock(&w.versions);
        let seen = versions.entry(p.version()).or_insert_with(|| json.clone());
        *seen != json
    };
    if differs {
        w.violation(format!(
            "[placement] node {id} applied version {} unlike another node",
            p.version()
        ));
    }
    let mut most = lock(&w.most_groups);
    *most = (*most).max(p.groups().len());
}

/// Starts the replicas `p` gives node `id` and stops those it took away
/// (their stores go: a replica given again starts empty), as a sharded
/// host's reconcile does.
pub(super) async fn reconcile(w: &Arc<World>, id: u64, p: &Placement) {
    let _life = w.life[&id].lock().await;
    let running: Vec<GroupId> = match lock(&w.nodes).get(&id) {
        Some(n) if n.meta.is_some() => n.data.keys().copied().collect(),
        _ => return,
    };
    for g in running {
        if p.groups().get(&g).is_some_and(|i| i.hosts(id)) {
            continue;
        }
        let r = lock(&w.nodes).get_mut(&id).and_then(|n| {
            n.stores.remove(&g);
            n.data.remove(&g)
        });
        w.net.unregister_group(g, id);
        if let Some(r) = r {
            r.handle().shutdown().await;
        }
    }
    for (&g, info) in p.groups() {
        let hosted = lock(&w.nodes)
            .get(&id)
            .is_some_and(|n| n.data.contains_key(&g));
        if !info.hosts(id) || hosted {
            continue;
        }
        let bootstrap = if info.initial.contains(&id) && info.replicas == info.initial {
            Bootstrap::Members(w.addrs(info.initial.iter().copied()))
        } else {
            Bootstrap::None
        };
        // Given anew (a learner): what an earlier replica of the group
        // left here (a voter then, taken away while this node was down) is
        // stale and goes, as the host's does; a learner's own data (this
        // addition, restarted half-way) stays.
        let anew = !info.replicas.contains(&id);
        let store = lock(&w.nodes)
            .get_mut(&id)
            .map(|n| {
                let stale = n.stores.get(&g).is_some_and(|s| {
                    s.initial_state().map_or(true, |st| {
                        st.conf_state.voters.contains(&id)
                            || st.conf_state.voters_outgoing.contains(&id)
                    })
                });
                if anew && stale {
                    n.stores.remove(&g);
                }
                n.stores.entry(g).or_default().clone()
            })
            .unwrap_or_default();
        let started = Raft::builder(w.config(id, g), CacheState::new())
            .storage(store)
            .transport(w.net.transport_in(g, id))
            .bootstrap(bootstrap)
            .logger(crate::sim::logger())
            .start()
            .await;
        match started {
            Ok(r) => {
                w.net.register_group(g, id, r.handle().inbound());
                if let Some(n) = lock(&w.nodes).get_mut(&id) {
                    n.data.insert(g, r);
                }
            }
            Err(e) => w.violation(format!("[startup] node {id}, group {g}: {e}")),
        }
    }
}

/// Process crash: every replica stops, the node leaves the network, and
/// a rebalance step it was running is cut short; its stores stay.
pub(super) async fn crash(w: &Arc<World>, id: u64) {
    let _life = w.life[&id].lock().await;
    w.net.unregister(id);
    let (meta, data) = {
        let mut nodes = lock(&w.nodes);
        let Some(n) = nodes.get_mut(&id) else {
            return;
        };
        if let Some(t) = n.watcher.take() {
            t.abort();
        }
        if let Some(d) = n.driving.take() {
            d.abort();
        }
        (n.meta.take(), std::mem::take(&mut n.data))
    };
    for r in data.values() {
        r.handle().shutdown().await;
    }
    if let Some((m, _)) = meta {
        m.handle().shutdown().await;
    }
}

/// The node leading the metadata group, if one runs.
pub(super) fn meta_leader(w: &World) -> Option<View> {
    w.running()
        .into_iter()
        .filter_map(|id| w.view(id))
        .find(|v| v.meta.handle().state().role == Role::Leader)
}

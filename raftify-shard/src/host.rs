//! [`ShardHost`]: one process of a sharded cluster — the metadata group,
//! the replicas of the data groups the placement gives it, one gRPC port.
//!
//! Every replica starts through the launcher ([`raftify::launch_group`]):
//! the metadata group's as the spec says (bootstrap a new cluster, join
//! one, or resume), data groups' as the placement says:
//!
//! * a group this node is an initial replica of, whose replicas are still
//!   the initial ones, is bootstrapped with exactly those members (every
//!   initial replica does the same, so they agree);
//! * a replica being added (a learner in the placement) is created empty
//!   on the first message from its group's leader (the [`ReplicaFactory`]);
//! * a group whose data is on disk resumes;
//! * a group the placement no longer gives this node is stopped and its
//!   data removed (the group removed this node first).

use crate::meta::{BroadcastHook, MetaEntry, MetaOutcome, MetaStore, SharedState};
use crate::placement::{Change, GroupId, NodeId, NodeInfo, Placement, Settings, META_GROUP};
use crate::rebalance::Rebalancer;
use crate::step::Rebalancing;
use crate::storage::ReplicaStorage;
use async_trait::async_trait;
use raftify::{launch_group, GroupHost, NodeSpec, ReadFn, Start, Storage};
use raftify_core::{AbstractLogEntry, AbstractStateMachine, Raft, RaftHandle};
use raftify_grpc::{
    Groups, GrpcTransport, RaftGrpcServer, ReadHandler, ReplicaFactory, ServerHandle,
};
use slog::{info, warn, Logger};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a sharded node did not start or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The spec is wrong.
    #[error("{0}")]
    Config(String),
    /// A replica did not start.
    #[error(transparent)]
    Launch(#[from] raftify::LaunchError),
    /// The cluster refused or failed a request.
    #[error(transparent)]
    Node(#[from] raftify_core::Error),
    /// The placement refused a change.
    #[error("placement: {0}")]
    Placement(#[from] crate::placement::PlacementError),
    /// A rebalance step could not be carried out.
    #[error("rebalance: {0}")]
    Rebalance(String),
    /// A node answered a request with the answer to another kind (nodes
    /// of incompatible versions).
    #[error("unexpected answer: {0}")]
    Mismatch(&'static str),
}

/// What a sharded node is.
pub struct ShardSpec {
    /// The template of every replica: `id` (required to bootstrap; a
    /// joining node is given one), the raft address to bind (port 0: any),
    /// `storage` (`Memory`, or `Dir(root)`: every group in one shared
    /// environment `root/groups`, see `storage.rs`), `start` (`Single`:
    /// bootstrap a new cluster,
    /// `Join`: join one through a member of its metadata group; a node
    /// with data resumes), raft and gRPC settings, the logger.
    pub node: NodeSpec,
    /// Where clients reach this node (what redirects name).
    pub client_addr: String,
    /// The targets a new cluster starts with.
    pub settings: Settings,
    /// Rebalance by itself whenever the placement is off balance (else
    /// only when asked, [`ShardHost::rebalance`]).
    pub auto_rebalance: bool,
    /// A node the metadata group has not heard from for this long is
    /// marked down, and its replicas are replaced on other nodes where
    /// there is room (whether or not rebalancing is automatic); it is
    /// marked up when heard again and then given replicas as any node.
    /// `None`: never (an operator removes failed nodes). Keep it well
    /// above a restart's duration: replacing a replica copies its data.
    pub dead_after: Option<Duration>,
    /// What this node does with each broadcast ([`ShardHost::broadcast`])
    /// as it applies it; `None`: nothing.
    pub on_broadcast: Option<BroadcastHook>,
    /// Cluster-wide state of the application, replicated by the metadata
    /// group ([`ShardHost::propose_shared`]); `None`: none.
    pub shared: Option<Arc<dyn SharedState>>,
}

/// Makes the state machine of a new replica of a data group.
pub type MakeState<SM> = Arc<dyn Fn(GroupId) -> SM + Send + Sync>;

pub(crate) struct Inner<E, SM> {
    pub(crate) id: NodeId,
    pub(crate) template: NodeSpec,
    storage: ReplicaStorage,
    pub(crate) host: GroupHost,
    pub(crate) meta: Raft<MetaEntry, MetaStore>,
    pub(crate) placement: watch::Receiver<Placement>,
    /// The replicas this node runs; held while one starts or stops.
    data: tokio::sync::Mutex<BTreeMap<GroupId, Raft<E, SM>>>,
    /// A copy of `data` published after every change: what the request
    /// path reads (without waiting on a replica being started).
    serving: std::sync::RwLock<BTreeMap<GroupId, Raft<E, SM>>>,
    make: MakeState<SM>,
    reader: Option<ReadFn<SM>>,
    pub(crate) logger: Logger,
}

/// One process of a sharded cluster. See the module docs.
pub struct ShardHost<E, SM> {
    inner: Arc<Inner<E, SM>>,
    /// Taken by [`ShardHost::shutdown`].
    server: std::sync::Mutex<Option<ServerHandle>>,
    raft_addr: String,
    rebalancer: Rebalancer,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    metrics: crate::metrics::ShardMetrics,
    /// A rebalance this node asked for: the placement's count of requests
    /// once it is committed (0: none in flight).
    asking: Arc<std::sync::atomic::AtomicU64>,
}

const WAIT: Duration = Duration::from_secs(30);

impl<E, SM> ShardHost<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    /// Starts the node: its port, the metadata group (bootstrapped, joined
    /// or resumed), its entry in the placement, then its data replicas.
    pub async fn start(
        spec: ShardSpec,
        make: MakeState<SM>,
        reader: Option<ReadFn<SM>>,
        mover: Option<Arc<dyn crate::mover::SlotMover>>,
    ) -> Result<Self, ShardError> {
        let logger = spec.node.logger.clone();
        let bind = spec
            .node
            .raft_addr
            .clone()
            .or_else(|| spec.node.fallback_raft_addr.clone())
            .ok_or_else(|| ShardError::Config("the raft address is required".into()))?;
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| ShardError::Config(format!("cannot bind {bind}: {e}")))?;
        let raft_addr = match listener.local_addr() {
            Ok(a) if bind.ends_with(":0") => a.to_string(),
            Ok(_) => bind.clone(),
            Err(e) => return Err(ShardError::Config(format!("{bind}: {e}"))),
        };
        let transport =
            GrpcTransport::with_logger(raft_addr.clone(), spec.node.grpc.clone(), logger.clone())?;
        let groups = Groups::new();
        // Every group's incoming snapshots go to one spool in the data dir
        // (not into memory), as a launched node's do.
        let root = match &spec.node.storage {
            Storage::Dir(root) => Some(root.as_path()),
            _ => None,
        };
        let served = raftify::served_grpc(&spec.node.grpc, root);
        let server = RaftGrpcServer::for_groups(
            groups.clone(),
            raftify_core::metrics::Metrics::default().server("grpc"),
            served,
        )
        .logger(logger.clone())
        .spawn(listener)?;
        let host = GroupHost { groups, transport };

        let mut store = MetaStore::new();
        if let Some(hook) = spec.on_broadcast.clone() {
            store.on_broadcast(hook);
        }
        if let Some(shared) = spec.shared.clone() {
            store.share(shared);
        }
        let placement = store.subscribe();
        let storage = ReplicaStorage::open(&spec.node)?;
        let meta_spec = group_spec(
            &spec.node,
            &storage,
            None,
            META_GROUP,
            spec.node.start.clone(),
        )?;
        let meta = launch_group(meta_spec, store, Some(meta_reader()), &host, META_GROUP)
            .await?
            .raft;
        let id = meta.handle().id();
        let inner = Arc::new(Inner {
            id,
            template: spec.node,
            storage,
            host,
            meta,
            placement,
            data: tokio::sync::Mutex::new(BTreeMap::new()),
            serving: std::sync::RwLock::new(BTreeMap::new()),
            make,
            reader,
            logger: logger.clone(),
        });
        inner.meta.handle().wait_for_leader(WAIT).await?;
        inner
            .enter(&raft_addr, &spec.client_addr, spec.settings)
            .await?;
        inner.host.groups.set_factory(Arc::new(Factory {
            inner: Arc::downgrade(&inner),
        }));
        inner.reconcile().await;
        let reconciler = tokio::spawn(reconcile_loop(Arc::downgrade(&inner)));
        let rebalancer =
            Rebalancer::start(inner.clone(), mover, spec.auto_rebalance, spec.dead_after);
        let metrics = crate::metrics::ShardMetrics::default();
        metrics.register(&inner.meta.handle().metrics_registry());
        info!(logger, "sharded node up"; "id" => id, "raft" => %raft_addr);
        Ok(ShardHost {
            inner,
            server: std::sync::Mutex::new(Some(server)),
            raft_addr,
            rebalancer,
            tasks: std::sync::Mutex::new(vec![reconciler]),
            metrics,
            asking: Arc::default(),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The raft address (the port bound).
    pub fn raft_addr(&self) -> &str {
        &self.raft_addr
    }

    /// The placement as this node applied it, and a watch of it.
    pub fn placement(&self) -> watch::Receiver<Placement> {
        self.inner.placement.clone()
    }

    /// The transport this node's groups share: `for_group(g)` reaches
    /// group `g` on any member process (to propose to a group hosted
    /// elsewhere, with `raftify_core::call_cluster`).
    pub fn transport(&self) -> &GrpcTransport {
        &self.inner.host.transport
    }

    /// Sends `message` to every node of the cluster through the metadata
    /// group's log: each node hands it to its
    /// [`on_broadcast`](ShardSpec::on_broadcast) hook as it applies it, so
    /// all see all broadcasts in one order (a node down meanwhile sees
    /// them when it catches up). Answers the hook's count on the node that
    /// applied it for this proposal (the metadata leader). Errors are the
    /// core's: an [`OutcomeUnknown`](raftify_core::ErrorClass) one means
    /// the message may or may not go out — never resend it blindly.
    pub async fn broadcast(&self, message: Vec<u8>) -> Result<u64, ShardError> {
        match self
            .inner
            .meta
            .propose(&MetaEntry::Broadcast(message))
            .await?
        {
            MetaOutcome::Broadcast(n) => Ok(n),
            _ => Err(ShardError::Mismatch(
                "the metadata group answered a broadcast as another kind",
            )),
        }
    }

    /// Applies `command` to the application's shared state on every node
    /// ([`ShardSpec::shared`]) through the metadata group's log; the
    /// state's answer on the node that applied it for this proposal. An
    /// [`OutcomeUnknown`](raftify_core::ErrorClass) error means it may or
    /// may not be applied.
    pub async fn propose_shared(&self, command: Vec<u8>) -> Result<Vec<u8>, ShardError> {
        match self.inner.meta.propose(&MetaEntry::Shared(command)).await? {
            MetaOutcome::Shared(out) => Ok(out),
            _ => Err(ShardError::Mismatch(
                "the metadata group answered a shared-state command as another kind",
            )),
        }
    }

    /// The metadata group's node on this process.
    pub fn meta(&self) -> &RaftHandle {
        self.inner.meta.handle()
    }

    /// This node's replica of `group`, if it hosts one.
    pub async fn group(&self, group: GroupId) -> Option<RaftHandle> {
        self.replica(group).await.map(|r| r.handle().clone())
    }

    /// This node's replica of `group` as a typed node (to propose to and
    /// read from), if it hosts one. Never waits for a replica being
    /// started or stopped (the request path calls it per command).
    pub async fn replica(&self, group: GroupId) -> Option<Raft<E, SM>> {
        self.inner.serving().get(&group).cloned()
    }

    /// Every replica this node hosts now, by group.
    pub async fn replicas(&self) -> Vec<(GroupId, Raft<E, SM>)> {
        let serving = self.inner.serving();
        serving.iter().map(|(g, r)| (*g, r.clone())).collect()
    }

    /// Starts a rebalance, from any node: the request is committed to the
    /// placement ([`Change::AskRebalance`]), where the node leading the
    /// metadata group (now or next) finds it. Returns at once.
    pub fn rebalance(&self) {
        use std::sync::atomic::Ordering;
        self.rebalancer.trigger();
        let p = self.inner.placement.borrow().clone();
        if p.rebalance_pending() {
            return; // already asked, not yet carried out
        }
        self.asking
            .store(p.rebalances_asked() + 1, Ordering::Relaxed);
        let (inner, asking) = (self.inner.clone(), self.asking.clone());
        tokio::spawn(async move {
            // Asking twice is harmless (one rebalance carries out both).
            let deadline = tokio::time::Instant::now() + WAIT;
            while let Err(e) = inner.change(None, Change::AskRebalance).await {
                if tokio::time::Instant::now() > deadline {
                    warn!(inner.logger, "cannot ask for a rebalance"; "error" => %e);
                    asking.store(0, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// `done` when nothing is to be moved, else what is being done. On
    /// the metadata leader, its rebalancer's own account; elsewhere, what
    /// the placement says (a move in progress, a rebalance asked for and
    /// not yet carried out, or done).
    pub fn rebalance_status(&self) -> String {
        let meta = self.inner.meta.handle();
        if meta.is_leader() {
            return self.rebalancer.status();
        }
        let leader = match meta.state().leader_id {
            0 => "none yet".to_string(),
            id => format!("node {id}"),
        };
        let p = self.inner.placement.borrow();
        // Asked here, and the request not committed yet.
        let asking = p.rebalances_asked() < self.asking.load(std::sync::atomic::Ordering::Relaxed);
        use crate::report::RebalanceState;
        match RebalanceState::of(&p) {
            RebalanceState::Done(_) if asking => {
                format!("requested (carried out by the metadata leader: {leader})")
            }
            done @ RebalanceState::Done(_) => done.to_string(),
            other => format!("{other} (carried out by the metadata leader: {leader})"),
        }
    }

    /// This node's metrics in the OpenMetrics text format: the metadata
    /// group's core series and the sharding ones (see `metrics.rs`),
    /// refreshed now.
    pub async fn metrics_text(&self) -> String {
        let placement = self.inner.placement.borrow().clone();
        let mut statuses = Vec::new();
        for (g, r) in self.replicas().await {
            if let Ok(s) = r.handle().status().await {
                statuses.push((g, s));
            }
        }
        self.metrics.refresh(&placement, &statuses);
        self.metrics.journal(self.journal_stats());
        self.meta().metrics_registry().encode()
    }

    /// What the groups' shared journal wrote since the node started (all
    /// zero in memory): `appends / syncs` is how many raft writes each
    /// `fdatasync` carried.
    pub fn journal_stats(&self) -> raftify::JournalStats {
        self.inner.storage.journal_stats()
    }

    /// Marks this node to leave: the rebalancer moves its replicas away,
    /// then removes it.
    pub async fn leave(&self) -> Result<(), ShardError> {
        self.mark_leaving(self.inner.id).await
    }

    /// Marks node `node` to leave (one that is gone for good, say): the
    /// rebalancer gives its groups replicas on the other nodes, removes
    /// its replicas (the groups keep a quorum without it), then removes
    /// it from the cluster.
    pub async fn mark_leaving(&self, node: NodeId) -> Result<(), ShardError> {
        self.inner
            .change(
                None,
                Change::SetLeaving {
                    node,
                    leaving: true,
                },
            )
            .await
            .map(|_| ())
    }

    /// Stops everything: the rebalancer, the replicas, the server. The data
    /// replicas' storage is closed when it returns, the metadata group's
    /// when the host is dropped (then a new host may open the same data
    /// dir in this process).
    pub async fn shutdown(&self) {
        self.rebalancer.stop().await;
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        // The server's map holds the replicas' handles (and so their
        // storage): emptied first.
        for g in self.inner.host.groups.ids() {
            self.inner.host.groups.remove(g);
        }
        let data = std::mem::take(&mut *self.inner.data.lock().await);
        self.inner.publish(&BTreeMap::new());
        for r in data.values() {
            r.handle().shutdown().await;
        }
        self.inner.meta.handle().shutdown().await;
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = server {
            server.shutdown().await;
        }
    }
}

impl<E, SM> Inner<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    fn serving(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<GroupId, Raft<E, SM>>> {
        self.serving.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `data` to the request path.
    fn publish(&self, data: &BTreeMap<GroupId, Raft<E, SM>>) {
        *self.serving.write().unwrap_or_else(|p| p.into_inner()) = data.clone();
    }

    /// What rebalance steps act through on this node.
    pub(crate) fn rebalancing(&self) -> Rebalancing<'_> {
        Rebalancing {
            meta: &self.meta,
            placement: &self.placement,
            net: &self.host.transport,
        }
    }

    /// Proposes a placement change; its new version.
    pub(crate) async fn change(
        &self,
        expect_version: Option<u64>,
        change: Change,
    ) -> Result<u64, ShardError> {
        self.rebalancing().change(expect_version, change).await
    }

    /// Bootstraps the placement (a new cluster) or records this node's
    /// addresses in it.
    async fn enter(
        &self,
        raft_addr: &str,
        client_addr: &str,
        settings: Settings,
    ) -> Result<(), ShardError> {
        let info = NodeInfo {
            raft_addr: raft_addr.to_string(),
            client_addr: client_addr.to_string(),
            leaving: false,
            down: false,
        };
        self.meta.handle().read_index().await?;
        let p = self.placement.borrow().clone();
        if !p.is_bootstrapped() {
            if !matches!(self.template.start, Start::Single) {
                return Err(ShardError::Config(
                    "the cluster this node joined has no placement yet".into(),
                ));
            }
            let boot = Change::Bootstrap {
                node: self.id,
                info,
                settings,
            };
            self.change(Some(0), boot).await?;
        } else if p
            .nodes()
            .get(&self.id)
            .map(|n| (&n.raft_addr, &n.client_addr))
            != Some((&info.raft_addr, &info.client_addr))
        {
            self.change(
                None,
                Change::AddNode {
                    node: self.id,
                    info,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Starts the replicas the placement gives this node and stops those
    /// it took away.
    async fn reconcile(&self) {
        let p = self.placement.borrow().clone();
        let mut data = self.data.lock().await;
        let gone: Vec<GroupId> = data
            .keys()
            .filter(|g| !p.groups().get(g).is_some_and(|i| i.hosts(self.id)))
            .copied()
            .collect();
        for g in gone {
            if let Some(r) = data.remove(&g) {
                self.publish(&data);
                self.host.groups.remove(g);
                r.handle().shutdown().await;
                drop(r);
                if self.storage.remove(g, &self.logger).await {
                    info!(self.logger, "replica removed"; "group" => g);
                }
            }
        }
        for (&g, info) in p.groups() {
            if !info.replicas.contains(&self.id) || data.contains_key(&g) {
                continue;
            }
            let start = if info.initial.contains(&self.id) && info.replicas == info.initial {
                let members: Result<BTreeMap<u64, String>, ()> = info
                    .initial
                    .iter()
                    .map(|n| Ok((*n, p.nodes().get(n).ok_or(())?.raft_addr.clone())))
                    .collect();
                match members {
                    Ok(m) => Start::Members(m),
                    Err(()) => continue,
                }
            } else {
                Start::Wait
            };
            match self.launch(g, start).await {
                Ok(r) => {
                    data.insert(g, r);
                    self.publish(&data);
                }
                Err(e) => warn!(self.logger, "cannot start a replica"; "group" => g, "error" => %e),
            }
        }
    }

    async fn launch(&self, group: GroupId, start: Start) -> Result<Raft<E, SM>, ShardError> {
        let spec = group_spec(&self.template, &self.storage, Some(self.id), group, start)?;
        let sm = (self.make)(group);
        let launched = launch_group(spec, sm, self.reader.clone(), &self.host, group).await?;
        Ok(launched.raft)
    }

    /// A replica of `group` the placement gives this node, created empty.
    async fn create(&self, group: GroupId) -> Option<RaftHandle> {
        let hosts = self
            .placement
            .borrow()
            .groups()
            .get(&group)
            .is_some_and(|i| i.hosts(self.id));
        if !hosts {
            return None;
        }
        let mut data = self.data.lock().await;
        if let Some(r) = data.get(&group) {
            return Some(r.handle().clone());
        }
        // Given anew (a learner, not yet a replica): data left from an
        // earlier replica of the group here (a voter then, removed while
        // this node was down) is stale; the new replica starts empty. A
        // learner's own data (this same addition, restarted half-way) is
        // kept: the group's leader counts what it acknowledged, and raft
        // never sends that again.
        let anew = self
            .placement
            .borrow()
            .groups()
            .get(&group)
            .is_some_and(|i| !i.replicas.contains(&self.id));
        if anew && self.storage.holds(group) && self.storage.was_voter(group, self.id) {
            warn!(self.logger, "removing an earlier replica's data before taking the group again"; "group" => group);
            if !self.storage.remove(group, &self.logger).await {
                return None;
            }
        }
        match self.launch(group, Start::Wait).await {
            Ok(r) => {
                let h = r.handle().clone();
                data.insert(group, r);
                self.publish(&data);
                Some(h)
            }
            Err(e) => {
                warn!(self.logger, "cannot create a replica"; "group" => group, "error" => %e);
                None
            }
        }
    }
}

async fn reconcile_loop<E, SM>(inner: Weak<Inner<E, SM>>)
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    let Some(mut rx) = inner.upgrade().map(|i| i.placement.clone()) else {
        return;
    };
    while rx.changed().await.is_ok() {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.reconcile().await;
    }
}

struct Factory<E, SM> {
    inner: Weak<Inner<E, SM>>,
}

#[async_trait]
impl<E, SM> ReplicaFactory for Factory<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    async fn create(&self, group: u64) -> Option<(RaftHandle, Option<Arc<dyn ReadHandler>>)> {
        let inner = self.inner.upgrade()?;
        let handle = inner.create(group).await?;
        // launch_group registered it with its reader: keep that one.
        Some((handle, inner.host.groups.reader_of(group)))
    }
}

/// The `Read` query on the metadata group (group 0) that answers the
/// placement as JSON (what `raftify-cli shards` shows).
pub const PLACEMENT_QUERY: &[u8] = b"placement";

fn meta_reader() -> ReadFn<MetaStore> {
    Arc::new(|store: &MetaStore, query: &[u8]| {
        if query == PLACEMENT_QUERY {
            Ok(serde_json::to_vec(store.placement())?)
        } else {
            Err(format!(
                "the metadata group answers {:?} only",
                String::from_utf8_lossy(PLACEMENT_QUERY)
            )
            .into())
        }
    })
}

/// The spec of this node's replica of `group`.
fn group_spec(
    template: &NodeSpec,
    storage: &ReplicaStorage,
    id: Option<NodeId>,
    group: GroupId,
    start: Start,
) -> Result<NodeSpec, ShardError> {
    let mut spec = template.clone();
    if let Some(id) = id {
        spec.id = Some(id);
    }
    let (store, segment) = storage.of(group);
    spec.storage = store;
    if spec.journal_segment_size.is_none() {
        spec.journal_segment_size = segment;
    }
    spec.start = start;
    spec.restore = None;
    // Data groups sleep while idle (hundreds per process cost little);
    // the metadata group stays awake (one group, watched by every node).
    spec.config.hibernate =
        group != META_GROUP && spec.config.read_mode == raftify_core::ReadMode::Safe;
    Ok(spec)
}

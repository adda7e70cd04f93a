//! The launcher: a [`NodeSpec`] and a state machine in, a running node with
//! its gRPC server out. Every front-end (memstore, the Python bindings, the
//! coming servers) starts its nodes here, so they resume, bootstrap, join,
//! restore and fail the same way.
//!
//! The order matters and is the same for every start:
//!
//! 1. a data dir that holds a log is resumed: the node id comes from it
//!    (and must match the one given), the raft address from the spec, the
//!    initial members or the log;
//! 2. otherwise the raft port is bound **before** anything is written, so a
//!    port in use fails a start without leaving a half-made data dir;
//! 3. a joining node asks the cluster for a ticket (its id), a new one
//!    restores or bootstraps its data dir;
//! 4. the node, then its server; a joining node is added and waits until it
//!    has applied its own addition.

use crate::spec::{NodeSpec, Restore, Start, Storage};
use raftify_core::storage::{recorded_addr, recorded_peers};
use raftify_core::{
    request_join_ticket, AbstractLogEntry, AbstractStateMachine, Bootstrap, BoxError, JoinTicket,
    LogStore, MemStore, Raft,
};
use raftify_grpc::{
    state_machine_reader, Groups, GrpcConfig, GrpcTransport, RaftGrpcServer, ServerHandle,
};
use raftify_storage::{
    restore_wal_from, restore_wal_snapshot_from, LmdbEnv, LmdbError, LmdbOptions, LmdbStore,
};
use slog::{info, warn};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The spec is inconsistent, or contradicts the data dir.
    #[error("{0}")]
    Config(String),
    /// A new node was given no id and is not joining (which assigns one).
    #[error("a node id is required to start a new node (joining a cluster assigns one)")]
    MissingId,
    /// No raft address was given, and none is recorded.
    #[error("the node's raft address is required")]
    MissingAddr,
    /// The raft port could not be bound.
    #[error("cannot bind the raft address {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data dir could not be opened or restored.
    #[error("{what} {dir}: {source}")]
    Storage {
        /// What was done.
        what: &'static str,
        /// The data dir.
        dir: PathBuf,
        /// Why.
        #[source]
        source: LmdbError,
    },
    /// The node, its server or the cluster refused.
    #[error(transparent)]
    Node(#[from] raftify_core::Error),
}

impl From<raftify_core::StorageError> for LaunchError {
    fn from(e: raftify_core::StorageError) -> Self {
        LaunchError::Node(e.into())
    }
}

/// A read query on the state machine (served by the gRPC `Read` call).
pub type ReadFn<SM> = Arc<dyn Fn(&SM, &[u8]) -> Result<Vec<u8>, BoxError> + Send + Sync + 'static>;

/// A started node and its gRPC server.
pub struct Launched<E, SM> {
    /// The node.
    pub raft: Raft<E, SM>,
    /// Its gRPC server (peers and clients).
    pub server: ServerHandle,
    /// The node's id.
    pub id: u64,
    /// The address peers reach it at.
    pub raft_addr: String,
    /// Its data dir (`None` in memory).
    pub data_dir: Option<PathBuf>,
    /// The node joined a running cluster in this start.
    pub joined: bool,
}

impl<E, SM> Launched<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    /// Stops the node (pending requests fail), then its server.
    pub async fn shutdown(self) {
        self.raft.handle().shutdown().await;
        self.server.shutdown().await;
    }
}

/// What the data dir holds, and where it is.
struct Found {
    id: u64,
    dir: Option<PathBuf>,
    store: Arc<dyn LogStore>,
    raft_addr: Option<String>,
}

/// Starts a node as `spec` describes (see the module docs for the order).
/// `reader` answers the gRPC `Read` call, if given.
pub async fn launch<E, SM>(
    spec: NodeSpec,
    state_machine: SM,
    reader: Option<ReadFn<SM>>,
) -> Result<Launched<E, SM>, LaunchError>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    check(&spec)?;
    let logger = spec.logger.clone();
    let resumed = resume(&spec)?;
    let raft_addr = match &resumed {
        Some(found) => found.raft_addr.clone(),
        None => own_addr(&spec, spec.id.or(spec.default_id))?,
    }
    .or_else(|| spec.fallback_raft_addr.clone())
    .ok_or(LaunchError::MissingAddr)?;
    let listen = spec
        .listen_addr
        .clone()
        .unwrap_or_else(|| raft_addr.clone());
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|source| LaunchError::Bind {
            addr: listen.clone(),
            source,
        })?;
    let raft_addr = with_bound_port(&raft_addr, &listener)?;
    raftify_core::membership::validate_addr(&raft_addr)?;
    let transport =
        GrpcTransport::with_logger(raft_addr.clone(), spec.grpc.clone(), logger.clone())?;

    let (raft, started) = start_raft(&spec, state_machine, resumed, &raft_addr, transport).await?;
    let grpc = served_grpc(&spec.grpc, started.dir.as_deref());
    let ticket = started.ticket.clone();
    let mut server = RaftGrpcServer::new(raft.handle().clone(), grpc).logger(logger.clone());
    if let Some(read) = reader {
        server = server.reader(state_machine_reader(&raft, move |sm: &SM, q: &[u8]| {
            read(sm, q)
        }));
    }
    let server = match server.spawn(listener) {
        Ok(s) => s,
        Err(e) => {
            raft.handle().shutdown().await;
            return Err(e.into());
        }
    };
    let launched = Launched {
        raft,
        server,
        id: started.id,
        raft_addr,
        data_dir: started.dir,
        joined: ticket.is_some(),
    };
    if let (Some(t), Start::Join { as_learner, .. }) = (&ticket, &spec.start) {
        let joined = launched
            .raft
            .handle()
            .join_cluster(t, &launched.raft_addr, *as_learner)
            .await;
        match joined {
            Ok(members) => {
                info!(logger, "joined the cluster"; "members" => ?members.iter().map(|m| m.id).collect::<Vec<_>>());
            }
            Err(e) => {
                launched.shutdown().await;
                return Err(e.into());
            }
        }
    }
    info!(logger, "node up"; "id" => launched.id, "raft" => %launched.raft_addr);
    Ok(launched)
}

/// What [`start_raft`] started from.
struct Started {
    id: u64,
    dir: Option<PathBuf>,
    /// The ticket of a node that joins in this start.
    ticket: Option<JoinTicket>,
}

/// Steps 1 and 3 of the order and the node itself: resumes what `resumed`
/// found, or asks for a ticket (joining) or creates and bootstraps the data
/// dir, and starts the node on `transport`.
async fn start_raft<E, SM>(
    spec: &NodeSpec,
    state_machine: SM,
    resumed: Option<Found>,
    raft_addr: &str,
    transport: GrpcTransport,
) -> Result<(Raft<E, SM>, Started), LaunchError>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    let logger = &spec.logger;
    let mut ticket: Option<JoinTicket> = None;
    let (found, bootstrap) = match resumed {
        Some(found) => (found, Bootstrap::None),
        None => {
            let id = match &spec.start {
                Start::Join { via, .. } => {
                    info!(logger, "asking the cluster for a node id"; "via" => ?via);
                    let t = ask_ticket(spec, &transport, via, raft_addr).await?;
                    let id = t.reserved_id;
                    ticket = Some(t);
                    id
                }
                _ => spec.id.or(spec.default_id).ok_or(LaunchError::MissingId)?,
            };
            (create(spec, id)?, bootstrap_of(spec, id, raft_addr)?)
        }
    };
    warn_moved_members(spec, &*found.store, found.id);
    let mut config = spec.config.clone();
    config.id = found.id;
    config.validate()?;
    let raft = Raft::builder(config, state_machine)
        .storage(found.store)
        .transport(Arc::new(transport))
        .bootstrap(bootstrap)
        .logger(logger.clone())
        .start()
        .await?;
    Ok((
        raft,
        Started {
            id: found.id,
            dir: found.dir,
            ticket,
        },
    ))
}

/// After a restore, says so when the initial members given (`--peers`)
/// put a member at another address than the restored data records: the
/// members reach each other at the recorded ones — a member moves only by
/// leaving and joining again — so a cluster restored on new addresses
/// cannot form. (Only after a restore: reading the snapshot is not free.)
fn warn_moved_members(spec: &NodeSpec, store: &dyn LogStore, own: u64) {
    let (Some(members), Some(_)) = (spec.initial_members(), &spec.restore) else {
        return;
    };
    let Some(peers) = recorded_peers(store) else {
        return;
    };
    for (id, given) in members {
        let Some(recorded) = peers.get(id).filter(|r| *r != given) else {
            continue;
        };
        if *id == own {
            warn!(spec.logger, "this node listens at the address the initial members give it (--peers), but the restored data records it at another, where its peers will look for it; restore on the recorded addresses";
                "recorded" => %recorded, "given" => %given);
        } else {
            warn!(spec.logger, "the initial members given (--peers) put a member at another address than the restored data records; the recorded address is used (a member moves only by leaving and joining again), so restore on the recorded addresses";
                "node" => id, "recorded" => %recorded, "given" => %given);
        }
    }
}

/// A process that hosts replicas of many Raft groups behind one gRPC
/// server: the groups it serves and its transport (whose connections every
/// group's transport shares). See [`launch_group`].
#[derive(Clone)]
pub struct GroupHost {
    /// The groups the process's server serves.
    pub groups: Groups,
    /// The process's transport (its address is every group's raft address).
    pub transport: GrpcTransport,
}

/// A started replica of one group of a [`GroupHost`].
pub struct LaunchedGroup<E, SM> {
    /// The node.
    pub raft: Raft<E, SM>,
    /// The node's id.
    pub id: u64,
    /// Its data dir (`None` in memory).
    pub data_dir: Option<PathBuf>,
    /// The node joined a running group in this start.
    pub joined: bool,
}

/// Starts the replica of group `group` of a process that hosts many, as
/// `spec` describes: resumed, bootstrapped, restored or joined exactly as
/// [`launch`] does, but on the host's transport (a view naming the group)
/// and served by the host's server (added to its [`Groups`]) instead of a
/// port of its own. `spec`'s addresses and gRPC settings are ignored: the
/// host's apply.
pub async fn launch_group<E, SM>(
    spec: NodeSpec,
    state_machine: SM,
    reader: Option<ReadFn<SM>>,
    host: &GroupHost,
    group: u64,
) -> Result<LaunchedGroup<E, SM>, LaunchError>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    check(&spec)?;
    let resumed = resume(&spec)?;
    let raft_addr = host.transport.self_addr().to_string();
    let transport = host.transport.for_group(group);
    let (raft, started) = start_raft(&spec, state_machine, resumed, &raft_addr, transport).await?;
    let reader =
        reader.map(|read| state_machine_reader(&raft, move |sm: &SM, q: &[u8]| read(sm, q)));
    host.groups.insert(group, raft.handle().clone(), reader);
    if let (Some(t), Start::Join { as_learner, .. }) = (&started.ticket, &spec.start) {
        if let Err(e) = raft.handle().join_cluster(t, &raft_addr, *as_learner).await {
            host.groups.remove(group);
            raft.handle().shutdown().await;
            return Err(e.into());
        }
    }
    info!(spec.logger, "group replica up"; "group" => group, "id" => started.id);
    Ok(LaunchedGroup {
        raft,
        id: started.id,
        data_dir: started.dir,
        joined: started.ticket.is_some(),
    })
}

fn check(spec: &NodeSpec) -> Result<(), LaunchError> {
    let bad = |m: &str| Err(LaunchError::Config(m.to_string()));
    match (&spec.storage, &spec.restore) {
        (Storage::Memory, Some(_)) => return bad("a restore needs a data dir"),
        (Storage::Shared(..), Some(_)) => {
            return bad("a restore needs a data dir of its own, not a shared environment")
        }
        (_, Some(_)) if matches!(spec.start, Start::Join { .. }) => {
            return bad("a restored node resumes its cluster; it does not join one")
        }
        _ => {}
    }
    // An entry must fit in a gRPC message, with room for the batch around it.
    let room = spec.config.max_entry_size.saturating_add(64 * 1024);
    if room > spec.grpc.max_message_size {
        return Err(LaunchError::Config(format!(
            "max_entry_size ({}) does not fit in the gRPC max_message_size ({}) with room for \
             the message around it",
            spec.config.max_entry_size, spec.grpc.max_message_size
        )));
    }
    if let Start::Join { via, .. } = &spec.start {
        if via.is_empty() {
            return bad("joining needs the address of at least one member");
        }
    }
    if let Some(members) = spec.initial_members() {
        if members.contains_key(&0) {
            return bad("node id 0 is reserved");
        }
    }
    Ok(())
}

/// Whether `spec`'s storage already holds a node's data, so that [`launch`]
/// resumes it whatever `spec.start` says (a front-end that chooses how an
/// empty node starts asks this first). Memory never does. Storage that
/// cannot be read counts as holding data: [`launch`] then says why,
/// rather than the node starting anew over it.
pub fn holds_data(spec: &NodeSpec) -> bool {
    if let Storage::Shared(env, group) = &spec.storage {
        return env.holds(*group).unwrap_or(true);
    }
    dir_of(&spec.storage, spec.id.or(spec.default_id)).is_some_and(|d| d.join(DATA_FILE).is_file())
}

/// LMDB's data file, present once a store was opened in a dir.
const DATA_FILE: &str = "data.mdb";

fn dir_of(storage: &Storage, id: Option<u64>) -> Option<PathBuf> {
    match (storage, id) {
        (Storage::Memory, _) => None,
        (Storage::Dir(p), _) => Some(p.clone()),
        (Storage::PerNode(root), Some(id)) => Some(root.join(format!("node-{id}"))),
        (Storage::PerNodeNamed(root, name), Some(id)) => Some(root.join(format!("{name}-{id}"))),
        (Storage::PerNode(_) | Storage::PerNodeNamed(..), None) => None,
        (Storage::Shared(env, group), _) => Some(env.group_dir(*group)),
    }
}

/// The LMDB options a spec asks for (fsync, journal, segment size): what
/// [`launch`] opens a node's data dir with, and what a front-end opens a
/// shared environment with.
pub fn lmdb_options(spec: &NodeSpec) -> LmdbOptions {
    let opts = LmdbOptions::new()
        .no_sync(spec.no_sync)
        .journal(spec.journal);
    match spec.journal_segment_size {
        Some(bytes) => opts.journal_segment_size(bytes),
        None => opts,
    }
}

fn open(dir: &Path, opts: LmdbOptions) -> Result<LmdbStore, LaunchError> {
    LmdbStore::open(dir, opts).map_err(|source| LaunchError::Storage {
        what: "cannot open the data dir",
        dir: dir.to_path_buf(),
        source,
    })
}

/// `group`'s store in the shared environment `env`.
fn open_group(env: &Arc<LmdbEnv>, group: u64) -> Result<LmdbStore, LaunchError> {
    env.group(group).map_err(|source| LaunchError::Storage {
        what: "cannot open the group's log in",
        dir: env.dir().to_path_buf(),
        source,
    })
}

/// The spec's store if it holds data (a log, a snapshot, a hard state), and
/// its dir.
fn stored(spec: &NodeSpec, id: Option<u64>) -> Result<Option<(PathBuf, LmdbStore)>, LaunchError> {
    if let Storage::Shared(env, group) = &spec.storage {
        let holds = env.holds(*group).map_err(|source| LaunchError::Storage {
            what: "cannot read the group's log in",
            dir: env.dir().to_path_buf(),
            source,
        })?;
        return match holds {
            true => Ok(Some((env.group_dir(*group), open_group(env, *group)?))),
            false => Ok(None),
        };
    }
    match dir_of(&spec.storage, id).filter(|d| d.join(DATA_FILE).is_file()) {
        Some(dir) => {
            let store = open(&dir, lmdb_options(spec))?;
            Ok(Some((dir, store)))
        }
        None => Ok(None),
    }
}

/// A data dir that holds a log: the node resumes from it.
fn resume(spec: &NodeSpec) -> Result<Option<Found>, LaunchError> {
    let guess = match spec.start {
        Start::Join { .. } => spec.id,
        _ => spec.id.or(spec.default_id),
    };
    let Some((dir, store)) = stored(spec, guess)? else {
        return Ok(None);
    };
    let holds_log = store.last_index()? > 0 || store.snapshot()?.get_metadata().index > 0;
    if !holds_log {
        // An empty environment (a start that failed early): start anew.
        return Ok(None);
    }
    let logger = &spec.logger;
    if spec.restore.is_some() {
        info!(logger, "the data dir already holds a log: resuming it, the restore is skipped (it was done before?)"; "dir" => %dir.display());
    }
    let stored = store.identity()?;
    let id = match (spec.id, &stored) {
        (Some(given), Some(s)) if given != s.node_id => {
            return Err(LaunchError::Config(format!(
                "{} belongs to node {}, not to node {given}",
                dir.display(),
                s.node_id
            )))
        }
        (Some(given), _) => given,
        (None, Some(s)) => s.node_id,
        (None, None) => spec.default_id.ok_or(LaunchError::MissingId)?,
    };
    if let Some(members) = spec.initial_members() {
        let cs = store.initial_state()?.conf_state;
        let stored: BTreeSet<u64> = cs.voters.iter().chain(&cs.learners).copied().collect();
        let given: BTreeSet<u64> = members.keys().copied().collect();
        if stored != given {
            // Membership drifts (members join and leave), but a stored
            // cluster that shares no other member with the list given is
            // another cluster: resuming it would leave this node outside
            // the cluster its peers form.
            if !stored.iter().any(|m| *m != id && given.contains(m)) {
                return Err(LaunchError::Config(format!(
                    "{} holds node {id}'s data of another cluster (members {stored:?}); the \
                     initial members given (--peers) are {given:?} and share no other member \
                     with it. To start a node of the cluster given, use a new data dir (or \
                     remove this one); to resume the stored cluster, start without the \
                     initial members",
                    dir.display()
                )));
            }
            warn!(logger, "the data dir holds a cluster whose members differ from the initial members given (--peers); the stored membership wins and the flag is ignored";
                "dir" => %dir.display(), "stored_members" => ?stored, "given_members" => ?given);
        }
    }
    let raft_addr = own_addr(spec, Some(id))?.or_else(|| recorded_addr(&store, id));
    info!(logger, "resuming from the data dir"; "dir" => %dir.display(), "id" => id);
    Ok(Some(Found {
        id,
        dir: Some(dir),
        store: Arc::new(store),
        raft_addr,
    }))
}

/// The gRPC settings a node's server runs with: `grpc`, with incoming
/// snapshots spooled in `data_dir/incoming-snapshots` (unless `grpc` names
/// a spool dir; a node without a data dir receives them in memory). What
/// a launched node and a sharded node's one server both use.
pub fn served_grpc(grpc: &GrpcConfig, data_dir: Option<&Path>) -> GrpcConfig {
    let mut served = grpc.clone();
    if served.snapshot_spool_dir.is_none() {
        served.snapshot_spool_dir = data_dir.map(spool_dir);
    }
    served
}

/// Where a node with data dir `dir` spools incoming snapshots. Files left
/// there by a process that died while receiving one are removed.
fn spool_dir(dir: &Path) -> PathBuf {
    let spool = dir.join("incoming-snapshots");
    if let Ok(entries) = std::fs::read_dir(&spool) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("incoming-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    spool
}

/// The raft address the spec gives node `id`: its own, or its entry in
/// the initial members (which must agree).
fn own_addr(spec: &NodeSpec, id: Option<u64>) -> Result<Option<String>, LaunchError> {
    let entry = id.and_then(|id| spec.initial_members().and_then(|m| m.get(&id)).cloned());
    match (&spec.raft_addr, entry) {
        (Some(given), Some(entry)) if *given != entry && !given.ends_with(":0") => {
            Err(LaunchError::Config(format!(
                "the raft address {given} differs from this node's entry in the initial members ({entry})"
            )))
        }
        (_, Some(entry)) => Ok(Some(entry)),
        (given, None) => Ok(given.clone()),
    }
}

/// `addr` with port 0 replaced by the port `listener` got.
fn with_bound_port(addr: &str, listener: &TcpListener) -> Result<String, LaunchError> {
    match addr.rsplit_once(':') {
        Some((host, "0")) => {
            let port = listener
                .local_addr()
                .map_err(|source| LaunchError::Bind {
                    addr: addr.to_string(),
                    source,
                })?
                .port();
            Ok(format!("{host}:{port}"))
        }
        _ => Ok(addr.to_string()),
    }
}

async fn ask_ticket(
    spec: &NodeSpec,
    transport: &GrpcTransport,
    via: &[String],
    raft_addr: &str,
) -> Result<JoinTicket, LaunchError> {
    let timeout = spec.config.conf_change_timeout;
    let ticket = request_join_ticket(transport, via, raft_addr, timeout).await?;
    if ticket.cluster_id != spec.config.cluster_id {
        return Err(LaunchError::Config(format!(
            "{via:?} belongs to cluster {:?}, not {:?}",
            ticket.cluster_id, spec.config.cluster_id
        )));
    }
    if let Some(id) = spec.id {
        if id != ticket.reserved_id {
            return Err(LaunchError::Config(format!(
                "node id {id} was given, but the cluster reserved id {} for this node; give no id when joining",
                ticket.reserved_id
            )));
        }
    }
    Ok(ticket)
}

/// The storage of a new node: restored, or empty.
fn create(spec: &NodeSpec, id: u64) -> Result<Found, LaunchError> {
    let Some(dir) = dir_of(&spec.storage, Some(id)) else {
        return Ok(Found {
            id,
            dir: None,
            store: Arc::new(MemStore::new()),
            raft_addr: None,
        });
    };
    let opts = lmdb_options(spec);
    let store = match (&spec.restore, &spec.storage) {
        (None, Storage::Shared(env, group)) => open_group(env, *group)?,
        (None, _) => open(&dir, opts)?,
        (Some(_), Storage::Shared(..)) => {
            return Err(LaunchError::Config(
                "a restore needs a data dir of its own, not a shared environment".into(),
            ))
        }
        (Some(Restore::WalFrom(src)), _) => {
            restore_wal_from(src, &dir, opts).map_err(|source| LaunchError::Storage {
                what: "cannot restore from the WAL into",
                dir: dir.clone(),
                source,
            })?
        }
        (Some(Restore::SnapshotFrom(src)), _) => restore_wal_snapshot_from(src, &dir, opts)
            .map_err(|source| LaunchError::Storage {
                what: "cannot restore from the snapshot into",
                dir: dir.clone(),
                source,
            })?,
    };
    Ok(Found {
        id,
        dir: Some(dir),
        store: Arc::new(store),
        raft_addr: None,
    })
}

/// How a new node's membership starts.
fn bootstrap_of(spec: &NodeSpec, id: u64, raft_addr: &str) -> Result<Bootstrap, LaunchError> {
    if spec.restore.is_some() {
        // The restored log holds the membership.
        return Ok(Bootstrap::None);
    }
    Ok(match &spec.start {
        Start::Single => Bootstrap::Single {
            addr: raft_addr.to_string(),
        },
        Start::Auto(m) if m.is_empty() => Bootstrap::Single {
            addr: raft_addr.to_string(),
        },
        Start::Members(m) | Start::Auto(m) => {
            if !m.contains_key(&id) {
                return Err(LaunchError::Config(format!(
                    "the initial members {:?} do not include this node ({id})",
                    m.keys().collect::<Vec<_>>()
                )));
            }
            Bootstrap::Members(m.clone())
        }
        Start::Join { .. } | Start::Wait => Bootstrap::None,
    })
}

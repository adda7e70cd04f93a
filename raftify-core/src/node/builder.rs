//! [`RaftBuilder`]: from a config, a state machine, a storage and a
//! transport to a running node — bootstrap or resume, restore the state
//! machine from the latest snapshot, start the loop.

use super::forward::Forwarder;
use super::handle::{HandleInner, RaftHandle, INBOX_CAPACITY};
use super::logging::default_logger;
use super::raft::Raft;
use crate::client_session::LazySession;
use crate::codec::{cluster_uid, decode_snapshot, ClusterMeta, SnapshotEnvelope};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::membership::validate_addr;
use crate::metrics::MetricsRegistry;
use crate::raft_loop::{LoopParts, RaftLoop};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::{Metrics, NodeState, Role};
use crate::storage::{conf_state_with_voters, LogStore, RaftStorage, StoreIdentity, WriteBatch};
use crate::transport::{Feedback, Transport};
use raft::eraftpb::{HardState, Snapshot};
use slog::{info, Logger};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::{mpsc, watch, RwLock};

/// How a node's membership starts when its storage is empty.
#[derive(Debug, Clone, Default)]
pub enum Bootstrap {
    /// Start with no membership and wait to be added by a leader (after
    /// [`RaftHandle::join_cluster`]), or resume from storage.
    #[default]
    None,
    /// A one-node cluster of this node at `addr`.
    Single {
        /// This node's raft address.
        addr: String,
    },
    /// A cluster of these voters (id → raft address). Every initial member
    /// must be given the same list.
    Members(BTreeMap<u64, String>),
}

/// Builds and starts a node. See the crate docs for a complete example.
pub struct RaftBuilder<E, SM> {
    config: Config,
    state_machine: SM,
    storage: Option<Arc<dyn LogStore>>,
    transport: Option<Arc<dyn Transport>>,
    bootstrap: Bootstrap,
    logger: Option<Logger>,
    _entry: PhantomData<fn() -> E>,
}

impl<E, SM> RaftBuilder<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    pub(super) fn new(config: Config, state_machine: SM) -> Self {
        RaftBuilder {
            config,
            state_machine,
            storage: None,
            transport: None,
            bootstrap: Bootstrap::None,
            logger: None,
            _entry: PhantomData,
        }
    }

    /// The log store (required).
    pub fn storage(mut self, storage: Arc<dyn LogStore>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The transport (required).
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// How to initialize an empty storage (ignored when the storage already
    /// holds a log: the node resumes from it).
    pub fn bootstrap(mut self, bootstrap: Bootstrap) -> Self {
        self.bootstrap = bootstrap;
        self
    }

    /// The slog logger (default: [`default_logger`]).
    pub fn logger(mut self, logger: Logger) -> Self {
        self.logger = Some(logger);
        self
    }

    /// Validates everything, restores state from storage and starts the
    /// node's loop on the current tokio runtime.
    pub async fn start(self) -> Result<Raft<E, SM>> {
        let config = self.config;
        config.validate()?;
        let store = self
            .storage
            .ok_or_else(|| Error::InvalidConfig("a storage is required".into()))?;
        let transport = self
            .transport
            .ok_or_else(|| Error::InvalidConfig("a transport is required".into()))?;
        // raft-rs adds `raft_id` to every record itself.
        let logger = self.logger.unwrap_or_else(default_logger);
        let mut sm = self.state_machine;

        check_identity(store.as_ref(), &config)?;
        // Loaded once (a large snapshot is read and verified in full).
        let mut snap = store.snapshot()?;
        let fresh = store.last_index()? == 0 && snap.get_metadata().index == 0;
        if fresh {
            bootstrap_storage(store.as_ref(), &config, &self.bootstrap)?;
            snap = store.snapshot()?;
        } else if !matches!(self.bootstrap, Bootstrap::None) {
            info!(
                logger,
                "storage holds a log; resuming from it and ignoring bootstrap members"
            );
        }

        // Restore the state machine and the address book from the latest
        // snapshot; raft then re-delivers the committed entries after it.
        let (meta, applied, applied_term) = restore_snapshot(&snap, &mut sm).await?;
        drop(snap);
        let initial = store.initial_state()?;
        if initial.hard_state.commit < applied {
            // The commit index is persisted lazily; a snapshot only covers
            // committed entries, so its index is a safe lower bound.
            let mut hs = initial.hard_state.clone();
            hs.commit = applied;
            store.write(WriteBatch {
                hard_state: Some(hs),
                ..WriteBatch::default()
            })?;
        }
        let conf_state = initial.conf_state;
        for (id, addr) in &meta.peers {
            if *id != config.id {
                transport.set_peer(*id, addr);
            }
        }
        transport.set_cluster_uid(meta.cluster_uid);

        let raft_config = config.to_raft_config(applied);
        let mut raw = raft::RawNode::new(&raft_config, RaftStorage::new(store.clone()), &logger)
            .map_err(|e| Error::Raft(format!("cannot start raft: {e}")))?;
        if conf_state.voters == [config.id] && conf_state.learners.is_empty() {
            // A single voter need not wait an election timeout.
            raw.campaign()?;
        }

        let (cmd_tx, cmd_rx) = mpsc::channel(config.max_pending_proposals);
        let (msg_tx, msg_rx) = mpsc::channel(INBOX_CAPACITY);
        let (fb_tx, fb_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(NodeState {
            role: Role::Follower,
            term: raw.raft.term,
            leader_id: 0,
            leader_addr: None,
            applied_index: applied,
            cluster_uid: meta.cluster_uid,
            fatal: None,
        });
        let (role_tx, role_rx) = watch::channel(state_rx.borrow().clone());
        let metrics = Arc::new(Metrics::default());
        let registry = MetricsRegistry::for_node(config.id);
        metrics.register(&registry);
        let sm = Arc::new(RwLock::new(sm));
        info!(logger, "raft node starting"; "applied" => applied, "voters" => ?conf_state.voters, "learners" => ?conf_state.learners);
        let event_loop = RaftLoop::<E, SM>::new(LoopParts {
            raw,
            store: store.clone(),
            transport: transport.clone(),
            feedback: Feedback { tx: fb_tx },
            sm: sm.clone(),
            config: config.clone(),
            logger: logger.clone(),
            cmd_rx,
            msg_rx,
            fb_rx,
            state_tx,
            role_tx,
            metrics: metrics.clone(),
            meta,
            conf_state,
            applied,
            applied_term,
            _entry: PhantomData,
        });
        let task = tokio::spawn(event_loop.run());
        let forwarder = Forwarder::start(transport.clone(), metrics.clone(), logger.clone());
        let handle = RaftHandle {
            inner: Arc::new(HandleInner {
                config,
                cmd_tx,
                msg_tx,
                state_rx,
                role_rx,
                metrics,
                registry,
                logger: logger.clone(),
                forwarder,
                forward_session: LazySession::new(),
                transport,
                store,
                task: std::sync::Mutex::new(Some(task)),
            }),
        };
        Ok(Raft::from_parts(handle, sm))
    }
}

fn check_identity(store: &dyn LogStore, config: &Config) -> Result<()> {
    let mine = StoreIdentity {
        node_id: config.id,
        cluster_id: config.cluster_id.clone(),
    };
    match store.identity()? {
        Some(found) if found != mine => Err(Error::InvalidConfig(format!(
            "the storage belongs to node {} of cluster {:?}, not to node {} of cluster {:?}",
            found.node_id, found.cluster_id, mine.node_id, mine.cluster_id
        ))),
        Some(_) => Ok(()),
        None => Ok(store.set_identity(&mine)?),
    }
}

/// Writes the initial snapshot of a bootstrapped cluster: index 1, term 1,
/// the initial voters, and their addresses in raftify's metadata.
fn bootstrap_storage(store: &dyn LogStore, config: &Config, bootstrap: &Bootstrap) -> Result<()> {
    let members = match bootstrap {
        Bootstrap::None => return Ok(()),
        Bootstrap::Single { addr } => BTreeMap::from([(config.id, addr.clone())]),
        Bootstrap::Members(m) => m.clone(),
    };
    if !members.contains_key(&config.id) {
        return Err(Error::InvalidConfig(format!(
            "the initial members {:?} do not include this node ({})",
            members.keys().collect::<Vec<_>>(),
            config.id
        )));
    }
    for (id, addr) in &members {
        if *id == 0 {
            return Err(Error::InvalidConfig("node id 0 is reserved".into()));
        }
        validate_addr(addr).map_err(|e| Error::InvalidConfig(e.to_string()))?;
    }
    let meta = ClusterMeta {
        sessions: Default::default(),
        next_node_id: members.keys().max().copied().unwrap_or(0) + 1,
        cluster_uid: cluster_uid(&config.cluster_id, &members),
        peers: members.clone(),
    };
    let mut snap = Snapshot::default();
    snap.data = SnapshotEnvelope { meta, user: None }.encode().into();
    let md = snap.mut_metadata();
    md.index = 1;
    md.term = 1;
    md.set_conf_state(conf_state_with_voters(members.keys().copied()));
    let mut hs = HardState::default();
    hs.term = 1;
    hs.commit = 1;
    store.write(WriteBatch {
        snapshot: Some(snap),
        entries: Vec::new(),
        hard_state: Some(hs),
    })?;
    Ok(())
}

async fn restore_snapshot<E, SM>(snap: &Snapshot, sm: &mut SM) -> Result<(ClusterMeta, u64, u64)>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    let md = snap.get_metadata();
    if md.index == 0 {
        return Ok((ClusterMeta::default(), 0, 0));
    }
    let (meta, state) = decode_snapshot(&snap.data).map_err(|e| {
        Error::Storage(crate::storage::StorageError::corrupted(
            format!("the snapshot at index {} does not decode: {e}", md.index),
            "the stored snapshot",
        ))
    })?;
    if let Some(mut state) = state {
        sm.restore_from(&mut state)
            .await
            .map_err(|e| Error::StateMachine(format!("restore from snapshot: {e}")))?;
    }
    Ok((meta, md.index, md.term))
}

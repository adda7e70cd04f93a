//! The public face of a node: [`Raft`] (typed, owns the state machine) and
//! [`RaftHandle`] (untyped, cloneable, what transports and servers hold).

use crate::codec::{frame_user, ClusterMeta, SnapshotEnvelope, TAG_RESERVE_ID};
use crate::config::Config;
use crate::error::{Error, ErrorInfo, Result};
use crate::forward::Forwarder;
use crate::membership::{build_conf_change, validate_addr, JoinTicket, Member, MembershipChange};
use crate::raft_loop::{Applied, Command, LoopParts, ProposalKind, RaftLoop, Reply};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::{Metrics, MetricsSnapshot, NodeState, Role, Status};
use crate::storage::{conf_state_with_voters, LogStore, RaftStorage, StoreIdentity, WriteBatch};
use crate::transport::{ClusterRequest, ClusterResponse, Feedback, Transport};
use raft::eraftpb::{HardState, Message, Snapshot};
use slog::{info, o, Drain, Logger};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, RwLock};
use tokio::task::JoinHandle;

/// Capacity of a node's inbox of raft message batches; when full, further
/// batches are dropped (raft retransmits) instead of growing memory.
const INBOX_CAPACITY: usize = 4096;

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

/// The process-wide default logger: terminal output at info level.
///
/// raft-rs logs through `slog`; pass your own logger with
/// [`RaftBuilder::logger`] to route it elsewhere.
pub fn default_logger() -> Logger {
    static LOGGER: OnceLock<Logger> = OnceLock::new();
    LOGGER
        .get_or_init(|| {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            let drain = slog_term::FullFormat::new(decorator).build().fuse();
            let drain = slog_async::Async::new(drain)
                .chan_size(4096)
                .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
                .build()
                .fuse();
            let drain = slog::LevelFilter::new(drain, slog::Level::Info).fuse();
            Logger::root(drain, o!())
        })
        .clone()
}

/// A logger that discards everything (tests, benchmarks).
pub fn discard_logger() -> Logger {
    Logger::root(slog::Discard, o!())
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
        let logger = self
            .logger
            .unwrap_or_else(default_logger)
            .new(o!("raft_id" => config.id));
        let mut sm = self.state_machine;

        check_identity(store.as_ref(), &config)?;
        let fresh = store.last_index()? == 0 && store.snapshot()?.get_metadata().index == 0;
        if fresh {
            bootstrap_storage(store.as_ref(), &config, &self.bootstrap)?;
        } else if !matches!(self.bootstrap, Bootstrap::None) {
            info!(
                logger,
                "storage holds a log; resuming from it and ignoring bootstrap members"
            );
        }

        // Restore the state machine and the address book from the latest
        // snapshot; raft then re-delivers the committed entries after it.
        let snap = store.snapshot()?;
        let (meta, applied, applied_term) = restore_snapshot(&snap, &mut sm).await?;
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
            fatal: None,
        });
        let metrics = Arc::new(Metrics::default());
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
            metrics: metrics.clone(),
            meta,
            conf_state,
            applied,
            applied_term,
            _entry: PhantomData,
        });
        let task = tokio::spawn(event_loop.run());
        let forwarder = Forwarder::start(transport.clone(), metrics.clone());
        let handle = RaftHandle {
            inner: Arc::new(HandleInner {
                config,
                cmd_tx,
                msg_tx,
                state_rx,
                metrics,
                forwarder,
                transport,
                store,
                task: std::sync::Mutex::new(Some(task)),
            }),
        };
        Ok(Raft {
            handle,
            sm,
            _entry: PhantomData,
        })
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
        next_node_id: members.keys().max().copied().unwrap_or(0) + 1,
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
    let env = SnapshotEnvelope::decode(&snap.data).map_err(|e| {
        Error::Storage(crate::storage::StorageError::Corrupted(format!(
            "snapshot at index {}: {e}",
            md.index
        )))
    })?;
    if let Some(user) = env.user {
        sm.restore(user)
            .await
            .map_err(|e| Error::StateMachine(format!("restore from snapshot: {e}")))?;
    }
    Ok((env.meta, md.index, md.term))
}

struct HandleInner {
    config: Config,
    cmd_tx: mpsc::Sender<Command>,
    msg_tx: mpsc::Sender<(Option<String>, Vec<Message>)>,
    state_rx: watch::Receiver<NodeState>,
    metrics: Arc<Metrics>,
    transport: Arc<dyn Transport>,
    /// Coalesces the proposals this node forwards to the leader.
    forwarder: Forwarder,
    store: Arc<dyn LogStore>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// A cloneable, untyped handle to a running node: what transports deliver
/// messages to, what servers execute cluster requests on, and where every
/// operation that does not need the user's types lives.
#[derive(Clone)]
pub struct RaftHandle {
    inner: Arc<HandleInner>,
}

impl RaftHandle {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.config.id
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The node's log store (read-only inspection, e.g. for debug tools).
    pub fn storage(&self) -> &Arc<dyn LogStore> {
        &self.inner.store
    }

    /// Delivers raft messages received from the network. Never blocks: when
    /// the inbox is full the batch is dropped with [`Error::Overloaded`]
    /// (raft retransmits).
    pub fn step(&self, msgs: Vec<Message>) -> Result<()> {
        self.step_from(None, msgs)
    }

    /// Like [`RaftHandle::step`], with the sender's raft address when the
    /// transport knows it. A node that is not yet in the replicated address
    /// book of this node (a new member that is catching up, or this node
    /// before it has learned the membership) can then be answered.
    pub fn step_from(&self, from_addr: Option<String>, msgs: Vec<Message>) -> Result<()> {
        self.inner
            .msg_tx
            .try_send((from_addr, msgs))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded(INBOX_CAPACITY),
                mpsc::error::TrySendError::Closed(_) => self.closed_error(),
            })
    }

    fn closed_error(&self) -> Error {
        match &self.inner.state_rx.borrow().fatal {
            Some(reason) => Error::Fatal(reason.clone()),
            None => Error::Shutdown,
        }
    }

    /// Hands a command to the loop without waiting; a full inbox is
    /// `Overloaded`, a stopped loop `Shutdown` (or the fatal error).
    fn send_command<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (tx, rx) = oneshot::channel();
        self.inner.cmd_tx.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                Error::Overloaded(self.inner.config.max_pending_proposals)
            }
            mpsc::error::TrySendError::Closed(_) => self.closed_error(),
        })?;
        Ok(rx)
    }

    /// The loop's answer to a command sent with `send_command`.
    async fn await_reply<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        rx.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    async fn call<T>(
        &self,
        timeout: Duration,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T> {
        let rx = self.send_command(make)?;
        match tokio::time::timeout(timeout, self.await_reply(rx)).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(result) => result,
        }
    }

    /// Like [`RaftHandle::call`] for requests whose deadline the loop
    /// enforces itself (proposals, reads): no timer per request.
    async fn call_untimed<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let rx = self.send_command(make)?;
        self.await_reply(rx).await
    }

    /// Proposes an already encoded user entry on this node (which must be
    /// the leader) and returns the state machine's output once the entry is
    /// committed and applied here.
    pub async fn propose_encoded(&self, encoded: &[u8]) -> Result<Vec<u8>> {
        let rx = self.send_command(|reply| propose_user(encoded, reply))?;
        user_output(self.await_reply(rx).await?)
    }

    /// Proposes several encoded user entries on this node, which must be the
    /// leader (else the whole batch fails with [`Error::NotLeader`] and
    /// nothing is proposed). They enter the log together; each gets its own
    /// outcome, in order.
    pub async fn propose_encoded_batch(
        &self,
        entries: Vec<Vec<u8>>,
    ) -> Result<Vec<std::result::Result<Vec<u8>, ErrorInfo>>> {
        let state = self.state();
        if state.role != Role::Leader {
            return Err(match state.leader_id {
                0 => Error::NoLeader,
                leader_id => Error::NotLeader {
                    leader_id,
                    leader_addr: state.leader_addr,
                },
            });
        }
        // Every entry is handed to the loop before any answer is awaited, so
        // they share the loop's next wake-up (and Ready).
        let waiting: Vec<_> = entries
            .iter()
            .map(|entry| self.send_command(|reply| propose_user(entry, reply)))
            .collect();
        let mut outcomes = Vec::with_capacity(waiting.len());
        for w in waiting {
            let result = match w {
                Ok(rx) => self.await_reply(rx).await.and_then(user_output),
                Err(e) => Err(e),
            };
            outcomes.push(result.map_err(|e| ErrorInfo::from(&e)));
        }
        Ok(outcomes)
    }

    /// Waits until this node's state machine reflects every write committed
    /// before the call (raft ReadIndex), and returns that index. After it
    /// returns, reading the local state machine is linearizable. Works on
    /// followers too (the leader confirms the index).
    ///
    /// A node that knows no leader yet (just started, or an election is
    /// under way) waits up to two election timeouts for one before it
    /// answers [`Error::NoLeader`].
    pub async fn read_index(&self) -> Result<u64> {
        match self
            .call_untimed(|reply| Command::ReadIndex { reply })
            .await
        {
            Err(Error::NoLeader) if self.await_leader().await => {
                self.call_untimed(|reply| Command::ReadIndex { reply })
                    .await
            }
            other => other,
        }
    }

    /// Waits (two election timeouts at most) for a leader to be known;
    /// true when one is.
    async fn await_leader(&self) -> bool {
        let limit = self.inner.config.election_timeout() * 2;
        self.wait_for_leader(limit).await.is_ok()
    }

    /// Alias of [`RaftHandle::read_index`], by openraft's name.
    pub async fn ensure_linearizable(&self) -> Result<u64> {
        self.read_index().await
    }

    /// The current status (role, term, indexes, members, progress).
    pub async fn status(&self) -> Result<Status> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd_tx
            .send(Command::Status { reply: tx })
            .await
            .map_err(|_| self.closed_error())?;
        rx.await.map_err(|_| self.closed_error())
    }

    /// Role, term and leader as they change (a `watch` channel).
    pub fn subscribe(&self) -> watch::Receiver<NodeState> {
        self.inner.state_rx.clone()
    }

    /// The latest role, term and leader.
    pub fn state(&self) -> NodeState {
        self.inner.state_rx.borrow().clone()
    }

    /// The known leader, if any.
    pub fn leader_id(&self) -> Option<u64> {
        let id = self.inner.state_rx.borrow().leader_id;
        (id != 0).then_some(id)
    }

    /// True when this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.inner.state_rx.borrow().role == Role::Leader
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Waits until a leader is known (or `timeout`), returning its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64> {
        self.wait_for_leader_other_than(0, timeout).await
    }

    /// Waits until a leader other than node `not` is known.
    async fn wait_for_leader_other_than(&self, not: u64, timeout: Duration) -> Result<u64> {
        let mut rx = self.subscribe();
        let wait = async move {
            rx.wait_for(|s| (s.leader_id != 0 && s.leader_id != not) || s.role == Role::Stopped)
                .await
                .map(|s| s.clone())
        };
        match tokio::time::timeout(timeout, wait).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Err(_)) => Err(self.closed_error()),
            Ok(Ok(s)) if s.role == Role::Stopped => Err(self.closed_error()),
            Ok(Ok(s)) => Ok(s.leader_id),
        }
    }

    /// Changes the membership; several changes are applied atomically with
    /// joint consensus. Must run on the leader (see [`RaftHandle::request`]
    /// to forward). Returns the members once the change is applied.
    pub async fn change_membership_local(
        &self,
        changes: &[MembershipChange],
    ) -> Result<Vec<Member>> {
        let cc = build_conf_change(changes)?;
        let timeout = self.inner.config.conf_change_timeout;
        self.call(timeout, |reply| Command::ConfChange { cc, reply })
            .await?;
        Ok(self.status().await?.members)
    }

    /// Changes the membership from any node (forwarded to the leader).
    pub async fn change_membership(&self, changes: Vec<MembershipChange>) -> Result<Vec<Member>> {
        match self
            .request(ClusterRequest::ChangeMembership(changes))
            .await?
        {
            ClusterResponse::Members { members, .. } => Ok(members),
            other => Err(unexpected(other)),
        }
    }

    /// Adds a voter (or promotes a learner).
    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<Vec<Member>> {
        self.change_membership(vec![MembershipChange::AddVoter {
            id,
            addr: addr.to_string(),
        }])
        .await
    }

    /// Adds a learner.
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<Vec<Member>> {
        self.change_membership(vec![MembershipChange::AddLearner {
            id,
            addr: addr.to_string(),
        }])
        .await
    }

    /// Promotes a learner to voter, keeping its known address.
    pub async fn promote_learner(&self, id: u64) -> Result<Vec<Member>> {
        let status = self.status().await?;
        let member = status
            .members
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| Error::InvalidArgument(format!("node {id} is not a member")))?;
        let addr = member
            .addr
            .clone()
            .ok_or_else(|| Error::InvalidArgument(format!("node {id} has no known address")))?;
        self.add_voter(id, &addr).await
    }

    /// Removes a voter or learner.
    pub async fn remove_node(&self, id: u64) -> Result<Vec<Member>> {
        self.change_membership(vec![MembershipChange::Remove { id }])
            .await
    }

    /// Transfers leadership to `to` and waits until it leads. Forwarded to
    /// the leader when called on a follower.
    pub async fn transfer_leader(&self, to: u64) -> Result<()> {
        match self.request(ClusterRequest::TransferLeader(to)).await? {
            ClusterResponse::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Starts an election on this node now.
    pub async fn campaign(&self) -> Result<()> {
        let timeout = self.inner.config.conf_change_timeout;
        self.call(timeout, |reply| Command::Campaign { reply })
            .await
    }

    /// Takes a snapshot of the state machine now and compacts the log;
    /// returns the snapshot's index.
    pub async fn take_snapshot(&self) -> Result<u64> {
        let timeout = self.inner.config.conf_change_timeout;
        self.call(timeout, |reply| Command::Snapshot { reply })
            .await
    }

    /// Reserves a node id through the log and returns a join ticket for the
    /// node at `addr`. Forwarded to the leader when called on a follower.
    pub async fn request_id(&self, addr: &str) -> Result<JoinTicket> {
        match self
            .request(ClusterRequest::RequestId {
                addr: addr.to_string(),
            })
            .await?
        {
            ClusterResponse::Ticket(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    /// Joins the cluster of `ticket`: asks its leader to add this node (whose
    /// id must be the ticket's) at `self_addr`, as a voter or a learner.
    pub async fn join_cluster(
        &self,
        ticket: &JoinTicket,
        self_addr: &str,
        as_learner: bool,
    ) -> Result<Vec<Member>> {
        let config = &self.inner.config;
        if ticket.cluster_id != config.cluster_id {
            return Err(Error::InvalidArgument(format!(
                "the ticket is for cluster {:?}, this node belongs to {:?}",
                ticket.cluster_id, config.cluster_id
            )));
        }
        if ticket.reserved_id != config.id {
            return Err(Error::InvalidArgument(format!(
                "the ticket reserved id {}, this node has id {}",
                ticket.reserved_id, config.id
            )));
        }
        let change = if as_learner {
            MembershipChange::AddLearner {
                id: config.id,
                addr: self_addr.to_string(),
            }
        } else {
            MembershipChange::AddVoter {
                id: config.id,
                addr: self_addr.to_string(),
            }
        };
        let mut addrs: Vec<String> = ticket
            .peers
            .get(&ticket.leader_id)
            .cloned()
            .into_iter()
            .collect();
        addrs.extend(
            ticket
                .peers
                .values()
                .filter(|a| !addrs.contains(a))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let response = call_cluster(
            self.inner.transport.as_ref(),
            &addrs,
            ClusterRequest::ChangeMembership(vec![change]),
            config.conf_change_timeout,
        )
        .await?;
        match response {
            ClusterResponse::Members { members, .. } => Ok(members),
            other => Err(unexpected(other)),
        }
    }

    /// Transfers leadership from this node (the leader) to the voter with
    /// the most replicated log, and waits until a leader other than this node
    /// is known.
    /// `avoid`: nodes that must not take over (those a pending change
    /// removes or demotes), so leadership never bounces between them.
    async fn hand_over_leadership(&self, avoid: &[u64]) -> Result<()> {
        let id = self.id();
        let timeout = self.inner.config.conf_change_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.is_leader() {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            let status = self.status().await?;
            if status.role != Role::Leader {
                // Stepped down between the two looks (a transfer asked by an
                // earlier round completed): progress is only known to a leader.
                break;
            }
            let voters = status.voters();
            let target = status
                .progress
                .iter()
                .filter(|(pid, _)| **pid != id && voters.contains(pid) && !avoid.contains(pid))
                .max_by_key(|(_, p)| p.matched)
                .map(|(pid, _)| *pid)
                .ok_or_else(|| {
                    Error::ConfChangeRejected(format!(
                        "no voter that this change keeps can take over leadership from node {id}"
                    ))
                })?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(
                remaining,
                self.call(remaining, |reply| Command::TransferLeader {
                    to: target,
                    reply,
                }),
            )
            .await;
        }
        // Wait until the new leader is known, so the request can follow it.
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_for_leader_other_than(id, remaining)
            .await
            .map(|_| ())
    }

    /// Leaves the cluster: hands leadership over first if this node leads,
    /// then has the leader remove it. The last voter cannot leave.
    pub async fn leave(&self) -> Result<()> {
        let id = self.id();
        let timeout = self.inner.config.conf_change_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            let status = self.status().await?;
            if !status.members.iter().any(|m| m.id == id) {
                return Ok(());
            }
            if status.role == Role::Leader {
                match self.hand_over_leadership(&[id]).await {
                    Err(Error::ConfChangeRejected(_)) => {
                        return Err(Error::InvalidArgument(
                            "the last voter cannot leave its cluster".into(),
                        ))
                    }
                    // Retried until the deadline.
                    _ => continue,
                }
            }
            match self.remove_node(id).await {
                Ok(_) => return Ok(()),
                // An earlier attempt whose answer was lost already removed it.
                Err(Error::InvalidArgument(m)) if m.ends_with("is not a member") => return Ok(()),
                Err(e) if e.is_retryable() || matches!(e, Error::ConfChangeRejected(_)) => {
                    self.wait_for_leader(Duration::from_millis(200)).await.ok();
                    tokio::time::sleep(self.inner.config.tick_interval).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Executes a cluster request on this node, without forwarding: what a
    /// server calls when a peer or a client sends one.
    pub async fn handle_request(&self, request: ClusterRequest) -> Result<ClusterResponse> {
        match request {
            ClusterRequest::Propose(encoded) => Ok(ClusterResponse::Output(
                self.propose_encoded(&encoded).await?,
            )),
            ClusterRequest::ProposeBatch(entries) => Ok(ClusterResponse::Outputs(
                self.propose_encoded_batch(entries).await?,
            )),
            ClusterRequest::ReadIndex => Ok(ClusterResponse::ReadIndex(self.read_index().await?)),
            ClusterRequest::RequestId { addr } => {
                validate_addr(&addr)?;
                let timeout = self.inner.config.conf_change_timeout;
                let applied = self
                    .call(timeout, |reply| Command::Propose {
                        kind: ProposalKind::ReserveId,
                        data: vec![TAG_RESERVE_ID],
                        reply,
                    })
                    .await?;
                let Applied::NodeId(reserved_id) = applied else {
                    return Err(Error::Raft(format!("unexpected apply result {applied:?}")));
                };
                let status = self.status().await?;
                Ok(ClusterResponse::Ticket(JoinTicket {
                    reserved_id,
                    cluster_id: self.inner.config.cluster_id.clone(),
                    leader_id: self.id(),
                    peers: status
                        .members
                        .iter()
                        .filter_map(|m| m.addr.clone().map(|a| (m.id, a)))
                        .collect(),
                }))
            }
            ClusterRequest::ChangeMembership(changes) => {
                let me = self.id();
                let touches_me = changes.iter().any(|c| {
                    matches!(c, MembershipChange::Remove { id } | MembershipChange::AddLearner { id, .. } if *id == me)
                });
                if touches_me && self.is_leader() {
                    // Hand leadership to a voter the change keeps, then let
                    // it apply the change.
                    let leaving: Vec<u64> = changes
                        .iter()
                        .filter_map(|c| match c {
                            MembershipChange::Remove { id }
                            | MembershipChange::AddLearner { id, .. } => Some(*id),
                            MembershipChange::AddVoter { .. } => None,
                        })
                        .collect();
                    self.hand_over_leadership(&leaving).await?;
                    let addr = self.state().leader_addr.ok_or(Error::NoLeader)?;
                    let request = ClusterRequest::ChangeMembership(changes);
                    return self.inner.transport.call(&addr, request).await;
                }
                let members = self.change_membership_local(&changes).await?;
                Ok(ClusterResponse::Members {
                    leader_id: self.leader_id().unwrap_or(0),
                    members,
                })
            }
            ClusterRequest::TransferLeader(to) => {
                let timeout = self.inner.config.conf_change_timeout;
                self.call(timeout, |reply| Command::TransferLeader { to, reply })
                    .await?;
                Ok(ClusterResponse::Done)
            }
            ClusterRequest::Members => {
                let status = self.status().await?;
                Ok(ClusterResponse::Members {
                    leader_id: status.leader_id,
                    members: status.members,
                })
            }
        }
    }

    /// Executes a cluster request here, or on the leader when this node is
    /// not it (one hop through the transport).
    /// A node that knows no leader yet waits up to two election timeouts
    /// for one first.
    pub async fn request(&self, request: ClusterRequest) -> Result<ClusterResponse> {
        if self.is_leader() {
            // The common case: no copy of the request kept for forwarding.
            // (Losing leadership meanwhile answers a retryable error.)
            return self.handle_request(request).await;
        }
        let request = match request {
            ClusterRequest::Propose(entry) => {
                return self
                    .forward_proposal(entry)
                    .await
                    .map(ClusterResponse::Output)
            }
            other => other,
        };
        let mut result = self.handle_request(request.clone()).await;
        if matches!(result, Err(Error::NoLeader)) && self.await_leader().await {
            result = self.handle_request(request.clone()).await;
        }
        match result {
            Err(Error::NotLeader {
                leader_addr: Some(addr),
                ..
            }) => self.inner.transport.call(&addr, request).await,
            other => other,
        }
    }

    /// A proposal made on a follower: sent to the leader with the other
    /// proposals forwarded at the same time (see `forward.rs`), following
    /// one leader change.
    async fn forward_proposal(&self, entry: Vec<u8>) -> Result<Vec<u8>> {
        let mut state = self.state();
        if state.leader_id == 0 && self.await_leader().await {
            state = self.state();
        }
        if state.role == Role::Leader {
            return self.propose_encoded(&entry).await;
        }
        let mut addr = match (state.leader_id, state.leader_addr) {
            (0, _) => return Err(Error::NoLeader),
            (_, Some(addr)) => addr,
            (leader_id, None) => {
                return Err(Error::NotLeader {
                    leader_id,
                    leader_addr: None,
                })
            }
        };
        let mut hops = 0;
        loop {
            match self
                .inner
                .forwarder
                .forward(addr.clone(), entry.clone())
                .await
            {
                Err(Error::NotLeader {
                    leader_addr: Some(next),
                    ..
                }) if next != addr && hops == 0 => {
                    hops += 1;
                    addr = next;
                }
                other => return other,
            }
        }
    }

    /// Stops the node: the loop ends, pending requests fail with
    /// [`Error::Shutdown`]. Waits for the loop to finish.
    pub async fn shutdown(&self) {
        let _ = self.inner.cmd_tx.send(Command::Shutdown).await;
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Sends `request` to a cluster given some member addresses, following
/// `NotLeader` hints and retrying through elections until `timeout`.
pub async fn call_cluster(
    transport: &dyn Transport,
    addrs: &[String],
    request: ClusterRequest,
    timeout: Duration,
) -> Result<ClusterResponse> {
    if addrs.is_empty() {
        return Err(Error::InvalidArgument("no cluster address given".into()));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = Error::NoLeader;
    let mut next: Option<String> = None;
    let mut round = 0usize;
    while tokio::time::Instant::now() < deadline {
        let addr = next
            .take()
            .unwrap_or_else(|| addrs[round % addrs.len()].clone());
        round += 1;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, transport.call(&addr, request.clone())).await {
            Err(_) => return Err(Error::Timeout(timeout)),
            Ok(Ok(resp)) => return Ok(resp),
            Ok(Err(Error::NotLeader {
                leader_addr: Some(leader),
                ..
            })) => next = Some(leader),
            Ok(Err(e)) if retryable_in_cluster(&e) => {
                last_err = e;
                if round.is_multiple_of(addrs.len()) {
                    tokio::time::sleep(Duration::from_millis(50 * round.min(20) as u64)).await;
                }
            }
            Ok(Err(e)) => return Err(e),
        }
    }
    Err(match last_err {
        Error::NoLeader => Error::Timeout(timeout),
        e => e,
    })
}

fn retryable_in_cluster(e: &Error) -> bool {
    e.is_retryable()
        || matches!(
            e,
            Error::Transport(_) | Error::Shutdown | Error::LeadershipLost
        )
        || matches!(e, Error::ConfChangeRejected(m) if m.contains("in progress") || m.contains("pending"))
}

/// Asks a cluster member (any: followers forward) for a join ticket for a
/// node that will listen on `self_addr`. The caller then starts its node
/// with the ticket's id and calls [`RaftHandle::join_cluster`].
pub async fn request_join_ticket(
    transport: &dyn Transport,
    member_addrs: &[String],
    self_addr: &str,
    timeout: Duration,
) -> Result<JoinTicket> {
    let request = ClusterRequest::RequestId {
        addr: self_addr.to_string(),
    };
    match call_cluster(transport, member_addrs, request, timeout).await? {
        ClusterResponse::Ticket(t) => Ok(t),
        other => Err(unexpected(other)),
    }
}

/// The command proposing an encoded user entry.
fn propose_user(encoded: &[u8], reply: Reply<Applied>) -> Command {
    Command::Propose {
        kind: ProposalKind::User,
        data: frame_user(encoded),
        reply,
    }
}

/// The state machine's output of an applied user entry.
fn user_output(applied: Applied) -> Result<Vec<u8>> {
    match applied {
        Applied::Output(out) => Ok(out),
        other => Err(Error::Raft(format!("unexpected apply result {other:?}"))),
    }
}

pub(crate) fn unexpected(resp: ClusterResponse) -> Error {
    Error::Transport(format!("unexpected response {resp:?}"))
}

/// A running node, typed by its log entry and state machine.
///
/// Dereferences to [`RaftHandle`] for everything that does not need the
/// types (membership, status, reads, shutdown).
pub struct Raft<E, SM> {
    handle: RaftHandle,
    sm: Arc<RwLock<SM>>,
    _entry: PhantomData<fn() -> E>,
}

impl<E, SM> Clone for Raft<E, SM> {
    fn clone(&self) -> Self {
        Raft {
            handle: self.handle.clone(),
            sm: self.sm.clone(),
            _entry: PhantomData,
        }
    }
}

impl<E, SM> Deref for Raft<E, SM> {
    type Target = RaftHandle;
    fn deref(&self) -> &RaftHandle {
        &self.handle
    }
}

impl<E, SM> Raft<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    /// Starts building a node with `config` and the user's state machine.
    pub fn builder(config: Config, state_machine: SM) -> RaftBuilder<E, SM> {
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

    /// The untyped handle (for transports and servers).
    pub fn handle(&self) -> &RaftHandle {
        &self.handle
    }

    /// Proposes `entry` on this node, which must be the leader
    /// ([`Error::NotLeader`] tells where the leader is). Resolves with the
    /// state machine's output once the entry is committed and applied here.
    pub async fn propose(&self, entry: &E) -> Result<Vec<u8>> {
        let encoded = entry.encode().map_err(|e| Error::Encode(e.to_string()))?;
        self.handle.propose_encoded(&encoded).await
    }

    /// Like [`Raft::propose`], but a follower forwards the entry to the
    /// leader through the transport.
    pub async fn client_write(&self, entry: &E) -> Result<Vec<u8>> {
        let encoded = entry.encode().map_err(|e| Error::Encode(e.to_string()))?;
        match self
            .handle
            .request(ClusterRequest::Propose(encoded))
            .await?
        {
            ClusterResponse::Output(out) => Ok(out),
            other => Err(unexpected(other)),
        }
    }

    /// The state machine, for reads. A read through it is a local (possibly
    /// stale) read; see [`Raft::linearizable_read`].
    pub fn state_machine(&self) -> &Arc<RwLock<SM>> {
        &self.sm
    }

    /// Runs `read` on the state machine after confirming, through raft's
    /// ReadIndex, that it reflects every write committed before the call.
    pub async fn linearizable_read<T>(&self, read: impl FnOnce(&SM) -> T) -> Result<T> {
        self.handle.read_index().await?;
        let sm = self.sm.read().await;
        Ok(read(&sm))
    }

    /// Runs `read` on the local state machine now (may be stale).
    pub async fn stale_read<T>(&self, read: impl FnOnce(&SM) -> T) -> T {
        let sm = self.sm.read().await;
        read(&sm)
    }
}

//! [`RaftHandle`]: commands to this node's loop. The bottom layer of the
//! node: everything here runs on this node only; forwarding to the leader
//! (`forward.rs`) and membership administration (`admin.rs`) are built on
//! it.

use super::forward::Forwarder;
use crate::client_session::LazySession;
use crate::codec::frame_user;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::MetricsRegistry;
use crate::raft_loop::{Applied, Command, ProposalKind, Reply};
use crate::status::{Metrics, MetricsSnapshot, NodeState, Role, Status};
use crate::storage::LogStore;
use crate::transport::{Outcome, Transport};
use crate::ErrorInfo;
use raft::eraftpb::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Capacity of a node's inbox of raft message batches; when full, further
/// batches are dropped (raft retransmits) instead of growing memory.
pub(crate) const INBOX_CAPACITY: usize = 4096;

pub(super) struct HandleInner {
    pub(super) config: Config,
    pub(super) cmd_tx: mpsc::Sender<Command>,
    pub(super) msg_tx: mpsc::Sender<(Option<String>, Vec<Message>)>,
    pub(super) state_rx: watch::Receiver<NodeState>,
    /// The same, changed only on elections (not on every applied entry).
    pub(super) role_rx: watch::Receiver<NodeState>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) registry: MetricsRegistry,
    pub(super) logger: slog::Logger,
    pub(super) transport: Arc<dyn Transport>,
    /// Coalesces the proposals this node forwards to the leader.
    pub(super) forwarder: Forwarder,
    /// The session this node's forwarded proposals are written in.
    pub(super) forward_session: LazySession,
    pub(super) store: Arc<dyn LogStore>,
    pub(super) task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// A cloneable, untyped handle to a running node: what transports deliver
/// to ([`RaftHandle::inbound`]), what servers execute requests on, and
/// where every operation that does not need the user's types lives.
///
/// Writes and membership changes made through it go to the leader when
/// this node does not lead; reads confirm with the leader (ReadIndex).
#[derive(Clone)]
pub struct RaftHandle {
    pub(super) inner: Arc<HandleInner>,
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

    /// The transport this node talks to its peers through.
    pub(crate) fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// Delivers raft messages received from the network, with the sender's
    /// raft address when the transport knows it (a new member that is
    /// catching up can then be answered before it is in this node's
    /// address book). Never blocks: when the inbox is full the batch is
    /// dropped with [`Error::Overloaded`] (raft retransmits).
    pub(crate) fn step_from(&self, from_addr: Option<String>, msgs: Vec<Message>) -> Result<()> {
        self.inner
            .msg_tx
            .try_send((from_addr, msgs))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full((_, msgs)) => {
                    Metrics::add(&self.inner.metrics.inbox_dropped, msgs.len() as u64);
                    Error::Overloaded(INBOX_CAPACITY)
                }
                mpsc::error::TrySendError::Closed(_) => self.closed_error(),
            })
    }

    pub(super) fn closed_error(&self) -> Error {
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

    /// The loop's answer to a command sent with `send_command`. A loop that
    /// ended without answering stopped after taking the command: its outcome
    /// is unknown.
    async fn await_reply<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        rx.await
            .unwrap_or_else(|_| Err(Error::Interrupted("the raft loop ended".into())))
    }

    /// A command the loop answers within `timeout`.
    pub(super) async fn call<T>(
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

    /// A command whose deadline the loop enforces itself (proposals,
    /// reads): no timer per request.
    pub(super) async fn call_untimed<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T> {
        let rx = self.send_command(make)?;
        self.await_reply(rx).await
    }

    /// Proposes an encoded user entry on this node, which must lead; the
    /// state machine's output once the entry is committed and applied here.
    pub(crate) async fn propose_here(&self, encoded: &[u8]) -> Result<Vec<u8>> {
        self.check_entry_size(encoded)?;
        let rx = self.send_command(|reply| propose_user(encoded, reply))?;
        user_output(self.await_reply(rx).await?)
    }

    /// Proposes several encoded user entries on this node, which must lead
    /// (else the whole batch fails with [`Error::NotLeader`] and nothing is
    /// proposed). They enter the log together; each gets its own outcome,
    /// in order.
    pub(crate) async fn propose_batch_here(&self, entries: Vec<Vec<u8>>) -> Result<Vec<Outcome>> {
        let framed = entries
            .iter()
            .map(|entry| self.check_entry_size(entry).map(|()| frame_user(entry)))
            .collect();
        self.propose_framed_batch_here(framed).await
    }

    /// Proposes framed user writes (each already refused when `Err`) on
    /// this node, which must lead, as [`RaftHandle::propose_batch_here`]
    /// does.
    pub(super) async fn propose_framed_batch_here(
        &self,
        framed: Vec<Result<Vec<u8>>>,
    ) -> Result<Vec<Outcome>> {
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
        let waiting: Vec<_> = framed
            .into_iter()
            .map(|data| {
                let data = data?;
                self.send_command(|reply| Command::Propose {
                    kind: ProposalKind::User,
                    data,
                    reply,
                })
            })
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

    /// Refuses an entry over [`Config::max_entry_size`] before it goes
    /// anywhere.
    pub(super) fn check_entry_size(&self, encoded: &[u8]) -> Result<()> {
        let limit = self.inner.config.max_entry_size;
        if encoded.len() > limit {
            return Err(Error::InvalidArgument(format!(
                "the entry is {} bytes; the limit is {limit} (max_entry_size)",
                encoded.len()
            )));
        }
        Ok(())
    }

    /// Proposes a raftify-internal entry (a node id reservation) here.
    pub(super) async fn propose_internal(
        &self,
        kind: ProposalKind,
        data: Vec<u8>,
    ) -> Result<Applied> {
        let timeout = self.inner.config.conf_change_timeout;
        self.call(timeout, |reply| Command::Propose { kind, data, reply })
            .await
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
    pub(super) async fn await_leader(&self) -> bool {
        let limit = self.inner.config.election_timeout() * 2;
        self.wait_for_leader(limit).await.is_ok()
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

    /// Role, term, leader and applied index as they change (a `watch`
    /// channel that changes with every round of applied entries).
    pub fn subscribe(&self) -> watch::Receiver<NodeState> {
        self.inner.state_rx.clone()
    }

    /// Role, term, leader, cluster identity and a fatal error as they
    /// change: a `watch` channel that does not change when only the applied
    /// index does (its `applied_index` is the one at the last such change).
    /// For background tasks that react to elections, which should not wake
    /// on every write.
    pub fn subscribe_role(&self) -> watch::Receiver<NodeState> {
        self.inner.role_rx.clone()
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

    /// The identity of the cluster this node belongs to (0 while unknown).
    pub fn cluster_uid(&self) -> u64 {
        self.inner.state_rx.borrow().cluster_uid
    }

    /// True when this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.inner.state_rx.borrow().role == Role::Leader
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// The connection and authentication metrics of a server that serves
    /// this node (`raftify_connections{server}`,
    /// `raftify_connections_refused_total{server}`,
    /// `raftify_auth_failures_total{server}`).
    pub fn server_metrics(&self, server: &'static str) -> crate::metrics::ServerMetrics {
        self.inner.metrics.server(server)
    }

    /// The node's Prometheus registry: the core's metrics (labelled
    /// `node="<id>"`), to which a front-end adds its own and which it
    /// serves ([`MetricsRegistry::encode`]).
    pub fn metrics_registry(&self) -> MetricsRegistry {
        self.inner.registry.clone()
    }

    /// Waits until a leader is known (or `timeout`), returning its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64> {
        self.wait_for_leader_other_than(0, timeout).await
    }

    /// Waits until a leader other than node `not` is known.
    pub(super) async fn wait_for_leader_other_than(
        &self,
        not: u64,
        timeout: Duration,
    ) -> Result<u64> {
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

    /// Waits until this node has applied index `index` (or `timeout`).
    pub async fn wait_for_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.subscribe();
        let wait = async move {
            rx.wait_for(|s| s.applied_index >= index || s.role == Role::Stopped)
                .await
                .map(|s| s.role)
        };
        match tokio::time::timeout(timeout, wait).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Ok(role)) if role != Role::Stopped => Ok(()),
            Ok(_) => Err(self.closed_error()),
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
    pub async fn snapshot(&self) -> Result<u64> {
        let timeout = self.inner.config.conf_change_timeout;
        self.call(timeout, |reply| Command::Snapshot { reply })
            .await
    }

    /// Stops the node: the loop ends, pending requests fail with
    /// [`Error::Shutdown`] (or [`Error::Interrupted`] for proposals already
    /// in the log). Waits for the loop to finish.
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

/// The command proposing an encoded user entry.
fn propose_user(encoded: &[u8], reply: Reply<Applied>) -> Command {
    Command::Propose {
        kind: ProposalKind::User,
        data: frame_user(encoded),
        reply,
    }
}

/// The state machine's output of an applied user entry.
pub(super) fn user_output(applied: Applied) -> Result<Vec<u8>> {
    match applied {
        Applied::Output(out) => Ok(out),
        other => Err(Error::Raft(format!("unexpected apply result {other:?}"))),
    }
}

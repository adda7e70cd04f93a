//! The data path: one task owns raft-rs's `RawNode` and drives it.
//!
//! `run` is a handful of `select!` arms — a tick, raft messages from peers,
//! commands from handles, transport feedback, a saved snapshot, a finished
//! storage write — and after each wake-up one pass of the Ready cycle
//! (`ready.rs`), in protocol order:
//!
//! proposal → `RawNode::propose` (all of a wake-up's proposals in one raft
//! step) → `Ready` → leader messages sent → a leader's snapshot written and
//! installed → committed (already durable) entries applied in order,
//! proposers answered by `(term, index)` → **one storage write** for the
//! entries and hard state → messages that must follow persistence sent once
//! the write is durable → `advance`.
//!
//! The write is made in the loop, or — pipelined persistence, the default
//! on disk stores — by a writer (a thread when appends fsync) while the
//! loop goes on (`persist.rs`); a synchronous write is the pipelined cycle
//! with nothing in flight, so there is one cycle in one order.
//!
//! Each concern has its own file and state: message admission
//! (`admit.rs`), proposals (`proposals.rs`), leadership transfers and
//! elections (`leadership.rs`), applying (`apply.rs`), reads (`reads.rs`),
//! snapshots (`snapshot.rs`), persistence (`persist.rs`, its writer in
//! `writer.rs`), status
//! (`status.rs`). On shutdown each fails what it holds.
//!
//! Nothing a peer or a client sends can stop this loop: bad messages are
//! logged and dropped, failed proposals are answered with an error. Only a
//! storage failure is fatal, because raft's safety rests on it.

mod admit;
mod apply;
mod command;
mod hibernate;
mod leadership;
mod persist;
mod proposals;
mod reads;
mod ready;
mod snapshot;
mod status;
mod writer;

pub(crate) use command::{Applied, Command, ProposalKind, Reply};

use crate::codec::ClusterMeta;
use crate::config::Config;
use crate::error::Error;
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::{Metrics, NodeState, Role};
use crate::storage::{LogStore, RaftStorage};
use crate::transport::{Feedback, FeedbackEvent, Transport};
use hibernate::Hibernation;
use leadership::Leadership;
use persist::Persistence;
use proposals::Proposals;
use raft::eraftpb::{ConfState, Message};
use raft::{RawNode, StateRole};
use reads::Reads;
use slog::{error, info, warn, Logger};
use snapshot::Snapshots;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::{mpsc, watch, RwLock};

/// Most commands or message batches taken per wake-up before handling Ready.
const MAX_DRAIN: usize = 4096;

/// Everything the loop task owns.
pub(crate) struct RaftLoop<E, SM> {
    raw: RawNode<RaftStorage>,
    store: Arc<dyn LogStore>,
    transport: Arc<dyn Transport>,
    feedback: Feedback,
    sm: Arc<RwLock<SM>>,
    config: Config,
    logger: Logger,
    cmd_rx: mpsc::Receiver<Command>,
    msg_rx: mpsc::Receiver<(Option<String>, Vec<Message>)>,
    fb_rx: mpsc::UnboundedReceiver<FeedbackEvent>,
    state_tx: watch::Sender<NodeState>,
    /// The same, sent only when more than the applied index changed.
    role_tx: watch::Sender<NodeState>,
    metrics: Arc<Metrics>,
    /// raftify's replicated metadata (the address book, the next node id).
    meta: ClusterMeta,
    conf_state: ConfState,
    applied: u64,
    applied_term: u64,
    _entry: PhantomData<fn() -> E>,
    proposals: Proposals,
    reads: Reads,
    leadership: Leadership,
    snapshots: Snapshots,
    persist: Persistence,
    /// Set by input handlers that find the node unable to continue safely.
    fatal: Option<Error>,
    /// Addresses of peers not (yet) in the address book, from their messages.
    learned_addrs: HashMap<u64, String>,
    /// Per peer: a log end it is to reach, and when it was the end
    /// (leader only; for the lag in seconds).
    caught_up: HashMap<u64, (u64, std::time::Instant)>,
    /// Recent events, for [`crate::Status::events`].
    events: std::collections::VecDeque<crate::status::Event>,
    ticks: u64,
    hibernation: Hibernation,
}

/// What the builder hands the loop.
pub(crate) struct LoopParts<E, SM> {
    pub raw: RawNode<RaftStorage>,
    pub store: Arc<dyn LogStore>,
    pub transport: Arc<dyn Transport>,
    pub feedback: Feedback,
    pub sm: Arc<RwLock<SM>>,
    pub config: Config,
    pub logger: Logger,
    pub cmd_rx: mpsc::Receiver<Command>,
    pub msg_rx: mpsc::Receiver<(Option<String>, Vec<Message>)>,
    pub fb_rx: mpsc::UnboundedReceiver<FeedbackEvent>,
    pub state_tx: watch::Sender<NodeState>,
    pub role_tx: watch::Sender<NodeState>,
    pub metrics: Arc<Metrics>,
    pub meta: ClusterMeta,
    pub conf_state: ConfState,
    pub applied: u64,
    pub applied_term: u64,
    pub _entry: PhantomData<fn() -> E>,
}

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    pub(crate) fn new(p: LoopParts<E, SM>) -> Self {
        let leadership = Leadership::new(&p.config, p.raw.raft.state);
        let persist = Persistence::start(&p.config, &p.store, &p.metrics);
        let liveness = p.config.hibernate.then(|| p.transport.liveness()).flatten();
        if p.config.hibernate && liveness.is_none() {
            warn!(p.logger, "hibernate is on, but the transport cannot tell whether peers are up: this replica never sleeps");
        }
        RaftLoop {
            raw: p.raw,
            store: p.store,
            transport: p.transport,
            feedback: p.feedback,
            sm: p.sm,
            logger: p.logger,
            cmd_rx: p.cmd_rx,
            msg_rx: p.msg_rx,
            fb_rx: p.fb_rx,
            state_tx: p.state_tx,
            role_tx: p.role_tx,
            metrics: p.metrics,
            meta: p.meta,
            conf_state: p.conf_state,
            applied: p.applied,
            applied_term: p.applied_term,
            _entry: PhantomData,
            proposals: Proposals::default(),
            reads: Reads::default(),
            leadership,
            snapshots: Snapshots::new(p.applied),
            persist,
            fatal: None,
            learned_addrs: HashMap::new(),
            caught_up: HashMap::new(),
            events: Default::default(),
            ticks: 0,
            hibernation: Hibernation::new(liveness),
            config: p.config,
        }
    }

    /// Runs until shutdown or a fatal storage error.
    pub(crate) async fn run(mut self) {
        // raft-rs chose the first timeout when the node was created.
        self.reseed_election_timeout();
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let fatal = loop {
            let stop = tokio::select! {
                biased;
                _ = ticker.tick(), if self.hibernation.awake() => { self.on_tick(); false }
                _ = self.hibernation.leader_down(), if self.hibernation.watching() => {
                    self.on_leader_down();
                    false
                }
                Some((from, msgs)) = self.msg_rx.recv() => {
                    self.on_messages(from, msgs);
                    for _ in 0..MAX_DRAIN {
                        match self.msg_rx.try_recv() {
                            Ok((from, more)) => self.on_messages(from, more),
                            Err(_) => break,
                        }
                    }
                    false
                }
                Some(cmd) = self.cmd_rx.recv() => {
                    let mut stop = self.on_command(cmd);
                    for _ in 0..MAX_DRAIN {
                        if stop { break; }
                        match self.cmd_rx.try_recv() {
                            Ok(more) => stop = self.on_command(more),
                            Err(_) => break,
                        }
                    }
                    stop
                }
                Some(fb) = self.fb_rx.recv() => { self.on_feedback(fb); false }
                Some((index, keep_from, result)) = self.snapshots.done_rx.recv() => {
                    self.on_snapshot_saved(index, keep_from, result);
                    false
                }
                Some(done) = self.persist.done_rx.recv() => {
                    if let Err(e) = self.on_persisted(done) {
                        self.fatal = Some(e);
                    }
                    false
                }
                else => true,
            };
            if stop {
                break None;
            }
            if let Some(e) = self.fatal.take() {
                break Some(e);
            }
            self.flush_proposals();
            self.issue_read_batch();
            self.reseed_election_timeout();
            if let Err(e) = self.on_ready().await {
                break Some(e);
            }
            self.serve_snapshot_requests().await;
        };
        self.stop(fatal).await;
    }

    fn on_tick(&mut self) {
        if let Some(e) = self.persist.overdue() {
            self.fatal = Some(e);
            return;
        }
        if self.hibernation_tick() {
            return;
        }
        if self.campaign_waits_for_writes() {
            // raft-rs requires a durable log before a node campaigns (a sole
            // voter wins at once): the election waits for the writer, which
            // is a few milliseconds away (or the node stops on
            // `storage_timeout`).
        } else {
            self.raw.tick();
        }
        self.ticks += 1;
        // Read requests can be dropped by raft (no leader yet, a new leader
        // that has not committed in its term, lost messages): re-issue them
        // every heartbeat, and forget those whose caller gave up.
        if self.ticks.is_multiple_of(self.config.heartbeat_tick as u64) {
            self.retry_reads();
        }
        self.expire_proposals();
        self.expire_reads();
        self.keep_transferring();
        self.publish_progress();
    }

    /// Message batches waiting in the inbox.
    fn inbox_len(&self) -> usize {
        self.msg_rx.len()
    }

    fn on_feedback(&mut self, fb: FeedbackEvent) {
        match fb {
            FeedbackEvent::Unreachable(id) => {
                self.metrics
                    .peer_unreachable
                    .get_or_create(&crate::metrics::PeerLabel::of(id))
                    .inc();
                self.raw.report_unreachable(id)
            }
            FeedbackEvent::Snapshot(id, status) => self.raw.report_snapshot(id, status),
        }
    }

    /// Returns true when the loop must stop.
    fn on_command(&mut self, cmd: Command) -> bool {
        if !matches!(
            cmd,
            Command::Status { .. } | Command::Snapshot { .. } | Command::Shutdown
        ) {
            self.wake("command");
        }
        match cmd {
            Command::Propose { kind, data, reply } => self.proposals.queue(kind, data, reply),
            Command::ConfChange { cc, reply } => self.propose_conf_change(cc, reply),
            Command::ReadIndex { reply } => self.queue_read(reply),
            Command::TransferLeader { to, reply } => self.transfer_leader(to, reply),
            Command::Campaign { reply } => self.campaign(reply),
            Command::AdoptCluster { uid, reply } => {
                let _ = reply.send(self.adopt_cluster(uid));
            }
            // Taken after this wake-up's Ready, so it covers everything
            // applied so far.
            Command::Snapshot { reply } => self.snapshots.waiters.push((self.applied, reply)),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown => return true,
        }
        false
    }

    /// Takes on the cluster identity a join ticket carries. A node that
    /// already belongs to a cluster keeps its own, and refuses another.
    fn adopt_cluster(&mut self, uid: u64) -> crate::error::Result<()> {
        let mine = self.meta.cluster_uid;
        if mine == uid {
            return Ok(());
        }
        if mine != 0 {
            return Err(Error::InvalidArgument(format!(
                "this node's data belongs to cluster {mine:016x}, the ticket is for cluster \
                 {uid:016x}: join with a new, empty data dir"
            )));
        }
        self.meta.cluster_uid = uid;
        self.transport.set_cluster_uid(uid);
        self.publish_state();
        Ok(())
    }

    fn not_leader(&self) -> Error {
        let leader_id = self.raw.raft.leader_id;
        if leader_id == 0 || leader_id == self.config.id {
            Error::NoLeader
        } else {
            Error::NotLeader {
                leader_id,
                leader_addr: self.peer_addr(leader_id),
            }
        }
    }

    /// A peer's address: from the replicated address book, or else as
    /// learned from its messages (a node that just joined knows its leader
    /// before it has applied the change that lists it).
    fn peer_addr(&self, id: u64) -> Option<String> {
        self.meta
            .peers
            .get(&id)
            .or_else(|| self.learned_addrs.get(&id))
            .cloned()
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Ends the loop: lets the writes and the snapshot in progress finish
    /// (the store outlives the loop in the same process: a restart must not
    /// race with them), then fails everything still waiting.
    async fn stop(mut self, fatal: Option<Error>) {
        self.persist.finish(self.config.storage_timeout).await;
        if fatal.is_none() {
            if let Err(e) = self.persist.write_lazy_hs().await {
                warn!(self.logger, "could not write the commit index at shutdown"; "error" => %e);
            }
        }
        self.snapshots.finish(self.config.storage_timeout).await;
        let reason = fatal.as_ref().map(|e| e.to_string());
        if let Some(r) = &reason {
            error!(self.logger, "raft loop stopped"; "reason" => r);
        } else {
            info!(self.logger, "raft loop stopped");
        }
        // Requests not yet taken by raft were not applied: Shutdown (or the
        // fatal reason). Proposals already in the log may still commit.
        let refused = || match &reason {
            Some(r) => Error::Fatal(r.clone()),
            None => Error::Shutdown,
        };
        let in_log = || {
            Error::Interrupted(match &reason {
                Some(r) => format!("the node stopped: {r}"),
                None => "the node shut down".into(),
            })
        };
        self.proposals.fail_all(&refused, &in_log);
        self.reads.fail_all(&refused);
        self.leadership.fail_all(&refused);
        self.snapshots.fail_all(&refused);
        self.persist.drop_held();
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            cmd.fail(refused());
        }
        let stopped = |s: &mut NodeState| {
            s.role = Role::Stopped;
            s.leader_id = 0;
            s.leader_addr = None;
            s.fatal = reason.clone();
        };
        self.state_tx.send_modify(stopped);
        self.role_tx.send_modify(|s| {
            stopped(s);
            s.applied_index = self.applied;
        });
    }
}

//! The data path: one task owns raft-rs's `RawNode` and drives it.
//!
//! Read this file top to bottom to follow a write:
//! proposal → `RawNode::propose` (many per wake-up: they share one Ready) →
//! `Ready` → leader messages sent → committed (already durable) entries
//! applied in order, replies matched by `(term, index)` → **one storage
//! write** (snapshot, entries, hard state) → a received snapshot installed →
//! messages that must follow persistence sent → `advance`.
//!
//! With pipelined persistence (the default on disk stores) the storage write
//! goes to a writer task instead and the loop calls `advance_append_async`
//! at once: it keeps stepping messages, sending and applying while the
//! commit is on its way, and the Readys queued meanwhile are merged into the
//! next commit. The written entries stay readable through the storage
//! overlay until durable; messages that must follow persistence are held
//! until the write completes (`on_persisted` → `on_persist_ready`), and
//! raft-rs hands out only durable entries to apply.
//!
//! Nothing a peer or a client sends can stop this loop: bad messages are
//! logged and dropped, failed proposals are answered with an error. Only a
//! storage failure is fatal, because raft's safety rests on it.

use crate::codec::{parse_entry, ClusterMeta, ConfChangeContext, EntryPayload, SnapshotEnvelope};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::membership::{Member, MemberRole};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::{Metrics, NodeState, PeerProgress, Role, Status};
use crate::storage::{LogStore, RaftStorage, StorageError, WriteBatch};
use crate::transport::{Feedback, FeedbackEvent, Transport};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, StateRole};
use raft_proto::ConfChangeI;
use slog::{debug, error, info, warn, Logger};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, RwLock};
use tokio::time::Instant;

/// Most commands or message batches taken per wake-up before handling Ready.
const MAX_DRAIN: usize = 4096;

/// What an applied entry produced, matched against the kind of proposal.
#[derive(Debug)]
pub(crate) enum Applied {
    Output(Vec<u8>),
    ConfChanged,
    NodeId(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProposalKind {
    User,
    ConfChange,
    ReserveId,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// Requests from handles to the loop.
pub(crate) enum Command {
    Propose {
        kind: ProposalKind,
        data: Vec<u8>,
        reply: Reply<Applied>,
    },
    ConfChange {
        cc: ConfChangeV2,
        reply: Reply<Applied>,
    },
    ReadIndex {
        reply: Reply<u64>,
    },
    TransferLeader {
        to: u64,
        reply: Reply<()>,
    },
    Campaign {
        reply: Reply<()>,
    },
    Snapshot {
        reply: Reply<u64>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Shutdown,
}

struct Pending {
    term: u64,
    kind: ProposalKind,
    reply: Reply<Applied>,
    /// When the loop answers `Timeout` (callers set no timer of their own:
    /// one per proposal would cost more than the proposal).
    deadline: Instant,
}

/// What to do with a message from the network.
enum Admit {
    Step,
    Drop(&'static str),
    Fatal(Error),
}

/// Readers waiting on one ReadIndex round.
struct ReadWaiters {
    deadline: Instant,
    waiters: Vec<Reply<u64>>,
}

/// Linearizable reads: requests arriving while a ReadIndex round is in
/// flight share the next round; answered once the state machine has applied
/// the round's index.
#[derive(Default)]
struct Reads {
    batch: Vec<Reply<u64>>,
    /// When the oldest read of `batch` arrived (its deadline counts from it).
    batch_since: Option<Instant>,
    inflight: BTreeMap<Vec<u8>, ReadWaiters>,
    waiting_apply: Vec<(u64, ReadWaiters)>,
    next_ctx: u64,
}

/// Pipelined persistence: Readys handed to the writer task, not yet durable.
struct Pipeline {
    /// Jobs for the writer: `(ready number, what it persists)`.
    jobs: Option<mpsc::UnboundedSender<(u64, WriteBatch)>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    /// Number of the last Ready handed to the writer.
    submitted: u64,
    /// Number of the last Ready the writer made durable.
    persisted: u64,
    /// Messages that may leave only once the writes up to the number are
    /// durable (a follower's acknowledgements, votes).
    held: VecDeque<(u64, Vec<Message>)>,
    /// `campaign` requests waiting for the writes in flight (raft-rs requires
    /// a durable log before a node can win an election).
    campaigns: Vec<Reply<()>>,
}

impl Pipeline {
    fn in_flight(&self) -> bool {
        self.submitted > self.persisted
    }
}

/// Everything the loop task owns.
pub(crate) struct RaftLoop<E, SM> {
    pub(crate) raw: RawNode<RaftStorage>,
    pub(crate) store: Arc<dyn LogStore>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) feedback: Feedback,
    pub(crate) sm: Arc<RwLock<SM>>,
    pub(crate) config: Config,
    pub(crate) logger: Logger,
    pub(crate) cmd_rx: mpsc::Receiver<Command>,
    pub(crate) msg_rx: mpsc::Receiver<(Option<String>, Vec<Message>)>,
    pub(crate) fb_rx: mpsc::UnboundedReceiver<FeedbackEvent>,
    pub(crate) state_tx: watch::Sender<NodeState>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) meta: ClusterMeta,
    pub(crate) conf_state: ConfState,
    pub(crate) applied: u64,
    pub(crate) applied_term: u64,
    pub(crate) snapshot_index: u64,
    pub(crate) _entry: PhantomData<fn() -> E>,
    pending: BTreeMap<u64, Pending>,
    reads: Reads,
    transfer: Option<(u64, Reply<()>)>,
    /// Proposals received in this wake-up, not yet handed to raft.
    proposals: Vec<(ProposalKind, Vec<u8>, Reply<Applied>)>,
    /// Set by input handlers that find the node unable to continue safely.
    fatal: Option<Error>,
    /// State of the seeded election-timeout generator (`Config::election_seed`).
    election_rng: Option<u64>,
    /// Addresses of peers not (yet) in the address book, from their messages.
    learned_addrs: HashMap<u64, String>,
    /// On-demand snapshot requests: answered by the first snapshot saved
    /// at or after the index applied when they came.
    snapshot_waiters: Vec<(u64, Reply<u64>)>,
    /// The snapshot being saved in the background: (index, task).
    snapshot_job: Option<(u64, tokio::task::JoinHandle<()>)>,
    snapshot_done_tx: mpsc::UnboundedSender<(u64, u64, Result<()>)>,
    snapshot_done_rx: mpsc::UnboundedReceiver<(u64, u64, Result<()>)>,
    pending_commit: Option<u64>,
    pipeline: Option<Pipeline>,
    /// Completions from the writer task: the last durable Ready's number.
    persisted_rx: mpsc::UnboundedReceiver<Result<u64>>,
    ticks: u64,
    last_leader: u64,
    last_role: StateRole,
}

/// Fields the constructor fills; the rest start empty.
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
        let last_role = p.raw.raft.state;
        let id = p.config.id;
        let election_rng = p
            .config
            .election_seed
            .map(|s| (s ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)).max(1));
        let (snapshot_done_tx, snapshot_done_rx) = mpsc::unbounded_channel();
        RaftLoop {
            raw: p.raw,
            store: p.store,
            transport: p.transport,
            feedback: p.feedback,
            sm: p.sm,
            config: p.config,
            logger: p.logger,
            cmd_rx: p.cmd_rx,
            msg_rx: p.msg_rx,
            fb_rx: p.fb_rx,
            state_tx: p.state_tx,
            metrics: p.metrics,
            meta: p.meta,
            conf_state: p.conf_state,
            applied: p.applied,
            applied_term: p.applied_term,
            snapshot_index: p.applied,
            _entry: PhantomData,
            pending: BTreeMap::new(),
            reads: Reads::default(),
            transfer: None,
            proposals: Vec::new(),
            fatal: None,
            learned_addrs: HashMap::new(),
            election_rng,
            snapshot_waiters: Vec::new(),
            snapshot_job: None,
            snapshot_done_tx,
            snapshot_done_rx,
            pending_commit: None,
            pipeline: None,
            persisted_rx: mpsc::unbounded_channel().1,
            ticks: 0,
            last_leader: 0,
            last_role,
        }
    }

    /// Runs until shutdown or a fatal storage error.
    pub(crate) async fn run(mut self) {
        // raft-rs chose the first timeout when the node was created.
        self.reseed_election_timeout();
        self.start_pipeline();
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let fatal = loop {
            let stop = tokio::select! {
                biased;
                _ = ticker.tick() => { self.on_tick(); false }
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
                Some((index, keep_from, result)) = self.snapshot_done_rx.recv() => {
                    self.on_snapshot_saved(index, keep_from, result);
                    false
                }
                Some(done) = self.persisted_rx.recv() => {
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

    /// Starts the writer task when persistence is pipelined.
    fn start_pipeline(&mut self) {
        let blocking = self.store.blocking_writes();
        if !self.config.pipeline_writes.unwrap_or(blocking) {
            return;
        }
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_behind(
            self.store.clone(),
            blocking,
            self.config.storage_timeout,
            self.metrics.clone(),
            jobs_rx,
            done_tx,
        ));
        self.persisted_rx = done_rx;
        self.pipeline = Some(Pipeline {
            jobs: Some(jobs_tx),
            writer: Some(writer),
            submitted: 0,
            persisted: 0,
            held: VecDeque::new(),
            campaigns: Vec::new(),
        });
    }

    fn writes_in_flight(&self) -> bool {
        self.pipeline.as_ref().is_some_and(Pipeline::in_flight)
    }

    /// The writer made every Ready up to `done` durable.
    fn on_persisted(&mut self, done: Result<u64>) -> Result<()> {
        let number = done?;
        let Some(p) = self.pipeline.as_mut() else {
            return Ok(());
        };
        p.persisted = number;
        let mut ready: Vec<Message> = Vec::new();
        while p.held.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, msgs)) = p.held.pop_front() {
                ready.extend(msgs);
            }
        }
        let campaigns = if p.in_flight() {
            Vec::new()
        } else {
            std::mem::take(&mut p.campaigns)
        };
        self.raw.mut_store().overlay.persisted(number);
        self.raw.on_persist_ready(number);
        self.send(ready);
        for reply in campaigns {
            let _ = reply.send(self.raw.campaign().map_err(Error::from));
        }
        Ok(())
    }

    /// Waits until every Ready handed to the writer is durable.
    async fn drain_writes(&mut self) -> Result<()> {
        while self.writes_in_flight() {
            match self.persisted_rx.recv().await {
                Some(done) => self.on_persisted(done)?,
                None => return Err(Error::Fatal("the storage writer stopped".into())),
            }
        }
        Ok(())
    }

    /// With `election_seed`, replaces raft-rs's `thread_rng` choice of
    /// election timeout by a seeded one whenever the election clock was
    /// just reset (re-choosing more often than raft-rs does is harmless: the
    /// value stays in `[election_tick, 2 * election_tick)`).
    fn reseed_election_timeout(&mut self) {
        let Some(state) = self.election_rng.as_mut() else {
            return;
        };
        if self.raw.raft.election_elapsed != 0 {
            return;
        }
        // xorshift64*
        let mut x = *state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let min = self.config.election_tick;
        let timeout = min + (r % min as u64) as usize;
        self.raw.raft.set_randomized_election_timeout(timeout);
    }

    // ----- inputs -------------------------------------------------------

    fn on_tick(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            && self.writes_in_flight()
            && raft.election_elapsed + 1 >= raft.randomized_election_timeout()
        {
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
        self.expire();
        // raft-rs abandons a transfer after an election timeout (the target
        // was slow to catch up): keep asking until the caller gives up.
        if let Some((to, reply)) = &self.transfer {
            if reply.is_closed() {
                self.transfer = None;
            } else if self.raw.raft.state == StateRole::Leader
                && self.raw.raft.lead_transferee.is_none()
            {
                let to = *to;
                self.raw.transfer_leader(to);
            }
        }
    }

    /// Answers `Timeout` to proposals and reads past their deadline. Their
    /// outcome is unknown: a timed-out entry may still commit.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(index, _)| *index)
            .collect();
        for index in expired {
            if let Some(p) = self.pending.remove(&index) {
                Metrics::add(&self.metrics.proposals_failed, 1);
                let timeout = match p.kind {
                    ProposalKind::ConfChange => self.config.conf_change_timeout,
                    _ => self.config.proposal_timeout,
                };
                let _ = p.reply.send(Err(Error::Timeout(timeout)));
            }
        }
        let timeout = self.config.read_timeout;
        let expire_reads = |w: &mut ReadWaiters| {
            if w.deadline > now {
                return true;
            }
            for r in w.waiters.drain(..) {
                let _ = r.send(Err(Error::Timeout(timeout)));
            }
            false
        };
        self.reads.inflight.retain(|_, w| expire_reads(w));
        self.reads
            .waiting_apply
            .retain_mut(|(_, w)| expire_reads(w));
        if self
            .reads
            .batch_since
            .is_some_and(|since| since + timeout <= now)
        {
            self.reads.batch_since = None;
            for r in std::mem::take(&mut self.reads.batch) {
                let _ = r.send(Err(Error::Timeout(timeout)));
            }
        }
    }

    fn on_messages(&mut self, from_addr: Option<String>, msgs: Vec<Message>) {
        if self.fatal.is_some() {
            return;
        }
        Metrics::add(&self.metrics.messages_received, msgs.len() as u64);
        if let (Some(addr), Some(first)) = (from_addr, msgs.first()) {
            // Only the transport learns it: the replicated address book
            // changes through the log alone.
            if first.from != self.config.id && !self.meta.peers.contains_key(&first.from) {
                self.transport.set_peer(first.from, &addr);
                self.learned_addrs.insert(first.from, addr);
            }
        }
        for m in msgs {
            match self.admit(&m) {
                Admit::Step => {
                    if let Err(e) = self.raw.step(m) {
                        debug!(self.logger, "raft refused a message"; "err" => %e);
                    }
                }
                Admit::Drop(why) => {
                    debug!(self.logger, "dropping a message"; "why" => why, "from" => m.from, "type" => ?m.get_msg_type());
                }
                Admit::Fatal(e) => {
                    self.fatal = Some(e);
                    return;
                }
            }
        }
    }

    /// Decides whether a message from the network may reach raft-rs, which
    /// trusts its input and panics on some malformed messages.
    fn admit(&self, m: &Message) -> Admit {
        let raft = &self.raw.raft;
        let id = self.config.id;
        if m.to != id {
            return Admit::Drop("addressed to another node");
        }
        if m.from == 0 || m.from == id {
            return Admit::Drop("impossible sender id");
        }
        // No cluster reaches 2^63 terms; raft-rs would overflow on term + 1.
        if m.term >= u64::MAX / 2 {
            return Admit::Drop("absurd term");
        }
        let t = m.get_msg_type();
        // Proposals only enter through this node's own API (framed and
        // tracked); local message types never come from the network.
        if t == MessageType::MsgPropose || raft::raw_node::is_local_msg(t) {
            return Admit::Drop("local message type");
        }
        // raft-rs treats term 0 as a local message; only a follower's
        // forwarded read-index request legitimately has it.
        if m.term == 0 && t != MessageType::MsgReadIndex {
            return Admit::Drop("term 0");
        }
        match t {
            MessageType::MsgReadIndex if m.entries.len() != 1 => {
                return Admit::Drop("read index without exactly one context entry")
            }
            MessageType::MsgSnapshot if m.get_snapshot().get_metadata().index == 0 => {
                return Admit::Drop("empty snapshot")
            }
            MessageType::MsgHeartbeat if m.commit > raft.raft_log.last_index() => {
                // A stale or foreign heartbeat is harmless once dropped.
                let voter = self.conf_state.voters.contains(&m.from)
                    || self.conf_state.voters_outgoing.contains(&m.from);
                if m.term < raft.term || !voter {
                    return Admit::Drop("heartbeat committing beyond the log from a non-leader");
                }
                // A current leader only sends a commit index this node
                // acknowledged holding. More than our last index means our
                // log lost acknowledged entries (wiped or unsynced data
                // dir): raft-rs would panic on it, and raft cannot repair it
                // (the leader never resends what it counts as replicated).
                // Stop with an error that says what to do.
                let last = raft.raft_log.last_index();
                return Admit::Fatal(Error::Fatal(format!(
                    "node {id} lost acknowledged log entries: leader {} says it holds up to {}, \
                     its log ends at {last} (data dir wiped or not synced?). Remove node {id} \
                     from the cluster and add it back as a new member, or rebuild its data \
                     dir from a peer's (restore_wal_from)",
                    m.from, m.commit
                )));
            }
            _ => {}
        }
        Admit::Step
    }

    fn on_feedback(&mut self, fb: FeedbackEvent) {
        match fb {
            FeedbackEvent::Unreachable(id) => self.raw.report_unreachable(id),
            FeedbackEvent::Snapshot(id, status) => self.raw.report_snapshot(id, status),
        }
    }

    /// Returns true when the loop must stop.
    fn on_command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Propose { kind, data, reply } => self.propose(kind, data, reply),
            Command::ConfChange { cc, reply } => self.propose_conf_change(cc, reply),
            Command::ReadIndex { reply } => {
                if self.raw.raft.leader_id == 0 {
                    let _ = reply.send(Err(Error::NoLeader));
                } else {
                    if self.reads.batch.is_empty() {
                        self.reads.batch_since = Some(Instant::now());
                    }
                    self.reads.batch.push(reply);
                }
            }
            Command::TransferLeader { to, reply } => self.transfer_leader(to, reply),
            Command::Campaign { reply } => match self.pipeline.as_mut() {
                // See on_tick: elections wait for a durable log.
                Some(p) if p.in_flight() => p.campaigns.push(reply),
                _ => {
                    let _ = reply.send(self.raw.campaign().map_err(Error::from));
                }
            },
            // Taken after this wake-up's Ready, so it covers everything
            // applied so far.
            Command::Snapshot { reply } => self.snapshot_waiters.push((self.applied, reply)),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown => return true,
        }
        false
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

    /// Queues a proposal; the whole wake-up's queue enters the log as one
    /// raft `MsgPropose` (see [`RaftLoop::flush_proposals`]).
    fn propose(&mut self, kind: ProposalKind, data: Vec<u8>, reply: Reply<Applied>) {
        self.proposals.push((kind, data, reply));
    }

    /// Appends every queued proposal with one raft step: one append message
    /// per follower for the lot instead of one per proposal.
    fn flush_proposals(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        if self.writes_in_flight()
            && self.raw.raft.state == StateRole::Leader
            && self.proposals.len() < MAX_DRAIN
        {
            // Pipelined: while the leader's last write is on its way to
            // disk, new proposals wait for it (as on the synchronous path)
            // and then enter raft together — one append per follower and
            // one commit for all of them instead of one per wake-up, which
            // costs every node CPU. Acknowledgements, commits, applies and
            // heartbeats go on meanwhile. The completion wakes the loop.
            return;
        }
        let batch = std::mem::take(&mut self.proposals);
        let n = batch.len() as u64;
        if self.raw.raft.state != StateRole::Leader {
            Metrics::add(&self.metrics.proposals_failed, n);
            for (_, _, reply) in batch {
                let _ = reply.send(Err(self.not_leader()));
            }
            return;
        }
        let mut waiters = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        for (kind, data, reply) in batch {
            entries.push(Entry {
                data: data.into(),
                ..Default::default()
            });
            waiters.push((kind, reply));
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.config.id;
        m.set_entries(entries.into());
        if let Err(e) = self.raw.raft.step(m) {
            Metrics::add(&self.metrics.proposals_failed, n);
            let reason = e.to_string();
            for (_, reply) in waiters {
                let _ = reply.send(Err(Error::ProposalDropped(reason.clone())));
            }
            return;
        }
        // raft appended them in order at the end of its log, in this term.
        Metrics::add(&self.metrics.proposals, n);
        let term = self.raw.raft.term;
        let first = self.raw.raft.raft_log.last_index() + 1 - n;
        let deadline = Instant::now() + self.config.proposal_timeout;
        for (i, (kind, reply)) in waiters.into_iter().enumerate() {
            let p = Pending {
                term,
                kind,
                reply,
                deadline,
            };
            self.pending.insert(first + i as u64, p);
        }
    }

    /// Remembers the `(term, index)` raft gave the entry just proposed.
    fn track(&mut self, kind: ProposalKind, reply: Reply<Applied>) {
        Metrics::add(&self.metrics.proposals, 1);
        let index = self.raw.raft.raft_log.last_index();
        let term = self.raw.raft.term;
        let deadline = Instant::now() + self.config.conf_change_timeout;
        let p = Pending {
            term,
            kind,
            reply,
            deadline,
        };
        self.pending.insert(index, p);
    }

    fn propose_conf_change(&mut self, cc: ConfChangeV2, reply: Reply<Applied>) {
        // Keep the log in arrival order.
        self.flush_proposals();
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if self.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(Error::ConfChangeRejected(
                "another membership change is still in progress; retry when it is applied".into(),
            )));
            return;
        }
        // raft-rs 0.7 leaves a removed leader in charge of a cluster it is
        // no longer part of: leadership must move first (the handle does).
        let me = self.config.id;
        if cc.changes.iter().any(|c| {
            c.node_id == me
                && matches!(
                    c.get_change_type(),
                    ConfChangeType::RemoveNode | ConfChangeType::AddLearnerNode
                )
        }) {
            let _ = reply.send(Err(Error::ConfChangeRejected(format!(
                "node {me} leads: transfer leadership before removing or demoting it"
            ))));
            return;
        }
        let cs = &self.conf_state;
        let is_member = |id: u64| {
            cs.voters
                .iter()
                .chain(&cs.learners)
                .chain(&cs.voters_outgoing)
                .chain(&cs.learners_next)
                .any(|m| *m == id)
        };
        if let Some(c) = cc
            .changes
            .iter()
            .find(|c| c.get_change_type() == ConfChangeType::RemoveNode && !is_member(c.node_id))
        {
            let _ = reply.send(Err(Error::InvalidArgument(format!(
                "node {} is not a member",
                c.node_id
            ))));
            return;
        }
        // Check the change against the current configuration before it
        // enters the log, so an impossible change is refused up front.
        let check = {
            let mut changer = raft::Changer::new(self.raw.raft.prs());
            if cc.changes.len() == 1 {
                changer.simple(&cc.changes).map(|_| ())
            } else {
                changer.enter_joint(true, &cc.changes).map(|_| ())
            }
        };
        if let Err(e) = check {
            let _ = reply.send(Err(Error::ConfChangeRejected(e.to_string())));
            return;
        }
        if let Err(e) = self.raw.propose_conf_change(vec![], cc) {
            let _ = reply.send(Err(Error::ConfChangeRejected(e.to_string())));
            return;
        }
        self.track(ProposalKind::ConfChange, reply);
    }

    fn transfer_leader(&mut self, to: u64, reply: Reply<()>) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if to == self.config.id {
            let _ = reply.send(Ok(()));
            return;
        }
        if !self.conf_state.voters.contains(&to) {
            let _ = reply.send(Err(Error::InvalidArgument(format!(
                "node {to} is not a voter; only voters can lead"
            ))));
            return;
        }
        if let Some((_, old)) = self.transfer.take() {
            let _ = old.send(Err(Error::ProposalDropped(
                "superseded by a newer leadership transfer".into(),
            )));
        }
        self.raw.transfer_leader(to);
        self.transfer = Some((to, reply));
    }

    // ----- the Ready cycle ----------------------------------------------

    async fn on_ready(&mut self) -> Result<()> {
        if self.raw.snap().is_some_and(|s| !s.is_empty()) {
            // A snapshot from the leader replaces the log: it is installed
            // on the synchronous path, after every write in flight.
            self.drain_writes().await?;
        }
        if !self.raw.has_ready() {
            return Ok(());
        }
        Metrics::add(&self.metrics.readys, 1);
        let mut rd = self.raw.ready();

        // A leader may send before persisting its own entries.
        self.send(rd.take_messages());

        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        if snapshot.is_none() && self.pipeline.is_some() {
            return self.on_ready_pipelined(rd).await;
        }
        if snapshot.is_none() {
            // raft-rs hands out only committed entries that are already
            // durable here, so they are applied — and their proposers
            // answered — before this Ready's own write, not after it.
            self.on_read_states(rd.take_read_states());
            self.apply(rd.take_committed_entries()).await;
        }

        // One storage write for everything this Ready persists.
        let mut batch = WriteBatch {
            snapshot: snapshot.clone(),
            entries: rd.take_entries(),
            hard_state: rd.hs().cloned(),
        };
        self.add_pending_commit(&mut batch);
        self.persist(batch).await?;

        if let Some(snap) = snapshot {
            // Entries committed after a snapshot are applied on top of it.
            self.install_snapshot(snap).await?;
            self.on_read_states(rd.take_read_states());
            self.apply(rd.take_committed_entries()).await;
        }
        self.send(rd.take_persisted_messages());

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.pending_commit = Some(commit);
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries()).await;
        self.raw.advance_apply_to(self.applied);

        self.after_ready();
        self.maybe_snapshot().await;
        Ok(())
    }

    /// The pipelined Ready cycle: the write goes to the writer task and
    /// raft-rs moves on at once (`advance_append_async`).
    async fn on_ready_pipelined(&mut self, mut rd: raft::Ready) -> Result<()> {
        // Committed entries are durable here too: raft-rs hands out only
        // entries up to what `on_persist_ready` confirmed.
        self.on_read_states(rd.take_read_states());
        self.apply(rd.take_committed_entries()).await;

        let number = rd.number();
        let mut batch = WriteBatch {
            snapshot: None,
            entries: rd.take_entries(),
            hard_state: rd.hs().cloned(),
        };
        self.add_pending_commit(&mut batch);
        let msgs = rd.take_persisted_messages();
        // raft-rs forgets the entries from its unstable log here and reads
        // them back through storage: the overlay has them first.
        if !batch.is_empty() {
            self.raw.mut_store().overlay.push(number, &batch.entries);
        }
        self.raw.advance_append_async(rd);
        let Some(p) = self.pipeline.as_mut() else {
            return Err(Error::Fatal("pipelined Ready without a writer".into()));
        };
        if !batch.is_empty() {
            let sent = p
                .jobs
                .as_ref()
                .is_some_and(|jobs| jobs.send((number, batch)).is_ok());
            if !sent {
                return Err(Error::Fatal("the storage writer stopped".into()));
            }
            p.submitted = number;
        }
        if p.in_flight() {
            if !msgs.is_empty() {
                p.held.push_back((p.submitted, msgs));
            }
        } else {
            // Nothing of this Ready or before it awaits the disk.
            self.send(msgs);
            self.raw.on_persist_ready(number);
        }
        self.raw.advance_apply_to(self.applied);

        self.after_ready();
        self.maybe_snapshot().await;
        Ok(())
    }

    /// A commit index learned after the last write (from a `LightReady`)
    /// rides along with the next write.
    fn add_pending_commit(&mut self, batch: &mut WriteBatch) {
        if let Some(commit) = self.pending_commit {
            if !batch.is_empty() {
                let hs = batch
                    .hard_state
                    .get_or_insert_with(|| self.raw.raft.hard_state());
                hs.commit = hs.commit.max(commit);
                self.pending_commit = None;
            }
        }
    }

    async fn persist(&mut self, batch: WriteBatch) -> Result<()> {
        let blocking = self.store.blocking_writes();
        let limit = self.config.storage_timeout;
        write_batch(&self.store, blocking, limit, &self.metrics, batch).await
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        Metrics::add(&self.metrics.messages_sent, msgs.len() as u64);
        // Keep per-peer order; one batch per peer.
        let mut by_peer: Vec<(u64, Vec<Message>)> = Vec::new();
        for m in msgs {
            match by_peer.iter_mut().find(|(to, _)| *to == m.to) {
                Some((_, v)) => v.push(m),
                None => by_peer.push((m.to, vec![m])),
            }
        }
        for (to, batch) in by_peer {
            self.transport.send(to, batch, &self.feedback);
        }
    }

    // ----- applying -----------------------------------------------------

    async fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let sm = self.sm.clone();
        let mut sm = sm.write().await;
        for entry in entries {
            if entry.index <= self.applied {
                continue; // covered by a snapshot installed in this Ready
            }
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal => match parse_entry(&entry.data) {
                    Ok(EntryPayload::Noop) => Ok(Applied::Output(Vec::new())),
                    Ok(EntryPayload::User(bytes)) => match E::decode(bytes) {
                        Ok(cmd) => sm
                            .apply_at(entry.index, cmd)
                            .await
                            .map(Applied::Output)
                            .map_err(|e| Error::StateMachine(e.to_string())),
                        Err(e) => {
                            warn!(self.logger, "committed entry does not decode"; "index" => entry.index, "err" => %e);
                            Err(Error::Encode(e.to_string()))
                        }
                    },
                    Ok(EntryPayload::ReserveId) => Ok(Applied::NodeId(self.reserve_id())),
                    Err(e) => {
                        warn!(self.logger, "committed entry is not a raftify entry"; "index" => entry.index, "err" => %e);
                        Err(Error::Encode(e))
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)
                }
            };
            self.applied = entry.index;
            self.applied_term = entry.term;
            Metrics::add(&self.metrics.applied_entries, 1);
            self.complete(entry.index, entry.term, result);
        }
        drop(sm);
        self.answer_reads();
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<Applied> {
        let cc: ConfChangeV2 = if entry.get_entry_type() == EntryType::EntryConfChange {
            match ConfChange::parse_from_bytes(&entry.data) {
                Ok(cc) => cc.into_v2(),
                Err(e) => return Err(Error::Encode(format!("conf change: {e}"))),
            }
        } else {
            match ConfChangeV2::parse_from_bytes(&entry.data) {
                Ok(cc) => cc,
                Err(e) => return Err(Error::Encode(format!("conf change: {e}"))),
            }
        };
        let ctx = ConfChangeContext::decode(&cc.context).unwrap_or_else(|e| {
            warn!(self.logger, "conf change context ignored"; "err" => %e);
            ConfChangeContext::default()
        });
        // Learn the new addresses first: raft starts sending to a new peer
        // as soon as the change is applied.
        for (id, addr) in &ctx.addrs {
            self.meta.peers.insert(*id, addr.clone());
            if *id != self.config.id {
                self.transport.set_peer(*id, addr);
            }
        }
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                for change in &cc.changes {
                    if change.get_change_type() == ConfChangeType::RemoveNode {
                        self.meta.peers.remove(&change.node_id);
                        if change.node_id != self.config.id {
                            self.transport.remove_peer(change.node_id);
                        }
                    }
                }
                info!(self.logger, "membership changed"; "voters" => ?cs.voters, "learners" => ?cs.learners, "outgoing" => ?cs.voters_outgoing);
                // A leader that applied its own removal (the change was
                // proposed before leadership moved to it) keeps leading in
                // raft-rs 0.7, and panics on its next commit advance: step
                // down; the remaining voters elect a leader.
                let me = self.config.id;
                let voter = cs.voters.contains(&me) || cs.voters_outgoing.contains(&me);
                if !voter && self.raw.raft.state == StateRole::Leader {
                    warn!(
                        self.logger,
                        "this leader is no longer a voter; stepping down"
                    );
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
                self.conf_state = cs;
                Ok(Applied::ConfChanged)
            }
            Err(e) => {
                warn!(self.logger, "membership change not applied"; "index" => entry.index, "err" => %e);
                Err(Error::ConfChangeRejected(e.to_string()))
            }
        }
    }

    /// Node ids for join tickets come from the log, so two joins never get
    /// the same id, whichever leader served them.
    fn reserve_id(&mut self) -> u64 {
        let cs = &self.conf_state;
        let max_member = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .chain(self.meta.peers.keys())
            .copied()
            .max()
            .unwrap_or(0);
        let id = self.meta.next_node_id.max(max_member + 1);
        self.meta.next_node_id = id + 1;
        id
    }

    /// Answers the proposal at `index`, if this node made it: with the result
    /// when the entry is the one it proposed, with an error when another
    /// leader's entry took its place.
    fn complete(&mut self, index: u64, term: u64, result: Result<Applied>) {
        while let Some(first) = self.pending.first_entry() {
            if *first.key() >= index {
                break;
            }
            let p = first.remove();
            let _ = p.reply.send(Err(Error::ProposalDropped(
                "the entry was replaced by another leader's log".into(),
            )));
        }
        let Some(p) = self.pending.remove(&index) else {
            return;
        };
        if p.term != term {
            Metrics::add(&self.metrics.proposals_failed, 1);
            let _ = p.reply.send(Err(Error::ProposalDropped(format!(
                "the entry was replaced by the leader of term {term}"
            ))));
            return;
        }
        let result = match (p.kind, result) {
            (_, Err(e)) => Err(e),
            (ProposalKind::User, Ok(out @ Applied::Output(_)))
            | (ProposalKind::ConfChange, Ok(out @ Applied::ConfChanged))
            | (ProposalKind::ReserveId, Ok(out @ Applied::NodeId(_))) => Ok(out),
            // raft-rs turns a conf change into an empty entry when another
            // change is pending.
            (ProposalKind::ConfChange, Ok(_)) => Err(Error::ConfChangeRejected(
                "another membership change was pending; retry".into(),
            )),
            (_, Ok(_)) => Err(Error::ProposalDropped("entry type changed".into())),
        };
        if result.is_err() {
            Metrics::add(&self.metrics.proposals_failed, 1);
        }
        let _ = p.reply.send(result);
    }

    // ----- reads ----------------------------------------------------------

    /// Starts a ReadIndex round for the reads batched so far, unless one is
    /// in flight: those that arrive meanwhile join the next round, so under
    /// load a round (a heartbeat to every follower and back) serves every
    /// read that came during the previous one, instead of one round per
    /// wake-up. A read still only ever uses a round started after it came.
    fn issue_read_batch(&mut self) {
        if self.reads.batch.is_empty() || !self.reads.inflight.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.reads.batch);
        let since = self.reads.batch_since.take().unwrap_or_else(Instant::now);
        self.reads.next_ctx += 1;
        let ctx = self.reads.next_ctx.to_be_bytes().to_vec();
        Metrics::add(&self.metrics.read_index_requests, 1);
        self.raw.read_index(ctx.clone());
        let deadline = since + self.config.read_timeout;
        let batch = ReadWaiters {
            deadline,
            waiters: batch,
        };
        self.reads.inflight.insert(ctx, batch);
    }

    fn retry_reads(&mut self) {
        self.reads.inflight.retain(|_, w| {
            w.waiters.retain(|w| !w.is_closed());
            !w.waiters.is_empty()
        });
        if self.reads.inflight.is_empty() {
            return;
        }
        if self.raw.raft.leader_id == 0 {
            for (_, w) in std::mem::take(&mut self.reads.inflight) {
                for w in w.waiters {
                    let _ = w.send(Err(Error::NoLeader));
                }
            }
            return;
        }
        let ctxs: Vec<Vec<u8>> = self.reads.inflight.keys().cloned().collect();
        for ctx in ctxs {
            self.raw.read_index(ctx);
        }
    }

    fn on_read_states(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            if let Some(waiters) = self.reads.inflight.remove(&rs.request_ctx) {
                self.reads.waiting_apply.push((rs.index, waiters));
            }
        }
        self.answer_reads();
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        self.reads.waiting_apply.retain_mut(|(index, w)| {
            if *index > applied {
                return true;
            }
            for w in w.waiters.drain(..) {
                let _ = w.send(Ok(*index));
            }
            false
        });
    }

    // ----- role changes ---------------------------------------------------

    fn after_ready(&mut self) {
        let role = self.raw.raft.state;
        let leader = self.raw.raft.leader_id;
        if role != self.last_role && self.last_role == StateRole::Leader {
            // Entries still pending may or may not be committed by the next
            // leader: tell the callers the outcome is unknown.
            for (_, p) in std::mem::take(&mut self.pending) {
                Metrics::add(&self.metrics.proposals_failed, 1);
                let _ = p.reply.send(Err(Error::LeadershipLost));
            }
        }
        if leader != self.last_leader {
            Metrics::add(&self.metrics.leader_changes, 1);
            info!(self.logger, "leader changed"; "leader" => leader, "term" => self.raw.raft.term, "role" => ?role);
            if let Some((to, reply)) = self.transfer.take() {
                if leader == to {
                    let _ = reply.send(Ok(()));
                } else if leader != 0 {
                    let _ = reply.send(Err(Error::Raft(format!(
                        "leadership went to node {leader} instead of {to}"
                    ))));
                } else {
                    self.transfer = Some((to, reply));
                }
            }
            // Reads sent to the old leader may be lost: ask the new one.
            if leader != 0 {
                let ctxs: Vec<Vec<u8>> = self.reads.inflight.keys().cloned().collect();
                for ctx in ctxs {
                    self.raw.read_index(ctx);
                }
            }
        }
        self.last_role = role;
        self.last_leader = leader;
        self.publish_state();
    }

    fn publish_state(&self) {
        let next = NodeState {
            role: Role::from_raft(self.raw.raft.state),
            term: self.raw.raft.term,
            leader_id: self.raw.raft.leader_id,
            leader_addr: self.peer_addr(self.raw.raft.leader_id),
            applied_index: self.applied,
            fatal: None,
        };
        self.state_tx.send_if_modified(|cur| {
            if *cur == next {
                false
            } else {
                *cur = next;
                true
            }
        });
    }

    // ----- snapshots ------------------------------------------------------

    async fn install_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let env = SnapshotEnvelope::decode(&snap.data).map_err(|e| {
            Error::Fatal(format!(
                "snapshot at index {} from the leader is unreadable: {e}",
                meta.index
            ))
        })?;
        if let Some(user) = env.user {
            let mut sm = self.sm.write().await;
            sm.restore(user)
                .await
                .map_err(|e| Error::Fatal(format!("state machine restore failed: {e}")))?;
        }
        for (id, addr) in &env.meta.peers {
            if *id != self.config.id {
                self.transport.set_peer(*id, addr);
            }
        }
        for id in self.meta.peers.keys() {
            if !env.meta.peers.contains_key(id) {
                self.transport.remove_peer(*id);
            }
        }
        self.meta = env.meta;
        self.conf_state = meta.get_conf_state().clone();
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.snapshot_index = meta.index;
        Metrics::add(&self.metrics.snapshots_installed, 1);
        info!(self.logger, "installed snapshot"; "index" => meta.index, "term" => meta.term);
        // Proposals at or below the snapshot were decided elsewhere.
        let later = self.pending.split_off(&(meta.index + 1));
        for (_, p) in std::mem::replace(&mut self.pending, later) {
            let _ = p.reply.send(Err(Error::LeadershipLost));
        }
        Ok(())
    }

    async fn maybe_snapshot(&mut self) {
        if self.snapshot_job.is_some() {
            return;
        }
        let threshold = self.config.snapshot_threshold;
        let wanted = self
            .raw
            .store()
            .snapshot_wanted
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        let due = threshold > 0 && self.applied.saturating_sub(self.snapshot_index) >= threshold;
        if wanted || due {
            self.start_snapshot().await;
        }
    }

    async fn serve_snapshot_requests(&mut self) {
        if self.snapshot_waiters.is_empty() || self.snapshot_job.is_some() {
            return;
        }
        // Those already covered (nothing applied since the last snapshot).
        self.answer_snapshot_waiters(self.snapshot_index);
        if !self.snapshot_waiters.is_empty() {
            self.start_snapshot().await;
        }
    }

    /// Takes a snapshot of the state machine at the applied index (in the
    /// loop: the state must not move meanwhile) and saves it — the slow part:
    /// the whole state written and synced — in the background, where log
    /// writes and everything else go on. One at a time.
    async fn start_snapshot(&mut self) {
        if self.snapshot_job.is_some() {
            return;
        }
        if self.applied <= self.snapshot_index {
            // Nothing new: answer whoever waits.
            self.on_snapshot_saved(self.snapshot_index, 0, Ok(()));
            return;
        }
        let index = self.applied;
        let user = {
            let sm = self.sm.read().await;
            sm.snapshot().await
        };
        let user = match user {
            Ok(u) => u,
            Err(e) => {
                let err = Error::StateMachine(format!("snapshot: {e}"));
                self.on_snapshot_saved(index, 0, Err(err));
                return;
            }
        };
        let env = SnapshotEnvelope {
            meta: self.meta.clone(),
            user: Some(user),
        };
        let mut snap = Snapshot::default();
        snap.data = env.encode().into();
        let md = snap.mut_metadata();
        md.index = index;
        md.term = self.applied_term;
        md.set_conf_state(self.conf_state.clone());
        let keep_from = (index + 1).saturating_sub(self.config.snapshot_log_retention);
        let store = self.store.clone();
        let save = move || -> Result<()> {
            store.save_snapshot(snap)?;
            if keep_from > 1 {
                store.compact(keep_from)?;
            }
            Ok(())
        };
        if !self.store.blocking_writes() {
            // In memory: nothing to wait for (and the simulation's clock
            // stays deterministic).
            self.on_snapshot_saved(index, keep_from, save());
            return;
        }
        let done = self.snapshot_done_tx.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _ = done.send((index, keep_from, save()));
        });
        self.snapshot_job = Some((index, task));
    }

    /// Answers the on-demand requests that a snapshot at `index` covers.
    fn answer_snapshot_waiters(&mut self, index: u64) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.snapshot_waiters)
            .into_iter()
            .partition(|(wanted, _)| *wanted <= index);
        for (_, w) in ready {
            let _ = w.send(Ok(index));
        }
        self.snapshot_waiters = waiting;
    }

    /// A snapshot at `index` was saved (or failed to be).
    fn on_snapshot_saved(&mut self, index: u64, keep_from: u64, result: Result<()>) {
        self.snapshot_job = None;
        match result {
            Ok(()) => {
                if index > self.snapshot_index {
                    self.snapshot_index = index;
                    Metrics::add(&self.metrics.snapshots_created, 1);
                    info!(self.logger, "snapshot taken"; "index" => index, "compacted_before" => keep_from);
                }
                self.answer_snapshot_waiters(index);
            }
            Err(Error::Storage(StorageError::SnapshotOutOfDate)) => {
                // A snapshot from the leader was installed meanwhile.
                debug!(self.logger, "own snapshot superseded"; "index" => index);
            }
            Err(e) => {
                // Not fatal: the log just grows until the next attempt.
                error!(self.logger, "snapshot failed"; "index" => index, "err" => %e);
                let msg = e.to_string();
                for (_, w) in std::mem::take(&mut self.snapshot_waiters) {
                    let _ = w.send(Err(Error::StateMachine(msg.clone())));
                }
            }
        }
    }

    // ----- status and shutdown ------------------------------------------

    fn status(&self) -> Status {
        let raft = &self.raw.raft;
        let hs = raft.hard_state();
        let mut members: Vec<Member> = Vec::new();
        let cs = &self.conf_state;
        let mut add = |id: u64, role| {
            if !members.iter().any(|m| m.id == id) {
                members.push(Member {
                    id,
                    addr: self.meta.peers.get(&id).cloned(),
                    role,
                });
            }
        };
        for &id in cs.voters.iter().chain(&cs.voters_outgoing) {
            add(id, MemberRole::Voter);
        }
        for &id in cs.learners.iter().chain(&cs.learners_next) {
            add(id, MemberRole::Learner);
        }
        members.sort_by_key(|m| m.id);
        let mut progress = BTreeMap::new();
        if raft.state == StateRole::Leader {
            for (id, pr) in raft.prs().iter() {
                progress.insert(
                    *id,
                    PeerProgress {
                        matched: pr.matched,
                        next_index: pr.next_idx,
                        state: format!("{:?}", pr.state).to_lowercase(),
                        recent_active: pr.recent_active,
                    },
                );
            }
        }
        Status {
            id: self.config.id,
            cluster_id: self.config.cluster_id.clone(),
            role: Role::from_raft(raft.state),
            term: hs.term,
            vote: hs.vote,
            leader_id: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            first_index: raft.raft_log.first_index(),
            last_index: raft.raft_log.last_index(),
            snapshot_index: self.snapshot_index,
            members,
            joint: !cs.voters_outgoing.is_empty(),
            progress,
        }
    }

    async fn stop(mut self, fatal: Option<Error>) {
        // Let the writer finish what it was given (the store outlives the
        // loop in the same process: a restart must not race with it).
        if let Some(p) = self.pipeline.as_mut() {
            p.jobs = None;
            if let Some(writer) = p.writer.take() {
                let _ = tokio::time::timeout(self.config.storage_timeout, writer).await;
            }
        }
        let reason = fatal.as_ref().map(|e| e.to_string());
        if let Some(r) = &reason {
            error!(self.logger, "raft loop stopped"; "reason" => r);
        } else {
            info!(self.logger, "raft loop stopped");
        }
        let err = || match &reason {
            Some(r) => Error::Fatal(r.clone()),
            None => Error::Shutdown,
        };
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(err()));
        }
        for (_, _, reply) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(err()));
        }
        for w in std::mem::take(&mut self.reads.batch) {
            let _ = w.send(Err(err()));
        }
        for (_, ws) in std::mem::take(&mut self.reads.inflight) {
            for w in ws.waiters {
                let _ = w.send(Err(err()));
            }
        }
        for (_, ws) in self.reads.waiting_apply.drain(..) {
            for w in ws.waiters {
                let _ = w.send(Err(err()));
            }
        }
        if let Some((_, reply)) = self.transfer.take() {
            let _ = reply.send(Err(err()));
        }
        for (_, w) in std::mem::take(&mut self.snapshot_waiters) {
            let _ = w.send(Err(err()));
        }
        if let Some((_, task)) = self.snapshot_job.take() {
            // The store outlives the loop: let the save finish first.
            let _ = tokio::time::timeout(self.config.storage_timeout, task).await;
        }
        if let Some(p) = self.pipeline.as_mut() {
            for w in std::mem::take(&mut p.campaigns) {
                let _ = w.send(Err(err()));
            }
        }
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            fail_command(cmd, err());
        }
        self.state_tx.send_modify(|s| {
            s.role = Role::Stopped;
            s.leader_id = 0;
            s.leader_addr = None;
            s.fatal = reason.clone();
        });
    }
}

/// One durable write, on tokio's blocking pool when it blocks on I/O;
/// bounded by `limit` (a hung disk stops the node instead of every caller).
async fn write_batch(
    store: &Arc<dyn LogStore>,
    blocking: bool,
    limit: Duration,
    metrics: &Metrics,
    batch: WriteBatch,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.entries.len() as u64;
    let result: std::result::Result<(), StorageError> = if blocking {
        let store = store.clone();
        let write = tokio::task::spawn_blocking(move || store.write(batch));
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(Error::Fatal(format!("storage write task failed: {e}"))),
            Err(_) => {
                return Err(Error::Fatal(format!(
                    "a storage write did not complete within {limit:?}"
                )))
            }
        }
    } else {
        store.write(batch)
    };
    if let Err(e) = result {
        return Err(Error::Fatal(format!("storage write failed: {e}")));
    }
    Metrics::add(&metrics.storage_writes, 1);
    Metrics::add(&metrics.persisted_entries, n);
    Ok(())
}

/// The writer task of pipelined persistence: takes every job queued while
/// the previous commit ran, merges them into one batch, writes it, and
/// reports the number of the last Ready it made durable. Stops after the
/// first failure (reported) or when the loop drops its sender.
async fn write_behind(
    store: Arc<dyn LogStore>,
    blocking: bool,
    limit: Duration,
    metrics: Arc<Metrics>,
    mut jobs: mpsc::UnboundedReceiver<(u64, WriteBatch)>,
    done: mpsc::UnboundedSender<Result<u64>>,
) {
    while let Some((mut number, mut batch)) = jobs.recv().await {
        while let Ok((n, later)) = jobs.try_recv() {
            batch.merge(later);
            number = n;
        }
        let result = write_batch(&store, blocking, limit, &metrics, batch).await;
        let failed = result.is_err();
        if done.send(result.map(|()| number)).is_err() || failed {
            return;
        }
    }
}

fn fail_command(cmd: Command, err: Error) {
    match cmd {
        Command::Propose { reply, .. } | Command::ConfChange { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Command::ReadIndex { reply } | Command::Snapshot { reply } => {
            let _ = reply.send(Err(err));
        }
        Command::TransferLeader { reply, .. } | Command::Campaign { reply } => {
            let _ = reply.send(Err(err));
        }
        Command::Status { .. } | Command::Shutdown => {}
    }
}

//! Proposals: queued during a wake-up, entered into raft together, tracked
//! by `(term, index)` until applied, lost leadership or deadline.

use super::{Applied, ProposalKind, RaftLoop, Reply, MAX_DRAIN};
use crate::codec::{self, ConfChangeContext};
use crate::error::{Error, Rejection};
use crate::membership::refuse_move;
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::{unix_ms, Metrics};
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry, Message, MessageType};
use std::collections::BTreeMap;
use tokio::time::Instant;

/// A proposal raft appended to its log, waiting to be applied.
struct Pending {
    term: u64,
    kind: ProposalKind,
    reply: Reply<Applied>,
    /// When the loop answers `Timeout` (callers set no timer of their own:
    /// one per proposal would cost more than the proposal).
    deadline: Instant,
    /// When it entered the log (for the proposal latency histogram).
    since: Instant,
}

/// Proposals not yet in raft (`queued`) and in its log (`pending`).
#[derive(Default)]
pub(super) struct Proposals {
    /// Received in this wake-up, not yet handed to raft.
    queued: Vec<(ProposalKind, Vec<u8>, Reply<Applied>)>,
    /// In the log, by index.
    pending: BTreeMap<u64, Pending>,
}

impl Proposals {
    /// Whether no proposal waits to enter the log or to be applied.
    pub(super) fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.pending.is_empty()
    }

    pub(super) fn queue(&mut self, kind: ProposalKind, data: Vec<u8>, reply: Reply<Applied>) {
        self.queued.push((kind, data, reply));
    }

    /// Leadership was lost: entries still pending may or may not be
    /// committed by the next leader, so their outcome is unknown.
    pub(super) fn lose_leadership(&mut self, metrics: &Metrics) {
        for (_, p) in std::mem::take(&mut self.pending) {
            metrics.proposals_failed("leadership_lost", 1);
            let _ = p.reply.send(Err(Error::LeadershipLost));
        }
    }

    /// A snapshot up to `index` was installed: proposals at or below it were
    /// decided by another leader, whose entries this node never applied.
    pub(super) fn superseded_through(&mut self, index: u64) {
        let later = self.pending.split_off(&(index + 1));
        for (_, p) in std::mem::replace(&mut self.pending, later) {
            let _ = p.reply.send(Err(Error::LeadershipLost));
        }
    }

    /// Shutdown: queued proposals were never in the log (`refused`); those
    /// in it may still commit (`in_log`).
    pub(super) fn fail_all(
        &mut self,
        refused: &dyn Fn() -> crate::Error,
        in_log: &dyn Fn() -> crate::Error,
    ) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(in_log()));
        }
        for (_, _, reply) in std::mem::take(&mut self.queued) {
            let _ = reply.send(Err(refused()));
        }
    }
}

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    /// Appends every queued proposal with one raft step: one append message
    /// per follower for the lot instead of one per proposal.
    pub(super) fn flush_proposals(&mut self) {
        if self.proposals.queued.is_empty() {
            return;
        }
        if self.persist.in_flight() && self.is_leader() && self.proposals.queued.len() < MAX_DRAIN {
            // Pipelined: while the leader's last write is on its way to
            // disk, new proposals wait for it and then enter raft together —
            // one append per follower and one commit for all of them instead
            // of one per wake-up, which costs every node CPU.
            // Acknowledgements, commits, applies and heartbeats go on
            // meanwhile. The completion wakes the loop.
            return;
        }
        let batch = std::mem::take(&mut self.proposals.queued);
        let n = batch.len() as u64;
        if !self.is_leader() {
            self.metrics.proposals_failed("not_leader", n);
            for (_, _, reply) in batch {
                let _ = reply.send(Err(self.not_leader()));
            }
            return;
        }
        let mut waiters = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        // Everything enters the log with this leader's clock (forwarded
        // proposals were framed on another node).
        let now = unix_ms();
        for (kind, mut data, reply) in batch {
            if let Some(user) = codec::stamp_on_leader(&mut data, now) {
                E::stamp_on_leader(user, now);
            }
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
            self.metrics.proposals_failed("dropped", n);
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
        let now = Instant::now();
        let deadline = now + self.config.proposal_timeout;
        for (i, (kind, reply)) in waiters.into_iter().enumerate() {
            let p = Pending {
                term,
                kind,
                reply,
                deadline,
                since: now,
            };
            self.proposals.pending.insert(first + i as u64, p);
        }
    }

    pub(super) fn propose_conf_change(&mut self, cc: ConfChangeV2, reply: Reply<Applied>) {
        // Keep the log in arrival order.
        self.flush_proposals();
        if let Err(e) = self.check_conf_change(&cc) {
            let _ = reply.send(Err(e));
            return;
        }
        if let Err(e) = self.raw.propose_conf_change(vec![], cc) {
            let _ = reply.send(Err(Error::ConfChangeRejected(Rejection::Invalid(
                e.to_string(),
            ))));
            return;
        }
        Metrics::add(&self.metrics.proposals, 1);
        let p = Pending {
            term: self.raw.raft.term,
            kind: ProposalKind::ConfChange,
            reply,
            deadline: crate::retry::deadline_after(self.config.conf_change_timeout),
            since: Instant::now(),
        };
        self.proposals
            .pending
            .insert(self.raw.raft.raft_log.last_index(), p);
    }

    /// Refuses, before it enters the log, a change this leader cannot make.
    fn check_conf_change(&self, cc: &ConfChangeV2) -> crate::Result<()> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if self.raw.raft.has_pending_conf() {
            return Err(Error::ConfChangeRejected(Rejection::InProgress));
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
            return Err(Error::ConfChangeRejected(Rejection::LeaderMustMove));
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
            return Err(Error::NotAMember(c.node_id));
        }
        self.check_addresses(cc)?;
        let mut changer = raft::Changer::new(self.raw.raft.prs());
        let check = if cc.changes.len() == 1 {
            changer.simple(&cc.changes).map(|_| ())
        } else {
            changer.enter_joint(true, &cc.changes).map(|_| ())
        };
        check.map_err(|e| Error::ConfChangeRejected(Rejection::Invalid(e.to_string())))
    }

    /// A change may not move an existing member to another address (a typo,
    /// or an attacker's listener, would then receive the cluster's traffic
    /// and credentials: remove the member, then add it), nor give a new
    /// node an address a member already has (two nodes cannot share one).
    fn check_addresses(&self, cc: &ConfChangeV2) -> crate::Result<()> {
        let ctx = ConfChangeContext::decode(&cc.context)
            .map_err(|e| Error::ConfChangeRejected(Rejection::Invalid(e)))?;
        for (id, addr) in &ctx.addrs {
            match self.meta.peers.get(id) {
                Some(known) => refuse_move(*id, known, addr)?,
                None => {
                    if let Some((other, _)) = self.meta.peers.iter().find(|(_, a)| *a == addr) {
                        return Err(Error::ConfChangeRejected(Rejection::Invalid(format!(
                            "{addr} is the address of member {other}; restart node {other} \
                             with its data dir instead of joining it again"
                        ))));
                    }
                }
            }
        }
        Ok(())
    }

    /// Answers `Timeout` to proposals past their deadline. Their outcome is
    /// unknown: a timed-out entry may still commit.
    pub(super) fn expire_proposals(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .proposals
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(index, _)| *index)
            .collect();
        for index in expired {
            if let Some(p) = self.proposals.pending.remove(&index) {
                self.metrics.proposals_failed("timeout", 1);
                let timeout = match p.kind {
                    ProposalKind::ConfChange => self.config.conf_change_timeout,
                    _ => self.config.proposal_timeout,
                };
                let _ = p.reply.send(Err(Error::Timeout(timeout)));
            }
        }
    }

    /// Answers the proposal at `index`, if this node made it: with the result
    /// when the entry is the one it proposed, with an error when another
    /// leader's entry took its place.
    pub(super) fn complete(&mut self, index: u64, term: u64, result: crate::Result<Applied>) {
        let pending = &mut self.proposals.pending;
        while let Some(first) = pending.first_entry() {
            if *first.key() >= index {
                break;
            }
            let p = first.remove();
            let _ = p.reply.send(Err(Error::ProposalDropped(
                "the entry was replaced by another leader's log".into(),
            )));
        }
        let Some(p) = pending.remove(&index) else {
            return;
        };
        if p.term != term {
            self.metrics.proposals_failed("replaced", 1);
            let _ = p.reply.send(Err(Error::ProposalDropped(format!(
                "the entry was replaced by the leader of term {term}"
            ))));
            return;
        }
        let result = match (p.kind, result) {
            (_, Err(e)) => Err(e),
            (ProposalKind::User, Ok(out @ Applied::Output(_)))
            | (ProposalKind::ConfChange, Ok(out @ Applied::ConfChanged))
            | (ProposalKind::ReserveId, Ok(out @ Applied::NodeId(_)))
            | (ProposalKind::OpenSession, Ok(out @ Applied::SessionId(_))) => Ok(out),
            // raft-rs turns a conf change into an empty entry when another
            // change is pending.
            (ProposalKind::ConfChange, Ok(_)) => {
                Err(Error::ConfChangeRejected(Rejection::InProgress))
            }
            (_, Ok(_)) => Err(Error::ProposalDropped("entry type changed".into())),
        };
        if result.is_err() {
            self.metrics.proposals_failed("rejected", 1);
        }
        self.metrics.proposal_seconds.observe(p.since.elapsed());
        let _ = p.reply.send(result);
    }
}

//! Linearizable reads through raft's ReadIndex.
//!
//! Requests arriving while a round is in flight share the next round; a
//! read is answered once the state machine has applied its round's index.

use super::{RaftLoop, Reply};
use crate::error::Error;
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::Metrics;
use std::collections::BTreeMap;
use tokio::time::Instant;

/// Readers waiting on one ReadIndex round.
struct ReadWaiters {
    deadline: Instant,
    waiters: Vec<Reply<u64>>,
}

impl ReadWaiters {
    fn fail(self, err: &dyn Fn() -> Error) {
        for w in self.waiters {
            let _ = w.send(Err(err()));
        }
    }
}

#[derive(Default)]
pub(super) struct Reads {
    /// Reads waiting for the next round.
    batch: Vec<Reply<u64>>,
    /// When the oldest read of `batch` arrived (its deadline counts from it).
    batch_since: Option<Instant>,
    /// Rounds sent to raft, by request context.
    inflight: BTreeMap<Vec<u8>, ReadWaiters>,
    /// Rounds confirmed at an index this node has not applied yet.
    waiting_apply: Vec<(u64, ReadWaiters)>,
    next_ctx: u64,
}

impl Reads {
    /// Whether no read waits.
    pub(super) fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.inflight.is_empty() && self.waiting_apply.is_empty()
    }

    pub(super) fn fail_all(&mut self, err: &dyn Fn() -> Error) {
        for w in std::mem::take(&mut self.batch) {
            let _ = w.send(Err(err()));
        }
        for (_, ws) in std::mem::take(&mut self.inflight) {
            ws.fail(err);
        }
        for (_, ws) in std::mem::take(&mut self.waiting_apply) {
            ws.fail(err);
        }
    }
}

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    pub(super) fn queue_read(&mut self, reply: Reply<u64>) {
        if self.raw.raft.leader_id == 0 {
            let _ = reply.send(Err(Error::NoLeader));
            return;
        }
        if self.reads.batch.is_empty() {
            self.reads.batch_since = Some(Instant::now());
        }
        self.reads.batch.push(reply);
    }

    /// Starts a ReadIndex round for the reads batched so far, unless one is
    /// in flight: those that arrive meanwhile join the next round, so under
    /// load a round (a heartbeat to every follower and back) serves every
    /// read that came during the previous one, instead of one round per
    /// wake-up. A read still only ever uses a round started after it came.
    pub(super) fn issue_read_batch(&mut self) {
        let reads = &mut self.reads;
        if reads.batch.is_empty() || !reads.inflight.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut reads.batch);
        let since = reads.batch_since.take().unwrap_or_else(Instant::now);
        reads.next_ctx += 1;
        let ctx = reads.next_ctx.to_be_bytes().to_vec();
        Metrics::add(&self.metrics.read_index_requests, 1);
        self.raw.read_index(ctx.clone());
        let deadline = since + self.config.read_timeout;
        let batch = ReadWaiters {
            deadline,
            waiters: batch,
        };
        self.reads.inflight.insert(ctx, batch);
    }

    /// Re-issues the rounds in flight (raft may drop them: no leader yet, a
    /// new leader that has not committed in its term, lost messages), and
    /// forgets those whose callers gave up.
    pub(super) fn retry_reads(&mut self) {
        self.reads.inflight.retain(|_, w| {
            w.waiters.retain(|w| !w.is_closed());
            !w.waiters.is_empty()
        });
        if self.reads.inflight.is_empty() {
            return;
        }
        if self.raw.raft.leader_id == 0 {
            for (_, w) in std::mem::take(&mut self.reads.inflight) {
                w.fail(&|| Error::NoLeader);
            }
            return;
        }
        self.reads_follow_new_leader();
    }

    /// Asks the (new) leader again for every round in flight: reads sent to
    /// an old leader may be lost.
    pub(super) fn reads_follow_new_leader(&mut self) {
        let ctxs: Vec<Vec<u8>> = self.reads.inflight.keys().cloned().collect();
        for ctx in ctxs {
            self.raw.read_index(ctx);
        }
    }

    /// Answers `Timeout` to reads past their deadline.
    pub(super) fn expire_reads(&mut self) {
        let now = Instant::now();
        let timeout = self.config.read_timeout;
        let expire = |w: &mut ReadWaiters| {
            if w.deadline > now {
                return true;
            }
            for r in w.waiters.drain(..) {
                let _ = r.send(Err(Error::Timeout(timeout)));
            }
            false
        };
        let reads = &mut self.reads;
        reads.inflight.retain(|_, w| expire(w));
        reads.waiting_apply.retain_mut(|(_, w)| expire(w));
        if reads
            .batch_since
            .is_some_and(|since| since + timeout <= now)
        {
            reads.batch_since = None;
            for r in std::mem::take(&mut reads.batch) {
                let _ = r.send(Err(Error::Timeout(timeout)));
            }
        }
    }

    pub(super) fn on_read_states(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            if let Some(waiters) = self.reads.inflight.remove(&rs.request_ctx) {
                let since = waiters.deadline.checked_sub(self.config.read_timeout);
                if let Some(since) = since {
                    self.metrics.read_index_seconds.observe(since.elapsed());
                }
                self.reads.waiting_apply.push((rs.index, waiters));
            }
        }
        self.answer_reads();
    }

    /// Answers the reads whose index the state machine has applied.
    pub(super) fn answer_reads(&mut self) {
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
}

//! Forwarding to the leader: the one routing rule for requests made on a
//! follower ([`RaftHandle::on_leader`]), and the forwarder task that
//! coalesces forwarded proposals.
//!
//! One request per forwarded proposal costs the follower and the leader a
//! gRPC stream each (headers, frames, a task): under load that, not raft,
//! was most of a follower-addressed write's CPU. The forwarder task takes
//! every proposal queued since it last ran and sends them to the leader as
//! one [`ClusterApi::propose_batch`]; the leader proposes them together
//! (they share its next Ready) and answers each one's outcome. Batches are
//! sent concurrently, so a slow batch holds up nobody behind it; under light
//! load a batch is a single proposal and costs no extra wait.

use super::RaftHandle;
use crate::error::{Error, Result};
use crate::error_info::ErrorInfo;
use crate::retry::{seek_leader_following, Idempotence, RetryPolicy};
use crate::sessions::{request_ids, SessionWrite};
use crate::status::{Metrics, Role};
use crate::transport::{ClusterApi, Outcome, Transport};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most proposals in one batch.
const MAX_BATCH: usize = 512;
/// Most bytes of proposals in one batch (a larger single one goes alone).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

struct Job {
    addr: String,
    /// Set for a write in a session (sent in a session batch).
    session: Option<SessionWrite>,
    entry: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>>>,
}

/// The sending side of the forwarder task (which ends when this is dropped).
pub(crate) struct Forwarder {
    tx: mpsc::UnboundedSender<Job>,
}

impl Forwarder {
    /// Starts the forwarder task; needs a tokio runtime.
    pub(crate) fn start(
        transport: Arc<dyn Transport>,
        metrics: Arc<Metrics>,
        logger: slog::Logger,
    ) -> Forwarder {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(transport, metrics, logger, rx));
        Forwarder { tx }
    }

    /// Proposes an encoded user entry (as write `session` of a session,
    /// when given) on the leader at `addr`; returns the state machine's
    /// output.
    pub(crate) async fn forward(
        &self,
        addr: String,
        session: Option<SessionWrite>,
        entry: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                addr,
                session,
                entry,
                reply,
            })
            .map_err(|_| Error::Shutdown)?;
        // A forwarder that ended without answering may have sent it.
        rx.await
            .unwrap_or_else(|_| Err(Error::Interrupted("the forwarder stopped".into())))
    }
}

async fn run(
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    logger: slog::Logger,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        // Let the tasks that are ready to run (request handlers, under load)
        // queue their proposals first: woken by a send, this task would
        // otherwise run at once and forward every proposal alone.
        tokio::task::yield_now().await;
        // Per leader address (it changes rarely; two only around an
        // election), session writes apart from plain ones.
        let mut batches: Vec<(String, bool, Vec<Job>, usize)> = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let size = job.entry.len();
            let in_session = job.session.is_some();
            match batches.iter_mut().find(|(addr, s, jobs, bytes)| {
                *addr == job.addr
                    && *s == in_session
                    && jobs.len() < MAX_BATCH
                    && *bytes + size <= MAX_BATCH_BYTES
            }) {
                Some((_, _, jobs, bytes)) => {
                    jobs.push(job);
                    *bytes += size;
                }
                None => batches.push((job.addr.clone(), in_session, vec![job], size)),
            }
            if batches.len() < 8 {
                next = rx.try_recv().ok();
            }
        }
        for (addr, _, jobs, _) in batches {
            Metrics::add(&metrics.forward_batches, 1);
            Metrics::add(&metrics.forwarded_proposals, jobs.len() as u64);
            if jobs.iter().any(|j| j.session.is_some()) {
                // Built only when a debug record is written.
                let ids = slog::FnValue(|_: &slog::Record| {
                    request_ids(jobs.iter().filter_map(|j| j.session.as_ref()))
                });
                slog::debug!(logger, "forwarding writes to the leader"; "leader" => &addr, "request_ids" => ids);
            }
            tokio::spawn(send(transport.clone(), addr, jobs));
        }
    }
}

/// Sends one batch and answers each proposal.
async fn send(transport: Arc<dyn Transport>, addr: String, mut jobs: Vec<Job>) {
    let leader = match transport.node(&addr) {
        Ok(node) => node,
        Err(e) => {
            let info = ErrorInfo::from(&e);
            for job in jobs {
                let _ = job.reply.send(Err(remote_error(info.clone())));
            }
            return;
        }
    };
    if jobs.len() == 1 {
        let Some(job) = jobs.pop() else { return };
        let answer = match job.session {
            Some(w) => leader.propose_in_session(w, job.entry).await,
            None => leader.propose(job.entry).await,
        };
        let _ = job.reply.send(answer);
        return;
    }
    let n = jobs.len();
    let mut replies = Vec::with_capacity(n);
    let mut plain = Vec::new();
    let mut in_session = Vec::new();
    for job in jobs {
        replies.push(job.reply);
        match job.session {
            Some(w) => in_session.push((w, job.entry)),
            None => plain.push(job.entry),
        }
    }
    // A batch is all plain or all in a session (see `run`).
    let answer = if in_session.is_empty() {
        leader.propose_batch(plain).await
    } else {
        leader.propose_session_batch(in_session).await
    };
    let outcomes: Vec<Outcome> = match answer {
        Ok(outcomes) if outcomes.len() == n => outcomes,
        Ok(outcomes) => {
            // The leader ran the batch but its answer does not match it:
            // every entry's outcome is unknown.
            let info = ErrorInfo::from(&Error::Interrupted(format!(
                "the leader answered {} outcomes for {n} proposals",
                outcomes.len()
            )));
            vec![Err(info); n]
        }
        // Every proposal of the batch shares the request's fate.
        Err(e) => vec![Err(ErrorInfo::from(&e)); n],
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome.map_err(remote_error));
    }
}

fn remote_error(info: ErrorInfo) -> Error {
    let kind = info.kind.clone();
    info.into_error().unwrap_or_else(|| {
        // A newer peer's error: the request reached it, so nothing is known.
        Error::Transport(format!(
            "the leader answered an unknown error kind {kind:?}"
        ))
    })
}

impl RaftHandle {
    /// Runs a request on the leader: `here` when this node leads, else
    /// `there` with the leader's address. A node that knows no leader yet
    /// waits up to two election timeouts for one; `NotLeader` answers and
    /// elections are followed through the retry helper until the node's
    /// proposal timeout.
    pub(crate) async fn on_leader<T, H, HF, R, RF>(
        &self,
        idempotence: Idempotence,
        mut here: H,
        there: R,
    ) -> Result<T>
    where
        H: FnMut(RaftHandle) -> HF,
        HF: Future<Output = Result<T>>,
        R: FnMut(String) -> RF,
        RF: Future<Output = Result<T>>,
    {
        let mut state = self.state();
        if state.leader_id == 0 && self.await_leader().await {
            state = self.state();
        }
        if state.role == Role::Stopped {
            return Err(self.closed_error());
        }
        if state.role == Role::Leader {
            match here(self.clone()).await {
                // Leadership moved meanwhile and the request was refused
                // before it entered the log: follow the new leader.
                Err(Error::NotLeader {
                    leader_id,
                    leader_addr: Some(addr),
                }) => {
                    state.leader_id = leader_id;
                    state.leader_addr = Some(addr);
                }
                // Leadership was lost meanwhile with no successor known
                // yet; refused before the log, so nothing was applied:
                // wait for one (as a read does) and go where it is.
                Err(Error::NoLeader) if self.await_leader().await => {
                    state = self.state();
                    if state.role == Role::Leader {
                        return here(self.clone()).await;
                    }
                }
                other => return other,
            }
        }
        let hint = match (state.leader_id, state.leader_addr) {
            (0, _) => return Err(Error::NoLeader),
            (_, Some(addr)) => addr,
            (leader_id, None) => {
                return Err(Error::NotLeader {
                    leader_id,
                    leader_addr: None,
                })
            }
        };
        let policy = RetryPolicy::with_timeout(self.config().proposal_timeout);
        // Retries follow the leader this node knows by then (itself
        // included): not the hinted one again, which may have died.
        let leader_now = || {
            let s = self.state();
            s.leader_addr.filter(|_| s.leader_id != 0)
        };
        seek_leader_following(&[], Some(hint), leader_now, &policy, idempotence, there)
            .await
            .map(|(answer, _)| answer)
    }

    /// The cluster API of the node at `addr`, through this node's transport.
    pub(crate) fn remote(&self, addr: &str) -> Result<Arc<dyn ClusterApi>> {
        self.transport().node(addr)
    }

    /// Proposes an encoded user entry: on this node when it leads, else
    /// through the leader, together with the other proposals forwarded at
    /// the same time (one request for all of them). Returns the state
    /// machine's output once the entry is committed and applied on the
    /// leader.
    ///
    /// A forwarded proposal is a write in this node's own client session
    /// (opened on the first one, see [`crate::client_session`]): when its
    /// outcome is unknown (the connection broke after it left, the leader
    /// changed) it is sent again with the same number, and applied once.
    /// With [`Config::forward_in_session`](crate::Config::forward_in_session)
    /// off it is sent once, and such a failure is an
    /// [`ErrorClass::OutcomeUnknown`](crate::ErrorClass) error.
    pub async fn propose(&self, encoded: Vec<u8>) -> Result<Vec<u8>> {
        if self.is_leader() {
            // The common case: no copy of the entry kept for forwarding
            // (`propose_here` checks its size).
            return self.propose_here(&encoded).await;
        }
        // Refused here rather than after a trip to the leader.
        self.check_entry_size(&encoded)?;
        if self.config().forward_in_session {
            let budget = self.config().proposal_timeout;
            return self
                .inner
                .forward_session
                .propose(self, budget, encoded)
                .await;
        }
        let entry = &encoded;
        let forwarder = &self.inner.forwarder;
        self.on_leader(
            Idempotence::NotIdempotent,
            |h| async move { h.propose_here(entry).await },
            |addr| forwarder.forward(addr, None, entry.clone()),
        )
        .await
    }
}

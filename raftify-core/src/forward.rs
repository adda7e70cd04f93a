//! Proposals a follower forwards to its leader, coalesced.
//!
//! One request per forwarded proposal costs the follower and the leader a
//! gRPC stream each (headers, frames, a task): under load that, not raft,
//! was most of a follower-addressed write's CPU. The forwarder task takes
//! every proposal queued since it last ran and sends them to the leader as
//! one [`ClusterRequest::ProposeBatch`]; the leader proposes them together
//! (they share its next Ready) and answers each one's outcome. Batches are
//! sent concurrently, so a slow batch holds up nobody behind it; under light
//! load a batch is a single proposal and costs no extra wait.

use crate::error::{Error, ErrorInfo, Result};
use crate::node::unexpected;
use crate::status::Metrics;
use crate::transport::{ClusterRequest, ClusterResponse, Transport};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most proposals in one batch.
const MAX_BATCH: usize = 512;
/// Most bytes of proposals in one batch (a larger single one goes alone).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

struct Job {
    addr: String,
    entry: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>>>,
}

/// The sending side of the forwarder task (which ends when this is dropped).
pub(crate) struct Forwarder {
    tx: mpsc::UnboundedSender<Job>,
}

impl Forwarder {
    /// Starts the forwarder task; needs a tokio runtime.
    pub(crate) fn start(transport: Arc<dyn Transport>, metrics: Arc<Metrics>) -> Forwarder {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(transport, metrics, rx));
        Forwarder { tx }
    }

    /// Proposes an encoded user entry on the leader at `addr`; returns the
    /// state machine's output.
    pub(crate) async fn forward(&self, addr: String, entry: Vec<u8>) -> Result<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { addr, entry, reply })
            .map_err(|_| Error::Shutdown)?;
        rx.await.unwrap_or(Err(Error::Shutdown))
    }
}

async fn run(
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        // Let the tasks that are ready to run (request handlers, under load)
        // queue their proposals first: woken by a send, this task would
        // otherwise run at once and forward every proposal alone.
        tokio::task::yield_now().await;
        // Per leader address (it changes rarely; two only around an election).
        let mut batches: Vec<(String, Vec<Job>, usize)> = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let size = job.entry.len();
            match batches.iter_mut().find(|(addr, jobs, bytes)| {
                *addr == job.addr && jobs.len() < MAX_BATCH && *bytes + size <= MAX_BATCH_BYTES
            }) {
                Some((_, jobs, bytes)) => {
                    jobs.push(job);
                    *bytes += size;
                }
                None => batches.push((job.addr.clone(), vec![job], size)),
            }
            if batches.len() < 8 {
                next = rx.try_recv().ok();
            }
        }
        for (addr, jobs, _) in batches {
            Metrics::add(&metrics.forward_batches, 1);
            Metrics::add(&metrics.forwarded_proposals, jobs.len() as u64);
            tokio::spawn(send(transport.clone(), addr, jobs));
        }
    }
}

/// Sends one batch and answers each proposal.
async fn send(transport: Arc<dyn Transport>, addr: String, mut jobs: Vec<Job>) {
    if jobs.len() == 1 {
        let Some(job) = jobs.pop() else { return };
        let result = match transport
            .call(&addr, ClusterRequest::Propose(job.entry))
            .await
        {
            Ok(ClusterResponse::Output(out)) => Ok(out),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        };
        let _ = job.reply.send(result);
        return;
    }
    let (entries, replies): (Vec<Vec<u8>>, Vec<_>) =
        jobs.into_iter().map(|j| (j.entry, j.reply)).unzip();
    let n = entries.len();
    match transport
        .call(&addr, ClusterRequest::ProposeBatch(entries))
        .await
    {
        Ok(ClusterResponse::Outputs(outcomes)) if outcomes.len() == n => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome.map_err(remote_error));
            }
        }
        Ok(other) => {
            let err = ErrorInfo::from(&unexpected(other));
            for reply in replies {
                let _ = reply.send(Err(remote_error(err.clone())));
            }
        }
        Err(e) => {
            // Every proposal of the batch shares the request's fate.
            let info = ErrorInfo::from(&e);
            for reply in replies {
                let _ = reply.send(Err(remote_error(info.clone())));
            }
        }
    }
}

fn remote_error(info: ErrorInfo) -> Error {
    let kind = info.kind.clone();
    info.into_error().unwrap_or_else(|| {
        Error::Transport(format!(
            "the leader answered an unknown error kind {kind:?}"
        ))
    })
}

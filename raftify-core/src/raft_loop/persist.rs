//! Persistence: each Ready's entries and hard state in one storage write,
//! made in the loop or — pipelined, the default on stores whose writes
//! block — by a writer task that merges every Ready queued behind the
//! commit in flight into the next one.
//!
//! Pipelined, the loop calls `advance_append_async` at once and goes on
//! stepping, sending and applying while the commit is on its way. The
//! written entries stay readable through the storage overlay until durable
//! (raft-rs forgets them from its unstable log); messages that must follow
//! persistence are held until the write completes (`on_persisted` →
//! `on_persist_ready`), and raft-rs hands out only durable entries to
//! apply. A write in the loop is the same cycle with nothing in flight.

use super::RaftLoop;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::Metrics;
use crate::storage::{Durability, LogStore, StorageError, WriteBatch};
use raft::eraftpb::{HardState, Message};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The writer task of pipelined persistence.
struct Writer {
    /// Jobs for the writer: `(ready number, what it persists)`.
    jobs: Option<mpsc::UnboundedSender<(u64, WriteBatch)>>,
    task: Option<JoinHandle<()>>,
}

pub(super) struct Persistence {
    /// None: writes are made in the loop.
    writer: Option<Writer>,
    /// Number of the last Ready handed to the writer.
    submitted: u64,
    /// Number of the last Ready the writer made durable.
    persisted: u64,
    /// Messages that may leave only once the writes up to the number are
    /// durable (a follower's acknowledgements, votes).
    held: VecDeque<(u64, Vec<Message>)>,
    /// Completions from the writer: the last durable Ready's number.
    pub(super) done_rx: mpsc::UnboundedReceiver<Result<u64>>,
    /// A hard state that only moved the commit index (raft-rs's
    /// `must_sync` false, no entries): Raft needs the commit index nowhere
    /// durable — a restarted node learns it again from the leader, and the
    /// loop raises it to the snapshot's index — so it is not written on its
    /// own (no sync) but with the next write, or when the loop stops
    /// (etcd's `MustSync` rule).
    lazy_hs: Option<HardState>,
    store: Arc<dyn LogStore>,
    blocking: bool,
    limit: Duration,
    metrics: Arc<Metrics>,
}

/// Whether writing `batch` goes to the blocking pool: on a store whose
/// writes block, unless it runs appends inline
/// ([`LogStore::inline_appends`]) and the batch installs no snapshot.
fn blocks(store: &Arc<dyn LogStore>, blocking: bool, batch: &WriteBatch) -> bool {
    blocking && !(batch.snapshot.is_none() && store.inline_appends())
}

impl Persistence {
    /// Starts the writer task when persistence is pipelined
    /// ([`Config::pipeline_writes`]).
    pub(super) fn start(
        config: &Config,
        store: &Arc<dyn LogStore>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let blocking = store.blocking_writes();
        let limit = config.storage_timeout;
        let (writer, done_rx) = if config.pipeline_writes.unwrap_or(blocking) {
            let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
            let (done_tx, done_rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(write_behind(
                store.clone(),
                blocking,
                limit,
                metrics.clone(),
                jobs_rx,
                done_tx,
            ));
            let writer = Writer {
                jobs: Some(jobs_tx),
                task: Some(task),
            };
            (Some(writer), done_rx)
        } else {
            // Never yields: the loop's select skips it.
            (None, mpsc::unbounded_channel().1)
        };
        Persistence {
            writer,
            submitted: 0,
            persisted: 0,
            held: VecDeque::new(),
            done_rx,
            lazy_hs: None,
            store: store.clone(),
            blocking,
            limit,
            metrics: metrics.clone(),
        }
    }

    pub(super) fn in_flight(&self) -> bool {
        self.submitted > self.persisted
    }

    pub(super) fn pipelined(&self) -> bool {
        self.writer.is_some()
    }

    /// Holds back a hard state that only moves the commit index (no
    /// entries, `must_sync` false) instead of writing it (see `lazy_hs`);
    /// the next write without a hard state of its own carries it, one with
    /// its own (newer) replaces it.
    pub(super) fn defer_commit_only(&mut self, batch: &mut WriteBatch, must_sync: bool) {
        if batch.entries.is_empty() && batch.snapshot.is_none() && !must_sync {
            if let Some(hs) = batch.hard_state.take() {
                self.lazy_hs = Some(hs);
            }
        } else if batch.hard_state.is_some() {
            // Newer than the one held back.
            self.lazy_hs = None;
        } else if !batch.is_empty() {
            batch.hard_state = self.lazy_hs.take();
        }
    }

    /// Writes the commit-only hard state held back, if any (the loop is
    /// stopping: a restart then knows the commit index at once).
    pub(super) async fn write_lazy_hs(&mut self) -> Result<()> {
        match self.lazy_hs.take() {
            Some(hs) => {
                self.write_now(WriteBatch {
                    hard_state: Some(hs),
                    ..WriteBatch::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    /// Writes `batch` now, in the loop (bounded by the storage timeout).
    pub(super) async fn write_now(&self, batch: WriteBatch) -> Result<()> {
        let (store, metrics) = (&self.store, &self.metrics);
        write_batch(store, self.blocking, self.limit, metrics, batch, false)
            .await
            .map(|_| ())
    }

    /// Lets the writer finish what it was given.
    pub(super) async fn finish(&mut self, limit: Duration) {
        if let Some(w) = self.writer.as_mut() {
            w.jobs = None;
            if let Some(task) = w.task.take() {
                let _ = tokio::time::timeout(limit, task).await;
            }
        }
    }

    /// Shutdown: held messages are dropped (raft resends); no caller waits
    /// on this part.
    pub(super) fn drop_held(&mut self) {
        self.held.clear();
    }
}

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    /// Persists the Ready's `batch`, advances the Ready, and lets `msgs`
    /// leave once the batch is durable. The entries are readable (from the
    /// store, or the overlay while pipelined) before raft-rs forgets them.
    pub(super) async fn submit(
        &mut self,
        rd: raft::Ready,
        batch: WriteBatch,
        msgs: Vec<Message>,
    ) -> Result<()> {
        let number = rd.number();
        if !self.persist.pipelined() {
            self.persist.write_now(batch).await?;
            self.raw.advance_append_async(rd);
            self.raw.on_persist_ready(number);
            self.send(msgs);
            return Ok(());
        }
        // raft-rs forgets the entries from its unstable log here and reads
        // them back through storage: the overlay has them first.
        if !batch.is_empty() {
            self.raw.mut_store().overlay.push(number, &batch.entries);
        }
        self.raw.advance_append_async(rd);
        let p = &mut self.persist;
        if !batch.is_empty() {
            let sent = p
                .writer
                .as_ref()
                .and_then(|w| w.jobs.as_ref())
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
        Ok(())
    }

    /// The writer made every Ready up to `done` durable.
    pub(super) fn on_persisted(&mut self, done: Result<u64>) -> Result<()> {
        let number = done?;
        let p = &mut self.persist;
        p.persisted = number;
        let mut ready: Vec<Message> = Vec::new();
        while p.held.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, msgs)) = p.held.pop_front() {
                ready.extend(msgs);
            }
        }
        self.raw.mut_store().overlay.persisted(number);
        self.raw.on_persist_ready(number);
        self.send(ready);
        self.release_campaigns();
        Ok(())
    }

    /// Waits until every Ready handed to the writer is durable.
    pub(super) async fn drain_writes(&mut self) -> Result<()> {
        while self.persist.in_flight() {
            match self.persist.done_rx.recv().await {
                Some(done) => self.on_persisted(done)?,
                None => return Err(Error::Fatal("the storage writer stopped".into())),
            }
        }
        Ok(())
    }
}

/// Runs `op` on the store: on tokio's blocking pool when the store's
/// writes block on I/O; bounded by `limit` (a hung disk stops the node
/// instead of every caller).
async fn on_store<T: Send + 'static>(
    store: &Arc<dyn LogStore>,
    blocking: bool,
    limit: Duration,
    what: &str,
    op: impl FnOnce(&dyn LogStore) -> std::result::Result<T, StorageError> + Send + 'static,
) -> Result<T> {
    let result = if blocking {
        let store = store.clone();
        let task = tokio::task::spawn_blocking(move || op(store.as_ref()));
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(Error::Fatal(format!("storage {what} task failed: {e}"))),
            Err(_) => {
                return Err(Error::Fatal(format!(
                    "a storage {what} did not complete within {limit:?}"
                )))
            }
        }
    } else {
        op(store.as_ref())
    };
    result.map_err(|e| Error::Fatal(format!("storage {what} failed: {e}")))
}

/// One write (see [`on_store`]): durable at once, or — `deferred` — as
/// [`LogStore::write_deferred`] says.
async fn write_batch(
    store: &Arc<dyn LogStore>,
    blocking: bool,
    limit: Duration,
    metrics: &Metrics,
    batch: WriteBatch,
    deferred: bool,
) -> Result<Durability> {
    if batch.is_empty() {
        return Ok(Durability::Durable);
    }
    let n = batch.entries.len() as u64;
    let bytes: u64 = batch.entries.iter().map(|e| e.data.len() as u64).sum();
    let started = std::time::Instant::now();
    let blocking = blocks(store, blocking, &batch);
    let durability = on_store(store, blocking, limit, "write", move |s| match deferred {
        true => s.write_deferred(batch),
        false => s.write(batch).map(|()| Durability::Durable),
    })
    .await?;
    Metrics::add(&metrics.storage_writes, 1);
    Metrics::add(&metrics.persisted_entries, n);
    Metrics::add(&metrics.storage_write_bytes, bytes);
    metrics.storage_write_seconds.since(started);
    Ok(durability)
}

/// The writer task: takes every job queued while the previous commit ran,
/// merges them into one batch, writes it, and reports the number of the
/// last Ready it made durable. Stops after the first failure (reported) or
/// when the loop drops its sender.
///
/// A store may make a write durable only with the next one
/// ([`Durability::UntilNext`]: LMDB's meta page, synced by the next
/// commit's data sync). Then, while Readys queue up, each commit makes the
/// previous one durable — one sync per commit — and when nothing is queued
/// behind a write the task syncs at once, so an idle node's last write
/// waits for no later one.
async fn write_behind(
    store: Arc<dyn LogStore>,
    blocking: bool,
    limit: Duration,
    metrics: Arc<Metrics>,
    mut jobs: mpsc::UnboundedReceiver<(u64, WriteBatch)>,
    done: mpsc::UnboundedSender<Result<u64>>,
) {
    // The last Ready written but durable only with the next write or sync.
    let mut pending: Option<u64> = None;
    // Whether the task already yielded once for the pending write.
    let mut yielded = false;
    loop {
        let job = match pending {
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
            Some(p) => match jobs.try_recv() {
                Ok(job) => job,
                // The loop may be about to hand over the next Ready (it
                // ran while this write did): let it, once, so that write's
                // sync also covers this one.
                Err(mpsc::error::TryRecvError::Empty) if !yielded => {
                    yielded = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                // Nothing queued behind it (or the loop is stopping).
                Err(_) => {
                    pending = None;
                    let synced = on_store(&store, blocking, limit, "sync", |s| s.sync()).await;
                    Metrics::add(&metrics.storage_syncs, 1);
                    let failed = synced.is_err();
                    if done.send(synced.map(|()| p)).is_err() || failed {
                        return;
                    }
                    continue;
                }
            },
        };
        yielded = false;
        let (mut number, mut batch) = job;
        while let Ok((n, later)) = jobs.try_recv() {
            batch.merge(later);
            number = n;
        }
        let written = write_batch(&store, blocking, limit, &metrics, batch, true).await;
        let report = match written {
            Ok(Durability::Durable) => {
                pending = None;
                Ok(number)
            }
            // This write's sync made the pending one durable.
            Ok(Durability::UntilNext) => match pending.replace(number) {
                Some(p) => Ok(p),
                None => continue,
            },
            Err(e) => Err(e),
        };
        let failed = report.is_err();
        if done.send(report).is_err() || failed {
            return;
        }
    }
}

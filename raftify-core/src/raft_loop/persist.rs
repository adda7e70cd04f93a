//! Persistence: each Ready's entries and hard state in one storage write,
//! made in the loop or — pipelined, the default on stores whose writes
//! block — by a writer (`writer.rs`) that merges every Ready queued behind
//! the commit in flight into the next one.
//!
//! Pipelined, the loop calls `advance_append_async` at once and goes on
//! stepping, sending and applying while the commit is on its way. The
//! written entries stay readable through the storage overlay until durable
//! (raft-rs forgets them from its unstable log); messages that must follow
//! persistence are held until the write completes (`on_persisted` →
//! `on_persist_ready`), and raft-rs hands out only durable entries to
//! apply. A write in the loop is the same cycle with nothing in flight.

use super::writer::{not_within, write_batch, Writer};
use super::RaftLoop;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::Metrics;
use crate::storage::{LogStore, WriteBatch};
use raft::eraftpb::{HardState, Message};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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

impl Persistence {
    /// Starts the writer when persistence is pipelined
    /// ([`Config::pipeline_writes`]).
    pub(super) fn start(
        config: &Config,
        store: &Arc<dyn LogStore>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let blocking = store.blocking_writes();
        let limit = config.storage_timeout;
        let (writer, done_rx) = if config.pipeline_writes.unwrap_or(blocking) {
            let (writer, done_rx) = Writer::start(store, metrics, blocking, limit);
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

    /// A writer thread's oldest write has waited longer than the storage
    /// timeout: the disk hangs, and the node stops rather than every
    /// caller waiting (a task's writes are bounded where they are made).
    pub(super) fn overdue(&self) -> Option<Error> {
        self.writer.as_ref()?.overdue(self.limit)
    }

    /// Lets the writer finish what it was given.
    pub(super) async fn finish(&mut self, limit: Duration) {
        if let Some(w) = self.writer.as_mut() {
            w.finish(limit, &mut self.done_rx).await;
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
            let sent = p.writer.as_ref().is_some_and(|w| w.submit(number, batch));
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

    /// Waits until every Ready handed to the writer is durable (each
    /// report within the storage timeout: the loop's ticks, which watch a
    /// writer thread, do not run meanwhile).
    pub(super) async fn drain_writes(&mut self) -> Result<()> {
        let limit = self.persist.limit;
        while self.persist.in_flight() {
            match tokio::time::timeout(limit, self.persist.done_rx.recv()).await {
                Ok(Some(done)) => self.on_persisted(done)?,
                Ok(None) => return Err(Error::Fatal("the storage writer stopped".into())),
                Err(_) => return Err(not_within("write", limit)),
            }
        }
        Ok(())
    }
}

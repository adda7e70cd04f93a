//! The writer of pipelined persistence, and every write to the store the
//! loop makes.
//!
//! On a store whose appends block on the disk (an fsync each) the writer
//! is a thread of its own, `raftify-writer`, so a write costs one
//! hand-over each way between it and the loop (a task handing each write
//! to tokio's blocking pool costs two more; docs/BENCHMARKS.md, "A writer
//! thread"). Where appends run inline (no fsync: a few microseconds) it is
//! a task on the loop's runtime, which is cheaper still. Both follow the
//! same bookkeeping ([`WriteBehind`]).

use crate::error::{Error, Result};
use crate::status::Metrics;
use crate::storage::{Durability, LogStore, StorageError, WriteBatch};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The writer of pipelined persistence: a task, or a thread on stores
/// whose appends block.
pub(super) struct Writer {
    /// Jobs for the writer: `(ready number, what it persists)`.
    jobs: Option<mpsc::UnboundedSender<(u64, WriteBatch)>>,
    /// The task (None for a thread, which ends when `jobs` is dropped and
    /// reports its end by dropping its sender of the reports).
    task: Option<JoinHandle<()>>,
    /// A thread's own account of the store call it is in, if any (its
    /// calls are bounded by the loop's ticks: [`Writer::overdue`]).
    busy: Option<Arc<Busy>>,
}

/// When a writer thread entered the store call it is in: microseconds
/// since `base`, plus one (0: in none). Set and cleared by the thread
/// around each write and sync, so it times the disk alone, not how soon
/// the loop reads the report.
struct Busy {
    base: Instant,
    since: AtomicU64,
}

impl Busy {
    fn new() -> Self {
        Busy {
            base: Instant::now(),
            since: AtomicU64::new(0),
        }
    }

    /// Runs `call` (a store call), marked as in progress.
    fn around<T>(&self, call: impl FnOnce() -> T) -> T {
        let now = self.base.elapsed().as_micros() as u64 + 1;
        self.since.store(now, Ordering::Release);
        let out = call();
        self.since.store(0, Ordering::Release);
        out
    }

    /// How long the call in progress has taken, if one is.
    fn taken(&self) -> Option<Duration> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            since => {
                let now = self.base.elapsed().as_micros() as u64 + 1;
                Some(Duration::from_micros(now.saturating_sub(since)))
            }
        }
    }
}

/// The error of a storage call (`what`) that did not return within `limit`.
pub(super) fn not_within(what: &str, limit: Duration) -> Error {
    Error::Fatal(format!(
        "a storage {what} did not complete within {limit:?}"
    ))
}

/// Whether writing `batch` goes to the blocking pool: on a store whose
/// writes block, unless it runs appends inline
/// ([`LogStore::inline_appends`]) and the batch installs no snapshot.
fn blocks(store: &Arc<dyn LogStore>, blocking: bool, batch: &WriteBatch) -> bool {
    blocking && !(batch.snapshot.is_none() && store.inline_appends())
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
            Err(_) => return Err(not_within(what, limit)),
        }
    } else {
        op(store.as_ref())
    };
    result.map_err(|e| failed(what, e))
}

/// A storage failure: fatal to the node.
fn failed(what: &str, e: StorageError) -> Error {
    Error::Fatal(format!("storage {what} failed: {e}"))
}

/// One write (see [`on_store`]): durable at once, or — `deferred` — as
/// [`LogStore::write_deferred`] says.
pub(super) async fn write_batch(
    store: &Arc<dyn LogStore>,
    blocking: bool,
    limit: Duration,
    metrics: &Arc<Metrics>,
    batch: WriteBatch,
    deferred: bool,
) -> Result<Durability> {
    if batch.is_empty() {
        return Ok(Durability::Durable);
    }
    let blocking = blocks(store, blocking, &batch);
    let metrics = metrics.clone();
    on_store(store, blocking, limit, "write", move |s| {
        write_counted(s, &metrics, batch, deferred)
    })
    .await
}

/// Makes one write on `store` (see [`write_batch`]), counted in the
/// metrics when it succeeds.
fn write_counted(
    store: &dyn LogStore,
    metrics: &Metrics,
    batch: WriteBatch,
    deferred: bool,
) -> std::result::Result<Durability, StorageError> {
    if batch.is_empty() {
        return Ok(Durability::Durable);
    }
    let counted = Counted::of(&batch);
    let durability = match deferred {
        true => store.write_deferred(batch)?,
        false => store.write(batch).map(|()| Durability::Durable)?,
    };
    counted.record(metrics);
    Ok(durability)
}

/// What a write is counted as in the metrics, taken before it is made.
struct Counted {
    entries: u64,
    bytes: u64,
    started: Instant,
}

impl Counted {
    fn of(batch: &WriteBatch) -> Self {
        Counted {
            entries: batch.entries.len() as u64,
            bytes: batch.entries.iter().map(|e| e.data.len() as u64).sum(),
            started: Instant::now(),
        }
    }

    fn record(self, metrics: &Metrics) {
        Metrics::add(&metrics.storage_writes, 1);
        Metrics::add(&metrics.persisted_entries, self.entries);
        Metrics::add(&metrics.storage_write_bytes, self.bytes);
        metrics.storage_write_seconds.since(self.started);
    }
}

/// What either kind of writer works with.
struct WriterParts {
    store: Arc<dyn LogStore>,
    metrics: Arc<Metrics>,
    jobs: mpsc::UnboundedReceiver<(u64, WriteBatch)>,
    /// Reports, each the number of the last Ready made durable.
    done: mpsc::UnboundedSender<Result<u64>>,
}

/// The writer's bookkeeping, the same for a task and a thread.
///
/// It takes every job queued while the previous commit ran and merges
/// them into one batch. A store may make a write durable only with the
/// next one ([`Durability::UntilNext`]: LMDB's meta page, synced by the
/// next commit's data sync). Then, while Readys queue up, each commit
/// makes the previous one durable — one sync per commit — and when
/// nothing is queued behind a write the writer syncs at once, so an idle
/// node's last write waits for no later one.
#[derive(Default)]
struct WriteBehind {
    /// The last Ready written but durable only with the next write or sync.
    pending: Option<u64>,
    /// Whether the writer already yielded once for the pending write.
    yielded: bool,
}

/// What the writer does next.
enum Step {
    /// Write this batch (the jobs queued, merged), the last Ready's number.
    Write(u64, WriteBatch),
    /// Let the loop run once: it may be about to hand over the next Ready
    /// (it ran while this write did), whose sync also covers the pending one.
    Yield,
    /// Nothing is queued behind the pending write: sync it, report the
    /// number.
    Sync(u64),
    /// Wait for the next job.
    Wait,
    /// The loop dropped its sender: stop.
    Stop,
}

impl WriteBehind {
    /// The next step, given what the job queue holds now (`try_recv`).
    fn next(&mut self, jobs: &mut mpsc::UnboundedReceiver<(u64, WriteBatch)>) -> Step {
        match jobs.try_recv() {
            Ok(job) => self.write(job, jobs),
            Err(mpsc::error::TryRecvError::Empty) => match self.pending {
                None => Step::Wait,
                Some(_) if !self.yielded => {
                    self.yielded = true;
                    Step::Yield
                }
                Some(p) => {
                    self.pending = None;
                    Step::Sync(p)
                }
            },
            Err(mpsc::error::TryRecvError::Disconnected) => match self.pending.take() {
                Some(p) => Step::Sync(p),
                None => Step::Stop,
            },
        }
    }

    /// A job taken: merged with every one queued behind it.
    fn write(
        &mut self,
        job: (u64, WriteBatch),
        jobs: &mut mpsc::UnboundedReceiver<(u64, WriteBatch)>,
    ) -> Step {
        self.yielded = false;
        let (mut number, mut batch) = job;
        while let Ok((n, later)) = jobs.try_recv() {
            batch.merge(later);
            number = n;
        }
        Step::Write(number, batch)
    }

    /// Reports what a write of Readys up to `number` made durable, if
    /// anything; false when the writer should stop (see [`report`]).
    fn report_write(
        &mut self,
        done: &mpsc::UnboundedSender<Result<u64>>,
        number: u64,
        written: Result<Durability>,
    ) -> bool {
        let durable = match written {
            Ok(Durability::Durable) => {
                self.pending = None;
                Ok(number)
            }
            // This write's sync made the pending one durable.
            Ok(Durability::UntilNext) => match self.pending.replace(number) {
                Some(p) => Ok(p),
                None => return true,
            },
            Err(e) => Err(e),
        };
        report(done, durable)
    }
}

/// Sends `report`; false when the writer should stop (the loop is gone,
/// or the report is a failure: storage failures are fatal).
fn report(done: &mpsc::UnboundedSender<Result<u64>>, report: Result<u64>) -> bool {
    let failed = report.is_err();
    done.send(report).is_ok() && !failed
}

impl Writer {
    /// Starts the writer of `store` (a thread when its appends block, else
    /// a task) and returns it with the receiver of its reports: each the
    /// number of the last Ready made durable, or the failure that stopped
    /// it.
    pub(super) fn start(
        store: &Arc<dyn LogStore>,
        metrics: &Arc<Metrics>,
        blocking: bool,
        limit: Duration,
    ) -> (Writer, mpsc::UnboundedReceiver<Result<u64>>) {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let parts = WriterParts {
            store: store.clone(),
            metrics: metrics.clone(),
            jobs: jobs_rx,
            done: done_tx,
        };
        let writer = match blocking && !store.inline_appends() {
            true => Writer::thread(parts, blocking, limit),
            false => Writer::task(parts, blocking, limit),
        };
        let writer = Writer {
            jobs: Some(jobs_tx),
            ..writer
        };
        (writer, done_rx)
    }

    /// Hands the writer Ready `number`'s batch; false if it has stopped.
    pub(super) fn submit(&self, number: u64, batch: WriteBatch) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send((number, batch)).is_ok())
    }

    /// A thread's write or sync has been in the store for more than
    /// `limit`: the disk hangs, and the node stops rather than every
    /// caller waiting (a task's writes are bounded where they are made).
    pub(super) fn overdue(&self, limit: Duration) -> Option<Error> {
        let taken = self.busy.as_ref()?.taken()?;
        (taken > limit).then(|| not_within("write", limit))
    }

    /// Lets the writer finish what it was given (at most `limit`); its
    /// last reports are dropped.
    pub(super) async fn finish(
        &mut self,
        limit: Duration,
        done_rx: &mut mpsc::UnboundedReceiver<Result<u64>>,
    ) {
        self.jobs = None;
        if self.overdue(limit).is_some() {
            // Hung: waiting longer changes nothing.
            return;
        }
        let _ = match self.task.take() {
            Some(task) => tokio::time::timeout(limit, task).await.map(|_| ()),
            // The thread drops its sender of the reports when it ends.
            None => {
                tokio::time::timeout(limit, async { while done_rx.recv().await.is_some() {} }).await
            }
        };
    }

    /// The writer as a task of the loop's runtime; a write that blocks
    /// goes to tokio's blocking pool, bounded by `limit`.
    fn task(parts: WriterParts, blocking: bool, limit: Duration) -> Writer {
        Writer {
            jobs: None,
            task: Some(tokio::spawn(write_behind(parts, blocking, limit))),
            busy: None,
        }
    }

    /// The writer as a thread of its own, `raftify-writer` (or, if no
    /// thread can be started, a task).
    fn thread(parts: WriterParts, blocking: bool, limit: Duration) -> Writer {
        // The parts go to the thread through a slot, so that a failed
        // spawn gives them back for a task.
        let slot = Arc::new(std::sync::Mutex::new(Some(parts)));
        let theirs = slot.clone();
        let busy = Arc::new(Busy::new());
        let marks = busy.clone();
        let spawned = std::thread::Builder::new()
            .name("raftify-writer".into())
            .spawn(move || {
                let parts = theirs.lock().ok().and_then(|mut p| p.take());
                if let Some(parts) = parts {
                    let done = parts.done.clone();
                    let run = std::panic::AssertUnwindSafe(|| write_behind_thread(parts, &marks));
                    if std::panic::catch_unwind(run).is_err() {
                        let _ = done.send(Err(Error::Fatal("the storage writer panicked".into())));
                    }
                }
            });
        let left = match spawned {
            Ok(_) => None,
            Err(_) => slot.lock().ok().and_then(|mut p| p.take()),
        };
        match left {
            Some(parts) => Writer::task(parts, blocking, limit),
            None => Writer {
                jobs: None,
                task: None,
                busy: Some(busy),
            },
        }
    }
}

/// The writer task (see [`WriteBehind`]). Stops after the first failure
/// (reported) or when the loop drops its sender.
async fn write_behind(mut w: WriterParts, blocking: bool, limit: Duration) {
    let mut state = WriteBehind::default();
    let mut step = state.next(&mut w.jobs);
    loop {
        step = match step {
            Step::Write(number, batch) => {
                let written = write_batch(&w.store, blocking, limit, &w.metrics, batch, true).await;
                if !state.report_write(&w.done, number, written) {
                    return;
                }
                state.next(&mut w.jobs)
            }
            Step::Yield => {
                tokio::task::yield_now().await;
                state.next(&mut w.jobs)
            }
            Step::Sync(p) => {
                let synced = on_store(&w.store, blocking, limit, "sync", |s| s.sync()).await;
                Metrics::add(&w.metrics.storage_syncs, 1);
                if !report(&w.done, synced.map(|()| p)) {
                    return;
                }
                state.next(&mut w.jobs)
            }
            Step::Wait => match w.jobs.recv().await {
                Some(job) => state.write(job, &mut w.jobs),
                None => return,
            },
            Step::Stop => return,
        }
    }
}

/// The writer thread: [`write_behind`] with the store called directly.
/// Its writes are not bounded here (a thread cannot leave a hung
/// `fdatasync`): the loop stops the node when one is overdue
/// ([`Writer::overdue`]), which ends this thread's reports.
fn write_behind_thread(mut w: WriterParts, busy: &Busy) {
    let mut state = WriteBehind::default();
    let mut step = state.next(&mut w.jobs);
    loop {
        step = match step {
            Step::Write(number, batch) => {
                let written = busy
                    .around(|| write_counted(w.store.as_ref(), &w.metrics, batch, true))
                    .map_err(|e| failed("write", e));
                if !state.report_write(&w.done, number, written) {
                    return;
                }
                state.next(&mut w.jobs)
            }
            // The loop runs on another thread meanwhile: look again at
            // once (no system call).
            Step::Yield => state.next(&mut w.jobs),
            Step::Sync(p) => {
                let synced = busy
                    .around(|| w.store.sync())
                    .map_err(|e| failed("sync", e));
                Metrics::add(&w.metrics.storage_syncs, 1);
                if !report(&w.done, synced.map(|()| p)) {
                    return;
                }
                state.next(&mut w.jobs)
            }
            Step::Wait => match w.jobs.blocking_recv() {
                Some(job) => state.write(job, &mut w.jobs),
                None => return,
            },
            Step::Stop => return,
        }
    }
}

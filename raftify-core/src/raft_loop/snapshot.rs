//! Snapshots: taken by threshold or on demand and saved in the background;
//! a leader's snapshot installed in place of the log.

use super::{RaftLoop, Reply};
use crate::codec::{decode_snapshot, write_snapshot_data};
use crate::error::{Error, Result};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine, BoxError, SnapshotView};
use crate::status::Metrics;
use crate::storage::{SnapshotWriter, StorageError};
use raft::eraftpb::Snapshot;
use slog::{debug, error, info};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The state machine's part of a snapshot: serialized, or a view to
/// serialize off the loop.
enum UserState {
    Bytes(Vec<u8>),
    View(Box<dyn SnapshotView>),
}

/// The store's snapshot writer, with the first error it returned kept: a
/// failed save is the store's when its writer failed, else the state
/// machine's.
struct Watched<'a> {
    out: &'a mut dyn SnapshotWriter,
    failed: Option<(std::io::ErrorKind, String)>,
}

impl Watched<'_> {
    fn watch<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            self.failed.get_or_insert_with(|| (e.kind(), e.to_string()));
        }
        r
    }
}

impl std::io::Write for Watched<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.out.write(buf);
        self.watch(r)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let r = self.out.write_all(buf);
        self.watch(r)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.out.flush();
        self.watch(r)
    }
}

impl std::io::Seek for Watched<'_> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let r = self.out.seek(pos);
        self.watch(r)
    }
}

/// A saved snapshot: `(index, first index kept in the log, outcome)`.
type Saved = (u64, u64, Result<()>);

pub(super) struct Snapshots {
    /// Index of the latest snapshot saved or installed.
    pub(super) index: u64,
    /// On-demand requests: answered by the first snapshot saved at or after
    /// the index applied when they came.
    pub(super) waiters: Vec<(u64, Reply<u64>)>,
    /// The snapshot being saved in the background: (index, task).
    job: Option<(u64, JoinHandle<()>)>,
    done_tx: mpsc::UnboundedSender<Saved>,
    pub(super) done_rx: mpsc::UnboundedReceiver<Saved>,
}

impl Snapshots {
    pub(super) fn new(index: u64) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Snapshots {
            index,
            waiters: Vec::new(),
            job: None,
            done_tx,
            done_rx,
        }
    }

    /// Whether a snapshot is being saved or waited for.
    pub(super) fn busy(&self) -> bool {
        self.job.is_some() || !self.waiters.is_empty()
    }

    /// Lets the save in progress finish (the store outlives the loop).
    pub(super) async fn finish(&mut self, limit: Duration) {
        if let Some((_, task)) = self.job.take() {
            let _ = tokio::time::timeout(limit, task).await;
        }
    }

    pub(super) fn fail_all(&mut self, err: &dyn Fn() -> Error) {
        for (_, w) in std::mem::take(&mut self.waiters) {
            let _ = w.send(Err(err()));
        }
    }

    /// Answers the on-demand requests that a snapshot at `index` covers.
    fn answer(&mut self, index: u64) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(wanted, _)| *wanted <= index);
        for (_, w) in ready {
            let _ = w.send(Ok(index));
        }
        self.waiters = waiting;
    }
}

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    pub(super) async fn install_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let (cluster, state) = decode_snapshot(&snap.data).map_err(|e| {
            Error::Fatal(format!(
                "snapshot at index {} from the leader is unreadable: {e}",
                meta.index
            ))
        })?;
        if let Some(mut state) = state {
            let mut sm = self.sm.write().await;
            sm.restore_from(&mut state)
                .await
                .map_err(|e| Error::Fatal(format!("state machine restore failed: {e}")))?;
        }
        for (id, addr) in &cluster.peers {
            if *id != self.config.id {
                self.transport.set_peer(*id, addr);
            }
        }
        for id in self.meta.peers.keys() {
            if !cluster.peers.contains_key(id) {
                self.transport.remove_peer(*id);
            }
        }
        if cluster.cluster_uid != self.meta.cluster_uid {
            self.transport.set_cluster_uid(cluster.cluster_uid);
        }
        self.meta = cluster;
        self.conf_state = meta.get_conf_state().clone();
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.snapshots.index = meta.index;
        Metrics::add(&self.metrics.snapshots_installed, 1);
        self.event(format!(
            "snapshot installed from the leader at index {}",
            meta.index
        ));
        info!(self.logger, "installed snapshot"; "index" => meta.index, "term" => meta.term);
        self.proposals.superseded_through(meta.index);
        Ok(())
    }

    pub(super) async fn maybe_snapshot(&mut self) {
        if self.snapshots.job.is_some() {
            return;
        }
        let threshold = self.config.snapshot_threshold;
        let wanted = self
            .raw
            .store()
            .snapshot_wanted
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        let due = threshold > 0 && self.applied.saturating_sub(self.snapshots.index) >= threshold;
        if wanted || due {
            self.start_snapshot().await;
        }
    }

    pub(super) async fn serve_snapshot_requests(&mut self) {
        if self.snapshots.waiters.is_empty() || self.snapshots.job.is_some() {
            return;
        }
        // Those already covered (nothing applied since the last snapshot).
        let index = self.snapshots.index;
        self.snapshots.answer(index);
        if !self.snapshots.waiters.is_empty() {
            self.start_snapshot().await;
        }
    }

    /// Takes the state machine's state at the applied index — in the loop,
    /// where it cannot move meanwhile: a view
    /// ([`AbstractStateMachine::snapshot_view`]) or else the serialized
    /// bytes — and saves it in the background (the view serialized, the
    /// envelope built, the file written and synced, the log compacted),
    /// where log writes and everything else go on. One at a time.
    async fn start_snapshot(&mut self) {
        if self.snapshots.job.is_some() {
            return;
        }
        if self.applied <= self.snapshots.index {
            // Nothing new: answer whoever waits.
            self.on_snapshot_saved(self.snapshots.index, 0, Ok(()));
            return;
        }
        let index = self.applied;
        let started = std::time::Instant::now();
        // A view is taken here and serialized with the rest of the save, off
        // the loop; without one the state is serialized now, in the loop.
        let state = {
            let sm = self.sm.read().await;
            match sm.snapshot_view() {
                Some(view) => Ok(UserState::View(view)),
                None => sm.snapshot().await.map(UserState::Bytes),
            }
        };
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                let err = Error::StateMachine(format!("snapshot: {e}"));
                self.on_snapshot_saved(index, 0, Err(err));
                return;
            }
        };
        let meta = self.meta.clone();
        let mut md = raft::eraftpb::SnapshotMetadata::default();
        md.index = index;
        md.term = self.applied_term;
        md.set_conf_state(self.conf_state.clone());
        let keep_from = (index + 1).saturating_sub(self.config.snapshot_log_retention);
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let save = move || -> Result<()> {
            // The state is written as it is produced, straight into the
            // store's snapshot file: a large one is never held serialized.
            let mut failure: Option<BoxError> = None;
            let saved = store.save_snapshot_with(
                md,
                Box::new(|out| {
                    let mut out = Watched { out, failed: None };
                    let written = write_snapshot_data(&mut out, &meta, |out| match state {
                        UserState::Bytes(b) => {
                            std::io::Write::write_all(out, &b).map_err(BoxError::from)
                        }
                        UserState::View(view) => view.write_into(out),
                    });
                    match (written, out.failed) {
                        (Ok(()), _) => Ok(()),
                        // The store's own writer failed (a full disk): its
                        // error, whatever the view made of it.
                        (Err(_), Some((kind, text))) => Err(std::io::Error::new(kind, text)),
                        (Err(e), None) => {
                            let text = e.to_string();
                            failure = Some(e);
                            Err(std::io::Error::other(text))
                        }
                    }
                }),
            );
            let size = match (saved, failure) {
                (Ok(size), _) => size,
                // The state machine failed, not the store.
                (Err(_), Some(e)) => return Err(Error::StateMachine(format!("snapshot: {e}"))),
                (Err(e), None) => return Err(e.into()),
            };
            metrics
                .snapshot_bytes
                .set(i64::try_from(size).unwrap_or(i64::MAX));
            metrics.snapshot_seconds.since(started);
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
        let done = self.snapshots.done_tx.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _ = done.send((index, keep_from, save()));
        });
        self.snapshots.job = Some((index, task));
    }

    /// A snapshot at `index` was saved (or failed to be).
    pub(super) fn on_snapshot_saved(&mut self, index: u64, keep_from: u64, result: Result<()>) {
        self.snapshots.job = None;
        match result {
            Ok(()) => {
                if index > self.snapshots.index {
                    self.snapshots.index = index;
                    Metrics::add(&self.metrics.snapshots_created, 1);
                    self.event(format!("snapshot taken at index {index}"));
                    info!(self.logger, "snapshot taken"; "index" => index, "compacted_before" => keep_from);
                }
                self.snapshots.answer(index);
            }
            Err(Error::Storage(StorageError::SnapshotOutOfDate)) => {
                // A snapshot from the leader was installed meanwhile.
                debug!(self.logger, "own snapshot superseded"; "index" => index);
            }
            Err(e) => {
                // Not fatal: the log just grows until the next attempt.
                error!(self.logger, "snapshot failed"; "index" => index, "err" => %e);
                let msg = e.to_string();
                self.snapshots
                    .fail_all(&|| Error::StateMachine(msg.clone()));
            }
        }
    }
}

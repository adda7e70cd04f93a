//! [`LossyStore`]: a [`LogStore`] that models a disk with or without fsync.
//!
//! Every write is applied to an in-memory [`MemStore`] (what the running
//! node sees: the OS page cache). With `no_sync` off, the store behaves as
//! `raftify-storage`'s LMDB store with fsync does: a `write` (and every
//! snapshot, compaction, identity) is durable at once, and a
//! `write_deferred` is durable once the next write or `sync` returns
//! ([`Durability::UntilNext`]: LMDB's meta page, synced by the next
//! commit). With `no_sync` on, writes stay in an *unsynced tail* until the
//! "OS" flushes them (a seeded coin after each write). An OS crash
//! ([`LossyStore::os_crash`]) drops the unsynced tail, leaving exactly the
//! state after some earlier write — with fsync, only writes nobody was
//! told were durable; with `no_sync`, the loss `raftify-storage` documents
//! (LMDB's commits stay atomic; the last ones may be lost). A process
//! crash loses nothing in either mode.
//!
//! The store also watches the hard states it persists, to check that a node
//! never votes for two candidates in one term (see
//! [`crate::invariants::election_safety`]).

use crate::invariants::Violations;
use crate::rng::SimRng;
use raft::eraftpb::{Entry, Snapshot};
use raftify_core::storage::{Durability, StorageResult, StoreIdentity};
use raftify_core::{LogStore, MemStore, StorageError, WriteBatch};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

#[derive(Clone)]
enum Op {
    Write(WriteBatch),
    SaveSnapshot(Snapshot),
    Compact(u64),
    Identity(StoreIdentity),
}

struct Inner {
    current: MemStore,
    synced: Vec<Op>,
    unsynced: Vec<Op>,
    rng: SimRng,
    /// term -> the candidate this node voted for (durably).
    votes: BTreeMap<u64, u64>,
    lost_ops: u64,
    /// Writes not yet durable lost by power cuts with fsync on.
    tail_lost: u64,
    os_crashes: u64,
    /// Set by [`LossyStore::power_cut`]: every write fails until
    /// [`LossyStore::os_crash`].
    powered_off: bool,
    /// Set by [`LossyStore::arm_power_cut`]: the power goes out right
    /// after the next write.
    cut_armed: bool,
}

/// A log store with an optional unsynced tail; see the module docs.
pub struct LossyStore {
    node: u64,
    no_sync: bool,
    /// Probability that the OS flushes the tail after a write.
    flush_chance: f64,
    inner: Mutex<Inner>,
    violations: Violations,
}

impl LossyStore {
    /// An empty store of node `node`. With `no_sync`, each write is flushed
    /// with probability `flush_chance` (drawn from `rng`).
    pub fn new(
        node: u64,
        no_sync: bool,
        flush_chance: f64,
        rng: SimRng,
        violations: Violations,
    ) -> Self {
        LossyStore {
            node,
            no_sync,
            flush_chance,
            inner: Mutex::new(Inner {
                current: MemStore::new(),
                synced: Vec::new(),
                unsynced: Vec::new(),
                rng,
                votes: BTreeMap::new(),
                lost_ops: 0,
                tail_lost: 0,
                os_crashes: 0,
                powered_off: false,
                cut_armed: false,
            }),
            violations,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether writes can be lost by an OS crash.
    pub fn no_sync(&self) -> bool {
        self.no_sync
    }

    fn record(&self, inner: &mut Inner, op: Op) {
        if !self.no_sync {
            // Durable at once, with every deferred write before it.
            let tail = std::mem::take(&mut inner.unsynced);
            inner.synced.extend(tail);
            inner.synced.push(op);
            return;
        }
        inner.unsynced.push(op);
        if inner.rng.chance(self.flush_chance) {
            let tail = std::mem::take(&mut inner.unsynced);
            inner.synced.extend(tail);
        }
    }

    /// The power goes out: from now on every write and sync fails (the
    /// node cannot make anything durable any more, as if it were dead),
    /// until [`LossyStore::os_crash`] brings the store back with its
    /// durable state. Call it before stopping the node, so that its
    /// shutdown cannot sync what the power cut lost.
    pub fn power_cut(&self) {
        self.lock().powered_off = true;
    }

    /// The power goes out right after the next write returns (when a
    /// deferred write's sync is still to come: the moment that tests
    /// whether the node waited for durability before it acknowledged).
    pub fn arm_power_cut(&self) {
        self.lock().cut_armed = true;
    }

    /// Whether the power is out.
    pub fn powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// Cuts the power if a cut is armed (after a write).
    fn maybe_cut(inner: &mut Inner) {
        if std::mem::take(&mut inner.cut_armed) {
            inner.powered_off = true;
        }
    }

    /// Fails when the power is out (see [`LossyStore::power_cut`]).
    fn powered(&self, inner: &Inner) -> StorageResult<()> {
        if inner.powered_off {
            return Err(StorageError::backend(std::io::Error::other(
                "the power is out",
            )));
        }
        Ok(())
    }

    /// Writes not yet reported durable that power cuts lost with fsync on
    /// (never acknowledged; not a data loss).
    pub fn tail_lost(&self) -> u64 {
        self.lock().tail_lost
    }

    /// Simulates an OS crash or power loss: the unsynced tail is gone.
    /// Returns the number of writes lost. The node must be stopped first.
    pub fn os_crash(&self) -> u64 {
        let mut inner = self.lock();
        inner.os_crashes += 1;
        let lost = inner.unsynced.len() as u64;
        inner.unsynced.clear();
        // With fsync, only writes not yet reported durable are lost: no
        // loss the node may have acknowledged, so none to excuse.
        if self.no_sync {
            inner.lost_ops += lost;
        } else {
            inner.tail_lost += lost;
        }
        inner.powered_off = false;
        inner.cut_armed = false;
        let fresh = MemStore::new();
        for op in &inner.synced {
            // Replaying a prefix of successful writes cannot fail.
            let r = match op.clone() {
                Op::Write(b) => fresh.write(b),
                Op::SaveSnapshot(s) => fresh.save_snapshot(s),
                Op::Compact(i) => fresh.compact(i),
                Op::Identity(id) => fresh.set_identity(&id),
            };
            if let Err(e) = r {
                self.violations.report(
                    "storage",
                    format!("node {}: replaying synced writes failed: {e}", self.node),
                );
            }
        }
        inner.current = fresh;
        // Votes forgotten with the tail may legitimately be cast again:
        // remember only the durable ones.
        let mut votes = BTreeMap::new();
        for op in &inner.synced {
            if let Op::Write(WriteBatch {
                hard_state: Some(hs),
                ..
            }) = op
            {
                if hs.vote != 0 {
                    votes.insert(hs.term, hs.vote);
                }
            }
        }
        inner.votes = votes;
        lost
    }

    /// Writes lost by OS crashes so far in `no_sync` mode (the documented
    /// loss; with fsync, a crash loses only writes never reported durable,
    /// which are not counted).
    pub fn lost_ops(&self) -> u64 {
        self.lock().lost_ops
    }

    /// All stored entries `(first_index, entries)`.
    pub fn log(&self) -> (u64, Vec<Entry>) {
        let inner = self.lock();
        let first = inner.current.first_index().unwrap_or(1);
        let last = inner.current.last_index().unwrap_or(0);
        let entries = if last >= first {
            inner
                .current
                .entries(first, last + 1, None)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        (first, entries)
    }

    /// The persisted commit index (a lower bound of the node's commit).
    pub fn commit(&self) -> u64 {
        self.lock()
            .current
            .initial_state()
            .map(|s| s.hard_state.commit)
            .unwrap_or(0)
    }

    /// `(index, term)` of the latest snapshot.
    pub fn snapshot_point(&self) -> (u64, u64) {
        let inner = self.lock();
        let s = inner.current.snapshot().unwrap_or_default();
        (s.get_metadata().index, s.get_metadata().term)
    }

    /// Checks the store's own invariants: `term(i)` answers for
    /// `first-1..=last`, entries are contiguous.
    pub fn check_consistent(&self) -> Result<(), String> {
        let inner = self.lock();
        let s = &inner.current;
        let first = s.first_index().map_err(|e| e.to_string())?;
        let last = s.last_index().map_err(|e| e.to_string())?;
        for i in first.saturating_sub(1)..=last {
            s.term(i)
                .map_err(|e| format!("term({i}) failed in {first}..={last}: {e}"))?;
        }
        if last >= first {
            let es = s
                .entries(first, last + 1, None)
                .map_err(|e| e.to_string())?;
            for (k, e) in es.iter().enumerate() {
                if e.index != first + k as u64 {
                    return Err(format!(
                        "entry {} at position of {}",
                        e.index,
                        first + k as u64
                    ));
                }
            }
        }
        Ok(())
    }
}

impl LogStore for LossyStore {
    fn initial_state(&self) -> StorageResult<raft::RaftState> {
        self.lock().current.initial_state()
    }
    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> StorageResult<Vec<Entry>> {
        self.lock().current.entries(low, high, max_size)
    }
    fn term(&self, idx: u64) -> StorageResult<u64> {
        self.lock().current.term(idx)
    }
    fn first_index(&self) -> StorageResult<u64> {
        self.lock().current.first_index()
    }
    fn last_index(&self) -> StorageResult<u64> {
        self.lock().current.last_index()
    }
    fn snapshot(&self) -> StorageResult<Snapshot> {
        self.lock().current.snapshot()
    }
    fn write(&self, batch: WriteBatch) -> StorageResult<()> {
        let mut inner = self.lock();
        self.powered(&inner)?;
        let op = Op::Write(batch.clone());
        self.apply(&mut inner, batch)?;
        self.record(&mut inner, op);
        Self::maybe_cut(&mut inner);
        Ok(())
    }
    fn write_deferred(&self, batch: WriteBatch) -> StorageResult<Durability> {
        let mut inner = self.lock();
        self.powered(&inner)?;
        let op = Op::Write(batch.clone());
        self.apply(&mut inner, batch)?;
        if self.no_sync {
            self.record(&mut inner, op);
            Self::maybe_cut(&mut inner);
            return Ok(Durability::Durable);
        }
        // This write's data sync made the previous one durable; its own
        // meta page waits for the next write or sync.
        let tail = std::mem::take(&mut inner.unsynced);
        inner.synced.extend(tail);
        inner.unsynced.push(op);
        Self::maybe_cut(&mut inner);
        Ok(Durability::UntilNext)
    }
    fn sync(&self) -> StorageResult<()> {
        let mut inner = self.lock();
        self.powered(&inner)?;
        if !self.no_sync {
            let tail = std::mem::take(&mut inner.unsynced);
            inner.synced.extend(tail);
        }
        Ok(())
    }
    fn save_snapshot(&self, snapshot: Snapshot) -> StorageResult<()> {
        let mut inner = self.lock();
        self.powered(&inner)?;
        let op = Op::SaveSnapshot(snapshot.clone());
        inner.current.save_snapshot(snapshot)?;
        self.record(&mut inner, op);
        Ok(())
    }
    fn compact(&self, index: u64) -> StorageResult<()> {
        let mut inner = self.lock();
        self.powered(&inner)?;
        inner.current.compact(index)?;
        self.record(&mut inner, Op::Compact(index));
        Ok(())
    }
    fn identity(&self) -> StorageResult<Option<StoreIdentity>> {
        self.lock().current.identity()
    }
    fn set_identity(&self, identity: &StoreIdentity) -> StorageResult<()> {
        let mut inner = self.lock();
        self.powered(&inner)?;
        inner.current.set_identity(identity)?;
        self.record(&mut inner, Op::Identity(identity.clone()));
        Ok(())
    }
    fn blocking_writes(&self) -> bool {
        false // in memory; also keeps tokio's paused clock deterministic
    }
}

impl LossyStore {
    /// Applies a write to what the node sees, and watches its vote.
    fn apply(&self, inner: &mut Inner, batch: WriteBatch) -> StorageResult<()> {
        let hs = batch.hard_state.clone();
        inner.current.write(batch)?;
        if let Some(hs) = hs {
            if hs.vote != 0 {
                match inner.votes.get(&hs.term) {
                    Some(v) if *v != hs.vote => self.violations.report(
                        "election_safety",
                        format!(
                            "node {} voted for {} and then for {} in term {}",
                            self.node, v, hs.vote, hs.term
                        ),
                    ),
                    _ => {
                        inner.votes.insert(hs.term, hs.vote);
                    }
                }
            }
        }
        Ok(())
    }
}

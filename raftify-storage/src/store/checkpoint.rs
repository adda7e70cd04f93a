//! Journaled writes and checkpoints: the store's fsync-on path.
//!
//! An append (entries and/or hard state, no snapshot) is one journal record
//! and one `fdatasync` (see [`crate::journal`]); it is then durable and
//! visible through the tail ([`super::tail`]). A background thread moves
//! the tail into LMDB in one transaction every [`CHECKPOINT_EVERY`] or
//! once the tail holds [`LmdbOptions::journal_segment_size`] / 2 bytes,
//! recording the last journal sequence number it applied (`wal_seq`) in the
//! same transaction; the commit is durable (LMDB's two syncs, shared by
//! every write since the last checkpoint) before the tail forgets those
//! records and their journal segments become reusable.
//!
//! A snapshot install (and a copy of the store) first stops appends and
//! checkpoints the whole tail, so LMDB alone is the state it changes. An
//! own snapshot and a compaction checkpoint first but let appends go on:
//! they concern applied entries, and appends only add entries after the
//! commit index.
//!
//! On open, the journal records after `wal_seq` are applied to LMDB the
//! same way before anything else happens.
//!
//! The groups of a shared environment ([`super::LmdbEnv`]) share one
//! journal, one checkpoint thread and one `wal_seq`: their appends are
//! committed together (a write waiting for the journal is written and
//! synced by whichever write holds it, with every other waiting one: one
//! `fdatasync` for all), and a checkpoint moves every group's tail into
//! LMDB in one transaction.

use super::tail::{
    decode, encode, encode_batch, Encoded, Pending, StoreRecords, Tail, Tails, View,
};
use super::txn::{io_disk_full, no_space, Fail};
use super::{LmdbOptions, LmdbStore};
use crate::journal::{self, Journal, Record};
use heed::RwTxn;
use raftify_core::raft::eraftpb::{Entry, HardState};
use raftify_core::storage::{check_append, StorageResult};
use raftify_core::{LogStore, StorageError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest time a write stays only in the journal when the tail is small.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// The journal and its tails, shared by the stores writing to it (one, or
/// the groups of a shared environment) and the checkpoint thread.
#[derive(Debug)]
pub(crate) struct Wal {
    /// Taken by the leader of a batch of appends while it writes it.
    /// (Writes that must see no append of their store in flight take the
    /// store's `appends`.)
    journal: Mutex<Journal>,
    /// Appends waiting to be written: the next leader writes them all.
    queue: Mutex<Queue>,
    /// Signalled when a leader is done with its batch.
    written: Condvar,
    tails: Mutex<Tails>,
    /// Last journal sequence number durable in LMDB.
    checkpointed: AtomicU64,
    /// What was written so far ([`JournalStats`]).
    stats: [AtomicU64; 3],
    /// Why a background checkpoint failed; later writes fail with it.
    failed: Mutex<Option<String>>,
    /// The checkpoint thread's wake-up: `true` asks it to stop.
    wake: (Mutex<bool>, Condvar),
    threshold: usize,
}

/// The appends waiting to be written, and whether one of their writers is
/// writing a batch now (the leader).
#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Queued>,
    leading: bool,
}

/// An append waiting for the journal.
#[derive(Debug)]
struct Queued {
    store: Option<u64>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    encoded: Encoded,
    /// Set by whoever wrote it.
    done: Outcome,
}

/// A batch being written: when it ends (or the write unwinds) every one of
/// its appends has an outcome, and the waiting appends may lead the next.
struct Leading<'a> {
    wal: &'a Wal,
    slots: Vec<Outcome>,
}

/// Where an append learns its fate: durable, or why not.
type Outcome = Arc<Mutex<Option<Result<(), String>>>>;

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        for slot in &self.slots {
            lock(slot).get_or_insert_with(|| Err("the journal write did not complete".into()));
        }
        lock(&self.wal.queue).leading = false;
        self.wal.written.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a journal has written since its store (or shared environment)
/// was opened: with several groups on one journal, `appends / syncs` is
/// how many writes each `fdatasync` carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records written, each with one sync (a batch of appends is one).
    pub syncs: u64,
    /// Appends (raft writes of entries and hard state) they carried.
    pub appends: u64,
    /// Bytes of those appends.
    pub bytes: u64,
}

impl Wal {
    /// What it has written so far.
    pub(crate) fn stats(&self) -> JournalStats {
        let [syncs, appends, bytes] = &self.stats;
        JournalStats {
            syncs: syncs.load(Ordering::Relaxed),
            appends: appends.load(Ordering::Relaxed),
            bytes: bytes.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` on `store`'s view of its tail, under the tails' lock (keep
    /// it short).
    pub(crate) fn read<T>(&self, store: Option<u64>, f: impl FnOnce(&View) -> T) -> T {
        lock(&self.tails).view(store, f)
    }

    /// `store`'s records not yet checkpointed.
    pub(crate) fn records(&self, store: Option<u64>) -> Vec<Arc<Pending>> {
        lock(&self.tails).records_of(store)
    }

    fn failure(&self) -> Option<StorageError> {
        lock(&self.failed)
            .as_ref()
            .map(|why| StorageError::backend(std::io::Error::other(why.clone())))
    }

    /// Wakes the checkpoint thread (asleep while the tail is empty) after
    /// the tail gained its first record. Under the wake-up lock, so that
    /// the thread cannot miss it between looking at the tail and sleeping.
    fn poke(&self) {
        let _guard = lock(&self.wake.0);
        self.wake.1.notify_all();
    }

    /// Wakes the checkpoint thread to stop, and waits for it.
    pub(crate) fn stop(&self, thread: JoinHandle<()>) {
        *lock(&self.wake.0) = true;
        self.wake.1.notify_all();
        let _ = thread.join();
    }
}

/// A read-only handle's journal: the records after LMDB's `wal_seq` as of
/// opening (the writer may checkpoint past some of them meanwhile; each
/// read uses only those after the `wal_seq` it sees).
#[derive(Debug, Default)]
pub(crate) struct ReadOnlyTail(pub(crate) Tail);

impl LmdbStore {
    /// Applies what the journal holds after LMDB's `wal_seq` to LMDB
    /// (on every open for writing, journaling or not: a store journaled in
    /// an earlier run must not lose its tail) and returns the last journal
    /// sequence number now in LMDB.
    pub(super) fn recover_journal(&self) -> StorageResult<u64> {
        journal::remove_tmp_files(&self.env_dir);
        let after = self.read(|txn| self.read_wal_seq(txn))?;
        let records =
            journal::read_after(&self.env_dir, after, true).map_err(|e| self.journal_read(e))?;
        Ok(self.apply_records(records)?.unwrap_or(after))
    }

    /// A failure to read the journal: damage is `Corrupted`.
    fn journal_read(&self, e: std::io::Error) -> StorageError {
        match e.kind() {
            std::io::ErrorKind::InvalidData => self.corrupt_journal(e.to_string()),
            _ => self.journal_io("read", e),
        }
    }

    fn journal_io(&self, op: &str, e: std::io::Error) -> StorageError {
        let dir = self.env_dir.join(journal::JOURNAL_DIR);
        let why = match io_disk_full(&e, &self.env_dir) {
            true => no_space(&self.env_dir),
            false => e.to_string(),
        };
        StorageError::backend(std::io::Error::new(
            e.kind(),
            format!("{op} the journal in {}: {why}", dir.display()),
        ))
    }

    /// Starts journaling appends after sequence number `last` (see
    /// [`LmdbStore::recover_journal`]), and the checkpoint thread.
    pub(super) fn start_journal(&mut self, last: u64) -> StorageResult<()> {
        let segment = self.opts.journal_segment_size as u64;
        let journal = Journal::open(&self.env_dir, segment, last, !self.opts.no_sync)
            .map_err(|e| self.journal_io("open", e))?;
        let wal = Arc::new(Wal {
            journal: Mutex::new(journal),
            queue: Mutex::new(Queue::default()),
            written: Condvar::new(),
            stats: Default::default(),
            tails: Mutex::new(Tails::default()),
            checkpointed: AtomicU64::new(last),
            failed: Mutex::new(None),
            wake: (Mutex::new(false), Condvar::new()),
            threshold: (self.opts.journal_segment_size / 2).max(1),
        });
        self.wal = Some(wal);
        let worker = self.handle();
        let thread = std::thread::Builder::new()
            .name("raftify-checkpoint".into())
            .spawn(move || worker.checkpoint_loop())
            .map_err(|e| self.journal_io("start the checkpoint thread of", e))?;
        self.checkpointer = Some(thread);
        Ok(())
    }

    /// A read-only handle's view of the journal: the records after LMDB's
    /// `wal_seq` now.
    pub(super) fn load_read_only_tail(&mut self) -> StorageResult<()> {
        let after = self.read(|txn| self.read_wal_seq(txn))?;
        // Not strict: the writer may be appending while this reads.
        let records =
            journal::read_after(&self.env_dir, after, false).map_err(|e| self.journal_read(e))?;
        let mut tail = Tail::default();
        for r in records {
            for (group, p) in self.decode_record(r)? {
                if group == self.scope {
                    tail.push(p);
                }
            }
        }
        self.read_only_tail = Some(Arc::new(ReadOnlyTail(tail)));
        Ok(())
    }

    fn corrupt_journal(&self, what: String) -> StorageError {
        StorageError::corrupted(
            what,
            self.env_dir
                .join(journal::JOURNAL_DIR)
                .display()
                .to_string(),
        )
    }

    /// Decodes a journal record: the group it is of and the write. A
    /// group's record in a store alone, or a store's in a shared
    /// environment, is damage (another journal's file).
    fn decode_record(&self, r: Record) -> StorageResult<Vec<(Option<u64>, Pending)>> {
        let seq = r.seq;
        let writes = decode(seq, r.payload).map_err(|e| self.corrupt_journal(e))?;
        if let Some((group, _)) = writes.iter().find(|(g, _)| g.is_some() != self.shared) {
            return Err(self.corrupt_journal(format!(
                "journal record {seq} is not of this store's layout (group {group:?})"
            )));
        }
        Ok(writes)
    }

    /// Applies journal records to LMDB in one durable transaction that
    /// records the last one's number; returns it (None: nothing to apply).
    fn apply_records(&self, records: Vec<Record>) -> StorageResult<Option<u64>> {
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(None);
        };
        let mut tails = Tails::default();
        for r in records {
            for (group, p) in self.decode_record(r)? {
                tails.push(group, p);
            }
        }
        let (all, _) = tails.all();
        let _w = self.lock_writer();
        self.write_txn(|wtxn| self.apply_all(wtxn, &all, last))?;
        Ok(Some(last))
    }

    /// Writes every store's records into LMDB, in the caller's transaction,
    /// and records `seq` as the last journal record applied.
    fn apply_all(&self, wtxn: &mut RwTxn, all: &StoreRecords, seq: u64) -> Result<(), Fail> {
        for (group, records) in all {
            match group {
                None => self.apply_pending(wtxn, records)?,
                Some(g) => self.scoped(*g).apply_pending(wtxn, records)?,
            }
        }
        self.put_wal_seq(wtxn, seq)
    }

    /// Writes `records` into LMDB as the log's continuation, in the
    /// caller's transaction (the caller records the journal position).
    pub(super) fn apply_pending(
        &self,
        wtxn: &mut RwTxn,
        records: &[Arc<Pending>],
    ) -> Result<(), Fail> {
        let mut hs: Option<&HardState> = None;
        // The log's offset and end, read once: appending changes only the end.
        let mut ends: Option<(u64, u64)> = None;
        for p in records {
            if let (Some(first), Some(last_new)) = (p.entries.first(), p.entries.last()) {
                let (offset, last) = match ends {
                    Some(e) => e,
                    None => {
                        let meta = self.read_meta(wtxn)?;
                        (meta.offset, self.last_index_txn(wtxn, &meta)?)
                    }
                };
                check_append(offset, last, &p.entries)
                    .map_err(|e| self.corrupt_journal(format!("journal record {}: {e}", p.seq)))?;
                self.delete_from(wtxn, first.index)?;
                for (e, rec) in p.framed() {
                    self.append_raw(wtxn, e.index, rec)?;
                }
                ends = Some((offset, last_new.index));
            }
            if let Some(h) = &p.hard_state {
                hs = Some(h);
            }
        }
        match hs {
            Some(h) => self.put_hard_state(wtxn, h),
            None => Ok(()),
        }
    }

    /// Journals one append (entries and/or hard state): durable when this
    /// returns `Ok`. With other stores on the journal, it is written and
    /// synced together with theirs (group commit).
    pub(super) fn journal_append(
        &self,
        wal: &Wal,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) -> StorageResult<()> {
        if let Some(e) = wal.failure() {
            return Err(e);
        }
        let encoded = encode(self.scope, &entries, hard_state.as_ref())?;
        // One append of this store at a time: checked against the log as
        // it is, then in the journal before the next one is checked.
        let _one = lock(&self.appends);
        if !entries.is_empty() {
            let offset = self.first_index()? - 1;
            let last = self.last_index()?;
            check_append(offset, last, &entries)?;
        }
        let done = Arc::new(Mutex::new(None));
        let mut queue = lock(&wal.queue);
        queue.waiting.push(Queued {
            store: self.scope,
            entries,
            hard_state,
            encoded,
            done: done.clone(),
        });
        // Group commit: while a leader writes its batch, the appends that
        // arrive wait; the first to see it done leads the next batch,
        // with all of them. No waiting append needs the journal's lock.
        while lock(&done).is_none() {
            if queue.leading {
                queue = wal.written.wait(queue).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            queue.leading = true;
            let batch = std::mem::take(&mut queue.waiting);
            drop(queue);
            let lead = Leading {
                wal,
                slots: batch.iter().map(|q| q.done.clone()).collect(),
            };
            {
                let mut journal = lock(&wal.journal);
                self.write_batch_to_journal(wal, &mut journal, batch);
            }
            drop(lead);
            queue = lock(&wal.queue);
        }
        drop(queue);
        let outcome = lock(&done).take();
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(StorageError::backend(std::io::Error::other(why))),
            None => Err(StorageError::backend(std::io::Error::other(
                "a journal write was not carried out",
            ))),
        }
    }

    /// Writes the waiting appends as one journal record (one sync; a batch
    /// of several as [`encode_batch`] makes it), pushes them to their
    /// tails once durable (under the journal lock, so in sequence order)
    /// and tells each waiting one its outcome.
    fn write_batch_to_journal(&self, wal: &Wal, journal: &mut Journal, mut batch: Vec<Queued>) {
        let checkpointed = wal.checkpointed.load(Ordering::Acquire);
        let written = match batch.as_mut_slice() {
            [one] => journal.append(&mut one.encoded.record, checkpointed),
            many => encode_batch(many.iter().map(|q| &q.encoded))
                .map_err(std::io::Error::other)
                .and_then(|mut record| journal.append(&mut record, checkpointed)),
        };
        let seq = match written {
            Ok(seq) => seq,
            Err(e) => {
                let why = self.journal_io("write", e).to_string();
                if journal.has_failed() {
                    // What is on disk is unknown: no checkpoint (nor a
                    // group's deletion, which checkpoints first) may move
                    // the journal position past it until a reopen reads it.
                    lock(&wal.failed).get_or_insert_with(|| why.clone());
                }
                for q in batch {
                    *lock(&q.done) = Some(Err(why.clone()));
                }
                return;
            }
        };
        let bytes: usize = batch.iter().map(|q| q.encoded.record.len()).sum();
        for (counter, n) in wal.stats.iter().zip([1, batch.len() as u64, bytes as u64]) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        let mut tails = lock(&wal.tails);
        let first = tails.is_empty();
        let mut done = Vec::with_capacity(batch.len());
        for q in batch {
            tails.push(
                q.store,
                Pending::new(seq, q.entries, q.hard_state, q.encoded),
            );
            done.push(q.done);
        }
        let full = tails.bytes() >= wal.threshold;
        drop(tails);
        for d in done {
            *lock(&d) = Some(Ok(()));
        }
        if first {
            // The checkpoint thread sleeps while the tails are empty.
            wal.poke();
        } else if full {
            wal.wake.1.notify_all();
        }
    }

    /// The journaled records not (or, for a read-only handle, not as of
    /// opening) in LMDB.
    pub(super) fn tail_records(&self) -> Vec<Arc<Pending>> {
        match (&self.wal, &self.read_only_tail) {
            (Some(wal), _) => wal.records(self.scope),
            (None, Some(tail)) => tail.0.records(),
            (None, None) => Vec::new(),
        }
    }

    /// Runs `f` with appends stopped and the whole tail in LMDB.
    pub(super) fn with_tail_checkpointed<T>(
        &self,
        f: impl FnOnce() -> StorageResult<T>,
    ) -> StorageResult<T> {
        let Some(wal) = &self.wal else {
            return f();
        };
        // This store's appends only: the other groups of a shared
        // environment go on writing to the journal meanwhile (their
        // checkpoints wait for the writer lock `f` takes).
        let _appends = lock(&self.appends);
        self.checkpoint_wal(wal)?;
        f()
    }

    /// Moves every journaled write into LMDB now (the store does it in the
    /// background anyway, and before a compaction or an own snapshot).
    pub fn checkpoint(&self) -> StorageResult<()> {
        match &self.wal {
            Some(wal) => self.checkpoint_wal(wal),
            None => Ok(()),
        }
    }

    fn checkpoint_wal(&self, wal: &Wal) -> StorageResult<()> {
        if let Some(e) = wal.failure() {
            return Err(e);
        }
        // Under the writer lock: two checkpoints never apply the same
        // records (an older set applied after a newer one would undo it).
        let _w = self.lock_writer();
        let (all, last) = lock(&wal.tails).all();
        let Some(seq) = last else {
            return Ok(());
        };
        let result = self.write_txn(|wtxn| self.apply_all(wtxn, &all, seq));
        if let Err(e) = result {
            *lock(&wal.failed) = Some(format!("checkpointing the journal into LMDB failed: {e}"));
            return Err(e);
        }
        lock(&wal.tails).drop_through(seq);
        wal.checkpointed.store(seq, Ordering::Release);
        Ok(())
    }

    /// The checkpoint thread: checkpoints when the tail is large, or has
    /// waited [`CHECKPOINT_EVERY`]; while the tail is empty it sleeps until
    /// an append wakes it (an idle store, e.g. one of hundreds of sleeping
    /// groups, costs no wake-ups). Asked to stop, it just ends: the next
    /// open applies the journal (a clean close and a crash take the same
    /// path, which keeps that path tested).
    fn checkpoint_loop(self) {
        let Some(wal) = self.wal.clone() else {
            return;
        };
        let mut since: Option<Instant> = None;
        loop {
            let stop = {
                let mut guard = lock(&wal.wake.0);
                // Lock order: wake-up, then tail (appends take them one at
                // a time, never both).
                while !*guard && lock(&wal.tails).is_empty() {
                    since = None;
                    guard = wal.wake.1.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                if *guard {
                    true
                } else {
                    let (guard, _) = wal
                        .wake
                        .1
                        .wait_timeout(guard, CHECKPOINT_EVERY / 4)
                        .unwrap_or_else(|p| p.into_inner());
                    *guard
                }
            };
            let (empty, bytes) = {
                let t = lock(&wal.tails);
                (t.is_empty(), t.bytes())
            };
            if empty {
                since = None;
            } else {
                let first_seen = *since.get_or_insert_with(Instant::now);
                if !stop && (bytes >= wal.threshold || first_seen.elapsed() >= CHECKPOINT_EVERY) {
                    // A failure is kept in `failed` and fails later writes.
                    let _ = self.checkpoint_wal(&wal);
                    since = None;
                }
            }
            if stop {
                return;
            }
        }
    }
}

impl LmdbOptions {
    /// Whether stores opened with these options journal their appends
    /// (synced unless `no_sync`).
    pub(crate) fn journals(&self) -> bool {
        self.journal
    }
}

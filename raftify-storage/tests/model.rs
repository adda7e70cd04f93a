//! Model-based tests: random operation sequences applied to `LmdbStore` and
//! to raftify-core's `MemStore` (the reference), comparing every observable
//! after every step.

#![allow(clippy::field_reassign_with_default)]

use proptest::prelude::*;
use raftify_core::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raftify_core::storage::{Durability, StorageResult, StoreIdentity};
use raftify_core::{LogStore, MemStore, StorageError, WriteBatch};
use raftify_storage::{LmdbEnv, LmdbOptions, LmdbStore};
use std::path::Path;

#[derive(Debug, Clone)]
enum Op {
    /// Append `count` entries starting `back` before last+1 (overwriting a
    /// suffix), or after a gap; optionally with a hard state.
    Append {
        back: u64,
        gap: bool,
        count: u64,
        term_up: u64,
        size: usize,
        hard_state: Option<(u64, u64, u64)>,
        /// Written with `write_deferred` (durable with the next write or
        /// sync) instead of `write`.
        deferred: bool,
    },
    HardState(u64, u64, u64),
    Compact(u64),
    /// Snapshot install through a write batch.
    Install {
        at: u64,
        real_term: bool,
        term: u64,
        voters: Vec<u64>,
        data: usize,
        follow: u64,
        hard_state: Option<(u64, u64, u64)>,
    },
    Save {
        at: u64,
        voters: Vec<u64>,
        data: usize,
    },
    Identity(u64),
    /// `sync()`: makes every deferred write durable.
    Sync,
    /// `checkpoint()`: moves the journaled writes into LMDB.
    Checkpoint,
    Reopen,
}

/// How the store under test is opened.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// `no_sync`: LMDB commits without fsync.
    NoSync,
    /// `no_sync` through the journal (the default with `no_sync`): records
    /// written without fsync, checkpointed into LMDB.
    NoSyncJournal,
    /// fsync on, through the journal (the default), with small segments
    /// so that sequences switch and reuse them.
    Journal,
    /// fsync on, every write an LMDB commit (`journal(false)`).
    Direct,
    /// Group 7 of a shared environment (`LmdbEnv`), fsync on through the
    /// shared journal, between groups 3 and 9 that hold entries of their
    /// own (checked untouched at the end).
    Shared,
}

/// The group under test in [`Mode::Shared`], and its neighbours.
const GROUP: u64 = 7;
const NEIGHBOURS: [u64; 2] = [3, 9];

fn mode_strategy() -> impl Strategy<Value = Mode> {
    prop_oneof![
        3 => Just(Mode::NoSync),
        2 => Just(Mode::NoSyncJournal),
        3 => Just(Mode::Journal),
        2 => Just(Mode::Direct),
        3 => Just(Mode::Shared)
    ]
}

fn hs_strategy() -> impl Strategy<Value = Option<(u64, u64, u64)>> {
    prop::option::of((0u64..10, 0u64..4, 0u64..40))
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4, prop::bool::weighted(0.05), 0u64..6, 0u64..2, 0usize..120, hs_strategy(),
              prop::bool::ANY)
            .prop_map(|(back, gap, count, term_up, size, hard_state, deferred)| Op::Append {
                back, gap, count, term_up, size, hard_state, deferred
            }),
        2 => (0u64..10, 0u64..4, 0u64..40).prop_map(|(t, v, c)| Op::HardState(t, v, c)),
        2 => (0u64..64).prop_map(Op::Compact),
        2 => (0u64..64, prop::bool::weighted(0.6), 0u64..6, prop::collection::vec(1u64..6, 0..3),
              0usize..64, 0u64..3, hs_strategy())
            .prop_map(|(at, real_term, term, voters, data, follow, hard_state)| Op::Install {
                at, real_term, term, voters, data, follow, hard_state
            }),
        2 => (0u64..64, prop::collection::vec(1u64..6, 0..3), 0usize..64)
            .prop_map(|(at, voters, data)| Op::Save { at, voters, data }),
        1 => (1u64..5).prop_map(Op::Identity),
        1 => Just(Op::Sync),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ]
}

fn entry(index: u64, term: u64, size: usize) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = (0..size)
        .map(|i| (i as u64 ^ index) as u8)
        .collect::<Vec<u8>>()
        .into();
    e.context = vec![term as u8].into();
    e
}

fn hard_state(t: Option<(u64, u64, u64)>) -> Option<HardState> {
    t.map(|(term, vote, commit)| {
        let mut hs = HardState::default();
        hs.term = term;
        hs.vote = vote;
        hs.commit = commit;
        hs
    })
}

fn snapshot(index: u64, term: u64, voters: &[u64], data: usize) -> Snapshot {
    let mut s = Snapshot::default();
    s.data = vec![(index % 251) as u8; data].into();
    let m = s.mut_metadata();
    m.index = index;
    m.term = term;
    let mut cs = ConfState::default();
    cs.voters = voters.to_vec();
    m.set_conf_state(cs);
    s
}

/// Results compared by value, errors by variant only (messages differ).
fn norm<T>(r: StorageResult<T>) -> Result<T, &'static str> {
    r.map_err(|e| match e {
        StorageError::Compacted => "Compacted",
        StorageError::Unavailable => "Unavailable",
        StorageError::SnapshotOutOfDate => "SnapshotOutOfDate",
        StorageError::SnapshotTemporarilyUnavailable => "SnapshotTemporarilyUnavailable",
        StorageError::Corrupted { what, .. } => panic!("unexpected Corrupted: {what}"),
        StorageError::Invalid(_) => "Invalid",
        StorageError::Backend(e) => panic!("unexpected backend error: {e}"),
    })
}

fn opts(mode: Mode) -> LmdbOptions {
    // A tiny map so the sequences also exercise map growth; half the runs
    // without fsync to keep them short (durability is tested by the crash
    // test), the others through the journal or with LMDB commits that
    // defer their meta page's sync.
    LmdbOptions::new()
        .map_size(64 * 1024)
        .no_sync(matches!(mode, Mode::NoSync | Mode::NoSyncJournal))
        .journal(matches!(
            mode,
            Mode::Journal | Mode::NoSyncJournal | Mode::Shared
        ))
        .journal_segment_size(8 * 1024)
}

fn open(dir: &Path, mode: Mode) -> LmdbStore {
    if mode != Mode::Shared {
        return LmdbStore::open(dir, opts(mode)).expect("open store");
    }
    let env = LmdbEnv::open(dir, opts(mode)).expect("open environment");
    for g in NEIGHBOURS {
        let n = env.group(g).expect("open a neighbour");
        if n.last_index().unwrap() == 0 {
            n.write(WriteBatch {
                entries: (1..=3).map(|i| entry(i, g, 20)).collect(),
                hard_state: hard_state(Some((g, 0, 2))),
                snapshot: None,
            })
            .unwrap();
        }
    }
    env.group(GROUP).expect("open the group")
}

/// The neighbours of [`Mode::Shared`] hold what they were given.
fn check_neighbours(dir: &Path) {
    let env = LmdbEnv::open(dir, opts(Mode::Shared)).expect("open environment");
    for g in NEIGHBOURS {
        let n = env.group(g).unwrap();
        assert_eq!((n.first_index().unwrap(), n.last_index().unwrap()), (1, 3));
        let want: Vec<Entry> = (1..=3).map(|i| entry(i, g, 20)).collect();
        assert_eq!(n.entries(1, 4, None).unwrap(), want);
        assert_eq!(n.initial_state().unwrap().hard_state.term, g);
    }
}

fn compare(model: &MemStore, store: &LmdbStore, step: usize) {
    let first = model.first_index().unwrap();
    let last = model.last_index().unwrap();
    assert_eq!(
        norm(store.first_index()),
        Ok(first),
        "first_index at step {step}"
    );
    assert_eq!(
        norm(store.last_index()),
        Ok(last),
        "last_index at step {step}"
    );
    let (ms, ls) = (
        model.initial_state().unwrap(),
        store.initial_state().unwrap(),
    );
    assert_eq!(ls.hard_state, ms.hard_state, "hard state at step {step}");
    assert_eq!(ls.conf_state, ms.conf_state, "conf state at step {step}");
    assert_eq!(
        norm(store.snapshot()),
        norm(model.snapshot()),
        "snapshot at step {step}"
    );
    assert_eq!(
        norm(store.identity()),
        norm(model.identity()),
        "identity at step {step}"
    );
    for i in 0..=last + 2 {
        assert_eq!(
            norm(store.term(i)),
            norm(model.term(i)),
            "term({i}) at step {step}"
        );
    }
    let lo_start = first.saturating_sub(2);
    for lo in lo_start..=last + 2 {
        let mut his = vec![lo.saturating_sub(1), lo, lo + 1, lo + 3, last + 1, last + 2];
        his.sort_unstable();
        his.dedup();
        for hi in his {
            for max in [None, Some(0), Some(60), Some(250)] {
                assert_eq!(
                    norm(store.entries(lo, hi, max)),
                    norm(model.entries(lo, hi, max)),
                    "entries({lo}, {hi}, {max:?}) at step {step}"
                );
            }
        }
    }
}

fn apply(op: &Op, model: &MemStore, store: &mut LmdbStore, dir: &Path, mode: Mode, step: usize) {
    let last = model.last_index().unwrap();
    let first = model.first_index().unwrap();
    match op {
        Op::Append {
            back,
            gap,
            count,
            term_up,
            size,
            hard_state: hs,
            deferred,
        } => {
            let start = if *gap {
                last + 2
            } else {
                (last + 1).saturating_sub(*back)
            };
            let base = model.term(start.saturating_sub(1)).unwrap_or(1).max(1);
            let entries: Vec<Entry> = (0..*count)
                .map(|k| entry(start + k, base + term_up, *size))
                .collect();
            let batch = WriteBatch {
                entries,
                hard_state: hard_state(*hs),
                snapshot: None,
            };
            let m = model.write(batch.clone());
            let s = if *deferred {
                store.write_deferred(batch).map(|d| {
                    // Only LMDB commits with fsync on defer.
                    let want = if mode == Mode::Direct {
                        Durability::UntilNext
                    } else {
                        Durability::Durable
                    };
                    assert_eq!(d, want, "durability at step {step}");
                })
            } else {
                store.write(batch)
            };
            assert_eq!(norm(s), norm(m), "append result at step {step}: {op:?}");
        }
        Op::HardState(t, v, c) => {
            let batch = WriteBatch {
                hard_state: hard_state(Some((*t, *v, *c))),
                ..Default::default()
            };
            let (m, s) = (model.write(batch.clone()), store.write(batch));
            assert_eq!(norm(s), norm(m), "hard state result at step {step}");
        }
        Op::Compact(x) => {
            let idx = x % (last + 3);
            let (m, s) = (model.compact(idx), store.compact(idx));
            assert_eq!(norm(s), norm(m), "compact({idx}) at step {step}");
        }
        Op::Install {
            at,
            real_term,
            term,
            voters,
            data,
            follow,
            hard_state: hs,
        } => {
            let idx = first.saturating_sub(2) + at % (last + 6 - first.saturating_sub(2));
            let t = match model.term(idx) {
                Ok(t) if *real_term => t,
                _ => *term + 1,
            };
            let snap = snapshot(idx, t, voters, *data);
            let entries = (1..=*follow).map(|k| entry(idx + k, t, 20)).collect();
            let batch = WriteBatch {
                snapshot: Some(snap),
                entries,
                hard_state: hard_state(*hs),
            };
            let (m, s) = (model.write(batch.clone()), store.write(batch));
            assert_eq!(norm(s), norm(m), "install at {idx} (step {step}): {op:?}");
        }
        Op::Save { at, voters, data } => {
            let idx = at % (last + 2);
            let t = model.term(idx).unwrap_or(0);
            let snap = snapshot(idx, t, voters, *data);
            let (m, s) = (model.save_snapshot(snap.clone()), store.save_snapshot(snap));
            assert_eq!(norm(s), norm(m), "save_snapshot at {idx} (step {step})");
        }
        Op::Identity(n) => {
            let id = StoreIdentity {
                node_id: *n,
                cluster_id: format!("cluster-{n}"),
            };
            model.set_identity(&id).unwrap();
            store.set_identity(&id).unwrap();
        }
        Op::Sync => store.sync().unwrap(),
        Op::Checkpoint => store.checkpoint().unwrap(),
        Op::Reopen => {
            // Close the environment first: heed allows one per path. A
            // process crash loses nothing, deferred writes included.
            let placeholder = tempfile::tempdir().unwrap();
            let old = std::mem::replace(store, open(placeholder.path(), Mode::NoSync));
            drop(old);
            *store = open(dir, mode);
            drop(placeholder);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 150,
        max_shrink_iters: 200,
        .. ProptestConfig::default()
    })]

    #[test]
    fn lmdb_store_matches_mem_store(
        ops in prop::collection::vec(op_strategy(), 1..35),
        mode in mode_strategy(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let model = MemStore::new();
        let mut store = open(dir.path(), mode);
        compare(&model, &store, 0);
        for (step, op) in ops.iter().enumerate() {
            apply(op, &model, &mut store, dir.path(), mode, step + 1);
            compare(&model, &store, step + 1);
        }
        // Whatever happened, a read-only handle (LMDB and the journal's
        // tail, still unapplied after a close) and a final reopen show the
        // same state.
        drop(store);
        if mode != Mode::Shared {
            let store = LmdbStore::open_read_only(dir.path(), opts(mode)).expect("open read-only");
            compare(&model, &store, ops.len() + 1);
            drop(store);
        }
        let store = open(dir.path(), mode);
        compare(&model, &store, ops.len() + 2);
        drop(store);
        if mode == Mode::Shared {
            check_neighbours(dir.path());
        }
    }
}

/// A fixed sequence with fsync on, covering the common raft path, through
/// the journal and with LMDB commits.
#[test]
fn synced_store_follows_model_on_a_typical_history() {
    for mode in [Mode::Journal, Mode::Direct, Mode::Shared] {
        typical_history(mode);
    }
}

fn typical_history(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let model = MemStore::new();
    let mut store = match mode {
        Mode::Shared => open(dir.path(), mode),
        _ => LmdbStore::open(dir.path(), opts(mode).map_size(1 << 20)).unwrap(),
    };
    assert!(store.blocking_writes());
    let ops = [
        Op::Append {
            back: 0,
            gap: false,
            count: 5,
            term_up: 0,
            size: 30,
            hard_state: Some((1, 1, 3)),
            deferred: true,
        },
        Op::Append {
            back: 2,
            gap: false,
            count: 4,
            term_up: 1,
            size: 10,
            hard_state: Some((2, 1, 5)),
            deferred: false,
        },
        Op::Sync,
        Op::Save {
            at: 5,
            voters: vec![1, 2, 3],
            data: 40,
        },
        Op::Compact(4),
        Op::Reopen,
        Op::Install {
            at: 20,
            real_term: false,
            term: 3,
            voters: vec![1, 2],
            data: 8,
            follow: 2,
            hard_state: None,
        },
        Op::Append {
            back: 1,
            gap: false,
            count: 3,
            term_up: 0,
            size: 5,
            hard_state: Some((4, 2, 12)),
            deferred: true,
        },
        Op::Reopen,
    ];
    for (step, op) in ops.iter().enumerate() {
        apply(op, &model, &mut store, dir.path(), mode, step + 1);
        compare(&model, &store, step + 1);
    }
    if mode == Mode::Shared {
        drop(store);
        check_neighbours(dir.path());
    }
}

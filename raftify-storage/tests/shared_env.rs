//! `LmdbEnv`: many groups' logs in one LMDB environment and one journal,
//! on real files: concurrent writers committed together, recovery of the
//! shared journal after a close without checkpoint, group deletion,
//! exclusivity and the layouts told apart. (Each group's store against
//! the reference model: `tests/model.rs`, `Mode::Shared`.)

#![allow(clippy::field_reassign_with_default)]

use raftify_core::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raftify_core::{LogStore, WriteBatch};
use raftify_storage::{LmdbEnv, LmdbError, LmdbOptions, LmdbStore};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn entry(group: u64, index: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = 1;
    e.data = format!("g{group}-e{index}").into_bytes().into();
    e
}

fn opts() -> LmdbOptions {
    LmdbOptions::new()
        .map_size(1 << 20)
        .journal_segment_size(64 * 1024)
        .lock_wait(Duration::from_millis(200))
}

fn append(store: &LmdbStore, group: u64, index: u64) {
    let mut hs = HardState::default();
    (hs.term, hs.commit) = (1, index);
    store
        .write(WriteBatch {
            entries: vec![entry(group, index)],
            hard_state: Some(hs),
            snapshot: None,
        })
        .unwrap();
}

fn check_log(store: &LmdbStore, group: u64, last: u64) {
    assert_eq!(store.last_index().unwrap(), last, "group {group}");
    let want: Vec<Entry> = (1..=last).map(|i| entry(group, i)).collect();
    assert_eq!(
        store.entries(1, last + 1, None).unwrap(),
        want,
        "group {group}"
    );
    assert_eq!(store.initial_state().unwrap().hard_state.commit, last);
}

fn wal_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("wal")).map_or(0, |d| d.count())
}

#[test]
fn concurrent_groups_share_the_journal_and_come_back_after_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let env = LmdbEnv::open(dir.path(), opts()).unwrap();
    const GROUPS: u64 = 8;
    const WRITES: u64 = 150;
    let writers: Vec<_> = (1..=GROUPS)
        .map(|g| {
            let store = env.group(g).unwrap();
            std::thread::spawn(move || {
                for i in 1..=WRITES {
                    append(&store, g, i);
                }
                store
            })
        })
        .collect();
    let stores: Vec<LmdbStore> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for (g, s) in (1..=GROUPS).zip(&stores) {
        check_log(s, g, WRITES);
        assert_eq!(s.group(), Some(g));
    }
    // Every append went through the one journal; a sync carries one or
    // more of them (how many depends on how they met).
    let stats = env.journal_stats();
    assert_eq!(stats.appends, GROUPS * WRITES, "{stats:?}");
    assert!((1..=stats.appends).contains(&stats.syncs), "{stats:?}");
    assert!(stats.bytes > stats.appends * 16, "{stats:?}");
    // One journal for all (not one per group), with few segments.
    assert!(wal_files(dir.path()) <= 3, "{}", wal_files(dir.path()));
    assert_eq!(wal_files(&dir.path().join("groups/1")), 0);
    // Closed without a checkpoint: the next open applies the journal.
    drop(stores);
    drop(env);
    let env = LmdbEnv::open(dir.path(), opts()).unwrap();
    for g in 1..=GROUPS {
        check_log(&env.group(g).unwrap(), g, WRITES);
    }
    assert!(!env.holds(GROUPS + 1).unwrap());
}

#[test]
fn a_deleted_group_is_gone_for_good_and_its_neighbours_stay() {
    let dir = tempfile::tempdir().unwrap();
    let env = LmdbEnv::open(dir.path(), opts()).unwrap();
    for g in [1, 2, 3] {
        let s = env.group(g).unwrap();
        for i in 1..=5 {
            append(&s, g, i);
        }
    }
    // A snapshot installed in group 2: its file is in the group's folder.
    {
        let s = env.group(2).unwrap();
        let mut snap = Snapshot::default();
        let m = snap.mut_metadata();
        (m.index, m.term) = (9, 2);
        m.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        snap.data = b"state of group 2".to_vec().into();
        s.write(WriteBatch {
            snapshot: Some(snap),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (10, 9));
        let snaps = std::fs::read_dir(dir.path().join("groups/2/snap")).unwrap();
        assert_eq!(snaps.count(), 1);
    }
    assert!(env.holds(2).unwrap());
    env.delete_group(2).unwrap();
    assert!(!env.holds(2).unwrap());
    assert!(!dir.path().join("groups/2").exists());
    for g in [1, 3] {
        check_log(&env.group(g).unwrap(), g, 5);
    }
    // Still gone after a restart (its journal records are not replayed),
    // and a group of that id starts empty. A folder left by a deletion cut
    // short (its records gone, the folder not yet) goes at the next open.
    drop(env);
    let leftover = dir.path().join("groups/2/snap");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("1-9-2.snap"), b"old").unwrap();
    let env = LmdbEnv::open(dir.path(), opts()).unwrap();
    assert!(!dir.path().join("groups/2").exists());
    assert!(dir.path().join("groups/1").exists() && dir.path().join("groups/3").exists());
    assert!(!env.holds(2).unwrap());
    let again = env.group(2).unwrap();
    assert_eq!(
        (again.first_index().unwrap(), again.last_index().unwrap()),
        (1, 0)
    );
    assert_eq!(
        again.initial_state().unwrap().hard_state,
        HardState::default()
    );
    for g in [1, 3] {
        check_log(&env.group(g).unwrap(), g, 5);
    }
}

#[test]
fn a_group_is_open_once_and_deleted_only_when_closed() {
    let dir = tempfile::tempdir().unwrap();
    let env = LmdbEnv::open(dir.path(), opts()).unwrap();
    let s = env.group(4).unwrap();
    append(&s, 4, 1);
    assert!(matches!(env.group(4), Err(LmdbError::Locked { .. })));
    assert!(matches!(env.delete_group(4), Err(LmdbError::Locked { .. })));
    assert!(env.holds(4).unwrap(), "a refused delete changes nothing");
    // Closed while a delete waits: the delete goes ahead.
    let waiting = {
        let env = Arc::clone(&env);
        std::thread::spawn(move || env.delete_group(4))
    };
    std::thread::sleep(Duration::from_millis(20));
    drop(s);
    waiting.join().unwrap().unwrap();
    assert!(!env.holds(4).unwrap());
    // The environment stays open while a group's store lives.
    let s = env.group(5).unwrap();
    drop(env);
    append(&s, 5, 1);
    check_log(&s, 5, 1);
}

#[test]
fn a_store_and_an_environment_are_not_mistaken_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let env_dir = dir.path().join("env");
    drop(LmdbStore::open(&store_dir, opts()).unwrap());
    drop(LmdbEnv::open(&env_dir, opts()).unwrap());
    let wrong = LmdbEnv::open(&store_dir, opts()).unwrap_err();
    assert!(matches!(wrong, LmdbError::NotAStore { .. }), "{wrong}");
    let wrong = LmdbStore::open(&env_dir, opts()).unwrap_err();
    assert!(matches!(wrong, LmdbError::NotAStore { .. }), "{wrong}");
    // A second environment on the same directory is refused (locked).
    let env = LmdbEnv::open(&env_dir, opts()).unwrap();
    assert!(LmdbEnv::open(&env_dir, opts()).is_err());
    drop(env);
}

#[test]
fn a_group_reads_back_read_only_with_its_journaled_writes() {
    let dir = tempfile::tempdir().unwrap();
    let env = LmdbEnv::open(dir.path(), opts()).unwrap();
    for g in [1, 2] {
        let s = env.group(g).unwrap();
        for i in 1..=4 {
            append(&s, g, i);
        }
        if g == 1 {
            s.checkpoint().unwrap();
        }
        append(&s, g, 5);
    }
    // Closed without a checkpoint: the last writes are only in the journal.
    drop(env);
    for g in [1, 2] {
        let ro = LmdbStore::open_group_read_only(dir.path(), g, opts()).unwrap();
        assert!(ro.is_read_only());
        check_log(&ro, g, 5);
        assert!(ro.write(WriteBatch::default()).is_err(), "read-only");
    }
    let empty = LmdbStore::open_group_read_only(dir.path(), 9, opts()).unwrap();
    assert_eq!(empty.last_index().unwrap(), 0);
    drop(empty);
    // A store's directory is not an environment, read-only either.
    let store_dir = dir.path().join("store");
    drop(LmdbStore::open(&store_dir, opts()).unwrap());
    let wrong = LmdbStore::open_group_read_only(&store_dir, 1, opts()).unwrap_err();
    assert!(matches!(wrong, LmdbError::NotAStore { .. }), "{wrong}");
    let wrong = LmdbStore::open_read_only(dir.path(), opts()).unwrap_err();
    assert!(matches!(wrong, LmdbError::NotAStore { .. }), "{wrong}");
}

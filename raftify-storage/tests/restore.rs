//! Restore functions: the source is left untouched, and the new directory
//! opens with the same log / snapshot.

#![allow(clippy::field_reassign_with_default)]

use raftify_core::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raftify_core::storage::StoreIdentity;
use raftify_core::{LogStore, WriteBatch};
use raftify_storage::{
    restore_wal_from, restore_wal_snapshot_from, write_snapshot_file, LmdbError, LmdbOptions,
    LmdbStore,
};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

fn opts() -> LmdbOptions {
    LmdbOptions::new().map_size(1 << 20)
}

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = format!("cmd-{index}").into_bytes().into();
    e
}

fn snapshot_at(index: u64, term: u64) -> Snapshot {
    let mut s = Snapshot::default();
    s.data = format!("state@{index}").into_bytes().into();
    let m = s.mut_metadata();
    m.index = index;
    m.term = term;
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2, 3];
    cs.learners = vec![4];
    m.set_conf_state(cs);
    s
}

/// Entries 1..=50 (terms 1, then 2 from 30), snapshot at 25, compacted to
/// 21, hard state, identity.
fn populate(s: &LmdbStore) {
    let mut hs = HardState::default();
    hs.term = 2;
    hs.vote = 2;
    hs.commit = 45;
    s.write(WriteBatch {
        entries: (1..=50)
            .map(|i| entry(i, if i < 30 { 1 } else { 2 }))
            .collect(),
        hard_state: Some(hs),
        snapshot: None,
    })
    .unwrap();
    s.save_snapshot(snapshot_at(25, 1)).unwrap();
    s.compact(21).unwrap();
    s.set_identity(&StoreIdentity {
        node_id: 1,
        cluster_id: "prod".into(),
    })
    .unwrap();
}

/// Contents of every file of a store except LMDB's reader table (lock.mdb),
/// which readers update by design.
fn fingerprint(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "lock.mdb" {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn assert_same_log(a: &LmdbStore, b: &LmdbStore) {
    assert_eq!(a.first_index().unwrap(), b.first_index().unwrap());
    assert_eq!(a.last_index().unwrap(), b.last_index().unwrap());
    let (first, last) = (a.first_index().unwrap(), a.last_index().unwrap());
    assert_eq!(
        a.entries(first, last + 1, None).unwrap(),
        b.entries(first, last + 1, None).unwrap()
    );
    for i in first - 1..=last {
        assert_eq!(a.term(i).unwrap(), b.term(i).unwrap());
    }
    let (sa, sb) = (a.initial_state().unwrap(), b.initial_state().unwrap());
    assert_eq!(sa.hard_state, sb.hard_state);
    assert_eq!(sa.conf_state, sb.conf_state);
    assert_eq!(a.snapshot().unwrap(), b.snapshot().unwrap());
}

#[test]
fn restore_wal_from_copies_log_and_leaves_source_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("n1"), tmp.path().join("n4"));
    populate(&LmdbStore::open(&src, opts()).unwrap());
    let before = fingerprint(&src);

    let copy = restore_wal_from(&src, &dst, opts()).unwrap();
    assert_eq!(copy.identity().unwrap(), None, "identity is cleared");
    assert_eq!(copy.first_index().unwrap(), 21);
    assert_eq!(copy.last_index().unwrap(), 50);
    drop(copy);
    assert_eq!(fingerprint(&src), before, "source files changed");

    let s = LmdbStore::open(&src, opts()).unwrap();
    let d = LmdbStore::open(&dst, opts()).unwrap();
    assert_same_log(&s, &d);
    assert_eq!(s.identity().unwrap().unwrap().node_id, 1);
    assert_eq!(d.identity().unwrap(), None);
    // The new node adopts the log and goes on from it.
    d.set_identity(&StoreIdentity {
        node_id: 4,
        cluster_id: "prod".into(),
    })
    .unwrap();
    d.write(WriteBatch {
        entries: vec![entry(51, 2)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.last_index().unwrap(), 50);
}

#[test]
fn copy_wal_to_works_on_an_open_store() {
    let tmp = tempfile::tempdir().unwrap();
    let src = LmdbStore::open(tmp.path().join("n1"), opts()).unwrap();
    populate(&src);
    let dst = src.copy_wal_to(tmp.path().join("n5"), opts()).unwrap();
    assert_same_log(&src, &dst);
    // The source keeps working.
    src.write(WriteBatch {
        entries: vec![entry(51, 2)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(dst.last_index().unwrap(), 50);
}

#[test]
fn restore_from_snapshot_dir_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("n1");
    populate(&LmdbStore::open(&src, opts()).unwrap());
    let before = fingerprint(&src);

    let check = |d: &LmdbStore| {
        let snap = snapshot_at(25, 1);
        assert_eq!(d.snapshot().unwrap(), snap);
        assert_eq!(d.first_index().unwrap(), 26);
        assert_eq!(d.last_index().unwrap(), 25);
        assert_eq!(d.term(25).unwrap(), 1);
        let st = d.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, 25);
        assert_eq!(st.hard_state.term, 1);
        assert_eq!(&st.conf_state, snap.get_metadata().get_conf_state());
        assert_eq!(d.identity().unwrap(), None);
    };

    // From the store directory.
    let d = restore_wal_snapshot_from(&src, tmp.path().join("a"), opts()).unwrap();
    check(&d);
    drop(d);
    let d = LmdbStore::open(tmp.path().join("a"), opts()).unwrap();
    check(&d);
    // The log continues after the snapshot.
    d.write(WriteBatch {
        entries: vec![entry(26, 3)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(d.last_index().unwrap(), 26);
    assert_eq!(fingerprint(&src), before, "source files changed");

    // From an exported snapshot file.
    let file = tmp.path().join("exports/snap-25.snap");
    {
        let s = LmdbStore::open(&src, opts()).unwrap();
        s.export_snapshot(&file).unwrap();
    }
    let d = restore_wal_snapshot_from(&file, tmp.path().join("b"), opts()).unwrap();
    check(&d);

    // From a file written directly.
    let file2 = tmp.path().join("exports/direct.snap");
    write_snapshot_file(&file2, &snapshot_at(25, 1)).unwrap();
    let d = restore_wal_snapshot_from(&file2, tmp.path().join("c"), opts()).unwrap();
    check(&d);
}

#[test]
fn restore_refuses_bad_sources_and_destinations() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("n1");
    populate(&LmdbStore::open(&src, opts()).unwrap());

    // Destination not empty.
    let busy = tmp.path().join("busy");
    fs::create_dir_all(&busy).unwrap();
    fs::write(busy.join("x"), b"x").unwrap();
    let err = restore_wal_from(&src, &busy, opts()).unwrap_err();
    assert!(
        matches!(err, LmdbError::DestinationNotEmpty { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("busy"), "{err}");
    let err = restore_wal_snapshot_from(&src, &busy, opts()).unwrap_err();
    assert!(
        matches!(err, LmdbError::DestinationNotEmpty { .. }),
        "{err:?}"
    );

    // Missing source.
    let err = restore_wal_from(tmp.path().join("nope"), tmp.path().join("d1"), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::Missing { .. }), "{err:?}");
    let err =
        restore_wal_snapshot_from(tmp.path().join("nope.snap"), tmp.path().join("d2"), opts())
            .unwrap_err();
    assert!(matches!(err, LmdbError::Missing { .. }), "{err:?}");

    // A source store without a snapshot.
    let empty = tmp.path().join("empty");
    drop(LmdbStore::open(&empty, opts()).unwrap());
    let err = restore_wal_snapshot_from(&empty, tmp.path().join("d3"), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::NotAStore { .. }), "{err:?}");

    // A garbage snapshot file.
    let junk = tmp.path().join("junk.snap");
    fs::write(&junk, b"definitely not a snapshot").unwrap();
    let err = restore_wal_snapshot_from(&junk, tmp.path().join("d4"), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::Corrupted { .. }), "{err:?}");
    assert!(err.to_string().contains("junk.snap"), "{err}");
}

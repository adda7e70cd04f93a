//! Damaged records: what the store reports when LMDB hands back bytes
//! that are not what it wrote.

#![allow(clippy::field_reassign_with_default)]

use super::meta::{K_HARD_STATE, K_VERSION};
use super::{LmdbOptions, LmdbStore};
use crate::codec::frame;
use crate::error::LmdbError;
use raftify_core::protobuf::Message;
use raftify_core::raft::eraftpb::Entry;
use raftify_core::{LogStore, StorageError, WriteBatch};
use std::path::Path;

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = vec![index as u8; 10].into();
    e
}

fn store_with_entries(dir: &Path) -> LmdbStore {
    let s = LmdbStore::open(dir, LmdbOptions::new().map_size(1 << 20)).unwrap();
    s.write(WriteBatch {
        entries: (1..=5).map(|i| entry(i, 1)).collect(),
        ..Default::default()
    })
    .unwrap();
    // The damage below is done to LMDB: move the journaled writes there.
    s.checkpoint().unwrap();
    s
}

#[test]
fn undecodable_entry_record_is_corrupted_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_entries(dir.path());
    // A record with a valid checksum whose payload is not an Entry.
    let garbage = frame(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut wtxn = s.env.write_txn().unwrap();
    s.entries_db
        .put(&mut wtxn, &s.entry_key(3), &garbage)
        .unwrap();
    wtxn.commit().unwrap();
    let err = s.entries(1, 6, None).unwrap_err();
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("log entry 3") && msg.contains("cannot decode"),
        "{msg}"
    );
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(matches!(s.term(3), Err(StorageError::Corrupted { .. })));
    // Entries that are fine still read.
    assert_eq!(s.entries(1, 3, None).unwrap().len(), 2);
}

#[test]
fn flipped_bits_in_entry_fail_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_entries(dir.path());
    let mut rec = frame(&entry(4, 1).write_to_bytes().unwrap());
    let n = rec.len();
    rec[n - 1] ^= 0x40;
    let mut wtxn = s.env.write_txn().unwrap();
    s.entries_db.put(&mut wtxn, &s.entry_key(4), &rec).unwrap();
    wtxn.commit().unwrap();
    let err = s.entries(4, 5, None).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn entry_under_wrong_key_is_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_entries(dir.path());
    let rec = frame(&entry(9, 1).write_to_bytes().unwrap());
    let mut wtxn = s.env.write_txn().unwrap();
    s.entries_db.put(&mut wtxn, &s.entry_key(2), &rec).unwrap();
    wtxn.commit().unwrap();
    let err = s.term(2).unwrap_err();
    assert!(err.to_string().contains("holds entry 9"), "{err}");
}

#[test]
fn damaged_metadata_fails_open_with_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store_with_entries(dir.path());
        let mut wtxn = s.env.write_txn().unwrap();
        s.meta_db
            .put(&mut wtxn, K_HARD_STATE, b"\x00\x01\x02\x03junk")
            .unwrap();
        wtxn.commit().unwrap();
        assert!(matches!(
            s.initial_state(),
            Err(StorageError::Corrupted { .. })
        ));
    }
    let err = LmdbStore::open(dir.path(), LmdbOptions::new().map_size(1 << 20)).unwrap_err();
    assert!(matches!(err, LmdbError::Corrupted { .. }), "{err:?}");
    assert!(err.to_string().contains("hard_state"), "{err}");
}

#[test]
fn gap_in_log_is_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_entries(dir.path());
    let mut wtxn = s.env.write_txn().unwrap();
    s.entries_db.delete(&mut wtxn, &s.entry_key(3)).unwrap();
    wtxn.commit().unwrap();
    let err = s.entries(1, 6, None).unwrap_err();
    assert!(err.to_string().contains("gap"), "{err}");
}

#[test]
fn unsupported_version_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store_with_entries(dir.path());
        let mut wtxn = s.env.write_txn().unwrap();
        s.meta_db
            .put(&mut wtxn, K_VERSION, &frame(&99u32.to_be_bytes()))
            .unwrap();
        wtxn.commit().unwrap();
    }
    let err = LmdbStore::open(dir.path(), LmdbOptions::new().map_size(1 << 20)).unwrap_err();
    assert!(
        matches!(
            err,
            LmdbError::UnsupportedVersion {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

/// The checkpoint thread sleeps while nothing is journaled; an append
/// wakes it, and the write reaches LMDB without an explicit checkpoint
/// (twice: it goes back to sleep and is woken again).
#[test]
fn idle_checkpoint_thread_wakes_for_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let s = LmdbStore::open(dir.path(), LmdbOptions::new().map_size(1 << 20)).unwrap();
    let in_lmdb = |s: &LmdbStore| s.read(|txn| s.read_wal_seq(txn)).unwrap();
    for round in 1..=2u64 {
        // Idle longer than a checkpoint period first: the thread is asleep.
        std::thread::sleep(super::checkpoint::CHECKPOINT_EVERY * 2);
        let before = in_lmdb(&s);
        s.write(WriteBatch {
            entries: vec![entry(round, 1)],
            ..Default::default()
        })
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while in_lmdb(&s) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the append was not checkpointed in 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(in_lmdb(&s), before + 1);
    }
}

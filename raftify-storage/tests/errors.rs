//! Bad input: damaged files, foreign or missing directories, locks held by
//! other handles and processes, a full map. Every case must return its
//! error (naming the directory), never panic.

#![allow(clippy::field_reassign_with_default)]

use raftify_core::raft::eraftpb::{Entry, Snapshot, SnapshotMetadata};
use raftify_core::{LogStore, StorageError, WriteBatch};
use raftify_storage::{read_archive_file, read_snapshot_file, LmdbError, LmdbOptions, LmdbStore};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOLD_ENV: &str = "RAFTIFY_STORAGE_HOLD_DIR";
const FSIZE_ENV: &str = "RAFTIFY_STORAGE_FSIZE_DIR";

fn entry(index: u64, size: usize) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = 1;
    e.data = vec![(index % 256) as u8; size].into();
    e
}

fn opts() -> LmdbOptions {
    LmdbOptions::new().map_size(4 << 20)
}

/// A store in `dir` holding entries 1..=10 (what the snapshot tests need
/// below them).
fn open_with_ten_entries(dir: &Path) -> LmdbStore {
    let s = LmdbStore::open(dir, opts()).unwrap();
    s.write(WriteBatch {
        entries: (1..=10).map(|i| entry(i, 10)).collect(),
        ..Default::default()
    })
    .unwrap();
    s
}

/// A store with `n` entries of `size` bytes, all in LMDB (the tests
/// damage its data file), closed again.
fn make_store(dir: &Path, n: u64, size: usize) {
    let s = LmdbStore::open(dir, opts()).unwrap();
    for chunk in (1..=n).collect::<Vec<_>>().chunks(100) {
        s.write(WriteBatch {
            entries: chunk.iter().map(|&i| entry(i, size)).collect(),
            ..Default::default()
        })
        .unwrap();
    }
    s.checkpoint().unwrap();
}

fn names_dir(err: &LmdbError, dir: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.display().to_string()),
        "error message does not name {}: {msg}",
        dir.display()
    );
}

#[test]
fn truncated_data_file_is_corrupted() {
    for keep in [0u64, 100, 5000, 50_000] {
        let tmp = tempfile::tempdir().unwrap();
        make_store(tmp.path(), 2000, 200);
        let data = tmp.path().join("data.mdb");
        let len = fs::metadata(&data).unwrap().len();
        assert!(len > 100_000, "store too small for the test: {len}");
        OpenOptions::new()
            .write(true)
            .open(&data)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let err = LmdbStore::open(tmp.path(), opts()).unwrap_err();
        assert!(
            matches!(err, LmdbError::Corrupted { .. }),
            "keep {keep}: {err:?}"
        );
        assert!(err.to_string().contains("truncated"), "keep {keep}: {err}");
        names_dir(&err, tmp.path());
        // Read-only opening refuses it just the same.
        let err = LmdbStore::open_read_only(tmp.path(), opts()).unwrap_err();
        assert!(matches!(err, LmdbError::Corrupted { .. }), "{err:?}");
        // And it converts into the core's typed error.
        assert!(matches!(
            StorageError::from(err),
            StorageError::Corrupted { .. }
        ));
    }
}

#[test]
fn garbage_in_data_file_is_corrupted() {
    let tmp = tempfile::tempdir().unwrap();
    make_store(tmp.path(), 300, 100);
    let data = tmp.path().join("data.mdb");
    let mut f = OpenOptions::new().write(true).open(&data).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&vec![0xA5u8; 8192]).unwrap();
    drop(f);
    let err = LmdbStore::open(tmp.path(), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::Corrupted { .. }), "{err:?}");
    assert!(err.to_string().contains("not a valid LMDB file"), "{err}");
    names_dir(&err, tmp.path());
}

#[test]
fn data_file_of_random_bytes_is_corrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut x = 0x1234_5678_9abc_def1u64;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(tmp.path().join("data.mdb"), bytes).unwrap();
    let err = LmdbStore::open(tmp.path(), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::Corrupted { .. }), "{err:?}");
    names_dir(&err, tmp.path());
}

#[test]
fn foreign_directories_are_refused() {
    // A non-empty directory without a store.
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
    let err = LmdbStore::open(tmp.path(), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::NotAStore { .. }), "{err:?}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert!(
        !tmp.path().join("data.mdb").exists(),
        "must not create files there"
    );
    assert!(matches!(StorageError::from(err), StorageError::Invalid(_)));

    // A regular file instead of a directory.
    let file = tmp.path().join("notes.txt");
    let err = LmdbStore::open(&file, opts()).unwrap_err();
    names_dir(&err, &file);

    // Another program's LMDB environment.
    let other = tempfile::tempdir().unwrap();
    {
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .map_size(1 << 20)
                .max_dbs(2)
                .open(other.path())
        }
        .unwrap();
        let mut wtxn = env.write_txn().unwrap();
        let db: heed::Database<heed::types::Str, heed::types::Str> =
            env.create_database(&mut wtxn, Some("users")).unwrap();
        db.put(&mut wtxn, "alice", "admin").unwrap();
        wtxn.commit().unwrap();
    }
    let err = LmdbStore::open(other.path(), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::NotAStore { .. }), "{err:?}");
    let err = LmdbStore::open_read_only(other.path(), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::NotAStore { .. }), "{err:?}");
}

#[test]
fn read_only_open_of_missing_dir_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("no-such-node");
    let err = LmdbStore::open_read_only(&gone, opts()).unwrap_err();
    assert!(matches!(err, LmdbError::Missing { .. }), "{err:?}");
    names_dir(&err, &gone);
    assert!(
        !gone.exists(),
        "read-only open must not create the directory"
    );
    // An empty directory has no data.mdb.
    let err = LmdbStore::open_read_only(tmp.path(), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::Missing { .. }), "{err:?}");
}

#[test]
fn second_handle_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let s = LmdbStore::open(tmp.path(), opts()).unwrap();
    let err = LmdbStore::open(tmp.path(), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::Locked { .. }), "{err:?}");
    names_dir(&err, tmp.path());
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
    drop(s);
    LmdbStore::open(tmp.path(), opts()).expect("lock released on drop");
}

#[test]
fn open_waits_for_a_lock_released_within_lock_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let s = LmdbStore::open(tmp.path(), opts()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        // Released only once the second open has started waiting.
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(s);
    });
    tx.send(()).unwrap();
    let opened = LmdbStore::open(tmp.path(), opts().lock_wait(Duration::from_secs(30)));
    holder.join().unwrap();
    opened.expect("the lock is taken once released");
    // Zero wait tries once.
    let _held = LmdbStore::open(tmp.path(), opts()).unwrap();
    let err = LmdbStore::open(tmp.path(), opts().lock_wait(Duration::ZERO)).unwrap_err();
    assert!(matches!(err, LmdbError::Locked { .. }), "{err:?}");
}

/// Child mode: hold a store open for writing until killed.
#[test]
fn hold_child() {
    let Ok(dir) = std::env::var(HOLD_ENV) else {
        return;
    };
    let s = LmdbStore::open(&dir, opts()).expect("child: open");
    s.write(WriteBatch {
        entries: vec![entry(1, 10), entry(2, 10)],
        ..Default::default()
    })
    .expect("child: write");
    // Written straight to fd 1: libtest's capture only sees print!/println!.
    let mut out = std::io::stdout();
    writeln!(out, "READY").expect("child: stdout");
    out.flush().expect("child: flush");
    std::thread::sleep(Duration::from_secs(20));
}

#[test]
fn lock_held_by_another_process() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hold_child", "--nocapture", "--test-threads=1"])
        .env(HOLD_ENV, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "child did not get ready");
        match lines.next() {
            // libtest prints "test hold_child ... " before it on the same line.
            Some(Ok(l)) if l.trim_end().ends_with("READY") => break,
            Some(_) => {}
            None => panic!("child exited early"),
        }
    }
    let err = LmdbStore::open(tmp.path(), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&child.id().to_string()),
        "names the pid: {err}"
    );

    // A reader (e.g. the CLI) may inspect the running node's store.
    {
        let ro = LmdbStore::open_read_only(tmp.path(), opts()).unwrap();
        assert!(ro.is_read_only());
        assert_eq!(ro.last_index().unwrap(), 2);
        assert_eq!(ro.entries(1, 3, None).unwrap().len(), 2);
        let err = ro
            .write(WriteBatch {
                entries: vec![entry(3, 1)],
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, StorageError::Invalid(_)), "{err:?}");
        assert!(ro.compact(2).is_err());
        assert!(ro.save_snapshot(Snapshot::default()).is_err());
    }

    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait().unwrap();
    let s = LmdbStore::open(tmp.path(), opts()).expect("lock released when the holder died");
    assert_eq!(s.last_index().unwrap(), 2);
}

#[test]
fn full_map_grows_and_retries() {
    let tmp = tempfile::tempdir().unwrap();
    // LMDB's own write path (the journal's checkpoints grow the map the
    // same way, in the background).
    let o = LmdbOptions::new().map_size(64 * 1024).journal(false);
    let s = LmdbStore::open(tmp.path(), o.clone()).unwrap();
    let initial = s.map_size();
    // 2000 entries of 1 KiB, in batches: far beyond 64 KiB.
    for start in (1..=2000u64).step_by(50) {
        s.write(WriteBatch {
            entries: (start..start + 50).map(|i| entry(i, 1024)).collect(),
            ..Default::default()
        })
        .unwrap();
    }
    // One batch larger than the whole current map, too.
    s.write(WriteBatch {
        entries: vec![entry(2001, 8 << 20)],
        ..Default::default()
    })
    .unwrap();
    assert!(
        s.map_size() > initial * 16,
        "map grew from {initial} to {}",
        s.map_size()
    );
    assert_eq!(s.last_index().unwrap(), 2001);
    drop(s);
    let s = LmdbStore::open(tmp.path(), o).unwrap();
    let all = s.entries(1, 2002, None).unwrap();
    assert_eq!(all.len(), 2001);
    assert!(all
        .iter()
        .take(2000)
        .all(|e| e.data.len() == 1024 && e.data[0] == (e.index % 256) as u8));
    assert_eq!(all[2000].data.len(), 8 << 20);
}

#[test]
fn growth_stops_at_max_map_size_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = LmdbOptions::new()
        .map_size(64 * 1024)
        .max_map_size(256 * 1024)
        .journal(false);
    let s = LmdbStore::open(tmp.path(), o).unwrap();
    s.write(WriteBatch {
        entries: vec![entry(1, 100)],
        ..Default::default()
    })
    .unwrap();
    let err = s
        .write(WriteBatch {
            entries: vec![entry(2, 1 << 20)],
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, StorageError::Backend(_)), "{err:?}");
    let msg = format!("{err} / {:?}", err);
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    // The failed batch changed nothing; the store still works.
    assert_eq!(s.last_index().unwrap(), 1);
    s.write(WriteBatch {
        entries: vec![entry(2, 100)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.last_index().unwrap(), 2);
}

/// With the journal, a write is durable before LMDB holds it: one that
/// LMDB then cannot take (map at `max_map_size`) stops the store with an
/// error naming the limit, loses nothing, and goes in once the store is
/// reopened with a larger limit.
#[test]
fn a_checkpoint_beyond_max_map_size_stops_writes_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let small = LmdbOptions::new()
        .map_size(64 * 1024)
        .max_map_size(256 * 1024);
    let s = LmdbStore::open(tmp.path(), small.clone()).unwrap();
    for i in 1..=3 {
        s.write(WriteBatch {
            entries: vec![entry(i, 200 * 1024)],
            ..Default::default()
        })
        .unwrap();
    }
    let err = s.checkpoint().unwrap_err();
    let msg = format!("{err}");
    assert!(matches!(err, StorageError::Backend(_)), "{err:?}");
    assert!(msg.contains("max_map_size"), "{msg}");
    let later = s
        .write(WriteBatch {
            entries: vec![entry(4, 10)],
            ..Default::default()
        })
        .unwrap_err();
    assert!(later.to_string().contains("max_map_size"), "{later}");
    // What was acknowledged is still read.
    assert_eq!(s.last_index().unwrap(), 3);
    drop(s);
    let err = LmdbStore::open(tmp.path(), small).unwrap_err();
    assert!(err.to_string().contains("max_map_size"), "{err}");
    let s = LmdbStore::open(tmp.path(), LmdbOptions::new().map_size(64 * 1024)).unwrap();
    let all = s.entries(1, 4, None).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|e| e.data.len() == 200 * 1024));
}

#[test]
fn damaged_snapshot_files_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open_with_ten_entries(tmp.path());
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 8;
    snap.mut_metadata().term = 1;
    snap.data = b"state machine bytes".to_vec().into();
    s.save_snapshot(snap.clone()).unwrap();
    assert_eq!(s.snapshot().unwrap(), snap);
    let files: Vec<_> = fs::read_dir(tmp.path().join("snap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "exactly one snapshot file: {files:?}");
    let file = &files[0];
    assert_eq!(read_snapshot_file(file).unwrap(), snap);
    // Its metadata and size, without reading it.
    let info = s.snapshot_info().unwrap();
    assert_eq!(&info.metadata, snap.get_metadata());
    assert_eq!(info.size, fs::metadata(file).unwrap().len());

    // Flip one byte of the data.
    let mut bytes = fs::read(file).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    fs::write(file, &bytes).unwrap();
    let err = s.snapshot().unwrap_err();
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err:?}");
    assert!(err.to_string().contains("checksum"), "{err}");
    // Truncated.
    fs::write(file, &bytes[..n - 5]).unwrap();
    let err = read_snapshot_file(file).unwrap_err();
    assert!(
        matches!(err, LmdbError::Corrupted { .. }) && err.to_string().contains("truncated"),
        "{err}"
    );
    // Not a snapshot file at all.
    fs::write(file, b"hello").unwrap();
    assert!(matches!(
        read_snapshot_file(file),
        Err(LmdbError::Corrupted { .. })
    ));
    // Missing: the store refuses to open (the log would be inconsistent).
    drop(s);
    fs::remove_file(file).unwrap();
    let err = LmdbStore::open(tmp.path(), opts()).unwrap_err();
    assert!(matches!(err, LmdbError::Corrupted { .. }), "{err:?}");
    assert!(err.to_string().contains("snapshot file"), "{err}");
}

#[test]
fn a_streamed_snapshot_is_stored_and_served_from_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open_with_ten_entries(tmp.path());
    let mut md = SnapshotMetadata::default();
    md.index = 8;
    md.term = 1;
    // Written in pieces, a length patched in at the start afterwards.
    let size = s
        .save_snapshot_with(
            md.clone(),
            Box::new(|w| {
                w.write_all(b"????")?;
                for _ in 0..100 {
                    w.write_all(&[7u8; 1000])?;
                }
                w.seek(SeekFrom::Start(0))?;
                w.write_all(b"LEN:")?;
                w.seek(SeekFrom::End(0))?;
                Ok(())
            }),
        )
        .unwrap();
    assert_eq!(size, 100_004);
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.get_metadata(), &md);
    assert_eq!(snap.data.len(), 100_004);
    assert_eq!(&snap.data[..4], b"LEN:");
    assert!(snap.data[4..].iter().all(|&b| b == 7));
    // For backups: the file itself, which reads back as the snapshot.
    let (m, file) = s.snapshot_file().unwrap().unwrap();
    assert_eq!(m, md);
    let files: Vec<_> = fs::read_dir(tmp.path().join("snap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(&file[..], &fs::read(&files[0]).unwrap()[..]);
    assert_eq!(read_snapshot_file(&files[0]).unwrap(), snap);
    // A writer that fails stores nothing: the previous snapshot stays, and
    // no file is left behind.
    let mut later = md.clone();
    later.index = 9;
    let failed = s.save_snapshot_with(
        later,
        Box::new(|w| {
            w.write_all(b"partial state")?;
            Err(std::io::Error::other("the state machine failed"))
        }),
    );
    assert!(failed.is_err());
    assert_eq!(s.snapshot().unwrap().get_metadata(), &md);
    let left: Vec<_> = fs::read_dir(tmp.path().join("snap"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the stored snapshot: {left:?}");
    // A store without a snapshot has no file.
    let empty = tempfile::tempdir().unwrap();
    let e = LmdbStore::open(empty.path(), opts()).unwrap();
    assert!(e.snapshot_file().unwrap().is_none());
}

#[test]
fn old_snapshot_files_and_orphans_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open_with_ten_entries(tmp.path());
    for i in [3u64, 5, 5, 9] {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = i;
        snap.mut_metadata().term = 1;
        s.save_snapshot(snap).unwrap();
        assert_eq!(fs::read_dir(tmp.path().join("snap")).unwrap().count(), 1);
    }
    // An older snapshot is refused and leaves no file behind.
    let mut old = Snapshot::default();
    old.mut_metadata().index = 4;
    assert!(matches!(
        s.save_snapshot(old),
        Err(StorageError::SnapshotOutOfDate)
    ));
    assert_eq!(fs::read_dir(tmp.path().join("snap")).unwrap().count(), 1);
    drop(s);
    // Leftovers of a crash before commit: a stray file and a temp file.
    fs::write(
        tmp.path()
            .join("snap/00000000000000000099-00000000000000000010-00000000000000000001.snap"),
        b"x",
    )
    .unwrap();
    fs::write(tmp.path().join("snap/.foo.snap.tmp"), b"x").unwrap();
    let s = LmdbStore::open(tmp.path(), opts()).unwrap();
    assert_eq!(fs::read_dir(tmp.path().join("snap")).unwrap().count(), 1);
    assert_eq!(s.snapshot().unwrap().get_metadata().index, 9);
}

#[test]
fn compaction_archives_entries_before_deleting() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let s = LmdbStore::open(tmp.path().join("node"), opts().archive_compacted(&archive)).unwrap();
    s.write(WriteBatch {
        entries: (1..=20).map(|i| entry(i, 30)).collect(),
        ..Default::default()
    })
    .unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 15;
    snap.mut_metadata().term = 1;
    s.save_snapshot(snap).unwrap();
    s.compact(8).unwrap();
    s.compact(16).unwrap();
    assert!(matches!(s.compact(17), Err(StorageError::Invalid(_))));
    assert_eq!(s.first_index().unwrap(), 16);
    assert!(matches!(
        s.entries(15, 16, None),
        Err(StorageError::Compacted)
    ));
    let a = read_archive_file(archive.join(format!("compacted-{:020}-{:020}.wal", 1, 7))).unwrap();
    assert_eq!(a, (1..=7).map(|i| entry(i, 30)).collect::<Vec<_>>());
    let b = read_archive_file(archive.join(format!("compacted-{:020}-{:020}.wal", 8, 15))).unwrap();
    assert_eq!(b, (8..=15).map(|i| entry(i, 30)).collect::<Vec<_>>());
    // A damaged archive is reported, not panicked on.
    let path = archive.join(format!("compacted-{:020}-{:020}.wal", 8, 15));
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    assert!(matches!(
        read_archive_file(&path),
        Err(LmdbError::Corrupted { .. })
    ));
}

#[test]
fn invalid_writes_return_invalid_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = LmdbStore::open(tmp.path(), opts()).unwrap();
    s.write(WriteBatch {
        entries: (1..=5).map(|i| entry(i, 10)).collect(),
        ..Default::default()
    })
    .unwrap();
    // Gap.
    let err = s
        .write(WriteBatch {
            entries: vec![entry(7, 1)],
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, StorageError::Invalid(_)), "{err:?}");
    // Not contiguous.
    let err = s
        .write(WriteBatch {
            entries: vec![entry(6, 1), entry(8, 1)],
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, StorageError::Invalid(_)), "{err:?}");
    assert_eq!(s.last_index().unwrap(), 5);
    // Snapshot beyond the log.
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 9;
    assert!(matches!(
        s.save_snapshot(snap),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        s.entries(3, 9, None),
        Err(StorageError::Unavailable)
    ));
    assert!(matches!(s.term(9), Err(StorageError::Unavailable)));
}

/// Child mode: with the file-size limit just above the current data file
/// (writes past it fail with EFBIG, like a full disk), write until a write
/// fails, and report what `write` returned.
#[test]
fn write_failure_child() {
    let Ok(dir) = std::env::var(FSIZE_ENV) else {
        return;
    };
    let s = LmdbStore::open(&dir, opts()).expect("child: open");
    let len = fs::metadata(Path::new(&dir).join("data.mdb"))
        .unwrap()
        .len();
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: len + 64 * 1024,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let mut out = std::io::stdout();
    let mut next = s.last_index().unwrap() + 1;
    for _ in 0..1000 {
        let r = s.write(WriteBatch {
            entries: vec![entry(next, 16 * 1024)],
            ..Default::default()
        });
        match r {
            Ok(()) => {
                writeln!(out, "\nACK {next}").unwrap();
                next += 1;
            }
            Err(e) => {
                let kind = match &e {
                    StorageError::Backend(_) => "Backend",
                    StorageError::Corrupted { .. } => "Corrupted",
                    StorageError::Invalid(_) => "Invalid",
                    _ => "Other",
                };
                writeln!(out, "\nERR {kind} {e}").unwrap();
                // The handle keeps answering reads (no panic, no UB).
                writeln!(out, "\nLAST {:?}", s.last_index().is_ok()).unwrap();
                break;
            }
        }
    }
    out.flush().unwrap();
}

#[test]
fn failed_disk_write_is_a_backend_error() {
    let tmp = tempfile::tempdir().unwrap();
    make_store(tmp.path(), 100, 100);
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "write_failure_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FSIZE_ENV, tmp.path())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let acked: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ACK ").and_then(|n| n.trim().parse().ok()))
        .collect();
    let err = text
        .lines()
        .find_map(|l| l.strip_prefix("ERR "))
        .unwrap_or_else(|| panic!("the child never saw a failed write: {text}"));
    assert!(err.starts_with("Backend "), "{err}");
    assert!(
        err.contains(&tmp.path().display().to_string()),
        "names the dir: {err}"
    );
    assert!(text.contains("LAST true"), "{text}");
    // Everything acknowledged before the failure is intact.
    let s = LmdbStore::open(tmp.path(), opts()).unwrap();
    let last = acked.last().copied().unwrap_or(100);
    assert!(s.last_index().unwrap() >= last);
    let entries = s.entries(1, last + 1, None).unwrap();
    assert_eq!(entries.len() as u64, last);
    for e in entries {
        let size = if e.index <= 100 { 100 } else { 16 * 1024 };
        assert_eq!(e.data, entry(e.index, size).data, "entry {}", e.index);
    }
}

#[test]
fn readers_run_while_the_writer_grows_the_map() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let o = LmdbOptions::new().map_size(64 * 1024).journal(false);
    let s = Arc::new(LmdbStore::open(tmp.path(), o).unwrap());
    s.write(WriteBatch {
        entries: vec![entry(1, 500)],
        ..Default::default()
    })
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let last = s.last_index().unwrap();
                    let first = s.first_index().unwrap();
                    let es = s.entries(first, last + 1, None).unwrap();
                    assert_eq!(es.len() as u64, last + 1 - first);
                    assert!(es.iter().all(|e| e.data == entry(e.index, 500).data));
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let initial = s.map_size();
    for i in 2..=400u64 {
        s.write(WriteBatch {
            entries: vec![entry(i, 500)],
            ..Default::default()
        })
        .unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert!(s.map_size() > initial, "the map grew");
    assert_eq!(s.last_index().unwrap(), 400);
}

/// A tmpfs of `size` mounted on a temp dir (root only); unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A full disk is reported as such ("no space left on device"), not as an
/// I/O error, and the store keeps answering reads. Needs root (to mount a
/// small tmpfs), as CI runs; elsewhere it says so and checks nothing.
#[test]
fn a_full_disk_says_no_space_left_on_device() {
    let Some(disk) = SmallDisk::mount("2m") else {
        eprintln!(
            "a_full_disk_says_no_space_left_on_device: not root, cannot mount a tmpfs; skipped"
        );
        return;
    };
    let dir = disk.dir.path().join("store");
    // Small journal segments: the disk fills through the writes (a store
    // whose first 16 MiB segment does not fit fails to open, saying so).
    let opts = LmdbOptions::new()
        .map_size(64 << 20)
        .journal_segment_size(64 * 1024);
    let s = LmdbStore::open(&dir, opts).unwrap();
    let mut next = 1;
    let err = loop {
        let r = s.write(WriteBatch {
            entries: (next..next + 4).map(|i| entry(i, 32 * 1024)).collect(),
            ..Default::default()
        });
        match r {
            Ok(()) => next += 4,
            Err(e) => break e,
        }
        assert!(next < 10_000, "a 2 MiB disk never filled up");
    };
    let msg = err.to_string();
    assert!(msg.contains("no space left on device"), "{msg}");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert_eq!(
        s.last_index().unwrap(),
        next - 1,
        "acknowledged entries stay"
    );
    drop(s);
}

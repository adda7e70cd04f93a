//! Crash safety with a real process: a child (this test binary re-executed)
//! appends batches (`write`, or `write_deferred` with and without a `sync`
//! after it) and prints every index a write acknowledged; the parent
//! SIGKILLs it at random moments and checks that every acknowledged entry
//! is on disk and intact after reopening; with fsync on, and with
//! `no_sync` (whose journal a process kill must not lose either: it is in
//! the page cache); and three groups of a shared environment (`LmdbEnv`)
//! written by three threads at once, their appends committed together.

#![allow(clippy::field_reassign_with_default)]

use raftify_core::raft::eraftpb::{Entry, HardState, Snapshot};
use raftify_core::{LogStore, WriteBatch};
use raftify_storage::{LmdbEnv, LmdbOptions, LmdbStore};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "RAFTIFY_STORAGE_CRASH_CHILD_DIR";
/// `1` for a child that opens its store with `no_sync`.
const NO_SYNC_ENV: &str = "RAFTIFY_STORAGE_CRASH_NO_SYNC";
/// `1` for a child that writes [`GROUPS`] groups of a shared environment.
const SHARED_ENV: &str = "RAFTIFY_STORAGE_CRASH_SHARED";
/// The groups of the shared-environment child (0 stands for a store of
/// its own in the acknowledgements).
const GROUPS: [u64; 3] = [1, 2, 3];

/// xorshift64*: deterministic, dependency-free randomness.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn payload(index: u64) -> Vec<u8> {
    let mut v = format!("entry-{index}-").into_bytes();
    v.extend((0..64).map(|i| (index.wrapping_mul(31) + i) as u8));
    v
}

fn term_of(index: u64) -> u64 {
    1 + index / 1000
}

fn opts(no_sync: bool) -> LmdbOptions {
    // Small map: the child also goes through map growth while being killed.
    LmdbOptions::new().map_size(256 * 1024).no_sync(no_sync)
}

/// The child: runs only when re-executed by the parent.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let no_sync = std::env::var(NO_SYNC_ENV).is_ok_and(|v| v == "1");
    if std::env::var(SHARED_ENV).is_ok_and(|v| v == "1") {
        let env = LmdbEnv::open(&dir, opts(no_sync)).expect("child: open environment");
        let writers: Vec<_> = GROUPS
            .map(|g| {
                let store = env.group(g).expect("child: open group");
                std::thread::spawn(move || write_loop(&store, g))
            })
            .into_iter()
            .collect();
        for w in writers {
            w.join().expect("child: writer");
        }
        return;
    }
    let store = LmdbStore::open(&dir, opts(no_sync)).expect("child: open");
    write_loop(&store, 0);
}

/// Appends batches for 30 s, printing `ACK <group> <last index>` after
/// each write returned.
fn write_loop(store: &LmdbStore, group: u64) {
    let mut rng = Rng(u64::from(std::process::id()) << 2 | group | 1);
    let mut next = store.last_index().expect("child: last_index") + 1;
    let out = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let n = 1 + rng.below(40);
        let entries: Vec<Entry> = (next..next + n)
            .map(|i| {
                let mut e = Entry::default();
                e.index = i;
                e.term = term_of(i);
                e.data = payload(i).into();
                e
            })
            .collect();
        let last = next + n - 1;
        let mut hs = HardState::default();
        hs.term = term_of(last);
        hs.commit = last;
        let batch = WriteBatch {
            entries,
            hard_state: Some(hs),
            snapshot: None,
        };
        // Half the batches as the node's writer makes them under load: a
        // deferred commit (its meta page synced by the next one, or now
        // and then by an explicit sync). A process kill loses neither.
        match rng.below(4) {
            0 | 1 => store.write(batch).expect("child: write"),
            2 => {
                store.write_deferred(batch).expect("child: write_deferred");
            }
            _ => {
                store.write_deferred(batch).expect("child: write_deferred");
                store.sync().expect("child: sync");
            }
        }
        // Acknowledge only after the write returned.
        {
            // One line per write, whole (the writers share stdout).
            let mut out = out.lock();
            writeln!(out, "ACK {group} {last}").expect("child: stdout");
            out.flush().expect("child: flush");
        }
        // Now and then: snapshot + compaction, so kills also land there.
        if last / 300 != next.saturating_sub(1) / 300 && last > 100 {
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = last;
            snap.mut_metadata().term = term_of(last);
            snap.data = format!("state-at-{last}").into_bytes().into();
            store.save_snapshot(snap).expect("child: save_snapshot");
            store.compact(last - 50).expect("child: compact");
        }
        next = last + 1;
    }
}

/// Reopens what the child wrote and checks every group's acknowledged
/// writes; returns how many unacknowledged entries survived too.
fn verify(dir: &Path, acked: &BTreeMap<u64, u64>, no_sync: bool, shared: bool) -> u64 {
    if !shared {
        let store = LmdbStore::open(dir, opts(no_sync)).expect("reopen after SIGKILL");
        let acked = acked.get(&0).copied().unwrap_or(0);
        return verify_store(&store, acked) - acked;
    }
    let env = LmdbEnv::open(dir, opts(no_sync)).expect("reopen after SIGKILL");
    let mut extra = 0;
    for g in GROUPS {
        let acked = acked.get(&g).copied().unwrap_or(0);
        let store = env.group(g).expect("reopen a group");
        extra += verify_store(&store, acked) - acked;
    }
    extra
}

fn verify_store(store: &LmdbStore, acked: u64) -> u64 {
    let first = store.first_index().unwrap();
    let last = store.last_index().unwrap();
    assert!(
        last >= acked,
        "acknowledged up to {acked} but only {last} survived"
    );
    let hs = store.initial_state().unwrap().hard_state;
    assert!(
        hs.commit >= acked,
        "hard state commit {} < acked {acked}",
        hs.commit
    );
    assert_eq!(
        hs.commit, last,
        "hard state and entries are written in one txn"
    );
    let entries = store.entries(first, last + 1, None).unwrap();
    assert_eq!(entries.len() as u64, last + 1 - first);
    for e in &entries {
        assert_eq!(e.term, term_of(e.index), "term of entry {}", e.index);
        assert_eq!(
            &e.data[..],
            &payload(e.index)[..],
            "data of entry {}",
            e.index
        );
    }
    let snap = store.snapshot().unwrap();
    let si = snap.get_metadata().index;
    if si > 0 {
        assert_eq!(&snap.data[..], format!("state-at-{si}").as_bytes());
        assert!(first <= si + 1 && si <= last);
        assert_eq!(store.term(first - 1).unwrap(), term_of(first - 1));
    }
    last
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    sigkill_rounds(false);
}

#[test]
fn acknowledged_writes_survive_sigkill_without_fsync() {
    sigkill_rounds(true);
}

#[test]
fn acknowledged_writes_survive_sigkill_in_a_shared_environment() {
    sigkill_rounds_of(false, true);
}

fn sigkill_rounds(no_sync: bool) {
    sigkill_rounds_of(no_sync, false)
}

fn sigkill_rounds_of(no_sync: bool, shared: bool) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let ack = |acked: &mut BTreeMap<u64, u64>, (g, n): (u64, u64)| {
        let a = acked.entry(g).or_default();
        *a = (*a).max(n);
    };
    let started = Instant::now();
    let mut rounds = 0;
    let mut unacked_seen = 0u64;
    while rounds < 8 && started.elapsed() < Duration::from_secs(40) {
        rounds += 1;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(NO_SYNC_ENV, if no_sync { "1" } else { "" })
            .env(SHARED_ENV, if shared { "1" } else { "" })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The first ack shares its line with libtest's "test ... ".
                let Some(ack) = line.rfind("ACK ").map(|at| &line[at + 4..]) else {
                    continue;
                };
                let mut parts = ack.split_whitespace().map(str::parse::<u64>);
                if let (Some(Ok(g)), Some(Ok(n))) = (parts.next(), parts.next()) {
                    if tx.send((g, n)).is_err() {
                        break;
                    }
                }
            }
        });
        // Wait for the first ack, then let it run a random while.
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("child never acknowledged");
        ack(&mut acked, first);
        let run_for = Duration::from_millis(20 + rng.below(400));
        let until = Instant::now() + run_for;
        while let Ok(n) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            ack(&mut acked, n);
            if Instant::now() >= until {
                break;
            }
        }
        // SIGKILL by pid: no destructor, no flush, no commit of anything.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0);
        child.wait().unwrap();
        reader.join().unwrap();
        // Acks printed before the kill are still in the pipe.
        for n in rx.try_iter() {
            ack(&mut acked, n);
        }
        unacked_seen += verify(dir.path(), &acked, no_sync, shared);
    }
    assert!(rounds >= 3, "only {rounds} rounds ran");
    let groups = if shared { GROUPS.len() } else { 1 };
    assert_eq!(acked.len(), groups, "every writer acknowledged: {acked:?}");
    eprintln!("{rounds} SIGKILL rounds, acknowledged {acked:?}, {unacked_seen} written-but-unacked entries also survived");
}

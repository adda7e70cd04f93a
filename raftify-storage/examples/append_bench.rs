//! Append throughput of `LmdbStore` (entries/s and commits/s) with 1, 64 and
//! 512 entries of 100 bytes per commit, next to the raw fdatasync rate of
//! the same disk measured in the same run, in four modes: `journal` (the
//! default: every write one journal record and one `fdatasync`, LMDB
//! checkpointed behind), `sync` (journal off: every write an LMDB commit,
//! durable on its own), `deferred` (journal off: back-to-back
//! `write_deferred`s, each made durable by the next one's sync, a final
//! `sync`) and `no_sync`.
//!
//! ```text
//! cargo run --release -p raftify-storage --example append_bench -- [--dir DIR] [--secs N]
//! ```
//!
//! DIR (default: a temporary directory under the current directory) should
//! be on the disk you want to measure; N is the duration of each run
//! (default 3 seconds).

#![allow(clippy::field_reassign_with_default)]

use raftify_core::raft::eraftpb::{Entry, HardState};
use raftify_core::{LogStore, WriteBatch};
use raftify_storage::{LmdbOptions, LmdbStore};
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/fsync_probe.rs"]
mod fsync_probe;
use fsync_probe::raw_fdatasync;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Journal,
    Sync,
    Deferred,
    NoSync,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Journal => "journal",
            Mode::Sync => "sync",
            Mode::Deferred => "deferred",
            Mode::NoSync => "no_sync",
        }
    }
}

fn append(dir: &Path, per_commit: u64, mode: Mode, secs: Duration) -> (f64, f64) {
    let store_dir = dir.join(format!("store-{per_commit}-{}", mode.name()));
    let no_sync = mode == Mode::NoSync;
    let opts = LmdbOptions::new()
        .no_sync(no_sync)
        .journal(mode == Mode::Journal);
    let store = LmdbStore::open(&store_dir, opts).expect("open store");
    let payload = vec![0xABu8; 100];
    let mut next = 1u64;
    let mut commits = 0u64;
    let mut compacted = 0u64;
    let start = Instant::now();
    while start.elapsed() < secs || commits < 10 {
        let entries: Vec<Entry> = (next..next + per_commit)
            .map(|i| {
                let mut e = Entry::default();
                e.index = i;
                e.term = 1;
                e.data = payload.clone().into();
                e
            })
            .collect();
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = next + per_commit - 1;
        let batch = WriteBatch {
            entries,
            hard_state: Some(hs),
            snapshot: None,
        };
        if mode == Mode::Deferred {
            store.write_deferred(batch).expect("write");
        } else {
            store.write(batch).expect("write");
        }
        next += per_commit;
        commits += 1;
        // Keep the log bounded, like a node that snapshots regularly
        // (every 100k entries; the snapshot is empty, so this costs one
        // small file write + compaction).
        if next - 1 - compacted >= 100_000 {
            compacted = next - 1;
            let mut snap = raftify_core::raft::eraftpb::Snapshot::default();
            snap.mut_metadata().index = next - 1;
            snap.mut_metadata().term = 1;
            store.save_snapshot(snap).expect("snapshot");
            store.compact(next - 1).expect("compact");
        }
    }
    store.sync().expect("sync");
    let el = start.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&store_dir);
    ((next - 1) as f64 / el, commits as f64 / el)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir_arg = None;
    let mut secs = 3u64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir_arg = args.next(),
            "--secs" => secs = args.next().and_then(|s| s.parse().ok()).unwrap_or(3),
            other => {
                eprintln!("unknown argument {other}; usage: append_bench [--dir DIR] [--secs N]");
                std::process::exit(2);
            }
        }
    }
    let tmp;
    let dir = match dir_arg {
        Some(d) => {
            std::fs::create_dir_all(&d).expect("create --dir");
            std::path::PathBuf::from(d)
        }
        None => {
            tmp = tempfile::tempdir_in(".").expect("temp dir");
            tmp.path().to_path_buf()
        }
    };
    let secs = Duration::from_secs(secs);
    println!("directory: {}", dir.display());
    let raw = raw_fdatasync(&dir, secs, false).expect("fdatasync probe");
    let raw_over = raw_fdatasync(&dir, secs, true).expect("fdatasync probe");
    println!("raw 4 KiB append + fdatasync:    {raw:.0} syncs/s");
    println!("raw 4 KiB overwrite + fdatasync: {raw_over:.0} syncs/s\n");
    println!(
        "| mode     | entries/commit | entries/s | commits/s | commits/s ÷ raw append-fdatasync/s |"
    );
    println!(
        "|----------|---------------:|----------:|----------:|-----------------------------------:|"
    );
    for mode in [Mode::Journal, Mode::Sync, Mode::Deferred, Mode::NoSync] {
        for per in [1u64, 64, 512] {
            let (eps, cps) = append(&dir, per, mode, secs);
            println!(
                "| {:<8} | {per:>14} | {eps:>9.0} | {cps:>9.0} | {:>34.2} |",
                mode.name(),
                cps / raw
            );
        }
    }
}

//! Many groups writing at once, as the replicas of a sharded node do: N
//! threads, each appending one 100-byte entry and a hard state per write
//! (fsync on) to its own group, for S seconds. Each group a store of its
//! own (`separate`: its own journal and syncs) against all groups in one
//! [`LmdbEnv`] (`shared`: one journal, writes waiting together committed
//! with one `fdatasync`). Prints writes/s and mean latency, next to the
//! disk's own 4 KiB overwrite + `fdatasync` time measured in the same run.
//!
//! ```text
//! cargo run --release -p raftify-storage --example groups_bench -- [--dir DIR] [--secs S] [N ...]
//! ```

#![allow(clippy::field_reassign_with_default)]

use raftify_core::raft::eraftpb::{Entry, HardState};
use raftify_core::{LogStore, WriteBatch};
use raftify_storage::{LmdbEnv, LmdbOptions, LmdbStore};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/fsync_probe.rs"]
mod fsync_probe;
use fsync_probe::raw_fdatasync;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Appends to `store` until `stop`; returns the writes done.
fn write_until(store: &LmdbStore, stop: &AtomicBool) -> Result<u64, Error> {
    let mut index = store.last_index()?;
    let mut writes = 0;
    while !stop.load(Ordering::Relaxed) {
        index += 1;
        let mut e = Entry::default();
        (e.index, e.term) = (index, 1);
        e.data = vec![7u8; 100].into();
        let mut hs = HardState::default();
        (hs.term, hs.commit) = (1, index);
        store.write(WriteBatch {
            entries: vec![e],
            hard_state: Some(hs),
            snapshot: None,
        })?;
        writes += 1;
    }
    Ok(writes)
}

/// Runs one writer per store for `secs`: (writes/s, mean latency).
fn run(stores: Vec<LmdbStore>, secs: u64) -> Result<(f64, Duration), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = stores
        .into_iter()
        .map(|s| {
            let stop = stop.clone();
            std::thread::spawn(move || write_until(&s, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let n = threads.len() as u64;
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| "a writer panicked")??;
    }
    let elapsed = started.elapsed();
    let rate = total as f64 / elapsed.as_secs_f64();
    let mean = elapsed.mul_f64(n as f64 / total.max(1) as f64);
    Ok((rate, mean))
}

fn main() -> Result<(), Error> {
    let mut dir: Option<PathBuf> = None;
    let mut secs = 3u64;
    let mut counts = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = Some(args.next().ok_or("--dir needs a value")?.into()),
            "--secs" => secs = args.next().ok_or("--secs needs a value")?.parse()?,
            n => counts.push(n.parse::<u64>()?),
        }
    }
    if counts.is_empty() {
        counts = vec![1, 4, 16, 64];
    }
    let base = match &dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(".")?,
    };
    let rate = raw_fdatasync(base.path(), Duration::from_secs(1), true)?;
    println!(
        "disk: 4 KiB overwrite + fdatasync {:.0} µs",
        1e6 / rate.max(1.0)
    );
    println!(
        "| groups | separate stores: writes/s (mean) | one LmdbEnv: writes/s (mean) | ratio |"
    );
    println!("|---:|---:|---:|---:|");
    let opts = LmdbOptions::new()
        .map_size(64 << 20)
        .journal_segment_size(4 << 20);
    for n in counts {
        let sep_dir = base.path().join(format!("separate-{n}"));
        let separate: Result<Vec<LmdbStore>, _> = (0..n)
            .map(|g| LmdbStore::open(sep_dir.join(g.to_string()), opts.clone()))
            .collect();
        let (sep, sep_lat) = run(separate?, secs)?;
        let env = LmdbEnv::open(base.path().join(format!("shared-{n}")), opts.clone())?;
        let shared: Result<Vec<LmdbStore>, _> = (0..n).map(|g| env.group(g)).collect();
        let (sh, sh_lat) = run(shared?, secs)?;
        drop(env);
        println!(
            "| {n} | {sep:.0} ({sep_lat:.0?}) | {sh:.0} ({sh_lat:.0?}) | {:.2}× |",
            sh / sep.max(1.0)
        );
        remove(&sep_dir);
    }
    Ok(())
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

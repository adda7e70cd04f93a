//! Throughput of a 3-node in-process cluster on LMDB stores (fsync on, or
//! `--no-sync`): the in-memory `inproc_bench` of raftify-core with durable
//! storage, so the difference is the cost of group-committed fsyncs.
//!
//! `cargo run --release -p raftify-storage --example cluster_bench -- [proposers...] [--secs S] [--no-sync] [--no-journal]`
//!
//! `--no-journal`: with fsync on, every write an LMDB commit (two syncs)
//! instead of a journal record (one).

use raftify_core::testkit::{bench_args, cluster_throughput, StoreFactory};
use raftify_core::LogStore;
use raftify_storage::{LmdbOptions, LmdbStore};
use std::sync::Arc;
use std::time::Duration;

/// mimalloc: see the workspace manifest (glibc malloc cost 10-15 % of a
/// few-writers round).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/fsync_probe.rs"]
mod fsync_probe;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (levels, secs) = bench_args();
    let no_sync = std::env::args().any(|a| a == "--no-sync");
    let journal = !std::env::args().any(|a| a == "--no-journal");
    let dir = tempfile::tempdir_in(".")?;
    let root = dir.path().to_path_buf();
    let factory: StoreFactory = Arc::new(move |id| {
        let opts = LmdbOptions::new().no_sync(no_sync).journal(journal);
        match LmdbStore::open(root.join(format!("node-{id}")), opts) {
            Ok(s) => Arc::new(s) as Arc<dyn LogStore>,
            Err(e) => panic!("cannot open the store: {e}"), // ok: benchmark setup
        }
    });
    let mode = match (no_sync, journal) {
        (true, true) => "no_sync, journal",
        (true, false) => "no_sync, LMDB commits",
        (false, true) => "fsync, journal",
        (false, false) => "fsync, LMDB commits",
    };
    // The disk's own sync time, in the same run (before and after): what
    // issue #20's latency target is measured against.
    let probe = |root: &std::path::Path| -> anyhow::Result<(f64, f64)> {
        let t = Duration::from_secs(1);
        Ok((
            fsync_probe::raw_fdatasync(root, t, false)?,
            fsync_probe::raw_fdatasync(root, t, true)?,
        ))
    };
    let before = if no_sync {
        None
    } else {
        Some(probe(dir.path())?)
    };
    println!("proposers  proposals/s  mean_latency_us   (3 nodes, LMDB {mode}, in-process)");
    for (n, rate, mean) in cluster_throughput(factory, &levels, secs).await? {
        println!("{n:>9}  {rate:>11.0}  {mean:>15.0}");
    }
    if let Some(before) = before {
        let after = probe(dir.path())?;
        for (what, b, a) in [
            ("append", before.0, after.0),
            ("overwrite", before.1, after.1),
        ] {
            let us = |rate: f64| 1e6 / rate;
            println!(
                "disk: 4 KiB {what} + fdatasync {b:.0}/s before, {a:.0}/s after ({:.0} / {:.0} us); \
                 2 x that + 100 us = {:.0} / {:.0} us",
                us(b),
                us(a),
                2.0 * us(b) + 100.0,
                2.0 * us(a) + 100.0
            );
        }
    }
    Ok(())
}

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

/// mimalloc: see the workspace manifest (glibc malloc cost 10-15 % of a
/// few-writers round).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    println!("proposers  proposals/s  mean_latency_us   (3 nodes, LMDB {mode}, in-process)");
    for (n, rate, mean) in cluster_throughput(factory, &levels, secs).await? {
        println!("{n:>9}  {rate:>11.0}  {mean:>15.0}");
    }
    Ok(())
}

//! Throughput of the framework itself: 3 nodes in one process, in-memory
//! storage, in-process network, N concurrent proposers of 16-byte entries
//! (the shape of openraft's `benchmarks/minimal`).
//!
//! `cargo run --release -p raftify-core --example inproc_bench -- [proposers...] [--secs S]`
//! (raftify-storage has the same on LMDB: `--example cluster_bench`).
//! It runs on the system allocator (the framework's figure; the binaries
//! and the other benchmarks use mimalloc, see `docs/BENCHMARKS.md`).

use raftify_core::testkit::{bench_args, cluster_throughput, mem_factory};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (levels, secs) = bench_args();
    println!("proposers  proposals/s  mean_latency_us   (3 nodes, MemStore, in-process)");
    for (n, rate, mean) in cluster_throughput(mem_factory(), &levels, secs).await? {
        println!("{n:>9}  {rate:>11.0}  {mean:>15.0}");
    }
    Ok(())
}

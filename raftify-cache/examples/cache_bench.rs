//! The embedded cache's throughput: a 3-node cluster in one process (real
//! gRPC over loopback), PUT from the leader, then GET local and
//! linearizable, at each concurrency.
//!
//! `cargo run --release -p raftify-cache --example cache_bench -- [tasks...] [--secs S] [--memory] [--no-sync] [--follower] [--ops put,get_local,get_linearizable]`
//!
//! Default: LMDB with fsync in a temp dir under `.`; `--memory` keeps the
//! log in memory; `--follower` sends every operation through a follower.
//! Prints one line per operation and concurrency: ops/s, mean and p99 µs.

use raftify_cache::embedded::{Cache, CacheConfig, Consistency};
use raftify_core::testkit::free_port;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// mimalloc: see the workspace manifest (glibc malloc cost 10-15 % of a
/// few-writers round).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: u64 = 10_000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Put,
    LocalGet,
    LinearGet,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Put => "put",
            Kind::LocalGet => "get_local",
            Kind::LinearGet => "get_linearizable",
        }
    }
}

async fn run(c: &Cache, kind: Kind, tasks: usize, secs: f64) -> (f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let value = bytes::Bytes::from(vec![b'v'; 100]);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (c, stop, value) = (c.clone(), stop.clone(), value.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = t as u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{}", i % KEYS);
                    i = i.wrapping_add(7919);
                    let start = Instant::now();
                    let ok = match kind {
                        Kind::Put => c
                            .put_bytes("bench", &key, value.clone(), None)
                            .await
                            .is_ok(),
                        Kind::LocalGet => {
                            c.get_bytes("bench", &key, Consistency::Local).await.is_ok()
                        }
                        Kind::LinearGet => c
                            .get_bytes("bench", &key, Consistency::Linearizable)
                            .await
                            .is_ok(),
                    };
                    if ok {
                        lat.push(start.elapsed());
                    }
                }
                lat
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for h in handles {
        if let Ok(l) = h.await {
            all.extend(l);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let n = all.len().max(1);
    let mean = all.iter().map(Duration::as_secs_f64).sum::<f64>() / n as f64 * 1e6;
    let p99 = all.get(n * 99 / 100).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    (all.len() as f64 / elapsed, mean, p99)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let (mut levels, mut secs) = (Vec::new(), 3.0);
    let mut ops: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--secs" {
            secs = it.next().and_then(|s| s.parse().ok()).unwrap_or(secs);
        } else if a == "--ops" {
            ops = it.next().cloned();
        } else if let Ok(n) = a.parse::<usize>() {
            levels.push(n);
        }
    }
    if levels.is_empty() {
        levels = vec![4, 16, 64];
    }
    let memory = flag("--memory");
    let dir = tempfile::tempdir_in(".")?;
    let members: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect();
    let mut starts = Vec::new();
    for id in 1..=3u64 {
        let mut b = Cache::builder()
            .cluster(id, members.clone())
            .cache("bench", CacheConfig::new())
            .logger(raftify_core::discard_logger())
            .no_sync(flag("--no-sync"));
        if !memory {
            b = b.data_dir(dir.path().join(format!("node-{id}")));
        }
        starts.push(tokio::spawn(b.build()));
    }
    let mut nodes = Vec::new();
    for s in starts {
        nodes.push(s.await??);
    }
    let mut h = nodes[0].health();
    h.wait_for(|h| h.ready()).await?;
    let leader = h.borrow().leader.unwrap_or(1);
    let target = if flag("--follower") {
        nodes.iter().find(|c| c.id() != leader)
    } else {
        nodes.iter().find(|c| c.id() == leader)
    }
    .cloned()
    .ok_or_else(|| anyhow::anyhow!("no target node"))?;
    for n in nodes.iter() {
        n.health().wait_for(|h| h.ready()).await?;
    }
    let storage = match (memory, flag("--no-sync")) {
        (true, _) => "memory",
        (false, true) => "LMDB no-sync",
        (false, false) => "LMDB fsync",
    };
    println!(
        "# 3 nodes in-process over loopback gRPC, {storage}, via the {}",
        if flag("--follower") {
            "follower"
        } else {
            "leader"
        }
    );
    println!("op                tasks       ops/s   mean_us    p99_us");
    let kinds = [Kind::Put, Kind::LocalGet, Kind::LinearGet];
    let wanted = |k: &Kind| {
        ops.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == k.name()))
    };
    for kind in kinds.into_iter().filter(wanted) {
        for &tasks in &levels {
            let (rate, mean, p99) = run(&target, kind, tasks, secs).await;
            println!(
                "{:<16} {tasks:>6} {rate:>11.0} {mean:>9.0} {p99:>9.0}",
                kind.name()
            );
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

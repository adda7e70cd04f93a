//! Throughput of the framework itself: 3 nodes in one process, in-memory
//! storage, in-process network, N concurrent proposers of small entries.
//!
//! `cargo run --release -p raftify-core --example inproc_bench -- [proposers...] [--secs S]`

use raftify_core::{
    AbstractStateMachine, Bootstrap, BoxError, Config, InProcNetwork, MemStore, Raft,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counter(u64);

#[async_trait::async_trait]
impl AbstractStateMachine<Vec<u8>> for Counter {
    async fn apply(&mut self, _e: Vec<u8>) -> Result<Vec<u8>, BoxError> {
        self.0 += 1;
        Ok(Vec::new())
    }
    async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.0.to_be_bytes().to_vec())
    }
    async fn restore(&mut self, s: Vec<u8>) -> Result<(), BoxError> {
        let b: [u8; 8] = s.as_slice().try_into()?;
        self.0 = u64::from_be_bytes(b);
        Ok(())
    }
}

type Node = Raft<Vec<u8>, Counter>;

async fn cluster() -> anyhow::Result<Vec<Node>> {
    let net = InProcNetwork::new(7);
    let members: BTreeMap<u64, String> = (1..=3).map(|i| (i, net.addr_of(i))).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut c = Config::new(id);
        c.tick_interval = Duration::from_millis(50);
        c.snapshot_threshold = 100_000;
        c.snapshot_log_retention = 10_000;
        let n = Raft::builder(c, Counter::default())
            .storage(Arc::new(MemStore::new()))
            .transport(net.transport(id))
            .bootstrap(Bootstrap::Members(members.clone()))
            .logger(raftify_core::discard_logger())
            .start()
            .await?;
        net.register(id, n.handle().clone());
        nodes.push(n);
    }
    Ok(nodes)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut secs = 3.0f64;
    let mut levels = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--secs" {
            secs = it.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);
        } else {
            levels.push(a.parse::<usize>()?);
        }
    }
    if levels.is_empty() {
        levels = vec![1, 64, 256, 1024];
    }
    let nodes = cluster().await?;
    let leader_id = nodes[0].wait_for_leader(Duration::from_secs(5)).await?;
    let leader = nodes[(leader_id - 1) as usize].clone();
    println!("proposers  proposals/s  mean_latency_us");
    for &n in &levels {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let lat = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (leader, stop, done, lat) =
                (leader.clone(), stop.clone(), done.clone(), lat.clone());
            tasks.push(tokio::spawn(async move {
                let entry = vec![0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if leader.propose(&entry).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                        lat.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        for t in tasks {
            let _ = t.await;
        }
        let d = done.load(Ordering::Relaxed);
        println!(
            "{n:>9}  {:>11.0}  {:>15.0}",
            d as f64 / elapsed,
            lat.load(Ordering::Relaxed) as f64 / d.max(1) as f64
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

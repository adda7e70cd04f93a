//! Micro-benchmarks of the hot paths of a write: framing, snapshot
//! encoding, one storage group commit, and a full propose → commit → apply
//! round trip on a single node (Ready handling with in-memory storage).
//!
//! `cargo bench -p raftify-core --bench hot_paths`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raftify_core::codec::{frame_user, parse_entry, ClusterMeta, SnapshotEnvelope};
use raftify_core::raft::eraftpb::Entry;
use raftify_core::{
    AbstractStateMachine, Bootstrap, BoxError, Config, InProcNetwork, LogStore, MemStore, Raft,
    WriteBatch,
};
use std::sync::Arc;
use std::time::Duration;

fn codec(c: &mut Criterion) {
    let payload = vec![7u8; 100];
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("frame_user_100B", |b| {
        b.iter(|| frame_user(std::hint::black_box(&payload)))
    });
    let framed = frame_user(&payload);
    g.bench_function("parse_entry_100B", |b| {
        b.iter(|| parse_entry(std::hint::black_box(&framed)))
    });
    let mut env = SnapshotEnvelope {
        meta: ClusterMeta::default(),
        user: Some(vec![1u8; 1 << 20]),
    };
    for id in 1..=5 {
        env.meta.peers.insert(id, format!("10.0.0.{id}:60061"));
    }
    let bytes = env.encode();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("snapshot_envelope_encode_1MiB", |b| b.iter(|| env.encode()));
    g.bench_function("snapshot_envelope_decode_1MiB", |b| {
        b.iter(|| SnapshotEnvelope::decode(std::hint::black_box(&bytes)))
    });
    g.finish();
}

fn entries(from: u64, n: u64) -> Vec<Entry> {
    (from..from + n)
        .map(|i| Entry {
            index: i,
            term: 1,
            data: frame_user(&[0u8; 100]).into(),
            ..Default::default()
        })
        .collect()
}

fn storage(c: &mut Criterion) {
    let mut g = c.benchmark_group("memstore_write");
    for n in [1u64, 64, 512] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("batch_{n}"), |b| {
            b.iter_batched(
                || (MemStore::new(), entries(1, n)),
                |(store, ents)| {
                    store.write(WriteBatch {
                        entries: ents,
                        ..Default::default()
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

#[derive(Default)]
struct Nop;

#[async_trait::async_trait]
impl AbstractStateMachine<Vec<u8>> for Nop {
    type Output = ();
    async fn apply(&mut self, _: Vec<u8>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }
    async fn restore(&mut self, _: Vec<u8>) -> Result<(), BoxError> {
        Ok(())
    }
}

fn propose_round_trip(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"), // ok: benchmark setup
    };
    let node = rt.block_on(async {
        let net = InProcNetwork::new(1);
        let mut config = Config::new(1);
        config.snapshot_threshold = 1_000_000;
        let raft = Raft::builder(config, Nop)
            .storage(Arc::new(MemStore::new()))
            .transport(net.transport(1))
            .bootstrap(Bootstrap::Single {
                addr: net.addr_of(1),
            })
            .logger(raftify_core::discard_logger())
            .start()
            .await?;
        raft.handle()
            .wait_for_leader(Duration::from_secs(5))
            .await?;
        Ok::<_, raftify_core::Error>(raft)
    });
    let node = match node {
        Ok(n) => n,
        Err(e) => panic!("node: {e}"), // ok: benchmark setup
    };
    let entry = vec![0u8; 100];
    let mut g = c.benchmark_group("single_node");
    g.throughput(Throughput::Elements(1));
    g.bench_function("propose_commit_apply_100B", |b| {
        b.to_async(&rt).iter(|| node.propose(&entry))
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_concurrent_proposals", |b| {
        b.to_async(&rt).iter(|| async {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..64 {
                let (n, e) = (node.clone(), entry.clone());
                set.spawn(async move { n.propose(&e).await });
            }
            while set.join_next().await.is_some() {}
        })
    });
    g.finish();
    rt.block_on(node.handle().shutdown());
}

criterion_group!(benches, codec, storage, propose_round_trip);
criterion_main!(benches);

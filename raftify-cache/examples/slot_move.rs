//! What a slot move costs: N keys written to one sharded node (one cache
//! group, in memory), a second node joins, and a rebalance gives it a
//! replica of group 1 and half the slots in a new group (their keys copied
//! by `CacheSlotMover`, then dropped from group 1). Prints how long the
//! rebalance took, how many keys and bytes moved, and the latency of
//! single-key writes made meanwhile: a write to a chunk being copied
//! answers `TRYAGAIN` and is counted, not retried; one to a chunk already
//! in the new group answers `ASK` and is sent there (as a cluster client
//! follows `-ASK`), its latency counted from the first try.
//!
//! ```text
//! cargo run --release -p raftify-cache --example slot_move -- 100000
//! ```

use bytes::Bytes;
use raftify::{ReadFn, Start, Storage};
use raftify_cache::{key_slot, CacheEntry, CacheSlotMover, CacheState, Op, Reply};
use raftify_core::{unix_ms, AbstractLogEntry, Payload};
use raftify_grpc::{GrpcConfig, RaftClient};
use raftify_shard::{testkit, Settings, ShardHost};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Host = ShardHost<CacheEntry, CacheState>;

const VALUE: usize = 100;

async fn start(id: Option<u64>, start: Start) -> Result<Host, Error> {
    let settings = Settings {
        replicas: 2,
        groups_per_node: 1,
        max_group_bytes: 0,
    };
    let spec = testkit::spec(id, start, "127.0.0.1:0", Storage::Memory, settings, false);
    let reader: ReadFn<CacheState> = Arc::new(|_: &CacheState, _: &[u8]| Ok(Vec::new()));
    let make = Arc::new(|_| CacheState::new());
    Ok(ShardHost::start(
        spec,
        make,
        Some(reader),
        Some(Arc::new(CacheSlotMover::default())),
    )
    .await?)
}

fn exec(commands: Vec<Vec<Bytes>>) -> Result<Vec<u8>, Error> {
    CacheEntry {
        clock_ms: unix_ms(),
        op: Op::Exec {
            commands,
            transaction: false,
            watched: Vec::new(),
        },
    }
    .encode()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let keys: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 100_000,
    };
    let first = start(Some(1), Start::Single).await?;
    let addr = first.raft_addr().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.group(1).await.is_none() {
        if Instant::now() > deadline {
            return Err("group 1 did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = Arc::new(RaftClient::new([addr.clone()], GrpcConfig::default())?.for_group(1));
    let value = Bytes::from(vec![b'v'; VALUE]);
    let mut bytes_moving = 0usize;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut mset = vec![Bytes::from_static(b"mset")];
        for i in chunk {
            let key = format!("key:{i}");
            // The second group gets the upper half of the slots.
            if key_slot(key.as_bytes()) >= 8192 {
                bytes_moving += 4 + key.len() + 8 + 8 + 1 + 4 + VALUE;
            }
            mset.push(Bytes::from(key));
            mset.push(value.clone());
        }
        client.propose(exec(vec![mset])?).await?;
    }

    // Writes during the move: one writer, single keys all over the slots.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, addr) = (stop.clone(), addr.clone());
        tokio::spawn(async move {
            let (mut lat, mut refused, mut asked, mut i) = (Vec::new(), 0u64, 0u64, 0u64);
            let c = RaftClient::new([addr.clone()], GrpcConfig::default())?.for_group(1);
            // The new group (the move's target).
            let target = RaftClient::new([addr], GrpcConfig::default())?.for_group(2);
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = Bytes::from(format!("live:{i}"));
                let set = vec![Bytes::from_static(b"set"), key, Bytes::from_static(b"x")];
                let t = Instant::now();
                let mut out = c.propose(exec(vec![set.clone()])?).await;
                if let Ok(o) = &out {
                    if matches!(<Reply as Payload>::decode(o)?, Reply::Error(e) if e.starts_with("ASK "))
                    {
                        asked += 1;
                        out = target.propose(exec(vec![set])?).await;
                    }
                }
                match out {
                    Ok(out) => match <Reply as Payload>::decode(&out)? {
                        Reply::Error(_) => refused += 1,
                        _ => lat.push(t.elapsed()),
                    },
                    Err(_) => refused += 1,
                }
            }
            Ok::<_, Error>((lat, refused, asked))
        })
    };

    let second = start(None, testkit::join(&addr)).await?;
    let t0 = Instant::now();
    first.rebalance();
    let deadline = t0 + Duration::from_secs(600);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let p = first.placement().borrow().clone();
        if first.rebalance_status().starts_with("done") && p.groups().len() == 2 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("no balance: {}", first.rebalance_status()).into());
        }
    }
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut lat, refused, asked) = writer.await??;
    lat.sort();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{keys} keys of {VALUE} bytes; rebalance (replica on the new node, new group, \
         half the slots moved) {:.2} s; ~{} keys, {:.1} MB of items moved",
        took.as_secs_f64(),
        keys / 2,
        bytes_moving as f64 / 1e6
    );
    println!(
        "writes meanwhile (group 1, one writer): {} ok ({asked} after an ASK), p50 {:?}, p99 {:?}, max {:?}; {refused} refused (TRYAGAIN while being copied, or moved)",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or_default()
    );
    second.shutdown().await;
    first.shutdown().await;
    Ok(())
}

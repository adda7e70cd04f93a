//! `raftify-cli bench`: a load generator for memstore clusters over gRPC
//! (proposals through `Propose`, reads through `Read`), in the spirit of
//! etcd's `benchmark` and redis-benchmark.

use crate::live::ConnArgs;
use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use memstore::store::KvEntry;
use raftify_core::AbstractLogEntry;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How reads are served.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed with the leader (ReadIndex) before reading.
    Linearizable,
    /// The local copy of whichever node is asked.
    Stale,
}

/// `bench` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Raft addresses of cluster members (clients spread over them).
    #[arg(required = true)]
    pub raft_addrs: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Total requests (default: run for --duration).
    #[arg(long, conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Seconds to run (default 10 unless --requests).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys (chosen uniformly at random).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Share of requests that are reads, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// How reads are served.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct Shared {
    issued: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

struct ClientResult {
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

fn histogram() -> Result<Histogram<u64>> {
    // Microseconds from 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

fn error_kind(e: &raftify_core::Error) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{'])
        .next()
        .unwrap_or("Error")
        .to_string()
}

async fn client_loop(
    id: usize,
    args: Arc<BenchArgs>,
    conn: ConnArgs,
    shared: Arc<Shared>,
    limit: Option<u64>,
) -> Result<ClientResult> {
    let addr = args.raft_addrs[id % args.raft_addrs.len()].clone();
    let client = conn.client(&addr)?;
    let mut writes = histogram()?;
    let mut reads = histogram()?;
    let mut errors = BTreeMap::new();
    let value = vec![b'x'; args.value_size];
    let mut rng = fastrand::Rng::with_seed(0x5eed ^ id as u64);
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(limit) = limit {
            if shared.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                break;
            }
        }
        let key = format!("key{}", rng.u64(0..args.keys.max(1)));
        let is_read = args.read_ratio > 0.0 && rng.f64() < args.read_ratio;
        let started = Instant::now();
        let result = if is_read {
            match args.consistency {
                Consistency::Linearizable => client.read_at(&addr, key.into_bytes()).await,
                Consistency::Stale => client.read_stale_at(&addr, key.into_bytes()).await,
            }
        } else {
            let entry = KvEntry::Put {
                key,
                value: value.clone(),
            };
            match entry.encode() {
                Ok(bytes) => client.propose(bytes).await,
                Err(e) => bail!("cannot encode an entry: {e}"),
            }
        };
        let micros = started.elapsed().as_micros().max(1) as u64;
        match result {
            Ok(_) => {
                let h = if is_read { &mut reads } else { &mut writes };
                h.saturating_record(micros);
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                *errors.entry(error_kind(&e)).or_insert(0) += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(ClientResult {
        writes,
        reads,
        errors,
    })
}

fn summary(h: &Histogram<u64>, secs: f64) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "throughput": h.len() as f64 / secs,
        "mean_ms": h.mean() / 1000.0,
        "p50_ms": ms(0.50),
        "p90_ms": ms(0.90),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

/// Runs the benchmark and prints the report.
pub async fn run(args: BenchArgs, conn: ConnArgs) -> Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }
    // Fail fast with a clear error when the cluster is unreachable.
    let first = &args.raft_addrs[0];
    conn.connect(first)
        .await?
        .leader()
        .await
        .map_err(|e| conn.explain(e, first, "leader"))?;

    let duration = match (args.requests, args.duration) {
        (Some(_), _) => None,
        (None, d) => Some(
            Duration::try_from_secs_f64(d.unwrap_or(10.0).max(0.1))
                .map_err(|e| anyhow!("--duration: {e}"))?,
        ),
    };
    let args = Arc::new(args);
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..args.clients {
        tasks.push(tokio::spawn(client_loop(
            id,
            args.clone(),
            conn.clone(),
            shared.clone(),
            args.requests,
        )));
    }

    let progress = std::io::stderr().is_terminal() && !args.json;
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(d) = duration {
                    if started.elapsed() >= d {
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                }
                let done = shared.done.load(Ordering::Relaxed);
                if progress {
                    eprint!(
                        "\r{:>6.1}s  {:>10} ok  {:>8}/s  {:>6} errors   ",
                        started.elapsed().as_secs_f64(),
                        done,
                        done - last,
                        shared.errors.load(Ordering::Relaxed)
                    );
                }
                last = done;
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        })
    };

    let mut writes = histogram()?;
    let mut reads = histogram()?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let r = t.await.map_err(|e| anyhow!("client task failed: {e}"))??;
        writes.add(&r.writes).map_err(|e| anyhow!("{e}"))?;
        reads.add(&r.reads).map_err(|e| anyhow!("{e}"))?;
        for (k, v) in r.errors {
            *errors.entry(k).or_insert(0) += v;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    if progress {
        eprintln!();
    }

    let total = writes.len() + reads.len();
    let report = json!({
        "clients": args.clients,
        "seconds": secs,
        "requests": total,
        "throughput": total as f64 / secs,
        "value_size": args.value_size,
        "read_ratio": args.read_ratio,
        "consistency": format!("{:?}", args.consistency).to_lowercase(),
        "writes": summary(&writes, secs),
        "reads": summary(&reads, secs),
        "errors": errors,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} clients, {:.1} s: {} requests, {:.0} req/s, {} errors",
            args.clients,
            secs,
            total,
            total as f64 / secs,
            errors.values().sum::<u64>()
        );
        for (name, h) in [("writes", &writes), ("reads", &reads)] {
            if h.is_empty() {
                continue;
            }
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{name:<7} {:>9} ok {:>9.0}/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
                h.len(),
                h.len() as f64 / secs,
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            );
        }
        for (kind, n) in &errors {
            println!("error   {kind}: {n}");
        }
    }
    if total == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}

//! `hiqlite-bench <default|durable> <tasks>... [--keys N]`: starts three
//! hiqlite nodes with caches in this process (their Raft and API servers on
//! 127.0.0.1), then for each task count writes N keys as cache PUTs from
//! the leader's client, each task writing its own share one after another,
//! and prints `tasks,puts_per_sec,mean_us` lines.
//!
//! Modes, as hiqlite names them: `default` keeps the cache WAL and snapshots
//! in memory and syncs every 200 ms (`cache_storage_disk = false`,
//! `LogSync::IntervalMillis(200)`); `durable` keeps them on disk and syncs
//! every append before the Raft is told (`cache_storage_disk = true`,
//! `LogSync::Immediate`).

use hiqlite::{start_node_with_cache, CacheVariants, Client, Node, NodeConfig};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
enum Cache {
    One,
}

impl CacheVariants for Cache {
    fn hiqlite_cache_index(&self) -> usize {
        0
    }
    fn hiqlite_cache_variants() -> &'static [(usize, &'static str)] {
        &[(0, "One")]
    }
}

#[derive(serde::Serialize)]
struct Value {
    id: u64,
    payload: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("no free port: {e}")))
}

fn fail(msg: &str) -> ! {
    eprintln!("hiqlite-bench: {msg}");
    std::process::exit(1)
}

fn config(id: u64, nodes: &[Node], dir: &std::path::Path, durable: bool) -> NodeConfig {
    NodeConfig {
        node_id: id,
        nodes: nodes.to_vec(),
        listen_addr_api: "127.0.0.1".into(),
        listen_addr_raft: "127.0.0.1".into(),
        data_dir: dir.join(format!("node_{id}")).display().to_string().into(),
        secret_raft: "benchmark-secret-raft".into(),
        secret_api: "benchmark-secret-api".into(),
        cache_storage_disk: durable,
        wal_sync: match durable {
            true => hiqlite::LogSync::Immediate,
            false => hiqlite::LogSync::IntervalMillis(200),
        },
        raft_config: NodeConfig::default_raft_config(10_000),
        ..NodeConfig::default()
    }
}

async fn wait_leader(clients: &[Client]) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = clients[0].metrics_cache().await {
            let three = m.membership_config.nodes().count() == 3;
            if let (true, Some(leader)) = (three, m.current_leader) {
                return clients[(leader - 1) as usize].clone();
            }
        }
        if Instant::now() > deadline {
            fail("no leader of three nodes within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(leader: &Client, tasks: usize, keys: usize, round: usize) -> (f64, f64) {
    let per_task = keys / tasks;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let client = leader.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let id = (t * per_task + i) as u64;
                let value = Value {
                    id,
                    payload: format!("{:0>100}", id),
                };
                let key = format!("r{round}-k{id}");
                if let Err(e) = client.put(Cache::One, key, &value, Some(300)).await {
                    fail(&format!("put failed: {e}"));
                }
            }
        }));
    }
    for h in handles {
        if h.await.is_err() {
            fail("a writer task failed");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = (per_task * tasks) as f64;
    (n / secs, secs * 1e6 * tasks as f64 / n)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let durable = match args.first().map(String::as_str) {
        Some("default") => false,
        Some("durable") => true,
        _ => fail("usage: hiqlite-bench <default|durable> <tasks>... [--keys N]"),
    };
    let mut keys = 20_000usize;
    let mut levels = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--keys" => {
                keys = it
                    .next()
                    .and_then(|k| k.parse().ok())
                    .unwrap_or_else(|| fail("--keys N"))
            }
            t => levels.push(
                t.parse::<usize>()
                    .unwrap_or_else(|_| fail("tasks: a number")),
            ),
        }
    }
    let dir = std::env::temp_dir().join(format!("hiqlite-bench-{}", std::process::id()));
    let nodes: Vec<Node> = (1..=3)
        .map(|id| Node {
            id,
            addr_api: format!("127.0.0.1:{}", free_port()),
            addr_raft: format!("127.0.0.1:{}", free_port()),
        })
        .collect();
    let mut clients = Vec::new();
    for id in 1..=3 {
        let c = config(id, &nodes, &dir, durable);
        match start_node_with_cache::<Cache>(c).await {
            Ok(client) => clients.push(client),
            Err(e) => fail(&format!("node {id} did not start: {e}")),
        }
    }
    let leader = wait_leader(&clients).await;
    // Warm up, then measure.
    run(&leader, 4, 2_000, 0).await;
    println!(
        "tasks,puts_per_sec,mean_us   (hiqlite {} mode)",
        if durable { "durable" } else { "default" }
    );
    for (round, tasks) in levels.iter().enumerate() {
        let (rate, mean) = run(&leader, *tasks, keys, round + 1).await;
        println!("{tasks},{rate:.0},{mean:.0}");
    }
    for c in clients {
        let _ = c.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(0);
}

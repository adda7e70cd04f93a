//! What idle Raft groups cost: three "processes" in this one (three gRPC
//! servers on 127.0.0.1, each hosting a replica of every group, one
//! connection per peer pair shared by all groups), N groups, no writes.
//! Reports the time to start them and elect every leader, and the CPU the
//! whole process burns per second while they idle (ticks, heartbeats).
//!
//! With `--hibernate`, groups sleep once idle
//! ([`Config::hibernate`](raftify_core::Config::hibernate)); the CPU is
//! measured once every replica sleeps.
//!
//! With `--lmdb`, every replica keeps its log in its own LMDB store (fsync
//! on, journal segments of `--segment BYTES`, default the store's 16 MiB)
//! in a temporary directory, as a sharded node's data groups do; the
//! report adds the disk the stores take and the process's threads. With
//! `--shared`, each server keeps all its replicas' logs in one shared
//! environment (`LmdbEnv`), as a sharded node does now.
//!
//! ```text
//! cargo run --release -p raftify-grpc --example idle_groups -- 10 100 1000 --secs 10 [--hibernate] [--lmdb [--segment BYTES] | --shared]
//! ```

use raftify_core::testkit::{KvStore, Node};
use raftify_core::{Bootstrap, Config, LogStore, MemStore, Raft};
use raftify_grpc::{Groups, GrpcConfig, GrpcTransport, RaftGrpcServer, ServerHandle};
use raftify_storage::{LmdbEnv, LmdbOptions, LmdbStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// CPU time (user + system) this process used so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes the struct it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Cluster {
    servers: Vec<ServerHandle>,
    nodes: Vec<Node>,
}

/// Where the replicas keep their logs.
enum Logs {
    Memory,
    /// One LMDB store per replica under the dir, with this segment size.
    Lmdb(tempfile::TempDir, Option<usize>),
    /// One shared LMDB environment per server ("process") under the dir,
    /// a group's store in it per replica.
    Shared(tempfile::TempDir, Vec<Arc<LmdbEnv>>),
}

impl Logs {
    fn dir(&self) -> Option<&std::path::Path> {
        match self {
            Logs::Memory => None,
            Logs::Lmdb(dir, _) | Logs::Shared(dir, _) => Some(dir.path()),
        }
    }

    fn store(&self, node: u64, group: u64) -> Result<Arc<dyn LogStore>, Error> {
        Ok(match self {
            Logs::Memory => Arc::new(MemStore::new()),
            Logs::Shared(_, envs) => {
                let env = envs.get(node as usize - 1).ok_or("no environment")?;
                Arc::new(env.group(group)?)
            }
            Logs::Lmdb(dir, segment) => {
                let mut opts = LmdbOptions::new();
                if let Some(bytes) = segment {
                    opts = opts.journal_segment_size(*bytes);
                }
                let path = dir.path().join(format!("n{node}-g{group}"));
                Arc::new(LmdbStore::open(path, opts)?)
            }
        })
    }
}

/// Bytes the files under `dir` take on disk (allocated blocks).
fn disk_use(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += match meta.is_dir() {
            true => disk_use(&entry.path())?,
            false => meta.blocks() * 512,
        };
    }
    Ok(total)
}

/// The process's thread count (Linux).
fn threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn start(groups: u64, hibernate: bool, logs: &Logs) -> Result<Cluster, Error> {
    let grpc = GrpcConfig::default();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?.to_string();
        listeners.push((l, addr));
    }
    let members: BTreeMap<u64, String> = listeners
        .iter()
        .enumerate()
        .map(|(i, (_, a))| (i as u64 + 1, a.clone()))
        .collect();
    let (mut servers, mut nodes) = (Vec::new(), Vec::new());
    for (i, (listener, addr)) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let base = GrpcTransport::new(addr, grpc.clone())?;
        let served = Groups::new();
        let mut metrics = None;
        for g in 1..=groups {
            let mut config = Config::new(id);
            config.hibernate = hibernate;
            let raft = Raft::builder(config, KvStore::default())
                .storage(logs.store(id, g)?)
                .transport(Arc::new(base.for_group(g)))
                .bootstrap(Bootstrap::Members(members.clone()))
                .logger(raftify_core::discard_logger())
                .start()
                .await?;
            served.insert(g, raft.handle().clone(), None);
            metrics.get_or_insert_with(|| raft.handle().server_metrics("grpc"));
            nodes.push(raft);
        }
        let metrics = metrics.ok_or("no groups")?;
        servers.push(RaftGrpcServer::for_groups(served, metrics, grpc.clone()).spawn(listener)?);
    }
    for n in &nodes {
        n.handle().wait_for_leader(Duration::from_secs(60)).await?;
    }
    Ok(Cluster { servers, nodes })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut counts = Vec::new();
    let mut secs = 10u64;
    let mut hibernate = false;
    let (mut lmdb, mut segment, mut shared) = (false, None, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => secs = args.next().ok_or("--secs needs a value")?.parse()?,
            "--hibernate" => hibernate = true,
            "--lmdb" => lmdb = true,
            "--shared" => shared = true,
            "--segment" => segment = Some(args.next().ok_or("--segment needs a value")?.parse()?),
            n => counts.push(n.parse::<u64>()?),
        }
    }
    if counts.is_empty() {
        counts = vec![10, 100, 1000];
    }
    println!("| groups (× 3 replicas) | start + elect | CPU while idle | per group |");
    println!("|---:|---:|---:|---:|");
    for groups in counts {
        let logs = match (lmdb, shared) {
            (_, true) => {
                let dir = tempfile::tempdir()?;
                let envs: Result<Vec<_>, _> = (1..=3)
                    .map(|n| LmdbEnv::open(dir.path().join(format!("n{n}")), LmdbOptions::new()))
                    .collect();
                Logs::Shared(dir, envs?)
            }
            (true, false) => Logs::Lmdb(tempfile::tempdir()?, segment),
            (false, false) => Logs::Memory,
        };
        let t0 = Instant::now();
        let cluster = start(groups, hibernate, &logs).await?;
        let started = t0.elapsed();
        // Let the elections' aftermath settle before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if hibernate {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut awake = 0;
                for n in &cluster.nodes {
                    if !n.handle().status().await?.hibernating {
                        awake += 1;
                    }
                }
                if awake == 0 {
                    println!(
                        "(every replica sleeps {:.1} s after start)",
                        t0.elapsed().as_secs_f64()
                    );
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{awake} replicas still awake after 60 s").into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let (c0, w0) = (cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let cpu = (cpu_time() - c0).as_secs_f64() / w0.elapsed().as_secs_f64();
        println!(
            "| {groups} | {:.1} s | {:.1} % of a core | {:.1} µs/s |",
            started.as_secs_f64(),
            cpu * 100.0,
            cpu * 1e6 / groups as f64
        );
        if let Some(dir) = logs.dir() {
            println!(
                "(LMDB: {:.1} MiB on disk, {} threads)",
                disk_use(dir)? as f64 / (1 << 20) as f64,
                threads().map_or("?".into(), |t| t.to_string())
            );
        }
        for s in cluster.servers {
            s.shutdown().await;
        }
        for n in &cluster.nodes {
            n.handle().shutdown().await;
        }
    }
    Ok(())
}

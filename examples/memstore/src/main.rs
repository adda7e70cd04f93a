//! `memstore`: one node of a replicated key-value cache.
//!
//! With no arguments it bootstraps a single-node cluster (id 1, raft on
//! 127.0.0.1:60061, HTTP on 127.0.0.1:8001, data in `./data/node-1`); a
//! restart over an existing data dir resumes from it. See `memstore --help`.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use memstore::http::{router, AppState, Latencies};
use memstore::store::HashStore;
use raftify_core::{request_join_ticket, Bootstrap, Config, JoinTicket, LogStore, Raft};
use raftify_grpc::{state_machine_reader, GrpcConfig, GrpcTransport, RaftGrpcServer, TlsConfig};
use raftify_storage::{restore_wal_from, restore_wal_snapshot_from, LmdbOptions, LmdbStore};
use slog::{info, o, warn};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// One node of a highly available key-value cache replicated with raftify.
///
/// Every flag can also be set through the environment variable shown.
#[derive(Parser, Debug)]
#[command(name = "memstore", version)]
struct Args {
    /// This node's id (default 1; with --join, the id the cluster reserves).
    #[arg(long, env = "RAFTIFY_ID")]
    id: Option<u64>,
    /// Address other nodes reach this node's raft (gRPC) service at
    /// (default 127.0.0.1:60061, or this node's entry in --peers).
    #[arg(long, env = "RAFTIFY_RAFT_ADDR")]
    raft_addr: Option<String>,
    /// Address to bind the raft service to, when it differs from
    /// --raft-addr (e.g. 0.0.0.0:60061 in a container). Default: --raft-addr.
    #[arg(long, env = "RAFTIFY_RAFT_LISTEN")]
    raft_listen: Option<String>,
    /// Address of the HTTP API.
    #[arg(long, env = "RAFTIFY_WEB_SERVER", default_value = "127.0.0.1:8001")]
    web_server: String,
    /// Data directory (default ./data/node-<id>, relative to the working
    /// directory).
    #[arg(long, env = "RAFTIFY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Initial members for a static cluster, the same list on every node:
    /// 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long, env = "RAFTIFY_PEERS")]
    peers: Option<String>,
    /// Join a running cluster through any member's raft address.
    #[arg(long, env = "RAFTIFY_JOIN")]
    join: Option<String>,
    /// Join as a learner (non-voting) instead of a voter.
    #[arg(long, env = "RAFTIFY_JOIN_AS_LEARNER")]
    join_as_learner: bool,
    /// Do not fsync the log: faster, but an OS crash or power loss can lose
    /// acknowledged writes and votes.
    #[arg(long, env = "RAFTIFY_NO_SYNC")]
    no_sync: bool,
    /// Start from a copy of another node's WAL directory (the data dir must
    /// be new or empty; the source is not modified).
    #[arg(long, env = "RAFTIFY_RESTORE_WAL_FROM")]
    restore_wal_from: Option<PathBuf>,
    /// Start from a snapshot (a snapshot file or a data dir); the data dir
    /// must be new or empty.
    #[arg(long, env = "RAFTIFY_RESTORE_SNAPSHOT_FROM")]
    restore_snapshot_from: Option<PathBuf>,
    /// Shared secret required on every raft RPC and sent on every outgoing one.
    #[arg(long, env = "RAFTIFY_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// TLS certificate (PEM) of this node, for its server and as client.
    #[arg(long, env = "RAFTIFY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "RAFTIFY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that signs peers' certificates; enables mutual TLS.
    #[arg(long, env = "RAFTIFY_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Name of the cluster; nodes refuse data and tickets of another one.
    #[arg(long, env = "RAFTIFY_CLUSTER_ID", default_value = "raftify")]
    cluster_id: String,
    /// Take a snapshot and compact the log every N applied entries.
    #[arg(long, env = "RAFTIFY_SNAPSHOT_THRESHOLD", default_value_t = 10_000)]
    snapshot_threshold: u64,
    /// Raft tick in milliseconds (elections after 10-20 ticks, heartbeats every 2).
    #[arg(long, env = "RAFTIFY_TICK_MS", default_value_t = 100)]
    tick_ms: u64,
    /// Largest value accepted, in bytes.
    #[arg(long, env = "RAFTIFY_MAX_VALUE_SIZE", default_value_t = 1024 * 1024)]
    max_value_size: usize,
}

fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--peers entry {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| anyhow!("--peers entry {part:?}: {id:?} is not a node id"))?;
        if id == 0 {
            bail!("--peers entry {part:?}: node id 0 is reserved");
        }
        raftify_core::membership::validate_addr(addr.trim())
            .map_err(|e| anyhow!("--peers entry {part:?}: {e}"))?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            bail!("--peers lists node {id} twice");
        }
    }
    if peers.is_empty() {
        bail!("--peers is empty");
    }
    Ok(peers)
}

fn read_pem(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn grpc_config(args: &Args) -> Result<GrpcConfig> {
    let mut cfg = GrpcConfig {
        auth_token: args.auth_token.clone(),
        ..GrpcConfig::default()
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        cfg.tls = Some(TlsConfig {
            cert_pem: Some(read_pem(cert, "TLS certificate")?),
            key_pem: Some(read_pem(key, "TLS key")?),
            ca_pem: args
                .tls_ca
                .as_deref()
                .map(|p| read_pem(p, "TLS CA"))
                .transpose()?,
            domain: None,
        });
    }
    cfg.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(cfg)
}

fn default_dir(id: u64) -> PathBuf {
    PathBuf::from("data").join(format!("node-{id}"))
}

fn holds_store(dir: &Path) -> bool {
    dir.join("data.mdb").is_file()
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))
}

/// How this start goes: resume, bootstrap, or join.
struct Plan {
    id: u64,
    raft_addr: String,
    data_dir: PathBuf,
    bootstrap: Bootstrap,
    ticket: Option<JoinTicket>,
}

async fn plan(args: &Args, grpc: &GrpcConfig, logger: &slog::Logger) -> Result<Plan> {
    if args.join.is_some() && args.peers.is_some() {
        bail!("--join and --peers exclude each other: --peers bootstraps a new cluster");
    }
    if args.restore_wal_from.is_some() && args.restore_snapshot_from.is_some() {
        bail!("--restore-wal-from and --restore-snapshot-from exclude each other");
    }
    let peers = args.peers.as_deref().map(parse_peers).transpose()?;
    let existing_dir = args
        .data_dir
        .clone()
        .or_else(|| args.id.map(default_dir))
        .filter(|d| holds_store(d));

    // A node with data resumes from it, whatever else is asked.
    if let Some(dir) = existing_dir {
        if args.restore_wal_from.is_some() || args.restore_snapshot_from.is_some() {
            bail!(
                "{} already holds data; restore into a new or empty directory",
                dir.display()
            );
        }
        let identity = LmdbStore::open_read_only(&dir, LmdbOptions::default())
            .ok()
            .and_then(|s| s.identity().ok().flatten());
        let id = match (args.id, identity) {
            (Some(a), Some(i)) if a != i.node_id => bail!(
                "{} holds node {}'s data, not node {a}'s",
                dir.display(),
                i.node_id
            ),
            (Some(a), _) => a,
            (None, Some(i)) => i.node_id,
            (None, None) => 1,
        };
        // Empty when unknown: taken from the replicated address book below.
        let raft_addr = args
            .raft_addr
            .clone()
            .or_else(|| peers.as_ref().and_then(|p| p.get(&id).cloned()))
            .unwrap_or_default();
        return Ok(Plan {
            id,
            raft_addr,
            data_dir: dir,
            bootstrap: Bootstrap::None,
            ticket: None,
        });
    }

    if let Some(join) = &args.join {
        let raft_addr = args.raft_addr.clone().ok_or_else(|| {
            anyhow!("--join needs --raft-addr: the address the cluster will reach this node at")
        })?;
        let transport =
            GrpcTransport::new(raft_addr.clone(), grpc.clone()).map_err(|e| anyhow!("{e}"))?;
        info!(logger, "asking the cluster for a node id"; "via" => join);
        let ticket = request_join_ticket(
            &transport,
            std::slice::from_ref(join),
            &raft_addr,
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("cannot get a join ticket from {join}"))?;
        if let Some(id) = args.id {
            if id != ticket.reserved_id {
                bail!("--id {id} given, but the cluster reserved id {} for this node; omit --id when joining", ticket.reserved_id);
            }
        }
        if ticket.cluster_id != args.cluster_id {
            bail!(
                "{join} belongs to cluster {:?}, not {:?}",
                ticket.cluster_id,
                args.cluster_id
            );
        }
        let id = ticket.reserved_id;
        return Ok(Plan {
            id,
            raft_addr,
            data_dir: args.data_dir.clone().unwrap_or_else(|| default_dir(id)),
            bootstrap: Bootstrap::None,
            ticket: Some(ticket),
        });
    }

    let id = args.id.unwrap_or(1);
    let (raft_addr, bootstrap) = match peers {
        Some(peers) => {
            let own = peers
                .get(&id)
                .cloned()
                .ok_or_else(|| anyhow!("--peers does not list this node's id {id}"))?;
            if let Some(a) = &args.raft_addr {
                if *a != own {
                    bail!("--raft-addr {a} differs from this node's --peers entry {own}");
                }
            }
            (own, Bootstrap::Members(peers))
        }
        None => {
            let addr = args
                .raft_addr
                .clone()
                .unwrap_or_else(|| "127.0.0.1:60061".into());
            (addr.clone(), Bootstrap::Single { addr })
        }
    };
    Ok(Plan {
        id,
        raft_addr,
        data_dir: args.data_dir.clone().unwrap_or_else(|| default_dir(id)),
        bootstrap,
        ticket: None,
    })
}

fn open_store(args: &Args, dir: &Path) -> Result<LmdbStore> {
    let opts = LmdbOptions::new().no_sync(args.no_sync);
    if let Some(src) = &args.restore_wal_from {
        return restore_wal_from(src, dir, opts).with_context(|| {
            format!(
                "cannot restore {} from the WAL in {}",
                dir.display(),
                src.display()
            )
        });
    }
    if let Some(src) = &args.restore_snapshot_from {
        return restore_wal_snapshot_from(src, dir, opts).with_context(|| {
            format!(
                "cannot restore {} from the snapshot {}",
                dir.display(),
                src.display()
            )
        });
    }
    LmdbStore::open(dir, opts)
        .with_context(|| format!("cannot open the data dir {}", dir.display()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn run(args: Args) -> Result<()> {
    let logger = raftify_core::default_logger().new(o!("app" => "memstore"));
    let grpc = grpc_config(&args)?;
    let plan = plan(&args, &grpc, &logger).await?;
    let store = open_store(&args, &plan.data_dir)?;

    let mut config = Config::new(plan.id);
    config.cluster_id = args.cluster_id.clone();
    config.tick_interval = Duration::from_millis(args.tick_ms.max(1));
    config.snapshot_threshold = args.snapshot_threshold;
    config.validate()?;

    let mut raft_addr = plan.raft_addr.clone();
    if raft_addr.is_empty() {
        raft_addr = raftify_core::storage::recorded_addr(&store, plan.id)
            .unwrap_or_else(|| "127.0.0.1:60061".into());
    }
    let transport = Arc::new(
        GrpcTransport::with_logger(raft_addr.clone(), grpc.clone(), logger.clone())
            .map_err(|e| anyhow!("{e}"))?,
    );
    let raft = Raft::builder(config, HashStore::default())
        .storage(Arc::new(store))
        .transport(transport)
        .bootstrap(plan.bootstrap.clone())
        .logger(logger.clone())
        .start()
        .await
        .context("cannot start the raft node")?;

    let listen = resolve(args.raft_listen.as_deref().unwrap_or(&raft_addr)).await?;
    let reader = state_machine_reader(&raft, |sm: &HashStore, key: &[u8]| {
        let key = std::str::from_utf8(key)?;
        Ok(match sm.get(key) {
            Some(v) => [&[1u8][..], v].concat(),
            None => vec![0],
        })
    });
    let grpc_server = RaftGrpcServer::new(raft.handle().clone(), grpc.clone())
        .logger(logger.clone())
        .reader(reader)
        .bind(listen)
        .await
        .map_err(|e| anyhow!("cannot serve raft on {listen}: {e}"))?;

    let web = tokio::net::TcpListener::bind(&args.web_server)
        .await
        .with_context(|| format!("cannot bind the HTTP API to {}", args.web_server))?;
    info!(logger, "memstore node up"; "id" => plan.id, "raft" => %raft_addr, "http" => %args.web_server, "data_dir" => %plan.data_dir.display());

    if let Some(ticket) = &plan.ticket {
        let members = raft
            .handle()
            .join_cluster(ticket, &raft_addr, args.join_as_learner)
            .await
            .context("the cluster refused to add this node")?;
        info!(logger, "joined the cluster"; "members" => ?members.iter().map(|m| m.id).collect::<Vec<_>>());
    }

    let state = AppState {
        raft: raft.clone(),
        max_value_size: args.max_value_size,
        latency: Arc::new(Latencies::default()),
    };
    // On SIGTERM/SIGINT: stop the raft node first so requests waiting on it
    // are answered with an error, then let the HTTP server drain. A raft
    // node that stops on its own (fatal storage error, lost log) stops the
    // process with an error, so a supervisor notices.
    let stopping = raft.clone();
    let stop_logger = logger.clone();
    let mut state_rx = raft.handle().subscribe();
    let fatal = Arc::new(std::sync::Mutex::new(None::<String>));
    let fatal_seen = fatal.clone();
    // TCP_NODELAY: small responses must not wait for delayed ACKs (Nagle).
    let web = axum::serve::ListenerExt::tap_io(web, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http = axum::serve(web, router(state)).with_graceful_shutdown(async move {
        let node_failed = async {
            match state_rx
                .wait_for(|s| s.fatal.is_some())
                .await
                .map(|s| s.fatal.clone())
            {
                Ok(reason) => reason,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown_signal() => info!(stop_logger, "signal received; shutting down"),
            reason = node_failed => {
                if let Ok(mut f) = fatal_seen.lock() {
                    *f = reason;
                }
            }
        }
        stopping.handle().shutdown().await;
    });
    if let Err(e) = http.await {
        warn!(logger, "HTTP server error"; "err" => %e);
    }
    raft.handle().shutdown().await;
    grpc_server.shutdown().await;
    let reason = fatal.lock().ok().and_then(|f| f.clone());
    if let Some(reason) = reason {
        bail!("{reason}");
    }
    info!(logger, "memstore node stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memstore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `memstore`: one node of a replicated key-value cache.
//!
//! With no arguments it bootstraps a single-node cluster (id 1, raft on
//! 127.0.0.1:60061, HTTP on 127.0.0.1:8001, data in `./data/node-1`); a
//! restart over an existing data dir resumes from it. See `memstore --help`.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use memstore::http::{router, AppState, HttpAuth, Latencies};
use memstore::serve::ServerConfig;
use memstore::serve::{serve, Limits};
use memstore::store::HashStore;
use raftify::{launch, parse_members, NodeSpec, ReadFn, Restore, Start, Storage};
use raftify_core::Config;
use raftify_grpc::tls::{load_pem, PemKind};
use raftify_grpc::{GrpcConfig, TlsConfig};
use slog::{info, o};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The raft address of a node given none.
const DEFAULT_RAFT_ADDR: &str = "127.0.0.1:60061";

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
    /// Address of the HTTP API (HTTPS with --web-tls-cert).
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
    /// Start with no membership and wait until the cluster's leader adds
    /// this node (`raftify-cli add-learner` / `add-voter`, or POST
    /// /cluster/learners): the operator-driven alternative to --join. Needs
    /// --id and --raft-addr; the leader checks that this address answers as
    /// this id before it adds it.
    #[arg(long, env = "RAFTIFY_WAIT_TO_BE_ADDED", conflicts_with_all = ["peers", "join"])]
    wait_to_be_added: bool,
    /// Do not fsync the log: faster, but an OS crash or power loss can lose
    /// acknowledged writes and votes.
    #[arg(long, env = "RAFTIFY_NO_SYNC")]
    no_sync: bool,
    /// With fsync on, write every raft write as an LMDB commit (two
    /// fdatasyncs) instead of through the storage journal (one); for
    /// comparisons and as a fallback.
    #[arg(long, env = "RAFTIFY_NO_JOURNAL")]
    no_journal: bool,
    /// Log format on stderr: `text` (one line per record) or `json` (one
    /// JSON object per line, for log collectors).
    #[arg(long, env = "RAFTIFY_LOG_FORMAT", default_value = "text")]
    log_format: raftify_core::LogFormat,
    /// Lowest level logged: error, warning, info, debug or trace (debug
    /// adds each forwarded write's request id on the follower and on the
    /// leader, to follow a write across nodes).
    #[arg(long, env = "RAFTIFY_LOG_LEVEL", default_value = "info", value_parser = parse_level)]
    log_level: slog::Level,
    /// Start from a copy of another node's WAL directory (the data dir must
    /// be new or empty; the source is not modified).
    #[arg(long, env = "RAFTIFY_RESTORE_WAL_FROM")]
    restore_wal_from: Option<PathBuf>,
    /// Start from a snapshot (a snapshot file or a data dir); the data dir
    /// must be new or empty.
    #[arg(long, env = "RAFTIFY_RESTORE_SNAPSHOT_FROM")]
    restore_snapshot_from: Option<PathBuf>,
    /// The client token: required on the HTTP API (`Authorization: Bearer
    /// T`; every endpoint but GET /health, and GET /metrics with
    /// --metrics-public) and on the gRPC client service. Without
    /// --peer-token, also the token peers use with each other.
    #[arg(long, env = "RAFTIFY_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Most connections served at once on each port (HTTP and raft); more
    /// are closed at once. (A connection must finish its TLS handshake and
    /// send its HTTP request headers, or the HTTP/2 preface on the raft
    /// port, within 10 s; an idle HTTP keep-alive connection is closed
    /// after 10 s.)
    #[arg(long, env = "RAFTIFY_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Serve GET /metrics without the client token (for a scraper on a
    /// trusted network).
    #[arg(long, env = "RAFTIFY_METRICS_PUBLIC")]
    metrics_public: bool,
    /// The peer token: what members present to each other (raft messages,
    /// snapshots, forwarded requests); the client token is refused there.
    #[arg(long, env = "RAFTIFY_PEER_TOKEN", hide_env_values = true)]
    peer_token: Option<String>,
    /// TLS certificate (PEM) of this node, for its server and as client.
    #[arg(long, env = "RAFTIFY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "RAFTIFY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that signs peers' certificates; enables mutual TLS.
    #[arg(long, env = "RAFTIFY_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Serve the HTTP API over HTTPS with this certificate (PEM, chain leaf
    /// first); needs --web-tls-key. Default: plain HTTP.
    #[arg(long, env = "RAFTIFY_WEB_TLS_CERT", requires = "web_tls_key")]
    web_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --web-tls-cert.
    #[arg(long, env = "RAFTIFY_WEB_TLS_KEY", requires = "web_tls_cert")]
    web_tls_key: Option<PathBuf>,
    /// CA (PEM) that signs HTTP clients' certificates: HTTPS clients must
    /// present one (mutual TLS). Needs --web-tls-cert.
    #[arg(long, env = "RAFTIFY_WEB_TLS_CLIENT_CA", requires = "web_tls_cert")]
    web_tls_client_ca: Option<PathBuf>,
    /// Seconds an HTTP request's body has to arrive in full after its
    /// headers; slower requests get 408 and their connection is closed.
    #[arg(long, env = "RAFTIFY_HTTP_BODY_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    http_body_timeout: u64,
    /// Name of the cluster; nodes refuse data and tickets of another one.
    #[arg(long, env = "RAFTIFY_CLUSTER_ID", default_value = "raftify")]
    cluster_id: String,
    /// Take a snapshot and compact the log every N applied entries.
    #[arg(long, env = "RAFTIFY_SNAPSHOT_THRESHOLD", default_value_t = 100_000)]
    snapshot_threshold: u64,
    /// Raft tick in milliseconds (elections after 10-20 ticks, heartbeats every 2).
    #[arg(long, env = "RAFTIFY_TICK_MS", default_value_t = 100)]
    tick_ms: u64,
    /// Largest value accepted, in bytes.
    #[arg(long, env = "RAFTIFY_MAX_VALUE_SIZE", default_value_t = 1024 * 1024)]
    max_value_size: usize,
    /// Largest snapshot this node accepts from its leader, in bytes (the
    /// announced size is checked first; a larger one is refused and the
    /// node cannot catch up by snapshot: raise it with the data set).
    #[arg(long, env = "RAFTIFY_MAX_SNAPSHOT_BYTES", default_value_t = 1024 * 1024 * 1024)]
    max_snapshot_bytes: u64,
    /// Forward writes made on a follower to the leader as plain writes
    /// rather than in this node's client session: a forwarded write whose
    /// connection breaks after it left is then answered 504 (outcome
    /// unknown) instead of being sent again and applied once. For
    /// measuring what sessions cost; not for production.
    #[arg(long, env = "RAFTIFY_NO_FORWARD_SESSION")]
    no_forward_session: bool,
}

/// TLS material from the PEM files named by a cert, key and CA flag (the
/// flags' names, for errors); None without cert and key. Each file is read
/// and checked now, so a bad one stops the start, naming the flag and file.
fn tls_files(
    cert: Option<&Path>,
    key: Option<&Path>,
    ca: Option<&Path>,
    flags: [&str; 3],
) -> Result<Option<TlsConfig>> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let load = |path: &Path, kind: PemKind, flag: &str| {
        load_pem(path, kind).map_err(|e| anyhow!("{flag}: {e}"))
    };
    Ok(Some(TlsConfig {
        cert_pem: Some(load(cert, PemKind::Certificates, flags[0])?),
        key_pem: Some(load(key, PemKind::PrivateKey, flags[1])?),
        ca_pem: ca
            .map(|p| load(p, PemKind::CaCertificates, flags[2]))
            .transpose()?,
        domain: None,
    }))
}

fn grpc_config(args: &Args) -> Result<GrpcConfig> {
    let cfg = GrpcConfig {
        auth_token: args.auth_token.clone(),
        peer_token: args.peer_token.clone(),
        max_connections: args.max_connections,
        max_snapshot_size: args.max_snapshot_bytes,
        tls: tls_files(
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
            args.tls_ca.as_deref(),
            ["--tls-cert", "--tls-key", "--tls-ca"],
        )?,
        ..GrpcConfig::default()
    };
    cfg.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(cfg)
}

/// The rustls configuration of the HTTPS API, or None for plain HTTP.
fn web_tls(args: &Args) -> Result<Option<Arc<ServerConfig>>> {
    let tls = tls_files(
        args.web_tls_cert.as_deref(),
        args.web_tls_key.as_deref(),
        args.web_tls_client_ca.as_deref(),
        ["--web-tls-cert", "--web-tls-key", "--web-tls-client-ca"],
    )?;
    tls.map(|t| t.rustls_server_config(&[b"http/1.1"]))
        .transpose()
        .map_err(|e| anyhow!("HTTPS: {e}"))
}

/// The launcher's spec for these flags.
fn node_spec(args: &Args, grpc: GrpcConfig, logger: &slog::Logger) -> Result<NodeSpec> {
    if args.join.is_some() && args.peers.is_some() {
        bail!("--join and --peers exclude each other: --peers bootstraps a new cluster");
    }
    if args.restore_wal_from.is_some() && args.restore_snapshot_from.is_some() {
        bail!("--restore-wal-from and --restore-snapshot-from exclude each other");
    }
    if args.join.is_some() && args.raft_addr.is_none() {
        bail!("--join needs --raft-addr: the address the cluster will reach this node at");
    }
    if args.wait_to_be_added && (args.id.is_none() || args.raft_addr.is_none()) {
        bail!(
            "--wait-to-be-added needs --id and --raft-addr: the id and address the leader will add"
        );
    }
    let peers = args
        .peers
        .as_deref()
        .map(parse_members)
        .transpose()
        .map_err(|e| anyhow!("--peers: {e}"))?;
    let mut config = Config::new(1);
    config.cluster_id = args.cluster_id.clone();
    config.tick_interval = Duration::from_millis(args.tick_ms.max(1));
    config.snapshot_threshold = args.snapshot_threshold;
    config.forward_in_session = !args.no_forward_session;
    let mut spec = NodeSpec::new();
    spec.id = args.id;
    spec.default_id = Some(1);
    spec.raft_addr = args.raft_addr.clone();
    spec.fallback_raft_addr = Some(DEFAULT_RAFT_ADDR.into());
    spec.listen_addr = args.raft_listen.clone();
    spec.storage = match &args.data_dir {
        Some(dir) => Storage::Dir(dir.clone()),
        None => Storage::PerNode(PathBuf::from("data")),
    };
    spec.no_sync = args.no_sync;
    spec.journal = !args.no_journal;
    spec.start = match (&args.join, peers) {
        (Some(join), _) => Start::Join {
            via: vec![join.clone()],
            as_learner: args.join_as_learner,
        },
        (None, Some(peers)) => Start::Members(peers),
        (None, None) if args.wait_to_be_added => Start::Wait,
        (None, None) => Start::Single,
    };
    spec.restore = match (&args.restore_wal_from, &args.restore_snapshot_from) {
        (Some(src), _) => Some(Restore::WalFrom(src.clone())),
        (_, Some(src)) => Some(Restore::SnapshotFrom(src.clone())),
        _ => None,
    };
    spec.config = config;
    spec.grpc = grpc;
    spec.logger = logger.clone();
    Ok(spec)
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

async fn run(args: Args, logger: slog::Logger) -> Result<()> {
    let grpc = grpc_config(&args)?;
    let web_tls = web_tls(&args)?;
    let spec = node_spec(&args, grpc, &logger)?;
    // Both ports are taken before anything is written.
    let web = tokio::net::TcpListener::bind(&args.web_server)
        .await
        .with_context(|| format!("cannot bind the HTTP API to {}", args.web_server))?;
    let reader: ReadFn<HashStore> = Arc::new(|sm: &HashStore, key: &[u8]| {
        let key = std::str::from_utf8(key)?;
        Ok(match sm.get(key) {
            Some(v) => [&[1u8][..], v].concat(),
            None => vec![0],
        })
    });
    let node = launch(spec, HashStore::default(), Some(reader))
        .await
        .context("cannot start the node")?;
    let raft = node.raft.clone();
    info!(logger, "memstore node up"; "id" => node.id, "raft" => %node.raft_addr, "http" => %args.web_server, "https" => web_tls.is_some(),
        "data_dir" => %node.data_dir.as_deref().map(|d| d.display().to_string()).unwrap_or_default());

    let state = AppState {
        raft: raft.clone(),
        max_value_size: args.max_value_size,
        latency: Arc::new(Latencies::register(&raft.handle().metrics_registry())),
        auth: HttpAuth {
            token: args.auth_token.clone(),
            metrics_public: args.metrics_public,
        },
        server: raft.handle().server_metrics("http"),
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
    let limits = Limits {
        max_connections: args.max_connections,
        body_timeout: Duration::from_secs(args.http_body_timeout),
        ..Limits::default()
    };
    let stop = async move {
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
    };
    let metrics = state.server.clone();
    serve(web, router(state), limits, metrics, web_tls, stop).await;
    node.shutdown().await;
    let reason = fatal.lock().ok().and_then(|f| f.clone());
    if let Some(reason) = reason {
        bail!("{reason}");
    }
    info!(logger, "memstore node stopped");
    Ok(())
}

/// Any panic, in any task, ends the process with exit code 101 after the
/// usual message: a node whose loop died must not stay up answering 503s
/// that no supervisor notices. (A corrupted log entry, for one, makes
/// raft-rs panic with the store's "storage corrupted: ..." error.)
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("memstore: a task panicked; the node stops (exit code 101)");
        std::process::exit(101);
    }));
}

fn parse_level(s: &str) -> Result<slog::Level, String> {
    s.parse()
        .map_err(|()| format!("unknown log level {s:?} (error, warning, info, debug, trace)"))
}

fn main() -> ExitCode {
    exit_on_panic();
    let args = Args::parse();
    // The logger outlives the runtime: once the runtime (and every task
    // holding a clone) is gone, dropping it writes out the lines still
    // queued — the last ones ("memstore node stopped") were sometimes lost
    // at exit when the logger was a static that is never dropped.
    let logger = raftify_core::stderr_logger_as(args.log_level, args.log_format)
        .new(o!("app" => "memstore"));
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(args, logger.clone())),
        Err(e) => Err(anyhow!("cannot start the runtime: {e}")),
    };
    drop(logger);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memstore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

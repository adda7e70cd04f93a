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
use raftify::cli::{exit_on_panic, run_main, tls_files, until_stopped, NodeArgs};
use raftify::{launch, ReadFn};
use slog::{info, o};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc: see the workspace manifest (glibc malloc cost 10-15 % of a
/// few-writers round).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One node of a highly available key-value cache replicated with raftify.
///
/// Every flag can also be set through the environment variable shown. The
/// client token (--auth-token) is required on the HTTP API
/// (`Authorization: Bearer T`; every endpoint but GET /health, and GET
/// /metrics with --metrics-public) and on the gRPC client service.
#[derive(Parser, Debug)]
#[command(name = "memstore", version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Address of the HTTP API (HTTPS with --web-tls-cert).
    #[arg(long, env = "RAFTIFY_WEB_SERVER", default_value = "127.0.0.1:8001")]
    web_server: String,
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
    /// Largest value accepted, in bytes.
    #[arg(long, env = "RAFTIFY_MAX_VALUE_SIZE", default_value_t = 1024 * 1024)]
    max_value_size: usize,
}

/// The rustls configuration of the HTTPS API, or None for plain HTTP.
fn web_tls(args: &Args) -> Result<Option<Arc<ServerConfig>>> {
    let tls = tls_files(
        args.web_tls_cert.as_deref(),
        args.web_tls_key.as_deref(),
        args.web_tls_client_ca.as_deref(),
        ["--web-tls-cert", "--web-tls-key", "--web-tls-client-ca"],
    )
    .map_err(|e| anyhow!("{e}"))?;
    tls.map(|t| t.rustls_server_config(&[b"http/1.1"]))
        .transpose()
        .map_err(|e| anyhow!("HTTPS: {e}"))
}

async fn run(args: Args, logger: slog::Logger) -> Result<()> {
    let web_tls = web_tls(&args)?;
    let mut spec = args.node.node_spec("node", &logger)?;
    spec.grpc = args.node.grpc_config(args.max_connections)?;
    let auth = HttpAuth::new(spec.grpc.client_tokens(), args.metrics_public);
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
        auth,
        server: raft.handle().server_metrics("http"),
    };
    // On SIGTERM/SIGINT: stop the raft node first so requests waiting on it
    // are answered with an error, then let the HTTP server drain. A raft
    // node that stops on its own (fatal storage error, lost log) stops the
    // process with an error, so a supervisor notices.
    let stopping = raft.clone();
    let (until, fatal) = until_stopped(raft.handle(), &logger);
    let limits = Limits {
        max_connections: args.max_connections,
        body_timeout: Duration::from_secs(args.http_body_timeout),
        ..Limits::default()
    };
    let stop = async move {
        until.await;
        stopping.handle().shutdown().await;
    };
    let metrics = state.server.clone();
    serve(web, router(state), limits, metrics, web_tls, stop).await;
    node.shutdown().await;
    if let Some(reason) = fatal.reason() {
        bail!("{reason}");
    }
    info!(logger, "memstore node stopped");
    Ok(())
}

fn main() -> ExitCode {
    exit_on_panic("memstore");
    let args = Args::parse();
    // The logger outlives the runtime (run_main drops it last): its queued
    // lines ("memstore node stopped") are written before the process ends.
    let logger = raftify_core::stderr_logger_as(args.node.log_level, args.node.log_format)
        .new(o!("app" => "memstore"));
    run_main("memstore", logger, |logger| run(args, logger))
}

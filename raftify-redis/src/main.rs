//! `raftify-redis`: one node of a Redis-compatible, Raft-replicated cache.
//!
//! With no arguments: a single node, Redis protocol on 127.0.0.1:6379, raft
//! on 127.0.0.1:60061, data in `./data/redis-1`. See `raftify-redis --help`.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use raftify::cli::{exit_on_panic, run_main, until_stopped, NodeArgs};
use raftify::launch;
use raftify_cache::CacheState;
use raftify_redis::conn::accept_loop;
use raftify_redis::server::Server;
use slog::{info, o};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// mimalloc: see the workspace manifest (glibc malloc cost 10-15 % of a
/// few-writers round).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One node of a Redis-compatible cache replicated with raftify.
///
/// Every flag can also be set through the environment variable shown.
#[derive(Parser, Debug)]
#[command(name = "raftify-redis", version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// The Redis protocol port.
    #[arg(long, env = "RAFTIFY_PORT", default_value_t = 6379)]
    port: u16,
    /// The address to bind the Redis port to.
    #[arg(long, env = "RAFTIFY_BIND", default_value = "127.0.0.1")]
    bind: String,
    /// Require clients to `AUTH` with this password first.
    #[arg(long, env = "RAFTIFY_REQUIREPASS", hide_env_values = true)]
    requirepass: Option<String>,
    /// Most clients connected at once; more get
    /// "-ERR max number of clients reached" and are closed.
    #[arg(long, env = "RAFTIFY_MAXCLIENTS", default_value_t = 10_000)]
    maxclients: usize,
    /// Largest bulk string accepted in a request, in bytes; a larger one
    /// is a protocol error (the connection is closed).
    #[arg(long, env = "RAFTIFY_PROTO_MAX_BULK_LEN", default_value_t = 512 * 1024 * 1024)]
    proto_max_bulk_len: usize,
    /// The address cluster clients reach this node's Redis port at, as
    /// `CLUSTER SLOTS`/`NODES`/`SHARDS` and `-MOVED` give it (default:
    /// --bind:--port; set it when binding 0.0.0.0 or behind NAT).
    #[arg(long, env = "RAFTIFY_ADVERTISE")]
    advertise: Option<String>,
    /// Also serve the Redis protocol over TLS on this port, with the
    /// node's certificate (--tls-cert, --tls-key). With --tls-ca, TLS
    /// clients must present a certificate signed by it (as Redis's
    /// tls-auth-clients yes) unless --tls-auth-clients no.
    #[arg(long, env = "RAFTIFY_TLS_PORT", requires = "tls_cert")]
    tls_port: Option<u16>,
    /// With --tls-ca: whether TLS clients must present a certificate
    /// (`yes`, the default) or not (`no`; the CA then only checks peers).
    #[arg(long, env = "RAFTIFY_TLS_AUTH_CLIENTS", default_value = "yes", value_parser = ["yes", "no"])]
    tls_auth_clients: String,
    /// Serve the status page, /metrics, /status (and with --sharded
    /// /cluster and /rebalance) over HTTP on this port, bound on --bind;
    /// HTTPS with the node's certificate when --tls-cert is given. With
    /// --requirepass, all but the page and /health need
    /// `Authorization: Bearer <password>`. Off by default.
    #[arg(long, env = "RAFTIFY_HTTP_PORT")]
    http_port: Option<u16>,
    /// Memory limit for the data (`100mb`, `2gb`, bytes; 0: none), as the
    /// keyspace estimates it (keys, values and a fixed overhead each; the
    /// same on every node).
    #[arg(long, env = "RAFTIFY_MAXMEMORY", default_value = "0", value_parser = raftify_cache::eviction::parse_memory)]
    maxmemory: u64,
    /// What happens over --maxmemory: `noeviction` (writes that add data
    /// get -OOM), `allkeys-lru` (least recently written keys go),
    /// `allkeys-lfu` (least frequently used keys go), `allkeys-random`,
    /// `volatile-lru`, `volatile-lfu`, `volatile-random` (the same among
    /// keys with a TTL), `volatile-ttl` (keys nearest to expiry go).
    #[arg(long, env = "RAFTIFY_MAXMEMORY_POLICY", default_value = "noeviction")]
    maxmemory_policy: raftify_cache::eviction::Policy,
    /// Serve reads from this node's copy without checking with the leader
    /// (faster, possibly stale), as every connection that sent READONLY.
    #[arg(long, env = "RAFTIFY_OPENREADS")]
    openreads: bool,
    /// Spread the key space over many Raft groups (Redis Cluster's hash
    /// slots), each replicated on --replicas nodes: the first node starts
    /// alone (--id 1), every other one with --join (any member's raft
    /// address); `RAFT REBALANCE` spreads groups, slots and leaders.
    #[arg(long, env = "RAFTIFY_SHARDED")]
    sharded: bool,
    /// With --sharded: replicas per group (fewer while there are fewer
    /// nodes). Read when the cluster is created.
    #[arg(long, env = "RAFTIFY_REPLICAS", default_value_t = 3)]
    replicas: usize,
    /// With --sharded: groups per node the cluster aims for. Read when the
    /// cluster is created.
    #[arg(long, env = "RAFTIFY_GROUPS_PER_NODE", default_value_t = 1)]
    groups_per_node: usize,
    /// With --sharded: rebalance by itself whenever nodes join or leave
    /// (else on `RAFT REBALANCE`).
    #[arg(long, env = "RAFTIFY_AUTO_REBALANCE")]
    auto_rebalance: bool,
    /// With --sharded: a node not heard from for this many seconds is
    /// marked down (`fail` in CLUSTER NODES) and its replicas are replaced
    /// on nodes with room, even without --auto-rebalance; 0: never.
    #[arg(long, env = "RAFTIFY_DEAD_AFTER", default_value_t = 300)]
    dead_after: u64,
    /// With --sharded: while groups hold more than this many MiB of data
    /// each on average, the cluster aims for more groups (slots spread
    /// over them at the next rebalance); 0: no limit. Read when the
    /// cluster is created.
    #[arg(long, env = "RAFTIFY_MAX_GROUP_MB", default_value_t = 0)]
    max_group_mb: u64,
    /// With --sharded: slots a move copies per round (frozen, exported,
    /// imported, handed over). Smaller rounds refuse a slot's writes for
    /// less time; larger ones move faster. 1 to 16384.
    #[arg(long, env = "RAFTIFY_MOVE_CHUNK", default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(1..=16384))]
    move_chunk: u16,
}

async fn run(args: Args, logger: slog::Logger) -> Result<()> {
    let mut spec = args.node.node_spec("redis", &logger)?;
    spec.grpc = args.node.grpc_config(args.maxclients.saturating_add(64))?;
    let addr = format!("{}:{}", args.bind, args.port);
    let advertise = args.advertise.clone().unwrap_or_else(|| addr.clone());
    if args.advertise.is_none() && (args.bind == "0.0.0.0" || args.bind == "::") {
        slog::warn!(
            logger,
            "binding all interfaces without --advertise: cluster clients are told {advertise}"
        );
    }
    // The client port is taken before anything is written.
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot bind the Redis port to {addr}"))?;
    let tls_listener = match args.tls_port {
        None => None,
        Some(port) => {
            let Some(mut tls) = args.node.tls()? else {
                bail!("--tls-port needs --tls-cert and --tls-key");
            };
            if args.tls_auth_clients == "no" {
                tls.ca_pem = None;
            }
            let config = tls
                .rustls_server_config(&[])
                .map_err(|e| anyhow!("--tls-port: {e}"))?;
            let addr = format!("{}:{port}", args.bind);
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot bind the Redis TLS port to {addr}"))?;
            Some((listener, tokio_rustls::TlsAcceptor::from(config)))
        }
    };
    let http = match args.http_port {
        None => None,
        Some(port) => {
            let tls = match args.node.tls()? {
                Some(mut tls) => {
                    // Browsers and scrapers bring no client certificate.
                    tls.ca_pem = None;
                    Some(
                        tls.rustls_server_config(&[b"http/1.1"])
                            .map_err(|e| anyhow!("--http-port: {e}"))?,
                    )
                }
                None => None,
            };
            let addr = format!("{}:{port}", args.bind);
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot bind the HTTP port to {addr}"))?;
            Some((listener, tls))
        }
    };
    let listeners = Listeners {
        redis: listener,
        tls: tls_listener,
        http,
    };
    if args.sharded {
        return run_sharded(args, spec, listeners, advertise, addr, logger).await;
    }
    let hub = Arc::new(raftify_redis::pubsub::Hub::default());
    let mut state = CacheState::new();
    let delivering = hub.clone();
    state.set_publish_hook(Arc::new(move |channel, message| {
        delivering.publish(channel, message)
    }));
    if args.maxmemory > 0 && args.maxmemory_policy.counts_accesses() {
        // 4 rows of 2^18 one-byte counters: 1 MiB, halved every 2.6M accesses.
        let sketch = raftify_cache::eviction::Frequencies::new(1 << 18);
        state.count_accesses(Arc::new(sketch));
    }
    let launched = launch(spec, state, None)
        .await
        .context("cannot start the node")?;
    let node = launched.raft.clone();
    info!(logger, "raftify-redis node up"; "id" => launched.id, "raft" => %launched.raft_addr, "redis" => %addr,
        "data_dir" => %launched.data_dir.as_deref().map(|d| d.display().to_string()).unwrap_or_default());
    let server = server_of(&args, Some(node.clone()), None, hub);
    let expiry = tokio::spawn(raftify_cache::expiry::run(node.clone(), logger.clone()));
    let max = args.maxmemory;
    let evictor = tokio::spawn(raftify_redis::eviction::run(
        node.clone(),
        match max {
            // No limit: nothing to evict.
            0 => raftify_cache::eviction::Policy::NoEviction,
            _ => args.maxmemory_policy,
        },
        Arc::new(move || Some(max)),
        logger.clone(),
    ));
    let announce = tokio::spawn(raftify_redis::cluster::announce(
        node.clone(),
        advertise,
        logger.clone(),
    ));
    let (stop, fatal) = until_stopped(node.handle(), &logger);
    serve_clients(listeners, server, None, &logger, stop).await;
    launched.shutdown().await;
    expiry.abort();
    evictor.abort();
    announce.abort();
    if let Some(reason) = fatal.reason() {
        bail!("{reason}");
    }
    info!(logger, "raftify-redis node stopped");
    Ok(())
}

/// The server's settings from the flags, over a node or a sharded one.
fn server_of(
    args: &Args,
    node: Option<raftify_redis::server::Node>,
    shard: Option<Arc<raftify_redis::sharded::Shard>>,
    hub: Arc<raftify_redis::pubsub::Hub>,
) -> Arc<Server> {
    Arc::new(Server {
        node,
        shard,
        requirepass: args.requirepass.clone(),
        openreads: args.openreads,
        max_bulk: args.proto_max_bulk_len,
        max_clients: args.maxclients,
        port: args.port,
        clients: AtomicUsize::new(0),
        hub,
        last_leader: AtomicU64::new(0),
        maxmemory: args.maxmemory,
        policy: args.maxmemory_policy,
        next_client_id: AtomicU64::new(0),
        commands: AtomicU64::new(0),
        started: Instant::now(),
        snapshot_cache: Default::default(),
    })
}

/// The ports, bound before anything is written.
struct Listeners {
    redis: tokio::net::TcpListener,
    tls: Option<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    http: Option<(
        tokio::net::TcpListener,
        Option<Arc<raftify::http::ServerConfig>>,
    )>,
}

/// Serves clients on the Redis port (and the TLS and HTTP ports) until
/// `stop`. `raft` is a client of this node's Raft port (a sharded node's
/// `/cluster` asks the other replicas through it).
async fn serve_clients(
    listeners: Listeners,
    server: Arc<Server>,
    raft: Option<raftify_grpc::RaftClient>,
    logger: &slog::Logger,
    stop: impl std::future::Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tls_task = listeners.tls.map(|(l, acceptor)| {
        let (server, logger) = (server.clone(), logger.clone());
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { accept_loop(l, Some(acceptor), server, logger, stop).await })
    });
    let http_task = listeners.http.and_then(|(l, tls)| {
        let metrics = match (&server.node, &server.shard) {
            (Some(n), _) => n.handle().server_metrics("http"),
            (None, Some(s)) => s.host.meta().server_metrics("http"),
            (None, None) => return None,
        };
        let app = raftify_redis::http::router(raftify_redis::http::Http {
            server: server.clone(),
            client: raft.map(Arc::new),
        });
        let limits = raftify::http::Limits::default();
        let stop = stopped(stop_rx.clone());
        Some(tokio::spawn(raftify::http::serve(
            l, app, limits, metrics, tls, stop,
        )))
    });
    accept_loop(listeners.redis, None, server, logger.clone(), stop).await;
    let _ = stop_tx.send(true);
    for t in [tls_task, http_task].into_iter().flatten() {
        let _ = t.await;
    }
}

/// `--sharded`: a [`ShardHost`] of cache groups behind the Redis port.
async fn run_sharded(
    args: Args,
    mut spec: raftify::NodeSpec,
    listeners: Listeners,
    advertise: String,
    addr: String,
    logger: slog::Logger,
) -> Result<()> {
    if matches!(spec.start, raftify::Start::Members(_)) {
        bail!("--sharded starts the first node alone (--id 1) and the others with --join, not --peers");
    }
    if let raftify::Storage::PerNodeNamed(root, _) = &spec.storage {
        spec.storage = raftify::Storage::Dir(root.join(format!("redis-sharded-{}", args.port)));
    }
    // A restore loads a single-group node's keys into this new cluster
    // (raftify_redis::restore): begun and finished with markers in the
    // data dir, before any client is served.
    let restore = spec.restore.take();
    if restore.is_some() && !matches!(spec.start, raftify::Start::Single) {
        bail!(
            "a restore starts a new sharded cluster: give --restore-* to its first node (--id 1, without --join)"
        );
    }
    let restoring = match &spec.storage {
        raftify::Storage::Dir(dir) => {
            use raftify_redis::restore::{load, plan, Plan};
            match (plan(dir, restore.as_ref())?, &restore) {
                (Plan::Import, Some(r)) => {
                    let scratch = dir.join("restore-scratch");
                    if scratch.exists() {
                        std::fs::remove_dir_all(&scratch)
                            .with_context(|| format!("cannot remove {}", scratch.display()))?;
                    }
                    Some((dir.clone(), load(r, &scratch, &logger).await?))
                }
                (Plan::Done, _) => {
                    info!(logger, "the data dir was restored before: resuming it, the restore is skipped"; "dir" => %dir.display());
                    None
                }
                _ => None,
            }
        }
        _ if restore.is_some() => bail!("a restore needs a data dir (--data-dir)"),
        _ => None,
    };
    let settings = raftify_shard::Settings {
        replicas: args.replicas,
        groups_per_node: args.groups_per_node,
        max_group_bytes: args.max_group_mb.saturating_mul(1024 * 1024),
    };
    let grpc = spec.grpc.clone();
    let hub = Arc::new(raftify_redis::pubsub::Hub::default());
    let users = Arc::new(raftify_cache::acl::SharedUsers::default());
    let shard_spec = raftify_shard::ShardSpec {
        node: spec,
        client_addr: advertise,
        settings,
        // Nothing moves while a restore imports (a rebalance is asked for
        // once it is done).
        auto_rebalance: args.auto_rebalance && restoring.is_none(),
        dead_after: (args.dead_after > 0).then(|| Duration::from_secs(args.dead_after)),
        on_broadcast: Some(hub.broadcast_hook()),
        shared: Some(users.clone()),
    };
    // One access sketch for all the node's groups (keys of different
    // groups never share a counter by more than a hash collision).
    let sketch = (args.maxmemory > 0 && args.maxmemory_policy.counts_accesses())
        .then(|| Arc::new(raftify_cache::eviction::Frequencies::new(1 << 18)));
    let make = Arc::new(move |_| {
        let mut state = CacheState::new();
        // Weighed when a group grows past --max-group-mb.
        state.count_slot_bytes();
        if let Some(sketch) = &sketch {
            state.count_accesses(sketch.clone());
        }
        state
    });
    let mover = Arc::new(raftify_cache::CacheSlotMover {
        chunk: args.move_chunk,
    });
    let reader = Some(raftify_cache::remote::reader());
    let host = raftify_shard::ShardHost::start(shard_spec, make, reader, Some(mover))
        .await
        .context("cannot start the sharded node")?;
    if let Some((dir, state)) = restoring {
        // Before any client is served: a node stopped half-way imports
        // again at its next start (each round replaces what it wrote).
        raftify_redis::restore::import(&host, &state, &logger).await?;
        raftify_redis::restore::mark_done(&dir)
            .with_context(|| format!("cannot record the restore in {}", dir.display()))?;
        if args.auto_rebalance {
            host.rebalance();
        }
    }
    info!(logger, "raftify-redis sharded node up"; "id" => host.id(), "raft" => %host.raft_addr(), "redis" => %addr);
    let raft_client = match listeners.http {
        Some(_) => Some(
            raftify_grpc::RaftClient::new([host.raft_addr().to_string()], grpc)
                .context("cannot make a client of this node's Raft port")?,
        ),
        None => None,
    };
    let (stop, fatal) = until_stopped(host.meta(), &logger);
    let shard = Arc::new(raftify_redis::sharded::Shard::new(host, users));
    let server = server_of(&args, None, Some(shard.clone()), hub);
    let expiry = tokio::spawn(raftify_redis::upkeep::run(
        shard.clone(),
        Some((args.maxmemory_policy, args.maxmemory)),
        logger.clone(),
    ));
    serve_clients(listeners, server, raft_client, &logger, stop).await;
    expiry.abort();
    let _ = expiry.await;
    shard.host.shutdown().await;
    if let Some(reason) = fatal.reason() {
        bail!("{reason}");
    }
    info!(logger, "raftify-redis node stopped");
    Ok(())
}

fn main() -> ExitCode {
    exit_on_panic("raftify-redis");
    let args = Args::parse();
    let logger = raftify_core::stderr_logger_as(args.node.log_level, args.node.log_format)
        .new(o!("app" => "raftify-redis"));
    run_main("raftify-redis", logger, |logger| run(args, logger))
}

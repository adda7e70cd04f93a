//! `cache-service`: a small web service with raftify's embedded cache
//! inside, configured from the environment only (as a Kubernetes
//! StatefulSet pod is): `HA_MODE`, `HA_HOSTS`, `HOSTNAME` /
//! `HOSTNAME_OVERWRITE`, `CACHE_AUTH_TOKEN`, `CACHE_TLS*`, `DATA_DIR`
//! (unset: in memory), `LISTEN_ADDR` (the HTTP API, default
//! `0.0.0.0:8080`). See `raftify_cache::embedded::env` and docs/CACHE.md.
//!
//! HTTP: `PUT/GET/DELETE /cache/{name}/{key}`, `POST
//! /cache/{name}/{key}/incr`, `GET /health`, `GET /ready`, `GET /metrics`.
//! Caches: `default`, and `sessions` (60 s TTL, 10,000 entries).

mod api;

use anyhow::{Context, Result};
use raftify::cli::{exit_on_panic, run_main, until_stopped};
use raftify::http::{serve, Limits};
use raftify_cache::embedded::{Cache, CacheBuilder, CacheConfig};
use slog::info;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc: see the workspace manifest (glibc malloc cost 10-15 % of a
/// few-writers round).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The HTTP API's address when `LISTEN_ADDR` is unset.
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

async fn run(logger: slog::Logger) -> Result<()> {
    let listen = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| DEFAULT_LISTEN.to_string());
    // Bound before the node starts: a port in use fails the start at once.
    let web = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("LISTEN_ADDR: cannot bind {listen}"))?;
    let cache: Cache = CacheBuilder::from_env()?
        .cache("default", CacheConfig::new())
        .cache(
            "sessions",
            CacheConfig::new()
                .ttl(Duration::from_secs(60))
                .max_entries(10_000),
        )
        .logger(logger.clone())
        .build()
        .await?;
    info!(logger, "cache-service up"; "id" => cache.id(), "raft" => cache.raft_addr(), "http" => %listen);
    let metrics = cache.raft().handle().server_metrics("http");
    let (until, fatal) = until_stopped(cache.raft().handle(), &logger);
    serve(
        web,
        api::router(cache.clone()),
        Limits::default(),
        metrics,
        None,
        until,
    )
    .await;
    cache.shutdown().await;
    info!(logger, "cache-service stopped");
    match fatal.reason() {
        Some(reason) => anyhow::bail!("the node stopped: {reason}"),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    exit_on_panic("cache-service");
    let level = match std::env::var("RAFTIFY_LOG_LEVEL") {
        Ok(l) => match raftify::cli::parse_level(&l) {
            Ok(level) => level,
            Err(e) => {
                eprintln!("cache-service: RAFTIFY_LOG_LEVEL: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => slog::Level::Info,
    };
    let logger = raftify_core::stderr_logger(level);
    run_main("cache-service", logger, run)
}

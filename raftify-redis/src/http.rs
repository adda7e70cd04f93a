//! The HTTP port (`--http-port`, off by default; bound on `--bind`): the
//! status page and what operators and scrapers read, served with the
//! limits of [`raftify::http`] (header and body timeouts, a connection
//! cap).
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `ok` (no password needed) |
//! | `GET /`, `GET /dashboard` | the status page (no password needed: it holds no data): [`raftify::dashboard`], or sharded [`raftify_shard::page`] |
//! | `GET /status` | the node's [`raftify_core::Status`] as JSON; sharded, `{"id", "groups": {group: Status}}` of this node's replicas |
//! | `GET /metrics` | Prometheus (OpenMetrics) text: the core's series, and sharded the `raftify_shard_*` ones |
//! | `GET /cluster` | sharded: the [`raftify_shard::ClusterReport`] (what `raftify-cli shards --json` prints), with this node's rebalance status |
//! | `GET /rebalance` | sharded: `{"status"}` (starts with `done` when nothing is to move) |
//! | `POST /rebalance` | sharded: starts a rebalance, `202 {"status"}` (as `RAFT REBALANCE`) |
//! | `GET /kv/{key}` | the string value (`application/octet-stream`), `404` when missing; linearizable |
//! | `PUT /kv/{key}[?ttl=seconds]` | sets it to the body (`SET`, `EX` with `ttl`): `{"ok": true}` |
//! | `DELETE /kv/{key}` | `{"deleted": 0 or 1}` |
//! | `POST /incr/{key}` | `INCR`: `{"value": n}` |
//!
//! The key routes run wherever the key's slot lives (a sharded node
//! forwards them transparently, see [`crate::forward`]). Their errors:
//! `409` for a command's own error on the value (`WRONGTYPE`, not an
//! integer), `400` for other refusals, `503` when not applied (no leader,
//! the slot kept moving: safe to retry), `504` when the outcome is not
//! known (a write may or may not have been applied). A body is at most
//! `--proto-max-bulk-len` bytes (`413` beyond).
//!
//! With `--requirepass`, every route but the first two needs
//! `Authorization: Bearer <password>` (`401` otherwise; compared in
//! constant time). Errors are `{"error": "..."}` with a status code.

use crate::forward::{forward, Outcome};
use crate::server::Server;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use raftify_cache::Reply;
use raftify_grpc::{BearerTokens, RaftClient};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the routes read.
#[derive(Clone)]
pub struct Http {
    /// The Redis server (its node, or its sharded node).
    pub server: Arc<Server>,
    /// Sharded: a client of this node's Raft port, to ask the other
    /// replicas for their progress (`/cluster`).
    pub client: Option<Arc<RaftClient>>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn sharded_only() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "only a --sharded node serves this route; see /status",
    )
}

/// Builds the router.
pub fn router(http: Http) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/", get(page))
        .route("/dashboard", get(page))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .route("/rebalance", get(rebalance_status).post(rebalance))
        .route("/kv/{key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/incr/{key}", post(kv_incr))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(http.server.max_bulk))
        .layer(axum::middleware::from_fn_with_state(
            BearerTokens::new(http.server.requirepass.as_deref()),
            authenticate,
        ))
        .with_state(http)
}

/// Refuses requests without the password (see the module docs); `tokens`
/// is `--requirepass` as a bearer token (None: no password).
async fn authenticate(
    State(tokens): State<Option<BearerTokens>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let open = req.method() == axum::http::Method::GET
        && matches!(req.uri().path(), "/health" | "/" | "/dashboard");
    let allowed = match &tokens {
        None => true,
        Some(_) if open => true,
        Some(t) => t.accepts(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        ),
    };
    if allowed {
        return next.run(req).await;
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "missing or invalid password: send Authorization: Bearer <the --requirepass>",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

async fn page(State(http): State<Http>) -> Response {
    let (html, content_type) = match http.server.shard {
        Some(_) => (raftify_shard::page::HTML, raftify_shard::page::CONTENT_TYPE),
        None => (raftify::dashboard::HTML, raftify::dashboard::CONTENT_TYPE),
    };
    ([(header::CONTENT_TYPE, content_type)], html).into_response()
}

async fn status(State(http): State<Http>) -> Response {
    match (&http.server.node, &http.server.shard) {
        (Some(node), _) => match node.handle().status().await {
            Ok(s) => Json(s).into_response(),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        (None, Some(shard)) => {
            let mut groups = BTreeMap::new();
            for (g, r) in shard.host.replicas().await {
                if let Ok(s) = r.handle().status().await {
                    groups.insert(g, s);
                }
            }
            Json(json!({ "id": shard.host.id(), "groups": groups })).into_response()
        }
        (None, None) => error(StatusCode::SERVICE_UNAVAILABLE, "no node"),
    }
}

async fn metrics(State(http): State<Http>) -> Response {
    let text = match (&http.server.node, &http.server.shard) {
        (Some(node), _) => node.handle().metrics_registry().encode(),
        (None, Some(shard)) => shard.host.metrics_text().await,
        (None, None) => return error(StatusCode::SERVICE_UNAVAILABLE, "no node"),
    };
    (
        [(header::CONTENT_TYPE, raftify_core::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

async fn cluster(State(http): State<Http>) -> Response {
    let (Some(shard), Some(client)) = (&http.server.shard, &http.client) else {
        return sharded_only();
    };
    let placement = shard.host.placement().borrow().clone();
    let mut report = raftify_shard::gather(client, &placement).await;
    report.rebalance = Some(shard.host.rebalance_status());
    Json(report).into_response()
}

async fn rebalance_status(State(http): State<Http>) -> Response {
    match &http.server.shard {
        Some(shard) => Json(json!({ "status": shard.host.rebalance_status() })).into_response(),
        None => sharded_only(),
    }
}

async fn rebalance(State(http): State<Http>) -> Response {
    match &http.server.shard {
        Some(shard) => {
            shard.host.rebalance();
            (
                StatusCode::ACCEPTED,
                Json(json!({ "status": shard.host.rebalance_status() })),
            )
                .into_response()
        }
        None => sharded_only(),
    }
}

/// Runs a command on one key wherever it lives; `ok` turns its reply
/// into the response (`None`: an unexpected reply, a 502).
async fn on_key(
    http: &Http,
    argv: Vec<Bytes>,
    ok: impl FnOnce(Reply) -> Option<Response>,
) -> Response {
    match forward(&http.server, http.client.as_deref(), argv).await {
        Outcome::Reply(Reply::Error(e)) => {
            let own = e.starts_with("WRONGTYPE") || e.contains("not an integer");
            let code = if own {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            error(code, e)
        }
        Outcome::Reply(r) => {
            let shown = format!("{r:?}");
            ok(r).unwrap_or_else(|| {
                error(StatusCode::BAD_GATEWAY, format!("unexpected reply {shown}"))
            })
        }
        Outcome::NotApplied(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e, "applied": false })),
        )
            .into_response(),
        Outcome::Unknown(e) => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({ "error": e, "outcome": "unknown" })),
        )
            .into_response(),
    }
}

fn argv(parts: &[&[u8]]) -> Vec<Bytes> {
    parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
}

async fn kv_get(State(http): State<Http>, Path(key): Path<String>) -> Response {
    on_key(&http, argv(&[b"get", key.as_bytes()]), |r| match r {
        Reply::Bulk(v) => {
            Some(([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response())
        }
        Reply::Nil => Some(error(
            StatusCode::NOT_FOUND,
            format!("key {key:?} not found"),
        )),
        _ => None,
    })
    .await
}

/// `PUT /kv/{key}`'s query.
#[derive(serde::Deserialize)]
struct PutParams {
    /// Expire the key after this many seconds.
    ttl: Option<u64>,
}

async fn kv_put(
    State(http): State<Http>,
    Path(key): Path<String>,
    Query(params): Query<PutParams>,
    body: Bytes,
) -> Response {
    let mut cmd = vec![
        Bytes::from_static(b"set"),
        Bytes::from(key.into_bytes()),
        body,
    ];
    if let Some(ttl) = params.ttl {
        if ttl == 0 {
            return error(StatusCode::BAD_REQUEST, "ttl must be at least 1 second");
        }
        cmd.push(Bytes::from_static(b"ex"));
        cmd.push(Bytes::from(ttl.to_string()));
    }
    on_key(&http, cmd, |r| {
        matches!(r, Reply::Ok).then(|| Json(json!({ "ok": true })).into_response())
    })
    .await
}

async fn kv_delete(State(http): State<Http>, Path(key): Path<String>) -> Response {
    on_key(&http, argv(&[b"del", key.as_bytes()]), |r| match r {
        Reply::Int(n) => Some(Json(json!({ "deleted": n })).into_response()),
        _ => None,
    })
    .await
}

async fn kv_incr(State(http): State<Http>, Path(key): Path<String>) -> Response {
    on_key(&http, argv(&[b"incr", key.as_bytes()]), |r| match r {
        Reply::Int(n) => Some(Json(json!({ "value": n })).into_response()),
        _ => None,
    })
    .await
}

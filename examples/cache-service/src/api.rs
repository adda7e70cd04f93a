//! The HTTP API (a fixed contract: scripts outside this repository use it).
//!
//! | request | answer |
//! |---|---|
//! | `PUT /cache/{name}/{key}` (body = value, `?ttl=SECONDS`) | `200` |
//! | `GET /cache/{name}/{key}` (`?consistency=local\|linearizable`) | `200` raw value, or `404` |
//! | `DELETE /cache/{name}/{key}` | `200` `{"deleted": bool}` |
//! | `POST /cache/{name}/{key}/incr` (`?by=N`, default 1) | `200` `{"value": N}` |
//! | `GET /health` | `200` while the process runs (the node's health and the members' ids as JSON) |
//! | `GET /ready` | `200` when a leader is known and this node caught up, else `503` |
//! | `GET /metrics` | Prometheus text |
//! | `POST /lock/{name}` (`?lease_ms=N`, default 10000) | `200` `{"token": T}` (this process holds it, renewed until released), or `409` |
//! | `GET /lock/{name}` | `200` `{"held": bool, "token": T\|null}`: whether this process holds it now |
//! | `DELETE /lock/{name}` | `200` `{"released": bool}` |
//!
//! Errors are JSON `{"error": ...}`: `400` bad input (a TTL, a key over
//! [`MAX_KEY`] bytes, an increment of a non-integer), `404` unknown cache,
//! `413` a value over [`MAX_VALUE`] bytes, `503` when the cluster cannot
//! serve (no quorum) — with `"outcome": "unknown"` when a write was in
//! flight and may have been applied. A stale read (`consistency=local`)
//! carries `X-Cache-Stale: true`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use raftify_cache::embedded::{Cache, CacheError, Consistency, LockGuard};
use raftify_core::metrics::{self, Latency};
use raftify_core::prometheus_client::metrics::counter::Counter;
use raftify_core::prometheus_client::metrics::family::Family;
use raftify_core::prometheus_client::metrics::gauge::Gauge;
use raftify_core::prometheus_client::registry::Unit;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest key (bytes).
pub const MAX_KEY: usize = 1024;
/// Largest value (bytes).
pub const MAX_VALUE: usize = 1024 * 1024;
/// Longest TTL (seconds): ten years.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Clone)]
struct AppState {
    cache: Cache,
    m: Arc<Metrics>,
    /// The locks this process holds, by name.
    locks: Arc<tokio::sync::Mutex<HashMap<String, LockGuard>>>,
}

/// Shortest and longest lease of `POST /lock/{name}` (ms).
pub const LEASE_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// The service's own metrics, registered with the node's.
struct Metrics {
    write: Latency,
    read: Latency,
    responses: Family<Vec<(String, String)>, Counter>,
    entries: Family<Vec<(String, String)>, Gauge>,
}

impl Metrics {
    fn register(cache: &Cache) -> Arc<Self> {
        let m = Metrics {
            write: Latency::default(),
            read: Latency::default(),
            responses: Family::default(),
            entries: Family::default(),
        };
        let r = cache.raft().handle().metrics_registry();
        r.register_with_unit(
            "cache_write_duration",
            "Latency of PUT, DELETE and incr.",
            Unit::Seconds,
            m.write.0.clone(),
        );
        r.register_with_unit(
            "cache_read_duration",
            "Latency of GET.",
            Unit::Seconds,
            m.read.0.clone(),
        );
        r.register(
            "cache_responses",
            "HTTP answers, by status code.",
            m.responses.clone(),
        );
        r.register(
            "cache_entries",
            "Entries held by each named cache on this node (set when scraped).",
            m.entries.clone(),
        );
        Arc::new(m)
    }
}

/// The router of the API.
pub fn router(cache: Cache) -> Router {
    let m = Metrics::register(&cache);
    Router::new()
        .route(
            "/cache/{name}/{key}",
            put(put_value).get(get_value).delete(delete_value),
        )
        .route("/cache/{name}/{key}/incr", post(incr))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route(
            "/lock/{name}",
            post(take_lock).get(lock_state).delete(release_lock),
        )
        .layer(DefaultBodyLimit::max(MAX_VALUE))
        .layer(axum::middleware::map_response_with_state(
            m.clone(),
            count_status,
        ))
        .with_state(AppState {
            cache,
            m,
            locks: Arc::default(),
        })
}

/// An error answer.
struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        let status = match &e {
            CacheError::UnknownCache(_) => StatusCode::NOT_FOUND,
            CacheError::Unavailable(_)
            | CacheError::OutcomeUnknown(_)
            | CacheError::Shutdown
            | CacheError::Launch(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut err = ApiError::new(status, e.to_string());
        if matches!(e, CacheError::OutcomeUnknown(_)) {
            err.body["outcome"] = json!("unknown");
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("a key must be 1 to {MAX_KEY} bytes"),
        ));
    }
    Ok(())
}

/// Counts every answer by status code (a layer over all routes).
async fn count_status(State(m): State<Arc<Metrics>>, r: Response) -> Response {
    m.responses
        .get_or_create(&vec![("code".into(), r.status().as_u16().to_string())])
        .inc();
    r
}

fn answer(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
struct PutQuery {
    ttl: Option<String>,
}

async fn put_value(
    State(s): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    Query(q): Query<PutQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let r = async {
        check_key(&key)?;
        let body = body.map_err(|r| {
            let (status, message) = raftify::http::body_rejection(&r);
            ApiError::new(status, message)
        })?;
        let ttl = match q.ttl {
            None => None,
            Some(t) => match t.parse::<u64>() {
                Ok(secs) if (1..=MAX_TTL_SECS).contains(&secs) => Some(Duration::from_secs(secs)),
                _ => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("ttl must be 1 to {MAX_TTL_SECS} seconds, not {t:?}"),
                    ))
                }
            },
        };
        s.cache.put_bytes(&name, key.as_bytes(), body, ttl).await?;
        Ok(StatusCode::OK.into_response())
    }
    .await;
    s.m.write.since(start);
    answer(r)
}

#[derive(Deserialize)]
struct GetQuery {
    consistency: Option<String>,
}

async fn get_value(
    State(s): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    Query(q): Query<GetQuery>,
) -> Response {
    let start = Instant::now();
    let r = async {
        check_key(&key)?;
        let consistency = match q.consistency.as_deref() {
            None => Consistency::Linearizable,
            Some(c) => c
                .parse::<Consistency>()
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("consistency: {e}")))?,
        };
        let f = s
            .cache
            .get_bytes(&name, key.as_bytes(), consistency)
            .await?;
        let mut r = match f.value {
            Some(v) => ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response(),
            None => ApiError::new(StatusCode::NOT_FOUND, "no such key").into_response(),
        };
        if f.stale {
            r.headers_mut()
                .insert("x-cache-stale", HeaderValue::from_static("true"));
        }
        Ok(r)
    }
    .await;
    s.m.read.since(start);
    answer(r)
}

async fn delete_value(
    State(s): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Response {
    let start = Instant::now();
    let r = async {
        check_key(&key)?;
        let deleted = s.cache.delete(&name, key.as_bytes()).await?;
        Ok(Json(json!({ "deleted": deleted })).into_response())
    }
    .await;
    s.m.write.since(start);
    answer(r)
}

#[derive(Deserialize)]
struct IncrQuery {
    by: Option<String>,
}

async fn incr(
    State(s): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    Query(q): Query<IncrQuery>,
) -> Response {
    let start = Instant::now();
    let r = async {
        check_key(&key)?;
        let by = match q.by {
            None => 1,
            Some(b) => b.parse::<i64>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("by must be an integer, not {b:?}"),
                )
            })?,
        };
        let value = s.cache.incr(&name, key.as_bytes(), by).await?;
        Ok(Json(json!({ "value": value })).into_response())
    }
    .await;
    s.m.write.since(start);
    answer(r)
}

async fn health(State(s): State<AppState>) -> Response {
    let h = s.cache.health().borrow().clone();
    let members: Vec<u64> = match s.cache.raft().handle().status().await {
        Ok(st) => st.members.iter().map(|m| m.id).collect(),
        Err(_) => vec![],
    };
    Json(json!({
        "members": members,
        "status": "up",
        "id": s.cache.id(),
        "leader": h.leader,
        "quorum": h.quorum,
        "caught_up": h.caught_up,
        "ready": h.ready(),
        "applied": h.applied,
    }))
    .into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    let h = s.cache.health().borrow().clone();
    let status = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": h.ready(), "leader": h.leader, "caught_up": h.caught_up })),
    )
        .into_response()
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let counts = s
        .cache
        .raft()
        .stale_read(|sm| {
            sm.named()
                .iter()
                .map(|(name, c)| (String::from_utf8_lossy(name).into_owned(), c.len()))
                .collect::<Vec<_>>()
        })
        .await;
    for (name, n) in counts {
        s.m.entries
            .get_or_create(&vec![("cache".into(), name)])
            .set(n as i64);
    }
    let text = s.cache.raft().handle().metrics_registry().encode();
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

#[derive(Deserialize)]
struct LockQuery {
    lease_ms: Option<String>,
}

async fn take_lock(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LockQuery>,
) -> Response {
    let r = async {
        check_key(&name)?;
        let lease = match q.lease_ms {
            None => 10_000,
            Some(l) => l
                .parse::<u64>()
                .ok()
                .filter(|l| LEASE_MS.contains(l))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "lease_ms must be {} to {}, not {l:?}",
                            LEASE_MS.start(),
                            LEASE_MS.end()
                        ),
                    )
                })?,
        };
        let mut locks = s.locks.lock().await;
        if let Some(g) = locks.get(&name).filter(|g| g.is_held()) {
            return Ok(Json(json!({ "token": g.token() })).into_response());
        }
        match s
            .cache
            .try_lock(&name, Duration::from_millis(lease))
            .await?
        {
            Some(g) => {
                let token = g.token();
                locks.insert(name, g);
                Ok(Json(json!({ "token": token })).into_response())
            }
            None => Err(ApiError::new(
                StatusCode::CONFLICT,
                "held by another holder",
            )),
        }
    }
    .await;
    answer(r)
}

async fn lock_state(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let locks = s.locks.lock().await;
    let (held, token) = match locks.get(&name) {
        Some(g) => (g.is_held(), Some(g.token())),
        None => (false, None),
    };
    Json(json!({ "held": held, "token": token })).into_response()
}

async fn release_lock(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let guard = s.locks.lock().await.remove(&name);
    let r = async {
        let released = match guard {
            Some(g) => g.release().await?,
            None => false,
        };
        Ok(Json(json!({ "released": released })).into_response())
    }
    .await;
    answer(r)
}

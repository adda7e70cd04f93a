//! The HTTP API. Every node accepts every request: writes (and membership
//! changes) are forwarded to the leader, linearizable reads are confirmed
//! through the leader with ReadIndex and served from the local copy.

use crate::store::{ApplyOutput, HashStore, KvEntry};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use raftify_core::metrics::{self, Latency, MetricsRegistry, ServerMetrics};
use raftify_core::prometheus_client::metrics::gauge::Gauge;
use raftify_core::prometheus_client::registry::Unit;
use raftify_core::{Error, ErrorClass, Raft, Role};
use raftify_grpc::BearerTokens;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The node type memstore runs.
pub type Node = Raft<KvEntry, HashStore>;

/// Who may call the HTTP API.
#[derive(Debug, Clone, Default)]
pub struct HttpAuth {
    /// The client tokens (`--auth-token`, and `--accept-token` during a
    /// rotation): when set, every request but `GET /health` and the status
    /// page must carry `Authorization: Bearer <one of them>` (401
    /// otherwise). See [`HttpAuth::new`].
    pub tokens: Option<BearerTokens>,
    /// `GET /metrics` without the token (for scrapers on a trusted network).
    pub metrics_public: bool,
}

impl HttpAuth {
    /// Requests must present one of `tokens` (none: no check).
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>, metrics_public: bool) -> Self {
        HttpAuth {
            tokens: BearerTokens::new(tokens),
            metrics_public,
        }
    }

    /// Whether `req` may pass: open paths, or one of the tokens (compared
    /// in constant time).
    fn allows(&self, req: &axum::extract::Request) -> bool {
        let Some(tokens) = &self.tokens else {
            return true;
        };
        let path = req.uri().path();
        let is_get = req.method() == axum::http::Method::GET;
        // The status page holds no data (what it polls needs the token).
        let open = matches!(path, "/health" | "/" | "/dashboard");
        if is_get && (open || (path == "/metrics" && self.metrics_public)) {
            return true;
        }
        tokens.accepts(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
    }
}

/// Refuses requests without the client token (see [`HttpAuth`]).
async fn authenticate(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.auth.allows(&req) {
        return next.run(req).await;
    }
    state.server.auth_failed();
    let mut resp = ApiError(
        StatusCode::UNAUTHORIZED,
        "missing or invalid token: send Authorization: Bearer <the --auth-token>".into(),
        Some(ErrorClass::Rejected),
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The raft node.
    pub raft: Node,
    /// Largest accepted value (body) size.
    pub max_value_size: usize,
    /// Request latency histograms.
    pub latency: Arc<Latencies>,
    /// Who may call.
    pub auth: HttpAuth,
    /// The HTTP server's connection and authentication metrics.
    pub server: ServerMetrics,
}

/// An HTTP error: a status and `{"error": "...", "class": "..."}` (the
/// class, when the error came from raftify: what the client may do).
pub struct ApiError(StatusCode, String, Option<ErrorClass>);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError(status, msg.into(), None)
    }

    fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.2 {
            Some(class) => json!({ "error": self.1, "class": class.as_str() }),
            None => json!({ "error": self.1 }),
        };
        (self.0, Json(body)).into_response()
    }
}

/// The HTTP status of an error, by its class: 503 when nothing was applied
/// and a retry may work, 504 when the outcome is unknown (a write must be
/// read back, not blindly retried), 409 for refused membership changes,
/// 500 when the state machine failed (a snapshot it could not take; a
/// write it refused is a 409, see `write`), 400/401/404 for rejected
/// requests, 503 when this node cannot serve.
fn status_of(e: &Error) -> StatusCode {
    match (e.class(), e) {
        (_, Error::ConfChangeRejected(_)) => StatusCode::CONFLICT,
        (_, Error::StateMachine(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        (_, Error::NotAMember(_)) => StatusCode::NOT_FOUND,
        (_, Error::Unauthenticated(_)) => StatusCode::UNAUTHORIZED,
        (ErrorClass::Redirect | ErrorClass::RetryLater | ErrorClass::Fatal, _) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        (ErrorClass::OutcomeUnknown, _) => StatusCode::GATEWAY_TIMEOUT,
        (ErrorClass::Rejected, Error::Raft(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        (ErrorClass::Rejected, _) => StatusCode::BAD_REQUEST,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(status_of(&e), e.to_string(), Some(e.class()))
    }
}

/// The answer to a body that could not be read: 408 when it did not arrive
/// in time ([`BodyTimedOut`], from the server loop), 413 when too large.
fn body_error(r: BytesRejection) -> ApiError {
    let (status, message) = crate::serve::body_rejection(&r);
    ApiError::new(status, message)
}

fn check_key(key: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(key) =
        key.map_err(|r| ApiError::bad_request(format!("bad key: {}", r.body_text())))?;
    if key.is_empty() {
        return Err(ApiError::bad_request("empty key"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "key longer than {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(key)
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_value_size;
    Router::new()
        .route("/kv/{key}", get(get_key).put(put_key).delete(delete_key))
        .route("/cas/{key}", post(cas_key))
        .route("/incr/{key}", post(incr_key))
        .route("/status", get(status))
        .route("/cluster", get(cluster))
        .route("/cluster/learners", post(add_learner))
        .route("/cluster/voters", post(add_voter))
        .route("/cluster/members/{id}", delete(remove_member))
        .route("/cluster/transfer-leader/{id}", post(transfer_leader))
        .route("/cluster/leave", post(leave))
        .route("/snapshot", post(snapshot))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// The header that makes a write idempotent: applied at most once per key
/// while raftify remembers the key, a repeat answering the first answer.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request's `Idempotency-Key`, if any (400 when it is not text; its
/// length is checked by raftify).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("the Idempotency-Key header is not text"))
        })
        .transpose()
}

/// Proposes a write (with the request's idempotency key, if it has one).
async fn write(
    state: &AppState,
    headers: &HeaderMap,
    entry: KvEntry,
) -> Result<ApplyOutput, ApiError> {
    let key = idempotency_key(headers)?;
    let started = Instant::now();
    let out = match key {
        Some(key) => state.raft.propose_with_key(key, &entry).await,
        None => state.raft.propose(&entry).await,
    };
    state.latency.write.observe(started.elapsed());
    out.map_err(|e| match e {
        // The state machine refused the command, on every node alike:
        // nothing changed (e.g. an increment of a non-integer).
        Error::StateMachine(_) => ApiError(StatusCode::CONFLICT, e.to_string(), Some(e.class())),
        e => e.into(),
    })
}

async fn put_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = check_key(key)?;
    let value = body.map_err(body_error)?;
    let out = write(
        &state,
        &headers,
        KvEntry::Put {
            key,
            value: value.to_vec(),
        },
    )
    .await?;
    Ok(Json(json!({ "index": out.index })))
}

async fn delete_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = check_key(key)?;
    let out = write(&state, &headers, KvEntry::Delete { key }).await?;
    Ok(Json(json!({ "index": out.index, "deleted": out.ok })))
}

#[derive(Deserialize)]
struct CasBody {
    expected: Option<String>,
    value: String,
}

async fn cas_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<CasBody>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = check_key(key)?;
    let JsonBody(body) = body?;
    let out = write(
        &state,
        &headers,
        KvEntry::Cas {
            key,
            expected: body.expected.map(String::into_bytes),
            value: body.value.into_bytes(),
        },
    )
    .await?;
    Ok(Json(json!({ "index": out.index, "succeeded": out.ok })))
}

/// `POST /incr/{key}`: adds the body (a decimal integer; empty: 1) to the
/// integer at the key. 409 when the value is not an integer or the sum
/// would overflow (the state machine refused: nothing changed).
async fn incr_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = check_key(key)?;
    let body = body.map_err(body_error)?;
    let bad = || ApiError::bad_request("the body must be an integer delta (or empty for 1)");
    let text = std::str::from_utf8(&body).map_err(|_| bad())?.trim();
    let delta = if text.is_empty() {
        1
    } else {
        text.parse::<i64>().map_err(|_| bad())?
    };
    let out = write(&state, &headers, KvEntry::Incr { key, delta }).await?;
    Ok(Json(json!({ "index": out.index, "value": out.value })))
}

#[derive(Deserialize)]
struct ReadParams {
    consistency: Option<String>,
}

async fn get_key(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    params: Query<ReadParams>,
) -> Result<Response, ApiError> {
    let key = check_key(key)?;
    let started = Instant::now();
    match params.consistency.as_deref() {
        None | Some("linearizable") => {
            let r = state.raft.handle().read_index().await;
            state.latency.read.observe(started.elapsed());
            r?;
        }
        Some("stale") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "consistency must be linearizable or stale, not {other:?}"
            )))
        }
    }
    let value = state
        .raft
        .stale_read(|s| s.get(&key).map(<[u8]>::to_vec))
        .await;
    match value {
        Some(v) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("key {key:?} not found"),
        )),
    }
}

async fn status(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let s = state.raft.handle().status().await?;
    Ok(Json(json!({
        "id": s.id,
        "role": s.role.as_str(),
        "term": s.term,
        "leader_id": s.leader_id,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "last_index": s.last_index,
        "first_index": s.first_index,
        "snapshot_index": s.snapshot_index,
        "cluster_id": s.cluster_id,
        "joint": s.joint,
        "progress": s.progress,
        "members": members_json(&s.members),
        "events": s.events,
        "at_ms": s.at_ms,
    })))
}

async fn cluster(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let s = state.raft.handle().status().await?;
    Ok(membership_json(s.leader_id, &s.members))
}

/// `{"leader_id", "members": [{"id", "raft_addr", "role"}]}`.
fn membership_json(leader_id: u64, members: &[raftify_core::Member]) -> Json<serde_json::Value> {
    Json(json!({ "leader_id": leader_id, "members": members_json(members) }))
}

/// `[{"id", "raft_addr", "role"}]`.
fn members_json(members: &[raftify_core::Member]) -> Vec<serde_json::Value> {
    members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "raft_addr": m.addr,
                "role": m.role.as_str(),
            })
        })
        .collect()
}

/// The membership a change produced, as the node that made it (the leader)
/// saw it once the change was applied: a follower's own view may lag.
fn changed(state: &AppState, members: Vec<raftify_core::Member>) -> Json<serde_json::Value> {
    membership_json(state.raft.handle().leader_id().unwrap_or(0), &members)
}

/// A JSON body, whatever its Content-Type says (`curl -d` sends a form
/// type): 400 when it does not parse.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("the body is not the JSON expected: {e}")))
    }
}

#[derive(Deserialize)]
struct MemberBody {
    id: u64,
    raft_addr: String,
}

async fn add_learner(
    State(state): State<AppState>,
    body: Result<JsonBody<MemberBody>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let JsonBody(b) = body?;
    let members = state.raft.handle().add_learner(b.id, &b.raft_addr).await?;
    Ok(changed(&state, members))
}

async fn add_voter(
    State(state): State<AppState>,
    body: Result<JsonBody<MemberBody>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let JsonBody(b) = body?;
    let members = state.raft.handle().add_voter(b.id, &b.raft_addr).await?;
    Ok(changed(&state, members))
}

fn parse_id(id: Result<Path<String>, PathRejection>) -> Result<u64, ApiError> {
    let Path(id) = id.map_err(|r| ApiError::bad_request(r.body_text()))?;
    match id.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::bad_request(format!("bad node id {id:?}"))),
    }
}

async fn remove_member(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(id)?;
    let members = state.raft.handle().remove_node(id).await?;
    Ok(changed(&state, members))
}

async fn transfer_leader(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(id)?;
    state.raft.handle().transfer_leader(id).await?;
    Ok(Json(json!({ "leader_id": id })))
}

async fn leave(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.raft.handle().leave().await?;
    Ok(Json(json!({ "left": state.raft.handle().id() })))
}

async fn snapshot(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let index = state.raft.handle().snapshot().await?;
    Ok(Json(json!({ "snapshot_index": index })))
}

async fn health(State(state): State<AppState>) -> Response {
    let s = state.raft.handle().state();
    if s.leader_id != 0 && s.role != Role::Stopped {
        (
            StatusCode::OK,
            Json(json!({ "status": "ok", "leader_id": s.leader_id })),
        )
            .into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no leader known").into_response()
    }
}

/// The status page ([`raftify::dashboard`]).
async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, raftify::dashboard::CONTENT_TYPE)],
        raftify::dashboard::HTML,
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (keys, bytes) = state
        .raft
        .stale_read(|st| (st.len(), st.data_bytes()))
        .await;
    let gauge = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
    gauge(&state.latency.keys, keys as u64);
    gauge(&state.latency.data_bytes, bytes);
    let text = state.raft.handle().metrics_registry().encode();
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// The HTTP layer's metrics, registered into the node's registry with the
/// core's (see [`Latencies::register`]).
#[derive(Default)]
pub struct Latencies {
    /// Latency of writes (PUT, DELETE, CAS).
    pub write: Latency,
    /// Latency of linearizable reads' ReadIndex confirmations.
    pub read: Latency,
    /// Keys held (set when scraped).
    pub keys: Gauge,
    /// Bytes of keys and values held (set when scraped).
    pub data_bytes: Gauge,
}

impl Latencies {
    /// New metrics, registered into `registry` as `memstore_*`.
    pub fn register(registry: &MetricsRegistry) -> Self {
        let l = Latencies::default();
        registry.register_with_unit(
            "memstore_write_duration",
            "Latency of writes (PUT, DELETE, CAS).",
            Unit::Seconds,
            l.write.0.clone(),
        );
        registry.register_with_unit(
            "memstore_linearizable_read_duration",
            "Latency of ReadIndex confirmations.",
            Unit::Seconds,
            l.read.0.clone(),
        );
        registry.register("memstore_keys", "Keys held.", l.keys.clone());
        registry.register(
            "memstore_data_bytes",
            "Bytes of keys and values held.",
            l.data_bytes.clone(),
        );
        l
    }
}

//! The HTTP server loop every HTTP front-end uses (memstore's API, the
//! cache service's): axum's router over hyper's HTTP/1 connections,
//! plain or over TLS, with the limits `axum::serve` does not set.
//! Enabled by the `http` feature. Every
//! port survives silent connections, slow clients and floods:
//!
//! * with TLS, the handshake must finish within [`Limits::header_timeout`]
//!   of connecting, or the connection is closed; it runs in the
//!   connection's own task (never in the accept loop), and a failed
//!   handshake closes just that connection;
//! * a connection must send a request's headers within
//!   [`Limits::header_timeout`] (10 s) of connecting (of the end of the
//!   handshake, with TLS) or of the previous answer: an idle keep-alive
//!   connection is closed after that long too;
//! * a request's body must arrive in full within [`Limits::body_timeout`]
//!   (30 s) of its headers, or the request is answered `408 Request
//!   Timeout` and the connection closed;
//! * at most [`Limits::max_connections`] are served at once (a connection
//!   in its TLS handshake counts); beyond that a new connection is closed at
//!   once (not queued);
//! * when the process is out of file descriptors, accepting pauses briefly
//!   instead of spinning.
//!
//! Not bounded here: how long the client takes to read an answer (answers
//! are small, except `GET /metrics`, and a connection slot is the cost).

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::Router;
use hyper::body::{Frame, SizeHint};
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use raftify_core::metrics::ServerMetrics;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
pub use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The limits of the HTTP server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a connection has to finish its TLS handshake (HTTPS), and then
    /// to send a request's headers: from connecting (or the handshake's
    /// end), and from the previous answer on a kept-alive connection (so an
    /// idle keep-alive connection is closed after this long). Default 10 s.
    pub header_timeout: Duration,
    /// Time a request's body has to arrive in full, from the end of its
    /// headers; a slower request is answered `408 Request Timeout` and its
    /// connection closed. Default 30 s.
    pub body_timeout: Duration,
    /// Connections served at once (including those in their TLS
    /// handshake). Default 4096.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown. Default 3 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// The error a request body yields when it did not arrive within
/// [`Limits::body_timeout`]; the API answers it with 408.
#[derive(Debug)]
pub struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// The status and message to answer a request body that could not be read
/// with: 408 when it did not arrive in time ([`BodyTimedOut`]), 413 when
/// it is over the route's body limit, else the rejection's own.
pub fn body_rejection(
    r: &axum::extract::rejection::BytesRejection,
) -> (axum::http::StatusCode, String) {
    let status = r.status();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(r);
    while let Some(e) = cause {
        if let Some(timed_out) = e.downcast_ref::<BodyTimedOut>() {
            return (
                axum::http::StatusCode::REQUEST_TIMEOUT,
                timed_out.to_string(),
            );
        }
        cause = e.source();
    }
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        (status, "value too large".to_string())
    } else {
        (status, r.body_text())
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (up to [`Limits::shutdown_grace`]). With
/// `tls` (see [`raftify_grpc::TlsConfig::rustls_server_config`]) every
/// connection is HTTPS; without, plain HTTP.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: ServerMetrics,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let app = app.layer(axum::middleware::map_request_with_state(
        limits.body_timeout,
        time_body,
    ));
    let tls = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors (or a transient error): let some
                // connections close before accepting again.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closed at once, so the client fails fast.
            metrics.refused();
            drop(stream);
            continue;
        };
        let counted = metrics.connection();
        // Small answers must not wait for delayed ACKs (Nagle).
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = (slot, counted);
            match tls {
                None => serve_connection(builder, stream, service, watcher).await,
                Some(acceptor) => {
                    // A slow, stalled or failed handshake: the connection
                    // is dropped (closed), nothing else is affected.
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                    {
                        serve_connection(builder, stream, service, watcher).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await;
}

/// Serves HTTP/1 requests on one connection (plain or TLS) until it
/// closes, or until a graceful shutdown lets its last request finish.
async fn serve_connection<I>(
    builder: Builder,
    io: I,
    service: TowerToHyperService<Router>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let _ = watcher.watch(conn).await;
}

/// Puts the body-read deadline on every request that has a body.
async fn time_body(State(timeout): State<Duration>, req: Request) -> Request {
    if req.body().is_end_stream() {
        return req;
    }
    req.map(|body| {
        Body::new(TimedBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        })
    })
}

/// A request body that fails with [`BodyTimedOut`] if it has not ended by
/// its deadline.
struct TimedBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

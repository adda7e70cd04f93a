//! The HTTP server loop: axum's router over hyper's HTTP/1 connections,
//! with the limits `axum::serve` does not set. Every port survives silent
//! connections and floods:
//!
//! * a connection must send a request's headers within
//!   [`Limits::header_timeout`] (10 s) of connecting or of the previous
//!   answer, or it is closed;
//! * at most [`Limits::max_connections`] are served at once; beyond that a
//!   new connection is closed at once (not queued);
//! * when the process is out of file descriptors, accepting pauses briefly
//!   instead of spinning.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The limits of the HTTP server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a connection has to send a request's headers. Default 10 s.
    pub header_timeout: Duration,
    /// Connections served at once. Default 4096.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown. Default 3 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (up to [`Limits::shutdown_grace`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
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
            drop(stream);
            continue;
        };
        // Small answers must not wait for delayed ACKs (Nagle).
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await;
}

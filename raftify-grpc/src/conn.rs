//! Accepted connections, guarded before tonic sees them:
//!
//! * at most [`GrpcConfig::max_connections`] at once — a connection over
//!   the cap is closed at accept, so it fails fast instead of queueing;
//! * a connection must send the 24 bytes of the HTTP/2 preface (or of a TLS
//!   handshake) within [`GrpcConfig::preface_timeout`], or it is closed: a
//!   silent connection no longer holds a descriptor forever;
//! * once the server is shutting down, a connection that has not sent its
//!   preface yet is closed at once: it has no request in flight, and the
//!   graceful shutdown would otherwise wait for it for the whole grace;
//! * TCP_NODELAY on every one (tonic ignores its own setting for listeners
//!   it did not bind, and Nagle meeting delayed ACKs stalls small replies).
//!
//! [`GrpcConfig::max_connections`]: crate::GrpcConfig::max_connections
//! [`GrpcConfig::preface_timeout`]: crate::GrpcConfig::preface_timeout

use raftify_core::metrics::{ConnectionSlot, ServerMetrics};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a client sends before anything else: the HTTP/2 preface.
const PREFACE_LEN: usize = 24;

/// An accepted connection that holds a slot until it closes.
pub(crate) struct Guarded {
    inner: TcpStream,
    /// Armed until the first [`PREFACE_LEN`] bytes arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Completes when the server starts shutting down; polled until the
    /// preface arrived.
    stopping: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    received: usize,
    _slot: OwnedSemaphorePermit,
    /// Counted in `raftify_connections{server="grpc"}` while open.
    _counted: ConnectionSlot,
}

/// The listener's connections, guarded (see the module docs).
pub(crate) fn guarded(
    listener: TcpListener,
    max_connections: usize,
    preface_timeout: Duration,
    stopping: watch::Receiver<bool>,
    metrics: ServerMetrics,
) -> impl Stream<Item = io::Result<Guarded>> {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    TcpListenerStream::new(listener).filter_map(move |conn| {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        // Over the cap: dropped here, which closes it.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused();
            return None;
        };
        let _ = conn.set_nodelay(true);
        Some(Ok(Guarded {
            inner: conn,
            deadline: Some(Box::pin(tokio::time::sleep(preface_timeout))),
            stopping: Some(Box::pin(stopped(stopping.clone()))),
            received: 0,
            _slot: slot,
            _counted: metrics.connection(),
        }))
    })
}

/// Completes once `stopping` turns true (or its sender is gone).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.received += buf.filled().len() - before;
                if self.received >= PREFACE_LEN {
                    self.deadline = None;
                    self.stopping = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(Poll::Ready(())) = self.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface in time",
                    )));
                }
                if let Some(Poll::Ready(())) = self.stopping.as_mut().map(|s| s.as_mut().poll(cx)) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the server is shutting down",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

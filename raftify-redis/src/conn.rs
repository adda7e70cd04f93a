//! Connections: the accept loop with its `--maxclients` cap, and each
//! connection's read → answer → write cycle. Pipelined commands are
//! answered in order: a run of data commands read together goes through
//! the log as one entry (applied atomically, each command answered), or,
//! all reads, after one ReadIndex; replies pile up to at most [`MAX_OUTPUT`] before the
//! next read, so a client that sends without reading is disconnected
//! rather than held in memory. A protocol error is answered, then the
//! connection closed, as Redis does; no input reaches a panic.

use crate::protocol::{encode, next_command, Next};
use crate::server::{Server, Session};
use bytes::{Bytes, BytesMut};
use raftify_cache::Reply;
use slog::{debug, warn, Logger};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Most reply bytes held for a client before they are written (Redis's
/// client-output-buffer-limit for normal clients is unlimited; a bound
/// keeps a client that never reads from growing the server).
pub const MAX_OUTPUT: usize = 64 * 1024 * 1024;
/// Most pipelined commands answered together (one log entry).
const MAX_BATCH: usize = 512;
/// Longest a reply write may wait for the client to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts clients until `stop` resolves; over TLS with `tls`.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    server: Arc<Server>,
    logger: Logger,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment.
                warn!(logger, "accept failed"; "error" => %e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let logger = logger.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let open = server.clients.fetch_add(1, Ordering::AcqRel) + 1;
            let ended = if open > server.max_clients {
                refuse(stream, tls).await;
                Ok(())
            } else {
                match tls {
                    None => serve(stream, &server).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => serve(stream, &server).await,
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err(std::io::Error::other("no TLS handshake within 10 s")),
                        }
                    }
                }
            };
            if let Err(e) = ended {
                debug!(logger, "client connection ended"; "peer" => %peer, "error" => %e);
            }
            server.clients.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Tells a client over the limit so (after its TLS handshake, on the TLS
/// port), and closes.
async fn refuse(stream: tokio::net::TcpStream, tls: Option<TlsAcceptor>) {
    const MSG: &[u8] = b"-ERR max number of clients reached\r\n";
    match tls {
        None => {
            let mut s = stream;
            let _ = s.write_all(MSG).await;
        }
        Some(acceptor) => {
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                let _ = s.write_all(MSG).await;
                let _ = s.shutdown().await;
            }
        }
    }
}

/// Serves one client until it closes, errs or quits.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    server: &Server,
) -> std::io::Result<()> {
    let mut session = Session {
        id: server.next_client_id.fetch_add(1, Ordering::Relaxed) + 1,
        authed: server.requirepass.is_none(),
        ..Session::default()
    };
    let id = session.id;
    let ended = serve_session(stream, server, &mut session).await;
    server.hub.remove(id);
    ended
}

async fn serve_session<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    server: &Server,
    session: &mut Session,
) -> std::io::Result<()> {
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    let mut batch: Vec<Vec<Bytes>> = Vec::new();
    loop {
        // Answer every whole request buffered, in order: runs of data
        // commands together (one log entry, or one ReadIndex), anything
        // else on its own.
        let mut failed: Option<String> = None;
        loop {
            match next_command(&mut input, server.max_bulk) {
                Next::Incomplete => break,
                Next::Command(argv) if argv.is_empty() => continue,
                Next::Command(argv) if server.batchable(session, &argv) => {
                    batch.push(argv);
                    if batch.len() >= MAX_BATCH {
                        flush(server, session, &mut batch, &mut output).await;
                    }
                }
                Next::Command(argv) => {
                    flush(server, session, &mut batch, &mut output).await;
                    match server.pubsub(session, &argv).await {
                        Some(replies) => {
                            for r in replies {
                                encode(&r, session.resp3, &mut output);
                            }
                        }
                        None => {
                            let reply = server.handle(session, argv).await;
                            encode(&reply, session.resp3, &mut output);
                        }
                    }
                    if session.closing {
                        write_out(&mut stream, &mut output).await?;
                        return Ok(());
                    }
                }
                Next::Error(msg) => {
                    failed = Some(msg);
                    break;
                }
            }
            if output.len() > MAX_OUTPUT {
                return Err(std::io::Error::other("client output buffer limit reached"));
            }
        }
        flush(server, session, &mut batch, &mut output).await;
        if let Some(msg) = failed {
            encode(&Reply::err(msg), session.resp3, &mut output);
            write_out(&mut stream, &mut output).await?;
            return Ok(());
        }
        write_out(&mut stream, &mut output).await?;
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
        // Read more, and meanwhile pass on published messages.
        let user = session.user.as_deref();
        let read = match session.inbox.rx.as_mut() {
            None => stream.read_buf(&mut input).await?,
            Some(rx) => tokio::select! {
                r = stream.read_buf(&mut input) => r?,
                m = rx.recv() => {
                    let Some(m) = m else {
                        return Err(std::io::Error::other("a subscriber fell too far behind"));
                    };
                    if !server.may_receive(user, &m).await {
                        return Err(revoked());
                    }
                    encode(&m.reply(), session.resp3, &mut output);
                    while let Ok(m) = rx.try_recv() {
                        if !server.may_receive(user, &m).await {
                            return Err(revoked());
                        }
                        encode(&m.reply(), session.resp3, &mut output);
                        if output.len() > MAX_OUTPUT / 4 {
                            break;
                        }
                    }
                    continue;
                }
            },
        };
        if read == 0 {
            return Ok(());
        }
    }
}

/// A subscriber whose user may no longer receive what it subscribed to
/// (see [`Server::may_receive`]) is disconnected.
fn revoked() -> std::io::Error {
    std::io::Error::other("the user's channel permissions changed")
}

/// Answers the batched data commands, in order.
async fn flush(
    server: &Server,
    session: &mut Session,
    batch: &mut Vec<Vec<Bytes>>,
    output: &mut BytesMut,
) {
    match batch.len() {
        0 => {}
        1 => {
            if let Some(argv) = batch.pop() {
                let reply = server.handle(session, argv).await;
                encode(&reply, session.resp3, output);
            }
        }
        _ => {
            for reply in server.run_batch(session, std::mem::take(batch)).await {
                encode(&reply, session.resp3, output);
            }
        }
    }
}

async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    output: &mut BytesMut,
) -> std::io::Result<()> {
    if output.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(output)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::other(
                "the client does not read its replies",
            ))
        }
    }
    output.clear();
    Ok(())
}

//! [`GrpcTransport`]: raftify-core's [`Transport`] over gRPC.

use crate::config::{backoff, GrpcConfig};
use crate::convert::encode_msg;
use crate::liveness::{Liveness, LivenessHandle};
use crate::net::{request, ChannelPool, Credential, PeerClient as Client, PeerNode};
use crate::pb;
use raftify_core::codec::crc32;
use raftify_core::raft::eraftpb::{Message, MessageType};
use raftify_core::{ClusterApi, Feedback, PeerLiveness, Result, Transport};
use slog::{debug, o, Logger};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;

/// A queued batch for one peer.
struct Batch {
    msgs: Vec<Message>,
    feedback: Feedback,
}

struct Peer {
    addr: String,
    tx: mpsc::Sender<Batch>,
}

struct Inner {
    self_addr: String,
    /// This node's cluster identity, sent with every batch (0: unknown).
    cluster_uid: Arc<AtomicU64>,
    pool: Arc<ChannelPool>,
    peers: Mutex<HashMap<u64, Peer>>,
    logger: Logger,
    /// Shared by the transports of every group of a process.
    liveness: Arc<Liveness>,
}

/// raft messages and cluster requests over gRPC.
///
/// * Every peer gets one background sender task with a bounded queue
///   ([`GrpcConfig::peer_queue_capacity`] batches). [`Transport::send`]
///   never blocks: when the queue is full the batch is dropped and the peer
///   reported unreachable (raft retransmits).
/// * The task drains its queue and sends everything queued as one batch
///   (split at [`GrpcConfig::max_batch_bytes`]), in order, as a frame of
///   its long-lived `MessageStream` call on an HTTP/2 connection that is
///   opened lazily (a unary `SendMessages` call to peers without streams).
/// * A snapshot message is streamed in
///   [`GrpcConfig::snapshot_chunk_size`] chunks by `InstallSnapshot`; the
///   outcome is reported with [`Feedback::snapshot`].
/// * A batch counts as delivered once it is on a connected stream. When
///   the stream to a peer has ended (the peer restarted, the connection
///   broke), the next batch opens a new one at once and goes out on it
///   instead of being dropped: the first messages after a peer's restart
///   (a `MsgTimeoutNow`, a vote) are not lost.
/// * After a failed delivery (no connection could be made, everything in
///   it reported unreachable) the peer is backed off (exponential,
///   jittered): the next attempt waits until then, with whatever queued
///   meanwhile.
/// * [`Transport::node`] gives a node's cluster API over a pool of
///   channels by address.
///
/// Cheap to clone; clones share peers and connections.
#[derive(Clone)]
pub struct GrpcTransport {
    inner: Arc<Inner>,
}

impl GrpcTransport {
    /// A transport for the node whose raft address is `self_addr` (sent
    /// with every batch so that peers can answer a node they do not know
    /// yet).
    pub fn new(self_addr: impl Into<String>, config: GrpcConfig) -> Result<Self> {
        Self::with_logger(self_addr, config, raftify_core::discard_logger())
    }

    /// Same, logging delivery problems (at debug level) to `logger`.
    pub fn with_logger(
        self_addr: impl Into<String>,
        config: GrpcConfig,
        logger: Logger,
    ) -> Result<Self> {
        let pool = Arc::new(ChannelPool::new(config, Credential::Peer)?);
        let self_addr = self_addr.into();
        Ok(GrpcTransport {
            inner: Arc::new(Inner {
                liveness: Liveness::new(pool.clone(), self_addr.clone()),
                self_addr,
                // Shared with the pool: node-to-node calls carry it too.
                cluster_uid: pool.cluster_uid().clone(),
                pool,
                peers: Mutex::new(HashMap::new()),
                logger: logger.new(o!("component" => "grpc-transport")),
            }),
        })
    }

    /// The transport of Raft group `group` in a process that hosts
    /// replicas of many: every message and request it sends names the
    /// group (the receiving server hands it to its replica of that group,
    /// see [`Groups`](crate::Groups)), over the connections this transport
    /// opened to the same addresses (one HTTP/2 connection per peer
    /// process, whatever the number of groups). It has its own peers,
    /// sender tasks and cluster identity. Group 0 is what a transport made
    /// by [`GrpcTransport::new`] sends.
    pub fn for_group(&self, group: u64) -> Self {
        let pool = self.inner.pool.for_group(group);
        GrpcTransport {
            inner: Arc::new(Inner {
                self_addr: self.inner.self_addr.clone(),
                cluster_uid: pool.cluster_uid().clone(),
                pool: Arc::new(pool),
                peers: Mutex::new(HashMap::new()),
                logger: self.inner.logger.new(o!("group" => group)),
                liveness: self.inner.liveness.clone(),
            }),
        }
    }

    /// This node's raft address.
    pub fn self_addr(&self) -> &str {
        &self.inner.self_addr
    }

    /// The configuration.
    pub fn config(&self) -> &GrpcConfig {
        self.inner.pool.config()
    }

    /// The address known for peer `id`.
    pub fn peer_addr(&self, id: u64) -> Option<String> {
        self.peers().get(&id).map(|p| p.addr.clone())
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Peer>> {
        self.inner.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn_peer(&self, id: u64, addr: &str) -> Peer {
        let (tx, rx) = mpsc::channel(self.config().peer_queue_capacity);
        let worker = PeerWorker {
            to: id,
            addr: addr.to_string(),
            self_addr: self.inner.self_addr.clone(),
            cluster_uid: self.inner.cluster_uid.clone(),
            pool: self.inner.pool.clone(),
            logger: self.inner.logger.new(o!("peer" => id)),
            stream: Mutex::new(None),
            unary_only: AtomicBool::new(false),
        };
        tokio::spawn(worker.run(rx));
        Peer {
            addr: addr.to_string(),
            tx,
        }
    }
}

/// Reports `msgs` as lost: the peer unreachable, their snapshots failed.
fn report_lost(to: u64, msgs: &[Message], feedback: &Feedback) {
    feedback.unreachable(to);
    for m in msgs {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            feedback.snapshot(to, false);
        }
    }
}

impl Transport for GrpcTransport {
    fn set_cluster_uid(&self, uid: u64) {
        self.inner.cluster_uid.store(uid, Ordering::Relaxed);
    }

    fn set_peer(&self, id: u64, addr: &str) {
        let mut peers = self.peers();
        if peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        // A new address replaces the worker; the old one ends once its
        // queue is drained (its sender is dropped here).
        let peer = self.spawn_peer(id, addr);
        peers.insert(id, peer);
    }

    fn remove_peer(&self, id: u64) {
        let mut peers = self.peers();
        if let Some(old) = peers.remove(&id) {
            if !peers.values().any(|p| p.addr == old.addr) {
                self.inner.pool.forget(&old.addr);
            }
        }
    }

    fn send(&self, to: u64, msgs: Vec<Message>, feedback: &Feedback) {
        if msgs.is_empty() {
            return;
        }
        let tx = match self.peers().get(&to) {
            Some(p) => p.tx.clone(),
            None => {
                report_lost(to, &msgs, feedback);
                return;
            }
        };
        let batch = Batch {
            msgs,
            feedback: feedback.clone(),
        };
        if let Err(e) = tx.try_send(batch) {
            let batch = match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
            };
            debug!(self.inner.logger, "peer queue full, dropping messages"; "peer" => to, "count" => batch.msgs.len());
            report_lost(to, &batch.msgs, feedback);
        }
    }

    fn liveness(&self) -> Option<Arc<dyn PeerLiveness>> {
        Some(Arc::new(LivenessHandle(self.inner.liveness.clone())))
    }

    fn node(&self, addr: &str) -> Result<Arc<dyn ClusterApi>> {
        // The peer service: the receiver runs each request and does not
        // forward it again (the sending node did the routing).
        Ok(Arc::new(PeerNode {
            client: self.inner.pool.peer(addr)?,
            timeout: self.config().request_timeout,
        }))
    }
}

/// Opens a `MessageStream` call whose messages are whatever is sent into the
/// returned sender; the call runs until the sender is dropped or it fails.
/// The call's request stream is polled only once the connection is made and
/// the HTTP/2 stream is open, so the first message taken from it marks
/// the call as connected.
fn open_stream(client: &Client) -> (OpenStream, oneshot::Receiver<()>) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let (connected_tx, connected) = oneshot::channel();
    let mut connected_tx = Some(connected_tx);
    let batches = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |batch| {
        if let Some(c) = connected_tx.take() {
            let _ = c.send(());
        }
        batch
    });
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .message_stream(tonic::Request::new(batches))
            .await
            .map(|_| ())
    });
    (OpenStream { tx, call }, connected)
}

/// The background sender of one peer.
struct PeerWorker {
    to: u64,
    addr: String,
    self_addr: String,
    cluster_uid: Arc<AtomicU64>,
    pool: Arc<ChannelPool>,
    logger: Logger,
    /// The long-lived `MessageStream` call to the peer, when open.
    stream: Mutex<Option<OpenStream>>,
    /// The peer does not know `MessageStream` (an older version): unary
    /// `SendMessages` calls from then on.
    unary_only: AtomicBool,
}

/// One open client-streaming `MessageStream` call: batches pushed into `tx`
/// go out as frames of one HTTP/2 stream (no headers, no response, no task
/// per batch on either side, unlike one unary call per batch).
struct OpenStream {
    tx: mpsc::Sender<pb::MessageBatch>,
    call: tokio::task::JoinHandle<std::result::Result<(), tonic::Status>>,
}

/// Batches buffered in front of an open stream (HTTP/2 flow control
/// applies behind it).
const STREAM_BUFFER: usize = 64;

/// Upper bound of messages drained into one round.
const MAX_DRAIN: usize = 4096;

impl PeerWorker {
    async fn run(self, mut rx: mpsc::Receiver<Batch>) {
        let mut failures: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        while let Some(first) = rx.recv().await {
            // Backing off after a failed delivery: the batch waits (later
            // ones queue behind it; beyond the queue's capacity `send`
            // reports them lost), so what is sent the moment the peer is
            // back, a `MsgTimeoutNow` for one, is not dropped.
            if let Some(t) = retry_at.take() {
                tokio::time::sleep_until(t).await;
            }
            let feedback = first.feedback;
            let mut msgs = first.msgs;
            while msgs.len() < MAX_DRAIN {
                match rx.try_recv() {
                    Ok(b) => msgs.extend(b.msgs),
                    Err(_) => break,
                }
            }
            if self.deliver(msgs, &feedback).await {
                failures = 0;
            } else {
                retry_at = Some(raftify_core::retry::deadline_after(backoff(
                    self.pool.config(),
                    failures,
                )));
                failures = failures.saturating_add(1);
            }
        }
    }

    /// Sends `msgs` in order; false (everything not delivered reported) on
    /// the first failure.
    async fn deliver(&self, msgs: Vec<Message>, feedback: &Feedback) -> bool {
        let mut client = match self.pool.peer(&self.addr) {
            Ok(c) => c,
            Err(e) => {
                debug!(self.logger, "no client"; "addr" => &self.addr, "error" => %e);
                report_lost(self.to, &msgs, feedback);
                return false;
            }
        };
        let max_batch = self.pool.config().max_batch_bytes;
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut from_id = 0;
        let mut iter = msgs.into_iter();
        while let Some(m) = iter.next() {
            from_id = m.from;
            if m.get_msg_type() == MessageType::MsgSnapshot {
                if !pending.is_empty()
                    && !self
                        .flush(&mut client, from_id, std::mem::take(&mut pending))
                        .await
                {
                    let rest: Vec<Message> = std::iter::once(m).chain(iter).collect();
                    report_lost(self.to, &rest, feedback);
                    return false;
                }
                pending_bytes = 0;
                let ok = self.stream_snapshot(&mut client, m).await;
                feedback.snapshot(self.to, ok);
                if !ok {
                    let rest: Vec<Message> = iter.collect();
                    report_lost(self.to, &rest, feedback);
                    return false;
                }
                continue;
            }
            let bytes = match encode_msg(&m) {
                Ok(b) => b,
                Err(e) => {
                    debug!(self.logger, "cannot encode a raft message"; "error" => %e);
                    continue;
                }
            };
            if !pending.is_empty() && pending_bytes + bytes.len() > max_batch {
                if !self
                    .flush(&mut client, from_id, std::mem::take(&mut pending))
                    .await
                {
                    let rest: Vec<Message> = iter.collect();
                    report_lost(self.to, &rest, feedback);
                    return false;
                }
                pending_bytes = 0;
            }
            pending_bytes += bytes.len();
            pending.push(bytes);
        }
        if !pending.is_empty() && !self.flush(&mut client, from_id, pending).await {
            feedback.unreachable(self.to);
            return false;
        }
        true
    }

    /// Sends one batch on the peer's open message stream, or as a unary
    /// call to a peer that has no streams. When the stream's call has ended
    /// since the last batch (the peer restarted, the connection broke), a
    /// new call is opened at once and carries this batch: a restart loses
    /// no message. False when no connection could be made (the batch is
    /// reported lost, raft sends again) or the peer stopped reading for
    /// `message_timeout`.
    async fn flush(&self, client: &mut Client, from_id: u64, messages: Vec<Vec<u8>>) -> bool {
        let batch = pb::MessageBatch {
            from_id,
            from_addr: self.self_addr.clone(),
            messages,
            cluster_uid: self.cluster_uid.load(Ordering::Relaxed),
        };
        if self.unary_only.load(Ordering::Relaxed) {
            return self.flush_unary(client, batch).await;
        }
        let ended = self.stream_slot().take_if(|s| s.call.is_finished());
        let open = self.stream_slot().as_ref().map(|s| s.tx.clone());
        let batch = match (ended, open) {
            (Some(ended), _) => {
                if self.stream_ended(ended.call).await {
                    return self.flush_unary(client, batch).await;
                }
                batch
            }
            (None, Some(tx)) => {
                let timeout = self.pool.config().message_timeout;
                match tokio::time::timeout(timeout, tx.send(batch)).await {
                    Ok(Ok(())) => return true,
                    // The call ended between the check and the send.
                    Ok(Err(mpsc::error::SendError(batch))) => {
                        let call = self.stream_slot().take().map(|s| s.call);
                        if let Some(call) = call {
                            if self.stream_ended(call).await {
                                return self.flush_unary(client, batch).await;
                            }
                        }
                        batch
                    }
                    Err(_) => {
                        debug!(self.logger, "raft message stream stalled"; "addr" => &self.addr);
                        if let Some(s) = self.stream_slot().take() {
                            s.call.abort();
                        }
                        return false;
                    }
                }
            }
            (None, None) => batch,
        };
        self.send_on_new_stream(client, batch).await
    }

    /// Opens a new message stream carrying `batch` first; true once the
    /// connection is made (the call then stays open for the next batches),
    /// false when it fails or takes longer than `connect_timeout`.
    async fn send_on_new_stream(&self, client: &mut Client, batch: pb::MessageBatch) -> bool {
        let (mut stream, mut connected) = open_stream(client);
        if stream.tx.try_send(batch).is_err() {
            // A new call's buffer has room; it only fails if the call is gone.
            stream.call.abort();
            return false;
        }
        let limit = self.pool.config().connect_timeout;
        tokio::select! {
            Ok(()) = &mut connected => {
                *self.stream_slot() = Some(stream);
                true
            }
            ended = &mut stream.call => {
                let status = ended.ok().and_then(|r| r.err());
                if status.as_ref().is_some_and(|st| st.code() == tonic::Code::Unimplemented) {
                    self.no_streams();
                } else {
                    debug!(self.logger, "cannot open a raft message stream"; "addr" => &self.addr, "status" => ?status);
                }
                false
            }
            _ = tokio::time::sleep(limit) => {
                // Still connecting: the call stays; later batches queue on it.
                debug!(self.logger, "raft message stream still connecting"; "addr" => &self.addr);
                *self.stream_slot() = Some(stream);
                false
            }
        }
    }

    fn stream_slot(&self) -> std::sync::MutexGuard<'_, Option<OpenStream>> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn no_streams(&self) {
        debug!(self.logger, "peer has no message streams; unary calls from now on"; "addr" => &self.addr);
        self.unary_only.store(true, Ordering::Relaxed);
    }

    /// A message stream call ended: true when the peer has no streams (an
    /// older version; unary calls from now on).
    async fn stream_ended(
        &self,
        call: tokio::task::JoinHandle<std::result::Result<(), tonic::Status>>,
    ) -> bool {
        let status = call.await.ok().and_then(|r| r.err());
        match status {
            Some(st) if st.code() == tonic::Code::Unimplemented => {
                self.no_streams();
                true
            }
            other => {
                debug!(self.logger, "raft message stream ended; opening a new one"; "addr" => &self.addr, "status" => ?other);
                false
            }
        }
    }

    async fn flush_unary(&self, client: &mut Client, batch: pb::MessageBatch) -> bool {
        let timeout = self.pool.config().message_timeout;
        let fut = client.send_messages(request(batch, timeout));
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(_)) => true,
            Ok(Err(status)) => {
                debug!(self.logger, "sending raft messages failed"; "addr" => &self.addr, "status" => %status);
                false
            }
            Err(_) => {
                debug!(self.logger, "sending raft messages timed out"; "addr" => &self.addr);
                false
            }
        }
    }

    async fn stream_snapshot(&self, client: &mut Client, mut m: Message) -> bool {
        let config = self.pool.config();
        let data = m.mut_snapshot().take_data();
        let header = match encode_msg(&m) {
            Ok(h) => h,
            Err(e) => {
                debug!(self.logger, "cannot encode a snapshot message"; "error" => %e);
                return false;
            }
        };
        // Large data: checksummed off the async workers.
        let summed = data.clone();
        let Ok(checksum) = tokio::task::spawn_blocking(move || crc32(&summed)).await else {
            return false;
        };
        let chunk = config.snapshot_chunk_size.max(1);
        let total = data.len();
        let count = total.div_ceil(chunk).max(1);
        let from_id = m.from;
        let from_addr = self.self_addr.clone();
        let cluster_uid = self.cluster_uid.load(Ordering::Relaxed);
        let chunks = (0..count).map(move |i| {
            let piece = data.slice((i * chunk).min(total)..((i + 1) * chunk).min(total));
            if i == 0 {
                pb::SnapshotChunk {
                    from_id,
                    from_addr: from_addr.clone(),
                    header: header.clone(),
                    total_size: total as u64,
                    data: piece,
                    cluster_uid,
                    checksum: Some(checksum),
                }
            } else {
                pb::SnapshotChunk {
                    data: piece,
                    ..Default::default()
                }
            }
        });
        let timeout = config.snapshot_timeout;
        let req = request(tokio_stream::iter(chunks), timeout);
        match tokio::time::timeout(timeout, client.install_snapshot(req)).await {
            Ok(Ok(_)) => {
                debug!(self.logger, "snapshot sent"; "bytes" => total, "chunks" => count);
                true
            }
            Ok(Err(status)) => {
                debug!(self.logger, "sending a snapshot failed"; "status" => %status);
                false
            }
            Err(_) => {
                debug!(self.logger, "sending a snapshot timed out");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn send_never_blocks_and_the_queue_stays_bounded() {
        let config = GrpcConfig {
            peer_queue_capacity: 4,
            connect_timeout: std::time::Duration::from_millis(200),
            ..GrpcConfig::default()
        };
        let t = GrpcTransport::new("127.0.0.1:1", config).unwrap();
        // Nothing listens on port 1: every delivery fails.
        t.set_peer(2, "127.0.0.1:1");
        assert_eq!(t.peer_addr(2).as_deref(), Some("127.0.0.1:1"));
        let feedback = Feedback::discard();
        let start = std::time::Instant::now();
        for _ in 0..10_000 {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.to = 2;
            t.send(2, vec![m], &feedback);
        }
        let mut snap = Message::default();
        snap.set_msg_type(MessageType::MsgSnapshot);
        t.send(2, vec![snap], &feedback);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        // Unknown peer: reported, not queued.
        t.send(3, vec![Message::default()], &feedback);
        t.remove_peer(2);
        assert!(t.peer_addr(2).is_none());
        let err = t.node("127.0.0.1:1").unwrap().members().await.unwrap_err();
        assert!(
            matches!(err, raftify_core::Error::Unreachable(_)),
            "nothing listens: the request was never delivered: {err:?}"
        );
    }
}

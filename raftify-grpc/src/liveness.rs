//! [`Liveness`]: the transport's view of whether peer processes are up, for
//! replicas that hibernate ([`raftify_core::PeerLiveness`]).
//!
//! While some replica watches a peer, a background task probes that peer's
//! process every [`GrpcConfig::probe_interval`] with an empty
//! `SendMessages` batch on the pooled connection (the server answers it
//! without touching any group). Any answer, even a refusal, shows the
//! process serves; a connection that cannot be made, a transport error or
//! no answer within the interval does not. A peer unanswered for
//! [`GrpcConfig::peer_down_after`] is reported down to its watchers. One
//! task and one probe per peer process serve every group of the process
//! (the transports of [`GrpcTransport::for_group`](crate::GrpcTransport::for_group)
//! share it), and nothing is probed while no replica sleeps.

use crate::config::GrpcConfig;
use crate::net::ChannelPool;
use crate::pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::watch;
use tokio::time::Instant;

struct Watched {
    addr: String,
    up: watch::Sender<bool>,
    /// When the peer last answered (or was last heard of by a watcher).
    last_ok: Instant,
}

/// Peer-process liveness over a channel pool.
pub(crate) struct Liveness {
    pool: Arc<ChannelPool>,
    self_addr: String,
    nodes: Mutex<HashMap<u64, Watched>>,
    /// Whether the probing task runs.
    running: Mutex<bool>,
}

impl Liveness {
    pub(crate) fn new(pool: Arc<ChannelPool>, self_addr: String) -> Arc<Self> {
        Arc::new(Liveness {
            pool,
            self_addr,
            nodes: Mutex::new(HashMap::new()),
            running: Mutex::new(false),
        })
    }

    fn config(&self) -> &GrpcConfig {
        self.pool.config()
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the probing task unless it runs. It holds only a weak
    /// reference, and ends when nobody watches or the transport is gone.
    fn ensure_running(self: &Arc<Self>) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if *running {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        *running = true;
        tokio::spawn(probe_loop(
            Arc::downgrade(self),
            self.config().probe_interval,
        ));
    }

    /// The peers to probe now (forgetting those nobody watches), or None
    /// when there are none left (the task ends).
    fn targets(&self) -> Option<Vec<(u64, String)>> {
        let mut nodes = self.nodes();
        nodes.retain(|_, w| w.up.receiver_count() > 0);
        if nodes.is_empty() {
            *self.running.lock().unwrap_or_else(|p| p.into_inner()) = false;
            return None;
        }
        Some(nodes.iter().map(|(id, w)| (*id, w.addr.clone())).collect())
    }

    /// Records a probe's outcome: reports the peer down once it has not
    /// answered for `peer_down_after`.
    fn record(&self, id: u64, answered: bool) {
        let down_after = self.config().peer_down_after;
        let mut nodes = self.nodes();
        let Some(w) = nodes.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        if answered {
            w.last_ok = now;
        }
        let up = now.duration_since(w.last_ok) < down_after;
        w.up.send_if_modified(|v| std::mem::replace(v, up) != up);
    }

    /// One probe of the process at `addr`: whether it answered.
    async fn probe(&self, addr: &str) -> bool {
        let Ok(mut client) = self.pool.peer(addr) else {
            return false;
        };
        let batch = pb::MessageBatch {
            from_addr: self.self_addr.clone(),
            ..Default::default()
        };
        let call = client.send_messages(tonic::Request::new(batch));
        match tokio::time::timeout(self.config().probe_interval, call).await {
            Err(_) => false,
            Ok(Ok(_)) => true,
            // The process answered, if only to refuse.
            Ok(Err(status)) => !matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ),
        }
    }
}

async fn probe_loop(me: Weak<Liveness>, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(me) = me.upgrade() else {
            return;
        };
        let Some(targets) = me.targets() else {
            return;
        };
        let mut probes = tokio::task::JoinSet::new();
        for (id, addr) in targets {
            let me = me.clone();
            probes.spawn(async move {
                let answered = me.probe(&addr).await;
                me.record(id, answered);
            });
        }
        while probes.join_next().await.is_some() {}
    }
}

/// The handle a transport gives its replicas.
pub(crate) struct LivenessHandle(pub(crate) Arc<Liveness>);

impl raftify_core::PeerLiveness for LivenessHandle {
    fn watch(&self, id: u64, addr: &str, just_heard: bool) -> watch::Receiver<bool> {
        let me = &self.0;
        let rx = {
            let mut nodes = me.nodes();
            // A node first watched counts as up until it has had
            // `peer_down_after` to answer.
            let w = nodes.entry(id).or_insert_with(|| Watched {
                addr: addr.to_string(),
                up: watch::channel(true).0,
                last_ok: Instant::now(),
            });
            if w.addr != addr {
                w.addr = addr.to_string();
                w.last_ok = Instant::now();
                w.up.send_if_modified(|v| !std::mem::replace(v, true));
            }
            if just_heard {
                w.last_ok = Instant::now();
                w.up.send_if_modified(|v| !std::mem::replace(v, true));
            }
            w.up.subscribe()
        };
        me.ensure_running();
        rx
    }
}

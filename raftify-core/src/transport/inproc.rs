//! An in-process network for tests and benchmarks: nodes in one process
//! exchange messages through channels, with faults injected on demand
//! (isolate a node, cut a link one or both ways, drop a share of messages,
//! delay them) — like raft-rs's harness `Network`, but driving real async
//! nodes. A node may serve several Raft groups (as a sharded process does
//! over one port): each replica registers under its group
//! ([`InProcNetwork::register_group`]), messages go to the same group on
//! the peer ([`InProcTransport::for_group`]), and faults strike the
//! node's every group at once.

use super::{ClusterApi, Feedback, Inbound, Membership, Outcome, PeerLiveness, Transport};
use crate::error::{Error, Result};
use crate::membership::{JoinTicket, MembershipChange};
use crate::sessions::SessionWrite;
use async_trait::async_trait;
use raft::eraftpb::{Message, MessageType};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Default)]
struct NetState {
    /// (group, addr) -> (id, node)
    nodes: HashMap<(u64, String), (u64, Arc<dyn Inbound>)>,
    isolated: HashSet<u64>,
    /// Nodes whose answers to cluster requests are lost after they ran.
    lossy_replies: HashSet<u64>,
    /// Directed cuts: (from, to).
    cut: HashSet<(u64, u64)>,
    /// Probability in [0, 1] that a message is dropped.
    drop_rate: f64,
    delay: Option<Duration>,
    rng: u64,
    delivered: u64,
    dropped: u64,
    /// Liveness watches: (watcher, watched node, whether it is reachable).
    watches: Vec<(u64, u64, watch::Sender<bool>)>,
}

impl NetState {
    fn blocked(&self, from: u64, to: u64) -> bool {
        self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.cut.contains(&(from, to))
    }

    /// Whether `id` is on the network and reachable from `from` both ways
    /// (what a liveness probe from `from` would find).
    fn reachable(&self, from: u64, id: u64) -> bool {
        self.nodes.values().any(|(n, _)| *n == id)
            && !self.blocked(from, id)
            && !self.blocked(id, from)
    }

    /// Tells every liveness watch what the network now allows.
    fn notify(&mut self) {
        self.watches.retain(|(_, _, tx)| tx.receiver_count() > 0);
        let ups: Vec<bool> = self
            .watches
            .iter()
            .map(|(from, id, _)| self.reachable(*from, *id))
            .collect();
        for ((_, _, tx), up) in self.watches.iter().zip(ups) {
            tx.send_if_modified(|v| std::mem::replace(v, up) != up);
        }
    }

    /// xorshift64*: a seeded, reproducible coin for message drops.
    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut x = self.rng.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        r < p
    }
}

/// A network of in-process nodes with fault injection.
///
/// ```
/// use raftify_core::InProcNetwork;
/// let net = InProcNetwork::new(42);
/// net.isolate(3);
/// net.cut(1, 2);
/// net.heal();
/// assert_eq!(net.addr_of(1), "inproc-1:7000");
/// ```
#[derive(Clone, Default)]
pub struct InProcNetwork {
    state: Arc<Mutex<NetState>>,
}

impl InProcNetwork {
    /// A healthy network whose random drops follow `seed`.
    pub fn new(seed: u64) -> Self {
        let net = Self::default();
        net.lock().rng = seed;
        net
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address node `id` uses on this network.
    pub fn addr_of(&self, id: u64) -> String {
        format!("inproc-{id}:7000")
    }

    /// The transport for node `id` (of group 0).
    pub fn transport(&self, id: u64) -> Arc<InProcTransport> {
        self.transport_in(0, id)
    }

    /// The transport for node `id`'s replica of `group`.
    pub fn transport_in(&self, group: u64, id: u64) -> Arc<InProcTransport> {
        Arc::new(InProcTransport {
            id,
            group,
            net: self.clone(),
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Makes node `id` reachable at [`InProcNetwork::addr_of`]; `node` is
    /// what it serves ([`RaftHandle::inbound`](crate::RaftHandle::inbound)).
    pub fn register(&self, id: u64, node: Arc<dyn Inbound>) {
        self.register_group(0, id, node);
    }

    /// Makes node `id`'s replica of `group` reachable (at the node's
    /// address, for that group's messages and requests).
    pub fn register_group(&self, group: u64, id: u64, node: Arc<dyn Inbound>) {
        let addr = self.addr_of(id);
        let mut s = self.lock();
        s.nodes.insert((group, addr), (id, node));
        s.notify();
    }

    /// Takes node `id` off the network, every group of it (as if its
    /// process died).
    pub fn unregister(&self, id: u64) {
        let mut s = self.lock();
        s.nodes.retain(|_, (n, _)| *n != id);
        s.notify();
    }

    /// Takes node `id`'s replica of `group` off the network (the node's
    /// other groups stay).
    pub fn unregister_group(&self, group: u64, id: u64) {
        let addr = self.addr_of(id);
        let mut s = self.lock();
        s.nodes.remove(&(group, addr));
        s.notify();
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64) {
        let mut s = self.lock();
        s.isolated.insert(id);
        s.notify();
    }

    /// Cuts the link between `a` and `b`, both ways.
    pub fn cut(&self, a: u64, b: u64) {
        let mut s = self.lock();
        s.cut.insert((a, b));
        s.cut.insert((b, a));
        s.notify();
    }

    /// Cuts messages from `from` to `to` only.
    pub fn cut_one_way(&self, from: u64, to: u64) {
        let mut s = self.lock();
        s.cut.insert((from, to));
        s.notify();
    }

    /// Splits the nodes into groups that can only talk within themselves.
    pub fn partition(&self, groups: &[&[u64]]) {
        let mut s = self.lock();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a.iter() {
                        for &y in b.iter() {
                            s.cut.insert((x, y));
                        }
                    }
                }
            }
        }
        s.notify();
    }

    /// Cluster requests served by `id` still run there, but their answers
    /// are lost: the caller gets [`Error::Transport`], as when a connection
    /// breaks after the request was delivered.
    pub fn lose_replies_from(&self, id: u64) {
        self.lock().lossy_replies.insert(id);
    }

    /// Drops each message with probability `rate` (0 to 1).
    pub fn set_drop_rate(&self, rate: f64) {
        self.lock().drop_rate = rate.clamp(0.0, 1.0);
    }

    /// Delays every message by `delay` (None: deliver at once).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.lock().delay = delay;
    }

    /// Removes every fault: isolation, cuts, drops and delays.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.isolated.clear();
        s.cut.clear();
        s.lossy_replies.clear();
        s.drop_rate = 0.0;
        s.delay = None;
        s.notify();
    }

    /// (delivered, dropped) message counts so far.
    pub fn stats(&self) -> (u64, u64) {
        let s = self.lock();
        (s.delivered, s.dropped)
    }
}

/// One node's end of an [`InProcNetwork`], for one of its groups.
pub struct InProcTransport {
    id: u64,
    group: u64,
    net: InProcNetwork,
    peers: Mutex<HashMap<u64, String>>,
}

impl InProcTransport {
    /// The same node's transport for its replica of `group` (peers are
    /// set per group, as a group's replicas learn them).
    pub fn for_group(&self, group: u64) -> Arc<InProcTransport> {
        self.net.transport_in(group, self.id)
    }

    fn peer_addr(&self, id: u64) -> Option<String> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}

/// Liveness on an [`InProcNetwork`]: a peer is up while it is registered
/// and reachable both ways, and watchers learn of every change at once
/// (the network knows; no probes).
struct InProcLiveness {
    id: u64,
    net: InProcNetwork,
}

impl PeerLiveness for InProcLiveness {
    fn watch(&self, id: u64, _addr: &str, _just_heard: bool) -> watch::Receiver<bool> {
        let mut s = self.net.lock();
        let (tx, rx) = watch::channel(s.reachable(self.id, id));
        s.watches.push((self.id, id, tx));
        rx
    }
}

impl Transport for InProcTransport {
    fn liveness(&self) -> Option<Arc<dyn PeerLiveness>> {
        Some(Arc::new(InProcLiveness {
            id: self.id,
            net: self.net.clone(),
        }))
    }

    fn set_peer(&self, id: u64, addr: &str) {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, addr.to_string());
    }

    fn remove_peer(&self, id: u64) {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn send(&self, to: u64, mut msgs: Vec<Message>, feedback: &Feedback) {
        let has_snapshot = msgs
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        // An undeliverable snapshot must be reported as failed, or raft
        // keeps the peer waiting for it forever.
        let lost = |feedback: &Feedback| {
            feedback.unreachable(to);
            if has_snapshot {
                feedback.snapshot(to, false);
            }
        };
        let Some(addr) = self.peer_addr(to) else {
            lost(feedback);
            return;
        };
        let mut s = self.net.lock();
        let Some((target_id, target)) = s.nodes.get(&(self.group, addr)).cloned() else {
            drop(s);
            lost(feedback);
            return;
        };
        if s.blocked(self.id, target_id) {
            s.dropped += msgs.len() as u64;
            drop(s);
            if has_snapshot {
                feedback.snapshot(to, false);
            }
            return;
        }
        let rate = s.drop_rate;
        let before = msgs.len();
        msgs.retain(|_| !s.chance(rate));
        s.dropped += (before - msgs.len()) as u64;
        s.delivered += msgs.len() as u64;
        let delay = s.delay;
        drop(s);
        let from_addr = self.net.addr_of(self.id);
        let snapshot_kept = msgs
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        if msgs.is_empty() {
            if has_snapshot {
                feedback.snapshot(to, false);
            }
            return;
        }
        match delay {
            None => {
                let ok = target.step_from(Some(from_addr.clone()), msgs).is_ok();
                if !ok {
                    feedback.unreachable(to);
                }
                if has_snapshot {
                    feedback.snapshot(to, ok && snapshot_kept);
                }
            }
            Some(d) => {
                let feedback = feedback.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let ok = target.step_from(Some(from_addr.clone()), msgs).is_ok();
                    if has_snapshot {
                        feedback.snapshot(to, ok && snapshot_kept);
                    }
                });
            }
        }
    }

    fn node(&self, addr: &str) -> Result<Arc<dyn ClusterApi>> {
        Ok(Arc::new(InProcNode {
            net: self.net.clone(),
            from: self.id,
            key: (self.group, addr.to_string()),
        }))
    }
}

/// A node's cluster API (of one group) as another node of the network
/// reaches it.
struct InProcNode {
    net: InProcNetwork,
    from: u64,
    /// (group, addr).
    key: (u64, String),
}

impl InProcNode {
    /// The node, if the network lets the request through both ways.
    fn target(&self) -> Result<(Arc<dyn Inbound>, bool)> {
        let s = self.net.lock();
        match s.nodes.get(&self.key) {
            Some((id, node)) if !s.blocked(self.from, *id) && !s.blocked(*id, self.from) => {
                Ok((node.clone(), s.lossy_replies.contains(id)))
            }
            _ => Err(Error::Unreachable(format!(
                "{} (group {}) is unreachable",
                self.key.1, self.key.0
            ))),
        }
    }

    /// Runs a request on the target and passes its answer back, or loses it.
    async fn run<T, F>(&self, request: impl FnOnce(Arc<dyn Inbound>) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let (node, lossy) = self.target()?;
        let answer = request(node).await;
        if lossy {
            return Err(Error::Transport(format!(
                "the connection to {} broke after the request was delivered",
                self.key.1
            )));
        }
        answer
    }
}

#[async_trait]
impl ClusterApi for InProcNode {
    async fn propose(&self, entry: Vec<u8>) -> Result<Vec<u8>> {
        self.run(|n| async move { n.propose(entry).await }).await
    }
    async fn propose_batch(&self, entries: Vec<Vec<u8>>) -> Result<Vec<Outcome>> {
        self.run(|n| async move { n.propose_batch(entries).await })
            .await
    }
    async fn propose_session_batch(
        &self,
        writes: Vec<(SessionWrite, Vec<u8>)>,
    ) -> Result<Vec<Outcome>> {
        self.run(|n| async move { n.propose_session_batch(writes).await })
            .await
    }
    async fn read_index(&self) -> Result<u64> {
        self.run(|n| async move { n.read_index().await }).await
    }
    async fn request_id(&self, addr: String) -> Result<JoinTicket> {
        self.run(|n| async move { n.request_id(addr).await }).await
    }
    async fn change_membership(&self, changes: Vec<MembershipChange>) -> Result<Membership> {
        self.run(|n| async move { n.change_membership(changes).await })
            .await
    }
    async fn transfer_leader(&self, to: u64) -> Result<()> {
        self.run(|n| async move { n.transfer_leader(to).await })
            .await
    }
    async fn members(&self) -> Result<Membership> {
        self.run(|n| async move { n.members().await }).await
    }
    async fn open_session(&self) -> Result<u64> {
        self.run(|n| async move { n.open_session().await }).await
    }
    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>> {
        self.run(|n| async move { n.propose_in_session(w, entry).await })
            .await
    }
    async fn propose_with_key(&self, key: String, entry: Vec<u8>) -> Result<Vec<u8>> {
        self.run(|n| async move { n.propose_with_key(key, entry).await })
            .await
    }
}

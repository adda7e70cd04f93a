//! Metrics: one Prometheus registry per node ([`MetricsRegistry`], on
//! [`prometheus-client`](prometheus_client), the Prometheus project's own
//! Rust client), which the core fills and every front-end adds to and
//! serves.
//!
//! The core's metrics ([`Metrics`]) are updated where things happen (the
//! raft loop, the storage writer, the forwarder) with atomic operations;
//! the loop refreshes its gauges after every Ready and the per-peer ones
//! on every tick. Every series carries the label `node="<id>"`.
//!
//! A front-end registers its own metrics and serves the text:
//!
//! ```
//! # use raftify_core::metrics::MetricsRegistry;
//! use prometheus_client::metrics::counter::Counter;
//! let registry = MetricsRegistry::for_node(1);
//! let requests: Counter = Counter::default();
//! registry.register("myapp_requests", "Requests served.", requests.clone());
//! requests.inc();
//! let text = registry.encode();
//! assert!(text.contains("myapp_requests_total{node=\"1\"} 1"));
//! ```

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};
use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The content type of [`MetricsRegistry::encode`]'s text (OpenMetrics
/// 1.0, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A Prometheus registry shared by a node's parts and its front-end.
/// Cloning shares it.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    inner: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    /// A registry whose every series is labelled `node="<id>"`.
    pub fn for_node(id: u64) -> Self {
        let labels = [(Cow::Borrowed("node"), Cow::Owned(id.to_string()))];
        MetricsRegistry {
            inner: Arc::new(Mutex::new(Registry::with_labels(labels.into_iter()))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `metric` as `name` (a counter gets `_total` appended).
    /// Names follow Prometheus conventions: a prefix of the component
    /// (`raftify_`, `memstore_`), base units, `_total` for counters.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        // The encoder ends every help text with a period.
        self.lock()
            .register(name, help.trim_end_matches('.'), metric);
    }

    /// Registers `metric` as `name` with a unit (appended to the name:
    /// `_seconds`, `_bytes`).
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.lock()
            .register_with_unit(name, help.trim_end_matches('.'), unit, metric);
    }

    /// The registry's metrics in the OpenMetrics text format
    /// ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.lock());
        out
    }
}

/// Latency histogram buckets: 100 µs to ~26 s, ×2 each.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 19)
}

/// A latency histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Label of per-peer series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's node id.
    pub peer: String,
}

impl PeerLabel {
    /// The label of peer `id`.
    pub fn of(id: u64) -> Self {
        PeerLabel {
            peer: id.to_string(),
        }
    }
}

/// Label of failed proposals: why they failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `not_leader`, `dropped`, `leadership_lost`, `timeout`, `replaced`
    /// or `rejected` (the state machine or a conf change refused it).
    pub reason: &'static str,
}

/// Label of a front-end's or transport's server (`http`, `grpc`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// The server.
    pub server: &'static str,
}

/// A server's connection and authentication metrics
/// ([`crate::RaftHandle::server_metrics`]).
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    connections: Gauge,
    refused: Counter,
    auth_failures: Counter,
}

impl ServerMetrics {
    /// A connection was accepted: counted until the slot is dropped.
    pub fn connection(&self) -> ConnectionSlot {
        self.connections.inc();
        ConnectionSlot(self.connections.clone())
    }

    /// A connection was refused (over the server's connection cap).
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// A request was refused for a missing or wrong credential.
    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }
}

/// An open connection in `raftify_connections`; dropping it closes it.
#[derive(Debug)]
pub struct ConnectionSlot(Gauge);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metrics a node keeps (see the module docs). The counters of
/// [`crate::MetricsSnapshot`] are read from here.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) proposals: Counter,
    /// Total of `proposals_failed_by` (for the snapshot).
    pub(crate) proposals_failed: Counter,
    pub(crate) proposals_failed_by: Family<ReasonLabel, Counter>,
    pub(crate) applied_entries: Counter,
    pub(crate) leader_changes: Counter,
    pub(crate) readys: Counter,
    pub(crate) storage_writes: Counter,
    pub(crate) storage_syncs: Counter,
    pub(crate) storage_write_bytes: Counter,
    pub(crate) storage_write_seconds: Latency,
    pub(crate) persisted_entries: Counter,
    /// Totals of the per-peer families (for the snapshot).
    pub(crate) messages_sent: Counter,
    pub(crate) messages_received: Counter,
    pub(crate) messages_sent_to: Family<PeerLabel, Counter>,
    pub(crate) messages_received_from: Family<PeerLabel, Counter>,
    pub(crate) bytes_sent_to: Family<PeerLabel, Counter>,
    pub(crate) bytes_received_from: Family<PeerLabel, Counter>,
    pub(crate) snapshots_created: Counter,
    pub(crate) snapshots_installed: Counter,
    pub(crate) snapshot_seconds: Latency,
    pub(crate) snapshot_bytes: Gauge,
    pub(crate) read_index_requests: Counter,
    pub(crate) read_index_seconds: Latency,
    pub(crate) proposal_seconds: Latency,
    pub(crate) forwarded_proposals: Counter,
    pub(crate) forward_batches: Counter,
    pub(crate) term: Gauge,
    pub(crate) is_leader: Gauge,
    pub(crate) leader_id: Gauge,
    pub(crate) commit_index: Gauge,
    pub(crate) applied_index: Gauge,
    pub(crate) first_index: Gauge,
    pub(crate) last_index: Gauge,
    pub(crate) snapshot_index: Gauge,
    pub(crate) inbox_depth: Gauge,
    pub(crate) inbox_dropped: Counter,
    pub(crate) connections: Family<ServerLabel, Gauge>,
    pub(crate) connections_refused: Family<ServerLabel, Counter>,
    pub(crate) auth_failures: Family<ServerLabel, Counter>,
    pub(crate) peer_unreachable: Family<PeerLabel, Counter>,
    pub(crate) peer_match_index: Family<PeerLabel, Gauge>,
    pub(crate) peer_lag_entries: Family<PeerLabel, Gauge>,
    pub(crate) peer_lag_seconds: Family<PeerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// A latency histogram ([`latency_buckets`]), in seconds.
#[derive(Debug, Clone)]
pub struct Latency(pub Histogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(latency_histogram())
    }
}

impl Latency {
    /// Observes `d`.
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }

    /// Observes the time since `start`.
    pub fn since(&self, start: std::time::Instant) {
        self.observe(start.elapsed());
    }
}

impl Metrics {
    pub(crate) fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
    }

    /// Counts `n` failed proposals.
    pub(crate) fn proposals_failed(&self, reason: &'static str, n: u64) {
        self.proposals_failed.inc_by(n);
        self.proposals_failed_by
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// Counts `n` messages of `bytes` (encoded) sent to `peer`.
    pub(crate) fn sent(&self, peer: u64, n: u64, bytes: u64) {
        self.messages_sent.inc_by(n);
        let label = PeerLabel::of(peer);
        self.messages_sent_to.get_or_create(&label).inc_by(n);
        self.bytes_sent_to.get_or_create(&label).inc_by(bytes);
    }

    /// Counts `n` messages of `bytes` (encoded) received from `peer`.
    pub(crate) fn received(&self, peer: u64, n: u64, bytes: u64) {
        self.messages_received.inc_by(n);
        let label = PeerLabel::of(peer);
        self.messages_received_from.get_or_create(&label).inc_by(n);
        self.bytes_received_from.get_or_create(&label).inc_by(bytes);
    }

    /// The connection and authentication metrics of `server`.
    pub fn server(&self, server: &'static str) -> ServerMetrics {
        let label = ServerLabel { server };
        ServerMetrics {
            connections: self.connections.get_or_create(&label).clone(),
            refused: self.connections_refused.get_or_create(&label).clone(),
            auth_failures: self.auth_failures.get_or_create(&label).clone(),
        }
    }

    /// Registers every metric into `registry` under `raftify_` names.
    pub fn register(&self, registry: &MetricsRegistry) {
        let c = |name: &str, help: &str, m: &Counter| {
            registry.register(&format!("raftify_{name}"), help, m.clone());
        };
        c(
            "proposals",
            "Proposals accepted into the log by this node as leader.",
            &self.proposals,
        );
        registry.register(
            "raftify_proposals_failed",
            "Proposals that failed, by reason.",
            self.proposals_failed_by.clone(),
        );
        c(
            "applied_entries",
            "Entries applied to the state machine.",
            &self.applied_entries,
        );
        c(
            "leader_changes",
            "Times the known leader changed.",
            &self.leader_changes,
        );
        c("readys", "Raft Readys handled.", &self.readys);
        c(
            "storage_writes",
            "Storage writes (group commits).",
            &self.storage_writes,
        );
        c(
            "storage_syncs",
            "Syncs the storage writer made on their own (a write no later one made durable).",
            &self.storage_syncs,
        );
        c(
            "persisted_entries",
            "Entries persisted.",
            &self.persisted_entries,
        );
        c(
            "snapshots_created",
            "Snapshots taken here.",
            &self.snapshots_created,
        );
        c(
            "snapshots_installed",
            "Snapshots installed from the leader.",
            &self.snapshots_installed,
        );
        c(
            "read_index",
            "ReadIndex rounds issued.",
            &self.read_index_requests,
        );
        c(
            "forwarded_proposals",
            "Proposals this node forwarded to the leader.",
            &self.forwarded_proposals,
        );
        c(
            "forward_batches",
            "Requests that carried them (several proposals share one).",
            &self.forward_batches,
        );
        registry.register_with_unit(
            "raftify_storage_write",
            "Bytes of entries written to storage.",
            Unit::Bytes,
            self.storage_write_bytes.clone(),
        );
        registry.register(
            "raftify_messages_sent",
            "Raft messages sent, by peer.",
            self.messages_sent_to.clone(),
        );
        registry.register(
            "raftify_messages_received",
            "Raft messages received, by peer.",
            self.messages_received_from.clone(),
        );
        let h = |name: &str, help: &str, m: &Latency| {
            registry.register_with_unit(
                &format!("raftify_{name}"),
                help,
                Unit::Seconds,
                m.0.clone(),
            );
        };
        h(
            "storage_write_duration",
            "Time of one storage write (group commit), until durable.",
            &self.storage_write_seconds,
        );
        h(
            "snapshot_duration",
            "Time to take a snapshot (state machine and storage).",
            &self.snapshot_seconds,
        );
        h(
            "read_index_duration",
            "Time from a linearizable read's request to its ReadIndex confirmation.",
            &self.read_index_seconds,
        );
        h(
            "proposal_duration",
            "Time from a proposal on this node to its result (applied here).",
            &self.proposal_seconds,
        );
        let g = |name: &str, help: &str, m: &Gauge| {
            registry.register(&format!("raftify_{name}"), help, m.clone());
        };
        g("term", "Current raft term.", &self.term);
        g("is_leader", "1 when this node leads.", &self.is_leader);
        g("leader_id", "Known leader id (0: none).", &self.leader_id);
        g(
            "commit_index",
            "Highest committed index.",
            &self.commit_index,
        );
        g(
            "applied_index",
            "Highest applied index.",
            &self.applied_index,
        );
        g(
            "first_index",
            "First index still in the log.",
            &self.first_index,
        );
        g("last_index", "Last log index.", &self.last_index);
        g(
            "snapshot_index",
            "Index of the latest snapshot.",
            &self.snapshot_index,
        );
        g(
            "inbox_depth",
            "Raft messages waiting in the loop's inbox.",
            &self.inbox_depth,
        );
        c(
            "inbox_dropped_messages",
            "Raft messages dropped because the inbox was full (raft sends them again)",
            &self.inbox_dropped,
        );
        registry.register(
            "raftify_peer_unreachable",
            "Message batches the transport could not deliver to each peer (dropped; raft sends again)",
            self.peer_unreachable.clone(),
        );
        registry.register_with_unit(
            "raftify_message_sent",
            "Encoded size of the raft messages sent, by peer",
            Unit::Bytes,
            self.bytes_sent_to.clone(),
        );
        registry.register_with_unit(
            "raftify_message_received",
            "Encoded size of the raft messages received, by peer",
            Unit::Bytes,
            self.bytes_received_from.clone(),
        );
        registry.register(
            "raftify_connections",
            "Open connections, by server",
            self.connections.clone(),
        );
        registry.register(
            "raftify_connections_refused",
            "Connections refused over the server's connection cap, by server",
            self.connections_refused.clone(),
        );
        registry.register(
            "raftify_auth_failures",
            "Requests refused for a missing or wrong credential, by server",
            self.auth_failures.clone(),
        );
        registry.register_with_unit(
            "raftify_snapshot_size",
            "Size of the latest snapshot taken here.",
            Unit::Bytes,
            self.snapshot_bytes.clone(),
        );
        registry.register(
            "raftify_peer_match_index",
            "On the leader: highest index known replicated to each peer.",
            self.peer_match_index.clone(),
        );
        registry.register(
            "raftify_peer_lag_entries",
            "On the leader: entries each peer is behind the leader's last index.",
            self.peer_lag_entries.clone(),
        );
        registry.register_with_unit(
            "raftify_peer_lag",
            "On the leader: time since each peer last had every entry (0: caught up).",
            Unit::Seconds,
            self.peer_lag_seconds.clone(),
        );
    }
}

//! A sharded node's Prometheus metrics, registered into its metadata
//! group's registry (so its series carry `node="<id>"` like the core's)
//! and refreshed when scraped ([`crate::ShardHost::metrics_text`]):
//!
//! | name | labels | what |
//! |---|---|---|
//! | `raftify_shard_placement_version` | | the placement version this node applied |
//! | `raftify_shard_groups` | | data groups in the placement |
//! | `raftify_shard_nodes` | | member nodes |
//! | `raftify_shard_nodes_down` | | nodes marked down |
//! | `raftify_shard_moving` | | 1 while a slot move is in progress |
//! | `raftify_shard_purging` | | committed moves whose source still holds the keys |
//! | `raftify_shard_replicas` | | replicas this node hosts |
//! | `raftify_shard_group_slots` | `group` | slots the group owns (groups hosted here) |
//! | `raftify_shard_group_leader` | `group` | 1 where this node's replica leads |
//! | `raftify_shard_group_asleep` | `group` | 1 where this node's replica sleeps |
//! | `raftify_shard_group_commit_index` | `group` | this replica's commit index |
//! | `raftify_shard_group_applied_index` | `group` | this replica's applied index |
//! | `raftify_shard_group_log_entries` | `group` | entries in this replica's log |
//! | `raftify_shard_group_state_bytes` | `group` | this replica's state size, when known |
//! | `raftify_shard_journal_syncs_total` | | records (each one `fdatasync`) the node's groups' shared journal wrote |
//! | `raftify_shard_journal_appends_total` | | raft writes they carried (over syncs: writes per sync) |
//! | `raftify_shard_journal_bytes_total` | | bytes of those writes |
//!
//! The core's own series (`raftify_*`) in the same text are the metadata
//! group's; a data group's are summed up by the `raftify_shard_group_*`
//! ones (per-group core series for hundreds of groups would be more than a
//! scraper wants).

use crate::placement::Placement;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use raftify::JournalStats;
use raftify_core::metrics::MetricsRegistry;
use raftify_core::Status;
use std::sync::{Arc, Mutex};

/// Label of per-group series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    /// The group's id.
    pub group: String,
}

type PerGroup = Family<GroupLabel, Gauge>;

/// The families, registered once (see the module docs).
#[derive(Clone, Default)]
pub(crate) struct ShardMetrics {
    version: Gauge,
    groups: Gauge,
    nodes: Gauge,
    nodes_down: Gauge,
    moving: Gauge,
    purging: Gauge,
    replicas: Gauge,
    slots: PerGroup,
    leader: PerGroup,
    asleep: PerGroup,
    commit: PerGroup,
    applied: PerGroup,
    log_entries: PerGroup,
    state_bytes: PerGroup,
    /// The shared journal's [`JournalStats`], as counters.
    journal: [Counter; 3],
    /// The stats already counted.
    counted: Arc<Mutex<JournalStats>>,
}

fn set(g: &Gauge, v: u64) {
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
}

impl ShardMetrics {
    /// Registers the families into `registry`.
    pub(crate) fn register(&self, registry: &MetricsRegistry) {
        let gauges = [
            (
                &self.version,
                "raftify_shard_placement_version",
                "The placement version this node applied.",
            ),
            (
                &self.groups,
                "raftify_shard_groups",
                "Data groups in the placement.",
            ),
            (&self.nodes, "raftify_shard_nodes", "Member nodes."),
            (
                &self.nodes_down,
                "raftify_shard_nodes_down",
                "Nodes marked down.",
            ),
            (
                &self.moving,
                "raftify_shard_moving",
                "1 while a slot move is in progress.",
            ),
            (
                &self.purging,
                "raftify_shard_purging",
                "Committed moves whose source still holds the keys.",
            ),
            (
                &self.replicas,
                "raftify_shard_replicas",
                "Replicas this node hosts.",
            ),
        ];
        for (g, name, help) in gauges {
            registry.register(name, help, g.clone());
        }
        let families = [
            (
                &self.slots,
                "raftify_shard_group_slots",
                "Slots the group owns.",
            ),
            (
                &self.leader,
                "raftify_shard_group_leader",
                "1 where this node's replica leads the group.",
            ),
            (
                &self.asleep,
                "raftify_shard_group_asleep",
                "1 where this node's replica sleeps (an idle group).",
            ),
            (
                &self.commit,
                "raftify_shard_group_commit_index",
                "This node's replica's commit index.",
            ),
            (
                &self.applied,
                "raftify_shard_group_applied_index",
                "This node's replica's applied index.",
            ),
            (
                &self.log_entries,
                "raftify_shard_group_log_entries",
                "Entries in this node's replica's log.",
            ),
            (
                &self.state_bytes,
                "raftify_shard_group_state_bytes",
                "This node's replica's state size in bytes.",
            ),
        ];
        for (f, name, help) in families {
            registry.register(name, help, f.clone());
        }
        let [syncs, appends, bytes] = &self.journal;
        let counters = [
            (
                syncs,
                "raftify_shard_journal_syncs",
                "Records the node's shared journal wrote, each with one fdatasync.",
            ),
            (
                appends,
                "raftify_shard_journal_appends",
                "Raft writes of the node's groups those records carried.",
            ),
            (
                bytes,
                "raftify_shard_journal_bytes",
                "Bytes of those writes.",
            ),
        ];
        for (c, name, help) in counters {
            registry.register(name, help, c.clone());
        }
    }

    /// Counts what the shared journal wrote since the last refresh.
    pub(crate) fn journal(&self, now: JournalStats) {
        let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        let [syncs, appends, bytes] = &self.journal;
        syncs.inc_by(now.syncs.saturating_sub(counted.syncs));
        appends.inc_by(now.appends.saturating_sub(counted.appends));
        bytes.inc_by(now.bytes.saturating_sub(counted.bytes));
        *counted = now;
    }

    /// Sets every series from `placement` and the statuses of this node's
    /// replicas (groups no longer hosted drop out).
    pub(crate) fn refresh(&self, placement: &Placement, replicas: &[(u64, Status)]) {
        set(&self.version, placement.version());
        set(&self.groups, placement.groups().len() as u64);
        set(&self.nodes, placement.nodes().len() as u64);
        set(
            &self.nodes_down,
            placement.nodes().values().filter(|n| n.down).count() as u64,
        );
        set(&self.moving, u64::from(placement.moving().is_some()));
        set(&self.purging, placement.purging().len() as u64);
        set(&self.replicas, replicas.len() as u64);
        let families = [
            &self.slots,
            &self.leader,
            &self.asleep,
            &self.commit,
            &self.applied,
            &self.log_entries,
            &self.state_bytes,
        ];
        for f in families {
            f.clear();
        }
        let mut slots = std::collections::BTreeMap::new();
        for (range, g) in placement.ranges() {
            *slots.entry(g).or_insert(0u64) += range.len() as u64;
        }
        for (g, s) in replicas {
            let l = GroupLabel {
                group: g.to_string(),
            };
            set(
                &self.slots.get_or_create(&l),
                slots.get(g).copied().unwrap_or(0),
            );
            set(
                &self.leader.get_or_create(&l),
                u64::from(s.leader_id == s.id && s.id != 0),
            );
            set(&self.asleep.get_or_create(&l), u64::from(s.hibernating));
            set(&self.commit.get_or_create(&l), s.commit_index);
            set(&self.applied.get_or_create(&l), s.applied_index);
            set(
                &self.log_entries.get_or_create(&l),
                (s.last_index + 1).saturating_sub(s.first_index),
            );
            if let Some(b) = s.state_bytes {
                set(&self.state_bytes.get_or_create(&l), b);
            }
        }
    }
}

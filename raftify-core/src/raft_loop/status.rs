//! What the loop tells about itself: the full status on request, and the
//! role, term and leader through the `watch` channel after every Ready.

use super::RaftLoop;
use crate::membership::{Member, MemberRole};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::{unix_ms, NodeState, PeerProgress, Role, Status};
use raft::StateRole;
use std::collections::BTreeMap;

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    pub(super) fn status(&self) -> Status {
        let raft = &self.raw.raft;
        let hs = raft.hard_state();
        let mut members: Vec<Member> = Vec::new();
        let cs = &self.conf_state;
        let mut add = |id: u64, role| {
            if !members.iter().any(|m| m.id == id) {
                members.push(Member {
                    id,
                    addr: self.meta.peers.get(&id).cloned(),
                    role,
                });
            }
        };
        for &id in cs.voters.iter().chain(&cs.voters_outgoing) {
            add(id, MemberRole::Voter);
        }
        for &id in cs.learners.iter().chain(&cs.learners_next) {
            add(id, MemberRole::Learner);
        }
        members.sort_by_key(|m| m.id);
        let mut progress = BTreeMap::new();
        if raft.state == StateRole::Leader {
            for (id, pr) in raft.prs().iter() {
                progress.insert(
                    *id,
                    PeerProgress {
                        matched: pr.matched,
                        next_index: pr.next_idx,
                        state: format!("{:?}", pr.state).to_lowercase(),
                        recent_active: pr.recent_active,
                    },
                );
            }
        }
        Status {
            id: self.config.id,
            cluster_id: self.config.cluster_id.clone(),
            role: Role::from_raft(raft.state),
            term: hs.term,
            vote: hs.vote,
            leader_id: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            cluster_uid: self.meta.cluster_uid,
            first_index: raft.raft_log.first_index(),
            last_index: raft.raft_log.last_index(),
            snapshot_index: self.snapshots.index,
            members,
            joint: !cs.voters_outgoing.is_empty(),
            progress,
            events: self.events.iter().cloned().collect(),
            at_ms: unix_ms(),
            hibernating: self.hibernation.sleeping(),
            state_bytes: self.sm.try_read().ok().and_then(|sm| sm.size_bytes()),
        }
    }

    /// Remembers an event for [`Status::events`].
    pub(super) fn event(&mut self, what: String) {
        let at_ms = unix_ms();
        if self.events.len() >= crate::status::EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(crate::status::Event { at_ms, what });
    }

    /// Sets the per-peer gauges (on the leader; cleared elsewhere) and the
    /// inbox depth. `caught_up` remembers, per peer, a log end and when it
    /// was the end, for the lag in seconds.
    pub(super) fn publish_progress(&mut self) {
        let m = self.metrics.clone();
        m.inbox_depth
            .set(i64::try_from(self.inbox_len()).unwrap_or(i64::MAX));
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            if !self.caught_up.is_empty() {
                self.caught_up.clear();
                m.peer_match_index.clear();
                m.peer_lag_entries.clear();
                m.peer_lag_seconds.clear();
            }
            return;
        }
        let last = raft.raft_log.last_index();
        let now = std::time::Instant::now();
        let mut seen = Vec::new();
        for (id, pr) in raft.prs().iter() {
            if *id == self.config.id {
                continue;
            }
            seen.push(*id);
            let label = crate::metrics::PeerLabel::of(*id);
            // The lag in time: how long ago the leader's log ended where
            // this peer's match index is now. Each tick, a peer that
            // reached the index noted earlier gets the current end (and
            // now) to reach next.
            let (target, since) = self.caught_up.entry(*id).or_insert((last, now));
            if pr.matched >= *target {
                (*target, *since) = (last, now);
            }
            let lag_seconds = match pr.matched >= last {
                true => 0.0,
                false => now.duration_since(*since).as_secs_f64(),
            };
            let lag = last.saturating_sub(pr.matched);
            m.peer_match_index
                .get_or_create(&label)
                .set(i64::try_from(pr.matched).unwrap_or(i64::MAX));
            m.peer_lag_entries
                .get_or_create(&label)
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
            m.peer_lag_seconds.get_or_create(&label).set(lag_seconds);
        }
        // Peers removed from the configuration go.
        let gone: Vec<u64> = self
            .caught_up
            .keys()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.caught_up.remove(&id);
            let label = crate::metrics::PeerLabel::of(id);
            m.peer_match_index.remove(&label);
            m.peer_lag_entries.remove(&label);
            m.peer_lag_seconds.remove(&label);
        }
    }

    /// Publishes role, term and leader (the `watch` channel) and sets the
    /// gauges of the node's metrics.
    pub(super) fn publish_state(&self) {
        let raft = &self.raw.raft;
        let m = &self.metrics;
        let set = |g: &prometheus_client::metrics::gauge::Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&m.term, raft.term);
        set(&m.is_leader, u64::from(raft.state == StateRole::Leader));
        set(&m.leader_id, raft.leader_id);
        set(&m.commit_index, raft.raft_log.committed);
        set(&m.applied_index, self.applied);
        set(&m.first_index, raft.raft_log.first_index());
        set(&m.last_index, raft.raft_log.last_index());
        set(&m.snapshot_index, self.snapshots.index);
        let next = NodeState {
            role: Role::from_raft(self.raw.raft.state),
            term: self.raw.raft.term,
            leader_id: self.raw.raft.leader_id,
            leader_addr: self.peer_addr(self.raw.raft.leader_id),
            applied_index: self.applied,
            cluster_uid: self.meta.cluster_uid,
            fatal: None,
        };
        self.role_tx.send_if_modified(|cur| {
            if cur.same_role(&next) {
                false
            } else {
                *cur = next.clone();
                true
            }
        });
        self.state_tx.send_if_modified(|cur| {
            if *cur == next {
                false
            } else {
                *cur = next;
                true
            }
        });
    }
}

//! What the loop tells about itself: the full status on request, and the
//! role, term and leader through the `watch` channel after every Ready.

use super::RaftLoop;
use crate::membership::{Member, MemberRole};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::{NodeState, PeerProgress, Role, Status};
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
        }
    }

    pub(super) fn publish_state(&self) {
        let next = NodeState {
            role: Role::from_raft(self.raw.raft.state),
            term: self.raw.raft.term,
            leader_id: self.raw.raft.leader_id,
            leader_addr: self.peer_addr(self.raw.raft.leader_id),
            applied_index: self.applied,
            cluster_uid: self.meta.cluster_uid,
            fatal: None,
        };
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

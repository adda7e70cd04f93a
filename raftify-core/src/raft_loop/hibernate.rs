//! Hibernation: an idle group stops ticking ([`Config::hibernate`]).
//!
//! A leader counts the ticks on which it had nothing to do (no proposal,
//! read, transfer, snapshot or write in flight; every member's log matched
//! to its own, everything committed and applied). After `election_tick` of
//! them it sends each member a heartbeat whose context says "sleep" and
//! stops ticking (no more heartbeats). A follower that steps such a
//! heartbeat from the leader it follows, in its term, with its log
//! complete, stops its election clock and asks the transport to watch the
//! leader's process ([`PeerLiveness`]).
//!
//! Anything that needs raft wakes the replica: a proposal, read, transfer
//! or campaign from its own API, or a raft message other than a heartbeat
//! response or a sleep heartbeat. A waking leader heartbeats at once, which
//! wakes its followers. A sleeping follower whose leader's process stops
//! answering wakes with its election clock run out, so it grants votes and
//! campaigns within a randomized election timeout.
//!
//! Lost sleep heartbeats are harmless: the follower that missed it keeps
//! its clock, times out, and its pre-vote wakes the leader. The sleeping
//! leader does not notice being deposed, which is why hibernation needs
//! [`ReadMode::Safe`](crate::ReadMode::Safe) reads (a read wakes it and
//! confirms leadership with a quorum).
//!
//! [`Config::hibernate`]: crate::Config::hibernate

use super::RaftLoop;
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::transport::PeerLiveness;
use raft::eraftpb::{Message, MessageType};
use raft::{ProgressState, StateRole};
use slog::{debug, info};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// The context of a heartbeat that tells a follower to sleep.
pub(super) const SLEEP_CTX: &[u8] = b"raftify-hibernate";

/// Whether, and how, the replica sleeps.
#[derive(Default)]
enum Sleep {
    #[default]
    Awake,
    /// A leader that told its followers to sleep.
    Leader,
    /// A follower; `alive` turns false when the leader's process is down.
    Follower {
        leader: u64,
        alive: watch::Receiver<bool>,
    },
}

/// The loop's hibernation state.
#[derive(Default)]
pub(super) struct Hibernation {
    /// `Some` when hibernation is on (configured, and the transport can
    /// tell whether peers are up).
    liveness: Option<Arc<dyn PeerLiveness>>,
    /// Consecutive ticks this leader had nothing to do.
    idle_ticks: usize,
    sleep: Sleep,
    /// A leader's watches of members that lag behind its log: an idle
    /// group may sleep without those whose process is down (they catch
    /// up when they come back: their first message wakes the leader).
    lagging: HashMap<u64, watch::Receiver<bool>>,
}

impl Hibernation {
    pub(super) fn new(liveness: Option<Arc<dyn PeerLiveness>>) -> Self {
        Hibernation {
            liveness,
            ..Default::default()
        }
    }

    /// Whether the replica ticks.
    pub(super) fn awake(&self) -> bool {
        matches!(self.sleep, Sleep::Awake)
    }

    /// Whether the replica sleeps (for the status).
    pub(super) fn sleeping(&self) -> bool {
        !self.awake()
    }

    /// Whether a sleeping follower watches its leader's process.
    pub(super) fn watching(&self) -> bool {
        matches!(self.sleep, Sleep::Follower { .. })
    }

    /// Resolves when a sleeping follower's leader is reported down (never
    /// otherwise: use under [`Hibernation::watching`]).
    pub(super) async fn leader_down(&mut self) {
        match &mut self.sleep {
            Sleep::Follower { alive, .. } => {
                // A dropped sender (transport gone) counts as down.
                let _ = alive.wait_for(|up| !*up).await;
            }
            _ => std::future::pending().await,
        }
    }
}

/// Whether a received message needs the replica awake: everything but
/// heartbeat responses (a sleeping leader's followers acknowledging the
/// sleep heartbeat) and sleep heartbeats themselves.
fn stirs(m: &Message) -> bool {
    match m.get_msg_type() {
        MessageType::MsgHeartbeatResponse => false,
        MessageType::MsgHeartbeat => m.context != SLEEP_CTX,
        _ => true,
    }
}

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    /// Wakes the replica if it sleeps, and restarts the leader's idle
    /// count. A waking leader heartbeats at once (waking its followers).
    pub(super) fn wake(&mut self, why: &'static str) {
        let h = &mut self.hibernation;
        h.idle_ticks = 0;
        match std::mem::take(&mut h.sleep) {
            Sleep::Awake => {}
            Sleep::Leader => {
                debug!(self.logger, "waking"; "why" => why);
                if self.is_leader() {
                    self.raw.ping();
                }
            }
            Sleep::Follower { .. } => debug!(self.logger, "waking"; "why" => why),
        }
    }

    /// What a batch of received messages means for sleep: called before
    /// they are stepped. Returns the sleep heartbeat's sender to consider
    /// after stepping, when the batch holds one and nothing that stirs.
    pub(super) fn hibernation_on_messages(&mut self, msgs: &[Message]) -> Option<(u64, u64)> {
        self.hibernation.liveness.as_ref()?;
        if msgs.iter().any(stirs) {
            self.wake("message");
            return None;
        }
        msgs.iter()
            .rev()
            .find(|m| m.get_msg_type() == MessageType::MsgHeartbeat && m.context == SLEEP_CTX)
            .map(|m| (m.from, m.term))
    }

    /// After stepping a sleep heartbeat from `leader` in `term`: sleeps if
    /// this node follows that leader in that term with a complete log.
    pub(super) fn maybe_sleep_follower(&mut self, leader: u64, term: u64) {
        let Some(liveness) = self.hibernation.liveness.clone() else {
            return;
        };
        let raft = &self.raw.raft;
        if raft.state != StateRole::Follower
            || raft.leader_id != leader
            || raft.term != term
            || raft.raft_log.committed != raft.raft_log.last_index()
            || !self.hibernation.awake()
        {
            debug!(self.logger, "not sleeping"; "leader" => leader, "term" => term, "state" => ?raft.state,
                "leader_id" => raft.leader_id, "my_term" => raft.term, "committed" => raft.raft_log.committed,
                "last" => raft.raft_log.last_index());
            return;
        }
        let Some(addr) = self.peer_addr(leader) else {
            debug!(self.logger, "not sleeping: no address for the leader"; "leader" => leader);
            return;
        };
        debug!(self.logger, "hibernating"; "leader" => leader, "term" => term);
        let alive = liveness.watch(leader, &addr, true);
        self.hibernation.sleep = Sleep::Follower { leader, alive };
    }

    /// The leader's process was reported down: wake with the election
    /// clock run out (so this node grants votes, and campaigns within a
    /// randomized timeout).
    pub(super) fn on_leader_down(&mut self) {
        if let Sleep::Follower { leader, .. } = std::mem::take(&mut self.hibernation.sleep) {
            info!(self.logger, "the leader's process stopped answering; waking to elect"; "leader" => leader);
            let timeout = self.raw.raft.election_timeout();
            let raft = &mut self.raw.raft;
            raft.election_elapsed = raft.election_elapsed.max(timeout);
        }
    }

    /// At the start of each tick of an awake leader: counts idle ticks, and
    /// after `election_tick` of them tells every member to sleep and
    /// sleeps (returns true: the tick is not taken, so no heartbeat
    /// follows the sleep heartbeats).
    pub(super) fn hibernation_tick(&mut self) -> bool {
        if self.hibernation.liveness.is_none() || !self.is_leader() || !self.idle() {
            self.hibernation.idle_ticks = 0;
            if !self.is_leader() {
                self.hibernation.lagging.clear();
            }
            return false;
        }
        self.hibernation.idle_ticks += 1;
        if self.hibernation.idle_ticks <= self.config.election_tick {
            return false;
        }
        let raft = &self.raw.raft;
        let (term, commit) = (raft.term, raft.raft_log.committed);
        // Only members that hold the whole log are told (the others' process
        // is down, see `idle`; told a commit index beyond their log when
        // they come back, they would stop). A heartbeat never commits more
        // than a member holds, as raft-rs's own: min(matched, committed).
        let peers: Vec<(u64, u64)> = raft
            .prs()
            .iter()
            .filter(|(id, pr)| **id != self.config.id && pr.matched >= commit)
            .map(|(id, pr)| (*id, pr.matched.min(commit)))
            .collect();
        for (to, commit) in peers {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.to = to;
            m.from = self.config.id;
            m.term = term;
            m.commit = commit;
            m.context = SLEEP_CTX.to_vec().into();
            self.transport.send(to, vec![m], &self.feedback);
        }
        debug!(self.logger, "hibernating"; "term" => term, "commit" => commit);
        self.hibernation.sleep = Sleep::Leader;
        true
    }

    /// Whether this leader has nothing to do: no work in flight, and every
    /// member holds, and knows committed, the whole log — or its process
    /// is down.
    fn idle(&mut self) -> bool {
        if !self.idle_here() {
            return false;
        }
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        let me = self.config.id;
        let lagging: Vec<u64> = raft
            .prs()
            .iter()
            .filter(|(id, pr)| {
                **id != me && (pr.matched != last || pr.state != ProgressState::Replicate)
            })
            .map(|(id, _)| *id)
            .collect();
        self.hibernation
            .lagging
            .retain(|id, _| lagging.contains(id));
        let Some(liveness) = self.hibernation.liveness.clone() else {
            return false;
        };
        for id in lagging {
            if !self.hibernation.lagging.contains_key(&id) {
                let Some(addr) = self.peer_addr(id) else {
                    return false;
                };
                let rx = liveness.watch(id, &addr, false);
                self.hibernation.lagging.insert(id, rx);
            }
            if self
                .hibernation
                .lagging
                .get(&id)
                .is_none_or(|up| *up.borrow())
            {
                return false;
            }
        }
        true
    }

    /// Whether no work is in flight on this leader and its log is
    /// committed and applied.
    fn idle_here(&self) -> bool {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        let me = self.config.id;
        raft.raft_log.committed == last
            && self.applied == last
            && raft.lead_transferee.is_none()
            && !raft.has_pending_conf()
            && self.conf_state.voters.contains(&me)
            && self.conf_state.voters_outgoing.is_empty()
            && self.proposals.is_empty()
            && self.reads.is_empty()
            && !self.leadership.busy()
            && !self.snapshots.busy()
            && !self.persist.in_flight()
    }
}

//! Leadership: transfers, campaigns, seeded election timeouts, and what a
//! change of leader means for the requests in flight.

use super::{RaftLoop, Reply};
use crate::config::Config;
use crate::error::Error;
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::Metrics;
use raft::StateRole;
use slog::info;
use tokio::time::Instant;

pub(super) struct Leadership {
    /// A transfer under way: its target and its caller.
    transfer: Option<(u64, Reply<()>)>,
    /// `campaign` requests waiting for the writes in flight (raft-rs
    /// requires a durable log before a node can win an election).
    campaigns: Vec<Reply<()>>,
    /// State of the seeded election-timeout generator (`Config::election_seed`).
    election_rng: Option<u64>,
    last_leader: u64,
    last_role: StateRole,
    /// When this node last became leader: it hands leadership on only
    /// after an election timeout of tenure, so transfer requests cannot
    /// make leadership flap faster than elections would.
    led_since: Option<Instant>,
}

impl Leadership {
    /// Whether a transfer or a campaign request is under way.
    pub(super) fn busy(&self) -> bool {
        self.transfer.is_some() || !self.campaigns.is_empty()
    }

    pub(super) fn new(config: &Config, role: StateRole) -> Self {
        let election_rng = config
            .election_seed
            .map(|s| (s ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)).max(1));
        Leadership {
            transfer: None,
            campaigns: Vec::new(),
            election_rng,
            last_leader: 0,
            last_role: role,
            led_since: None,
        }
    }

    pub(super) fn fail_all(&mut self, refused: &dyn Fn() -> Error) {
        if let Some((_, reply)) = self.transfer.take() {
            let _ = reply.send(Err(refused()));
        }
        for reply in std::mem::take(&mut self.campaigns) {
            let _ = reply.send(Err(refused()));
        }
    }
}

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    pub(super) fn transfer_leader(&mut self, to: u64, reply: Reply<()>) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if to == self.config.id {
            let _ = reply.send(Ok(()));
            return;
        }
        if !self.conf_state.voters.contains(&to) {
            let err = if self.conf_state.learners.contains(&to) {
                Error::InvalidArgument(format!("node {to} is a learner; only voters can lead"))
            } else {
                Error::NotAMember(to)
            };
            let _ = reply.send(Err(err));
            return;
        }
        // One transfer at a time, each after a minimum tenure: callers get a
        // retryable refusal (the handle's calls back off and ask again).
        if let Some((current, waiting)) = &self.leadership.transfer {
            if !waiting.is_closed() {
                let _ = reply.send(Err(Error::ProposalDropped(format!(
                    "a leadership transfer to node {current} is in progress; retry when it ends"
                ))));
                return;
            }
        }
        let tenure = self.config.tick_interval * self.config.election_tick as u32;
        if let Some(since) = self.leadership.led_since {
            let held = since.elapsed();
            if held < tenure {
                let _ = reply.send(Err(Error::ProposalDropped(format!(
                    "this node has led for {held:?} only; leadership moves again after {tenure:?}"
                ))));
                return;
            }
        }
        self.raw.transfer_leader(to);
        self.leadership.transfer = Some((to, reply));
    }

    /// raft-rs abandons a transfer after an election timeout (the target
    /// was slow to catch up): keep asking until the caller gives up.
    pub(super) fn keep_transferring(&mut self) {
        if let Some((to, reply)) = &self.leadership.transfer {
            if reply.is_closed() {
                self.leadership.transfer = None;
            } else if self.is_leader() && self.raw.raft.lead_transferee.is_none() {
                let to = *to;
                self.raw.transfer_leader(to);
            }
        }
    }

    pub(super) fn campaign(&mut self, reply: Reply<()>) {
        if self.persist.in_flight() {
            // See `campaign_waits_for_writes`.
            self.leadership.campaigns.push(reply);
        } else {
            let _ = reply.send(self.raw.campaign().map_err(Error::from));
        }
    }

    /// Campaigns that waited for the writes in flight, now that none are.
    pub(super) fn release_campaigns(&mut self) {
        if self.persist.in_flight() {
            return;
        }
        for reply in std::mem::take(&mut self.leadership.campaigns) {
            let _ = reply.send(self.raw.campaign().map_err(Error::from));
        }
    }

    /// raft-rs requires a durable log before a node campaigns (a sole voter
    /// wins at once): while writes are in flight, the tick that would start
    /// an election waits for them.
    pub(super) fn campaign_waits_for_writes(&self) -> bool {
        let raft = &self.raw.raft;
        raft.state != StateRole::Leader
            && self.persist.in_flight()
            && raft.election_elapsed + 1 >= raft.randomized_election_timeout()
    }

    /// With `election_seed`, replaces raft-rs's `thread_rng` choice of
    /// election timeout by a seeded one whenever the election clock was
    /// just reset (re-choosing more often than raft-rs does is harmless: the
    /// value stays in `[election_tick, 2 * election_tick)`).
    pub(super) fn reseed_election_timeout(&mut self) {
        let Some(state) = self.leadership.election_rng.as_mut() else {
            return;
        };
        if self.raw.raft.election_elapsed != 0 {
            return;
        }
        // xorshift64*
        let mut x = *state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let min = self.config.election_tick;
        let timeout = min + (r % min as u64) as usize;
        self.raw.raft.set_randomized_election_timeout(timeout);
    }

    /// After a Ready: what a change of role or leader means for the
    /// proposals, transfers and reads in flight.
    pub(super) fn on_role_change(&mut self) {
        let role = self.raw.raft.state;
        let leader = self.raw.raft.leader_id;
        let last_role = self.leadership.last_role;
        if role != last_role && last_role == StateRole::Leader {
            self.proposals.lose_leadership(&self.metrics);
        }
        if role != last_role {
            self.leadership.led_since = (role == StateRole::Leader).then(Instant::now);
        }
        if leader != self.leadership.last_leader {
            Metrics::add(&self.metrics.leader_changes, 1);
            info!(self.logger, "leader changed"; "leader" => leader, "term" => self.raw.raft.term, "role" => ?role);
            let term = self.raw.raft.term;
            self.event(match leader {
                0 => format!("no leader (term {term})"),
                l if l == self.config.id => format!("node {l} leads (term {term}): this node"),
                l => format!("node {l} leads (term {term})"),
            });
            if let Some((to, reply)) = self.leadership.transfer.take() {
                if leader == to {
                    let _ = reply.send(Ok(()));
                } else if leader != 0 {
                    let _ = reply.send(Err(Error::TransferFailed { to, leader }));
                } else {
                    self.leadership.transfer = Some((to, reply));
                }
            }
            if leader != 0 {
                self.reads_follow_new_leader();
            }
        }
        self.leadership.last_role = role;
        self.leadership.last_leader = leader;
        self.publish_state();
    }
}

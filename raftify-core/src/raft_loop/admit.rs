//! Admission: which messages from the network may reach raft-rs, which
//! trusts its input and panics on some malformed messages.

use super::RaftLoop;
use crate::codec::decode_snapshot;
use crate::error::Error;
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use slog::{debug, warn};

/// The furthest a message's term may run ahead of this node's: elections
/// raise terms one at a time, so a jump of millions is forged or garbage,
/// and following it would move the whole cluster to a term whose next
/// elections its peers refuse (or overflow).
const MAX_TERM_JUMP: u64 = 1 << 20;

/// What to do with a message from the network.
enum Admit {
    Step,
    /// Step it with its commit index lowered to this node's own (raft-rs
    /// would panic on one beyond its log).
    StepWithCommit(u64),
    Drop(&'static str),
    Fatal(Error),
}

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    pub(super) fn on_messages(&mut self, from_addr: Option<String>, msgs: Vec<Message>) {
        if self.fatal.is_some() {
            return;
        }
        // A batch comes from one peer (the transport sends per peer); count
        // runs all the same.
        let mut run: Option<(u64, u64, u64)> = None;
        for m in &msgs {
            let size = u64::from(m.compute_size());
            match run {
                Some((from, n, b)) if from == m.from => run = Some((from, n + 1, b + size)),
                Some((from, n, b)) => {
                    self.metrics.received(from, n, b);
                    run = Some((m.from, 1, size));
                }
                None => run = Some((m.from, 1, size)),
            }
        }
        if let Some((from, n, b)) = run {
            self.metrics.received(from, n, b);
        }
        if let (Some(addr), Some(first)) = (from_addr, msgs.first()) {
            // Only the transport learns it: the replicated address book
            // changes through the log alone.
            if first.from != self.config.id && !self.meta.peers.contains_key(&first.from) {
                self.transport.set_peer(first.from, &addr);
                self.learned_addrs.insert(first.from, addr);
            }
        }
        let sleep_heartbeat = self.hibernation_on_messages(&msgs);
        for m in msgs {
            match self.admit(&m) {
                Admit::Step => {
                    if let Err(e) = self.raw.step(m) {
                        debug!(self.logger, "raft refused a message"; "err" => %e);
                    }
                }
                Admit::StepWithCommit(commit) => {
                    let mut m = m;
                    m.commit = commit;
                    if let Err(e) = self.raw.step(m) {
                        debug!(self.logger, "raft refused a message"; "err" => %e);
                    }
                }
                Admit::Drop(why) => {
                    debug!(self.logger, "dropping a message"; "why" => why, "from" => m.from, "type" => ?m.get_msg_type());
                }
                Admit::Fatal(e) => {
                    self.fatal = Some(e);
                    return;
                }
            }
        }
        if let Some((leader, term)) = sleep_heartbeat {
            self.maybe_sleep_follower(leader, term);
        }
    }

    /// Whether a snapshot from the network can be installed: its data
    /// decodes, it belongs to this cluster, and its membership has an
    /// address for every member.
    fn check_snapshot(&self, m: &Message) -> std::result::Result<(), String> {
        let snap = m.get_snapshot();
        let (cluster, _) = decode_snapshot(&snap.data)?;
        let mine = self.meta.cluster_uid;
        if mine != 0 && cluster.cluster_uid != 0 && cluster.cluster_uid != mine {
            return Err(format!(
                "it belongs to cluster {:016x}, this node to {mine:016x}",
                cluster.cluster_uid
            ));
        }
        let cs = snap.get_metadata().get_conf_state();
        if cs.voters.is_empty() {
            return Err("its membership has no voter".into());
        }
        if let Some(id) = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .find(|id| !cluster.peers.contains_key(id))
        {
            return Err(format!("its address book has no address for member {id}"));
        }
        Ok(())
    }

    fn admit(&self, m: &Message) -> Admit {
        let raft = &self.raw.raft;
        let id = self.config.id;
        if m.to != id {
            return Admit::Drop("addressed to another node");
        }
        if m.from == 0 || m.from == id {
            return Admit::Drop("impossible sender id");
        }
        // No cluster reaches 2^63 terms; raft-rs would overflow on term + 1.
        if m.term >= u64::MAX / 2 || m.term > raft.term.saturating_add(MAX_TERM_JUMP) {
            return Admit::Drop("absurd term");
        }
        let t = m.get_msg_type();
        // Proposals only enter through this node's own API (framed and
        // tracked); local message types never come from the network.
        if t == MessageType::MsgPropose || raft::raw_node::is_local_msg(t) {
            return Admit::Drop("local message type");
        }
        // raft-rs treats term 0 as a local message; only a follower's
        // forwarded read-index request legitimately has it.
        if m.term == 0 && t != MessageType::MsgReadIndex {
            return Admit::Drop("term 0");
        }
        match t {
            MessageType::MsgReadIndex if m.entries.len() != 1 => {
                return Admit::Drop("read index without exactly one context entry")
            }
            MessageType::MsgSnapshot if m.get_snapshot().get_metadata().index == 0 => {
                return Admit::Drop("empty snapshot")
            }
            MessageType::MsgSnapshot => {
                // Checked before raft-rs takes it: an accepted snapshot is
                // persisted and replaces the log.
                if let Err(why) = self.check_snapshot(m) {
                    warn!(self.logger, "refused a snapshot"; "from" => m.from, "index" => m.get_snapshot().get_metadata().index, "why" => &why);
                    return Admit::Drop("unusable snapshot");
                }
            }
            MessageType::MsgHeartbeat if m.commit > raft.raft_log.last_index() => {
                // Only the leader this node already follows, in its term,
                // is believed. A stale or foreign heartbeat is dropped; one
                // from a voter this node does not follow yet (a new leader,
                // or a forgery) is stepped with the commit this node already
                // has, so raft learns of it without committing anything —
                // and if it is the leader, its next heartbeat is believed.
                let voter = self.conf_state.voters.contains(&m.from)
                    || self.conf_state.voters_outgoing.contains(&m.from);
                if m.term < raft.term || !voter {
                    return Admit::Drop("heartbeat committing beyond the log from a non-leader");
                }
                if m.term > raft.term || m.from != raft.leader_id {
                    warn!(self.logger, "a heartbeat from a node this node does not follow commits beyond its log; its commit is ignored";
                        "from" => m.from, "term" => m.term, "commit" => m.commit, "leader" => raft.leader_id);
                    return Admit::StepWithCommit(raft.raft_log.committed);
                }
                // A current leader only sends a commit index this node
                // acknowledged holding. More than our last index means our
                // log lost acknowledged entries (wiped or unsynced data
                // dir): raft-rs would panic on it, and raft cannot repair it
                // (the leader never resends what it counts as replicated).
                // Stop with an error that says what to do.
                let last = raft.raft_log.last_index();
                return Admit::Fatal(Error::Fatal(format!(
                    "node {id} lost acknowledged log entries: leader {} says it holds up to {}, \
                     its log ends at {last} (data dir wiped or not synced?). Remove node {id} \
                     from the cluster and add it back as a new member, or rebuild its data \
                     dir from a peer's (--restore-wal-from in memstore)",
                    m.from, m.commit
                )));
            }
            _ => {}
        }
        Admit::Step
    }
}

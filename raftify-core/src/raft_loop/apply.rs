//! Applying committed entries: user commands to the state machine,
//! membership changes to raft and the address book, node id reservations.

use super::{Applied, RaftLoop};
use crate::codec::{parse_entry, ConfChangeContext, EntryPayload};
use crate::error::{Error, Rejection, Result};
use crate::sessions::{Answer, Decision};
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine, Payload};
use crate::status::Metrics;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::StateRole;
use raft_proto::ConfChangeI;
use slog::{info, warn};

/// What a write answered, as the session table keeps it (a state
/// machine's error by its own message, so that [`replay`] gives the same
/// error back).
fn answer_of(result: &Result<Applied>) -> Answer {
    match result {
        Ok(Applied::Output(out)) => Answer::Output(out.clone()),
        Ok(_) => Answer::Output(Vec::new()),
        Err(Error::StateMachine(why)) => Answer::Failed(why.clone()),
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// A write's first answer, given again.
fn replay(answer: Answer) -> Result<Applied> {
    match answer {
        Answer::Output(out) => Ok(Applied::Output(out)),
        Answer::Failed(e) => Err(Error::StateMachine(e)),
    }
}

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    pub(super) async fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let sm = self.sm.clone();
        let mut sm = sm.write().await;
        for entry in entries {
            if entry.index <= self.applied {
                continue; // covered by a snapshot installed in this Ready
            }
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal => match parse_entry(&entry.data) {
                    Ok(EntryPayload::Noop) => Ok(Applied::Output(Vec::new())),
                    Ok(EntryPayload::User(bytes)) => {
                        self.apply_user(&mut sm, entry.index, bytes).await
                    }
                    Ok(EntryPayload::ReserveId) => Ok(Applied::NodeId(self.reserve_id())),
                    Ok(EntryPayload::SessionOpen { idle_ms, stamp_ms }) => {
                        let sessions = &mut self.meta.sessions;
                        sessions.advance(stamp_ms);
                        sessions.open(entry.index, idle_ms);
                        Ok(Applied::SessionId(entry.index))
                    }
                    Ok(EntryPayload::SessionWrite {
                        session,
                        seq,
                        acked,
                        stamp_ms,
                        user,
                    }) => {
                        self.meta.sessions.advance(stamp_ms);
                        match self.meta.sessions.check(session, seq, acked) {
                            Decision::Apply => {
                                let result = self.apply_user(&mut sm, entry.index, user).await;
                                self.meta.sessions.record(session, seq, answer_of(&result));
                                result
                            }
                            Decision::Replay(answer) => replay(answer),
                            Decision::Refuse(why) => Err(Error::SessionExpired(why)),
                        }
                    }
                    Ok(EntryPayload::KeyedWrite {
                        key,
                        ttl_ms,
                        stamp_ms,
                        user,
                    }) => {
                        self.meta.sessions.advance(stamp_ms);
                        match self.meta.sessions.keyed(key) {
                            Some(answer) => replay(answer),
                            None => {
                                let result = self.apply_user(&mut sm, entry.index, user).await;
                                let answer = answer_of(&result);
                                self.meta.sessions.record_key(key, ttl_ms, answer);
                                result
                            }
                        }
                    }
                    Err(e) => {
                        warn!(self.logger, "committed entry is not a raftify entry"; "index" => entry.index, "err" => %e);
                        Err(Error::Encode(e))
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)
                }
            };
            self.applied = entry.index;
            self.applied_term = entry.term;
            Metrics::add(&self.metrics.applied_entries, 1);
            self.complete(entry.index, entry.term, result);
        }
        drop(sm);
        self.answer_reads();
    }

    /// Applies a user command to the state machine.
    async fn apply_user(&self, sm: &mut SM, index: u64, bytes: &[u8]) -> Result<Applied> {
        match E::decode(bytes) {
            Ok(cmd) => match sm.apply_at(index, cmd).await {
                Ok(out) => out.encode().map(Applied::Output).map_err(|e| {
                    Error::StateMachine(format!("the apply output does not encode: {e}"))
                }),
                Err(e) => Err(Error::StateMachine(e.to_string())),
            },
            Err(e) => {
                warn!(self.logger, "committed entry does not decode"; "index" => index, "err" => %e);
                // Committed, and other nodes (of another version, say) may
                // apply it: its outcome is not known here.
                Err(Error::Interrupted(format!(
                    "entry {index} was committed but does not decode on the node that applied it: {e}"
                )))
            }
        }
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<Applied> {
        let cc: ConfChangeV2 = if entry.get_entry_type() == EntryType::EntryConfChange {
            match ConfChange::parse_from_bytes(&entry.data) {
                Ok(cc) => cc.into_v2(),
                Err(e) => return Err(Error::Encode(format!("conf change: {e}"))),
            }
        } else {
            match ConfChangeV2::parse_from_bytes(&entry.data) {
                Ok(cc) => cc,
                Err(e) => return Err(Error::Encode(format!("conf change: {e}"))),
            }
        };
        let ctx = ConfChangeContext::decode(&cc.context).unwrap_or_else(|e| {
            warn!(self.logger, "conf change context ignored"; "err" => %e);
            ConfChangeContext::default()
        });
        // Learn the new addresses first: raft starts sending to a new peer
        // as soon as the change is applied.
        for (id, addr) in &ctx.addrs {
            self.meta.peers.insert(*id, addr.clone());
            if *id != self.config.id {
                self.transport.set_peer(*id, addr);
            }
        }
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                for change in &cc.changes {
                    if change.get_change_type() == ConfChangeType::RemoveNode {
                        self.meta.peers.remove(&change.node_id);
                        if change.node_id != self.config.id {
                            self.transport.remove_peer(change.node_id);
                        }
                    }
                }
                info!(self.logger, "membership changed"; "voters" => ?cs.voters, "learners" => ?cs.learners, "outgoing" => ?cs.voters_outgoing);
                // A leader that applied its own removal (the change was
                // proposed before leadership moved to it) keeps leading in
                // raft-rs 0.7, and panics on its next commit advance: step
                // down; the remaining voters elect a leader.
                let me = self.config.id;
                let voter = cs.voters.contains(&me) || cs.voters_outgoing.contains(&me);
                if !voter && self.raw.raft.state == StateRole::Leader {
                    warn!(
                        self.logger,
                        "this leader is no longer a voter; stepping down"
                    );
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
                self.conf_state = cs;
                Ok(Applied::ConfChanged)
            }
            Err(e) => {
                warn!(self.logger, "membership change not applied"; "index" => entry.index, "err" => %e);
                Err(Error::ConfChangeRejected(Rejection::Invalid(e.to_string())))
            }
        }
    }

    /// Node ids for join tickets come from the log, so two joins never get
    /// the same id, whichever leader served them.
    fn reserve_id(&mut self) -> u64 {
        let cs = &self.conf_state;
        let max_member = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .chain(self.meta.peers.keys())
            .copied()
            .max()
            .unwrap_or(0);
        let id = self.meta.next_node_id.max(max_member + 1);
        self.meta.next_node_id = id + 1;
        id
    }
}

//! The Ready cycle, in protocol order.

use super::RaftLoop;
use crate::error::Result;
use crate::state_machine::{AbstractLogEntry, AbstractStateMachine};
use crate::status::Metrics;
use crate::storage::WriteBatch;
use protobuf::Message as _;
use raft::eraftpb::Message;

/// Most Ready cycles in one pass: a write made in the loop (or nothing in
/// flight) makes the next Ready available at once — its commits, applies
/// and acknowledgements — and it is handled in the same pass.
const MAX_CYCLES: usize = 16;

impl<E, SM> RaftLoop<E, SM>
where
    E: AbstractLogEntry,
    SM: AbstractStateMachine<E>,
{
    pub(super) async fn on_ready(&mut self) -> Result<()> {
        for _ in 0..MAX_CYCLES {
            if self.raw.snap().is_some_and(|s| !s.is_empty()) {
                // A snapshot from the leader replaces the log: it is
                // installed after every write in flight.
                self.drain_writes().await?;
            }
            if !self.raw.has_ready() {
                break;
            }
            self.ready_cycle().await?;
        }
        self.on_role_change();
        self.maybe_snapshot().await;
        Ok(())
    }

    async fn ready_cycle(&mut self) -> Result<()> {
        Metrics::add(&self.metrics.readys, 1);
        let mut rd = self.raw.ready();

        // 1. A leader may send before persisting its own entries.
        self.send(rd.take_messages());

        // 2. A snapshot from the leader is installed, then written, first:
        // one the state machine cannot restore stops the node before it
        // replaces the stored log.
        let mut batch = WriteBatch {
            snapshot: None,
            entries: rd.take_entries(),
            hard_state: rd.hs().cloned(),
        };
        // A hard state that only moves the commit index waits for the next
        // write (`must_sync` is set by a snapshot, a term or a vote).
        self.persist.defer_commit_only(&mut batch, rd.must_sync());
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install_snapshot(snap.clone()).await?;
            batch.snapshot = Some(snap);
            self.persist.write_now(std::mem::take(&mut batch)).await?;
        }

        // 3. raft-rs hands out only committed entries that are durable here,
        // so they are applied — and their proposers answered — before this
        // Ready's own write, not after it.
        self.on_read_states(rd.take_read_states());
        self.apply(rd.take_committed_entries()).await;

        // 4. One storage write for the rest; messages that must follow it
        // (acknowledgements, votes) leave once it is durable.
        let msgs = rd.take_persisted_messages();
        self.submit(rd, batch, msgs).await?;
        self.raw.advance_apply_to(self.applied);
        Ok(())
    }

    pub(super) fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        // Keep per-peer order; one batch per peer.
        let mut by_peer: Vec<(u64, Vec<Message>)> = Vec::new();
        for m in msgs {
            match by_peer.iter_mut().find(|(to, _)| *to == m.to) {
                Some((_, v)) => v.push(m),
                None => by_peer.push((m.to, vec![m])),
            }
        }
        for (to, batch) in by_peer {
            let bytes = batch.iter().map(|m| u64::from(m.compute_size())).sum();
            self.metrics.sent(to, batch.len() as u64, bytes);
            self.transport.send(to, batch, &self.feedback);
        }
    }
}

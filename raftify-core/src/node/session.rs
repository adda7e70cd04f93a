//! Exactly-once writes on a handle: sessions opened through the log
//! ([`RaftHandle::open_session`]), writes numbered in them
//! ([`RaftHandle::propose_in_session`]), and the handle as the target of a
//! [`Session`] (the client side, in [`crate::client_session`]), which
//! numbers writes and retries them until their outcome is known.
//!
//! A write that carries `(session, seq)` is applied at most once, however
//! often it is sent (see [`crate::sessions`]): retrying it after an
//! ambiguous failure (a timeout, a connection lost after it left, a leader
//! change) is safe, and [`Session::propose`] does.

use super::handle::user_output;
use super::RaftHandle;
use crate::client_session::{Session, SessionTarget};
use crate::codec::{
    check_idempotency_key, frame_keyed_write, frame_session_open, frame_session_write,
};
use crate::error::{Error, Result};
use crate::raft_loop::{Applied, Command, ProposalKind};
use crate::retry::Idempotence;
use crate::sessions::{request_ids, SessionWrite};
use crate::status::unix_ms;
use crate::transport::Outcome;
use async_trait::async_trait;
use std::sync::Arc;

impl RaftHandle {
    /// Opens a client session through the log (on the leader; from any
    /// node) and returns its id. It expires after
    /// [`Config::session_idle_timeout`](crate::Config::session_idle_timeout)
    /// without a write.
    pub async fn open_session(&self) -> Result<u64> {
        // A retried opening may open a second session: unused, it expires.
        self.on_leader(
            Idempotence::Idempotent,
            |h| async move { h.open_session_here().await },
            |addr| async move { self.remote(&addr)?.open_session().await },
        )
        .await
    }

    pub(crate) async fn open_session_here(&self) -> Result<u64> {
        let idle = self.config().session_idle_timeout;
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let data = frame_session_open(idle_ms, unix_ms());
        match self
            .propose_internal(ProposalKind::OpenSession, data)
            .await?
        {
            Applied::SessionId(id) => Ok(id),
            other => Err(Error::Raft(format!("unexpected apply result {other:?}"))),
        }
    }

    /// Proposes an encoded user entry as write `w` of a session (on the
    /// leader; from any node) and returns the state machine's output. The
    /// entry is applied at most once: sent again with the same `w`, it
    /// answers what the first application answered.
    pub async fn propose_in_session(&self, w: SessionWrite, encoded: Vec<u8>) -> Result<Vec<u8>> {
        if self.is_leader() {
            // The common case, as for `propose`: no routing.
            return self.propose_in_session_here(w, &encoded).await;
        }
        self.check_entry_size(&encoded)?;
        let entry = &encoded;
        let forwarder = &self.inner.forwarder;
        // Forwarded together with the node's other proposals.
        self.on_leader(
            Idempotence::Idempotent,
            |h| async move { h.propose_in_session_here(w, entry).await },
            |addr| forwarder.forward(addr, Some(w), entry.clone()),
        )
        .await
    }

    pub(crate) async fn propose_in_session_here(
        &self,
        w: SessionWrite,
        encoded: &[u8],
    ) -> Result<Vec<u8>> {
        self.check_entry_size(encoded)?;
        let id = slog::FnValue(|_: &slog::Record| w.request_id());
        slog::debug!(self.inner.logger, "proposing a session write"; "request_id" => id);
        let data = frame_session_write(w.session, w.seq, w.acked, unix_ms(), encoded);
        self.propose_framed_user(data).await
    }

    /// Proposes session writes on this node, which must lead (else the
    /// whole batch fails with [`Error::NotLeader`]); they enter the log
    /// together, each with its own outcome, in order.
    pub(crate) async fn propose_session_batch_here(
        &self,
        writes: Vec<(SessionWrite, Vec<u8>)>,
    ) -> Result<Vec<Outcome>> {
        let now = unix_ms();
        // Built only when a debug record is written.
        let ids = slog::FnValue(|_: &slog::Record| request_ids(writes.iter().map(|(w, _)| w)));
        slog::debug!(self.inner.logger, "proposing session writes"; "request_ids" => ids);
        let framed = writes
            .iter()
            .map(|(w, entry)| {
                self.check_entry_size(entry)?;
                Ok(frame_session_write(w.session, w.seq, w.acked, now, entry))
            })
            .collect();
        self.propose_framed_batch_here(framed).await
    }

    /// Proposes an encoded user entry with an idempotency key (on the
    /// leader; from any node) and returns the state machine's output. While
    /// the key is remembered
    /// ([`Config::idempotency_key_ttl`](crate::Config::idempotency_key_ttl)
    /// from its first application), the entry is applied at most once:
    /// sent again with the same key — whatever the entry — it answers what
    /// the first application answered (its output or its error) and
    /// changes nothing. A key is 1 to 256 bytes
    /// ([`Error::InvalidArgument`] otherwise).
    pub async fn propose_with_key(&self, key: &str, encoded: Vec<u8>) -> Result<Vec<u8>> {
        check_idempotency_key(key).map_err(Error::InvalidArgument)?;
        if self.is_leader() {
            // The common case, as for `propose`: no routing.
            return self.propose_with_key_here(key, &encoded).await;
        }
        self.check_entry_size(&encoded)?;
        let entry = &encoded;
        self.on_leader(
            Idempotence::Idempotent,
            |h| async move { h.propose_with_key_here(key, entry).await },
            |addr| async move {
                self.remote(&addr)?
                    .propose_with_key(key.to_owned(), entry.clone())
                    .await
            },
        )
        .await
    }

    pub(crate) async fn propose_with_key_here(&self, key: &str, encoded: &[u8]) -> Result<Vec<u8>> {
        check_idempotency_key(key).map_err(Error::InvalidArgument)?;
        self.check_entry_size(encoded)?;
        let ttl = self.config().idempotency_key_ttl;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let data = frame_keyed_write(key, ttl_ms, unix_ms(), encoded);
        self.propose_framed_user(data).await
    }

    /// Proposes a framed user write (in a session or keyed) and returns its
    /// output.
    async fn propose_framed_user(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        // The loop times proposals out itself (as for `propose`).
        let applied = self
            .call_untimed(|reply| Command::Propose {
                kind: ProposalKind::User,
                data,
                reply,
            })
            .await?;
        user_output(applied)
    }

    /// Opens a session and returns its client side.
    pub async fn session(&self) -> Result<Session> {
        let id = self.open_session().await?;
        let budget = self.config().proposal_timeout.saturating_mul(3);
        Ok(Session::new(Arc::new(self.clone()), id, budget))
    }
}

#[async_trait]
impl SessionTarget for RaftHandle {
    async fn open_session(&self) -> Result<u64> {
        RaftHandle::open_session(self).await
    }
    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>> {
        RaftHandle::propose_in_session(self, w, entry).await
    }
}

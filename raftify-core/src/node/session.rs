//! Exactly-once writes on a handle: sessions opened through the log
//! ([`RaftHandle::open_session`]), writes numbered in them
//! ([`RaftHandle::propose_in_session`]), and [`Session`], the client side
//! that numbers writes and retries them until their outcome is known.
//!
//! A write that carries `(session, seq)` is applied at most once, however
//! often it is sent (see [`crate::sessions`]): retrying it after an
//! ambiguous failure (a timeout, a connection lost after it left, a leader
//! change) is safe, and [`Session::propose`] does.

use super::handle::user_output;
use super::RaftHandle;
use crate::codec::{
    check_idempotency_key, frame_keyed_write, frame_session_open, frame_session_write,
};
use crate::error::{Error, ErrorClass, Result};
use crate::raft_loop::{Applied, Command, ProposalKind};
use crate::retry::{Idempotence, RetryPolicy};
use crate::sessions::SessionWrite;
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The leader's wall clock, in ms since the epoch: the time stamped into
/// session entries (a clock before 1970 counts as 0).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

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
        let data = frame_session_open(idle_ms, now_ms());
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
        self.on_leader(
            Idempotence::Idempotent,
            |h| async move { h.propose_in_session_here(w, entry).await },
            |addr| async move {
                self.remote(&addr)?
                    .propose_in_session(w, entry.clone())
                    .await
            },
        )
        .await
    }

    pub(crate) async fn propose_in_session_here(
        &self,
        w: SessionWrite,
        encoded: &[u8],
    ) -> Result<Vec<u8>> {
        self.check_entry_size(encoded)?;
        let data = frame_session_write(w.session, w.seq, w.acked, now_ms(), encoded);
        self.propose_framed_user(data).await
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
        let data = frame_keyed_write(key, ttl_ms, now_ms(), encoded);
        self.propose_framed_user(data).await
    }

    /// Proposes a framed user write (in a session or keyed) and returns its
    /// output.
    async fn propose_framed_user(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        // The loop times proposals out itself (as for `propose`).
        let rx = self.send_command(|reply| Command::Propose {
            kind: ProposalKind::User,
            data,
            reply,
        })?;
        user_output(self.await_reply(rx).await?)
    }

    /// Opens a session and returns its client side.
    pub async fn session(&self) -> Result<Session> {
        let id = self.open_session().await?;
        let budget = self.config().proposal_timeout * 3;
        Ok(Session::new(Arc::new(self.clone()), id, budget))
    }
}

/// Where a [`Session`] sends its writes: a node's handle, or a gRPC
/// client (`raftify_grpc::RaftClient`).
#[async_trait]
pub trait SessionTarget: Send + Sync {
    /// Proposes `entry` as write `w` (see [`RaftHandle::propose_in_session`]).
    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>>;
}

#[async_trait]
impl SessionTarget for RaftHandle {
    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>> {
        RaftHandle::propose_in_session(self, w, entry).await
    }
}

/// The client side of a session: numbers each write, remembers which are
/// still in flight (so the session keeps their answers), and retries a
/// write whose outcome is unknown — with the same number, so it is applied
/// once — until it has an answer or the retry budget
/// is spent (for a handle's sessions,
/// [`Config::proposal_timeout`](crate::Config::proposal_timeout) × 3). Writes may be issued concurrently.
pub struct Session {
    target: Arc<dyn SessionTarget>,
    id: u64,
    budget: Duration,
    next: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

impl Session {
    /// The client side of session `id` (opened with
    /// [`RaftHandle::open_session`]), retrying each write for up to
    /// `budget`.
    pub fn new(target: Arc<dyn SessionTarget>, id: u64, budget: Duration) -> Session {
        Session {
            target,
            id,
            budget,
            next: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
        }
    }

    /// The session's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Proposes an encoded user entry as the session's next write; applied
    /// exactly once if it returns `Ok`, at most once otherwise.
    pub async fn propose(&self, encoded: Vec<u8>) -> Result<Vec<u8>> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.flights().insert(seq);
        let policy = RetryPolicy::with_timeout(self.budget);
        let deadline = tokio::time::Instant::now() + policy.timeout;
        let mut attempt = 0u32;
        let result = loop {
            let acked = self.flights().first().copied().unwrap_or(seq);
            let w = SessionWrite {
                session: self.id,
                seq,
                acked,
            };
            let r = self.target.propose_in_session(w, encoded.clone()).await;
            match &r {
                Err(e)
                    if matches!(
                        e.class(),
                        ErrorClass::OutcomeUnknown | ErrorClass::RetryLater
                    ) && tokio::time::Instant::now() < deadline =>
                {
                    let pause: Duration = policy.backoff(attempt);
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(pause).await;
                }
                _ => break r,
            }
        };
        self.flights().remove(&seq);
        result
    }
}

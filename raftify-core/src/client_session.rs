//! The client side of exactly-once writes: [`Session`] numbers writes,
//! remembers which are still in flight, and retries a write whose outcome
//! is unknown with the same number until it has an answer. The replicated
//! half — what the leader and every follower keep per session — is
//! [`crate::sessions`].
//!
//! Every built-in path that sends writes through the network uses one: a
//! follower forwarding proposals to the leader (one session per node), a
//! `raftify_grpc::RaftClient` (one per client), and [`cluster_session`]
//! for callers of [`call_cluster`](crate::call_cluster). A session can be
//! opened up front ([`Session::new`] with an id) or on its first write
//! ([`Session::lazy`]); a lazy session that expired (idle for longer than
//! [`Config::session_idle_timeout`](crate::Config::session_idle_timeout))
//! opens a new one for the next write — only for a write that no earlier
//! attempt may have applied.

use crate::error::{Error, ErrorClass, Result};
use crate::retry::{deadline_after, Idempotence, RetryPolicy};
use crate::sessions::SessionWrite;
use crate::transport::{call_cluster, Transport};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a [`Session`] sends its writes: a node's handle, a gRPC client
/// (`raftify_grpc::RaftClient`), or a cluster reached through a transport
/// ([`cluster_session`]).
#[async_trait]
pub trait SessionTarget: Send + Sync {
    /// Opens a session through the log and returns its id (see
    /// [`RaftHandle::open_session`](crate::RaftHandle::open_session)).
    async fn open_session(&self) -> Result<u64>;
    /// Proposes `entry` as write `w` (see
    /// [`RaftHandle::propose_in_session`](crate::RaftHandle::propose_in_session)).
    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>>;
}

/// One opened session's numbering.
struct Opened {
    id: u64,
    next: u64,
    /// Sequence numbers sent and not yet answered (or given up on).
    in_flight: BTreeSet<u64>,
}

/// A session's client-side state without its target: for a client that
/// is its own target (a node forwarding its proposals, a gRPC client), so
/// it cannot hold a [`Session`] of itself. Opened on the first write, and
/// again after it expires (see [`Session::lazy`]).
pub struct LazySession {
    /// Opens the session (one opening at a time).
    opening: tokio::sync::Mutex<()>,
    current: Mutex<Option<Arc<Mutex<Opened>>>>,
    /// Whether an expired session is replaced by a new one.
    reopen: bool,
}

impl LazySession {
    /// Opened on the first write, and again after it expires.
    pub fn new() -> LazySession {
        LazySession {
            opening: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
            reopen: true,
        }
    }

    /// Session `id`, opened by the caller; never replaced.
    fn opened(id: u64) -> LazySession {
        let numbering = LazySession {
            opening: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
            reopen: false,
        };
        *numbering.slot() = Some(Arc::new(Mutex::new(Opened {
            id,
            next: 1,
            in_flight: BTreeSet::new(),
        })));
        numbering
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Mutex<Opened>>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's id, 0 before it is opened.
    pub fn id(&self) -> u64 {
        self.slot().as_ref().map_or(0, |o| lock(o).id)
    }

    /// The open session, opened now through `target` if there is none.
    async fn session<T: SessionTarget + ?Sized>(&self, target: &T) -> Result<Arc<Mutex<Opened>>> {
        if let Some(open) = self.slot().clone() {
            return Ok(open);
        }
        let _one = self.opening.lock().await;
        if let Some(open) = self.slot().clone() {
            return Ok(open);
        }
        let id = target.open_session().await?;
        let open = Arc::new(Mutex::new(Opened {
            id,
            next: 1,
            in_flight: BTreeSet::new(),
        }));
        *self.slot() = Some(open.clone());
        Ok(open)
    }

    /// Forgets `expired` (a later write opens a new session).
    fn drop_session(&self, expired: &Arc<Mutex<Opened>>) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|o| Arc::ptr_eq(o, expired)) {
            *slot = None;
        }
    }

    /// Proposes `entry` as the session's next write through `target`,
    /// retrying it with the same number while its outcome is unknown (or
    /// the cluster asks to retry later) for up to `budget`. Applied exactly
    /// once if it returns `Ok`, at most once otherwise.
    pub async fn propose<T: SessionTarget + ?Sized>(
        &self,
        target: &T,
        budget: Duration,
        entry: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let policy = RetryPolicy::with_timeout(budget);
        let deadline = deadline_after(policy.timeout);
        // Set once an attempt may have been applied.
        let mut sent = false;
        let mut attempt = 0u32;
        let mut open = self.session(target).await?;
        let mut w = begin(&open);
        let result = loop {
            let r = target.propose_in_session(w, entry.clone()).await;
            let retry_at = |attempt: u32| {
                let now = tokio::time::Instant::now();
                (now < deadline).then(|| policy.backoff(attempt).min(deadline - now))
            };
            match r {
                // Gone (idle too long): nothing of this write was applied,
                // since no attempt may have been; a new session takes it.
                Err(Error::SessionExpired(_)) if self.reopen && !sent => {
                    finish(&open, w.seq);
                    self.drop_session(&open);
                    if tokio::time::Instant::now() >= deadline {
                        break Err(Error::Timeout(budget));
                    }
                    open = self.session(target).await?;
                    w = begin(&open);
                }
                Err(Error::SessionExpired(why)) if sent => {
                    break Err(Error::Interrupted(format!(
                        "the session expired while a write that may have been applied was \
                         retried ({why}); its outcome is unknown"
                    )));
                }
                Err(e) if may_retry(&e) => match retry_at(attempt) {
                    Some(pause) => {
                        sent |= e.class() == ErrorClass::OutcomeUnknown;
                        attempt = attempt.saturating_add(1);
                        tokio::time::sleep(pause).await;
                        // Writes answered meanwhile raise `acked`.
                        w = again(&open, w.seq);
                    }
                    None => break Err(e),
                },
                other => break other,
            }
        };
        finish(&open, w.seq);
        result
    }
}

impl Default for LazySession {
    fn default() -> Self {
        LazySession::new()
    }
}

fn lock(o: &Arc<Mutex<Opened>>) -> std::sync::MutexGuard<'_, Opened> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the session's next number, marks it in flight, and returns the
/// write (one lock).
fn begin(open: &Arc<Mutex<Opened>>) -> SessionWrite {
    let mut o = lock(open);
    let seq = o.next;
    o.next += 1;
    o.in_flight.insert(seq);
    written(&o, seq)
}

/// Write `seq` again, acknowledging what was answered since.
fn again(open: &Arc<Mutex<Opened>>, seq: u64) -> SessionWrite {
    written(&lock(open), seq)
}

fn written(o: &Opened, seq: u64) -> SessionWrite {
    SessionWrite {
        session: o.id,
        seq,
        // Every lower number has its answer.
        acked: o.in_flight.first().copied().unwrap_or(seq),
    }
}

/// Marks write `seq` answered (or given up on).
fn finish(open: &Arc<Mutex<Opened>>, seq: u64) {
    lock(open).in_flight.remove(&seq);
}

/// A session write is sent again after these: its number makes a second
/// delivery harmless.
fn may_retry(e: &Error) -> bool {
    matches!(
        e.class(),
        ErrorClass::OutcomeUnknown | ErrorClass::RetryLater | ErrorClass::Redirect
    )
}

/// The client side of a session: numbers each write, remembers which are
/// still in flight (so the session keeps their answers), and retries a
/// write whose outcome is unknown — with the same number, so it is applied
/// once — until it has an answer or the retry budget is spent (for a
/// handle's sessions,
/// [`Config::proposal_timeout`](crate::Config::proposal_timeout) × 3).
/// Writes may be issued concurrently.
pub struct Session {
    target: Arc<dyn SessionTarget>,
    budget: Duration,
    numbering: LazySession,
}

impl Session {
    /// The client side of session `id` (opened with
    /// [`RaftHandle::open_session`](crate::RaftHandle::open_session)),
    /// retrying each write for up to `budget`. When the session expires,
    /// writes fail with [`Error::SessionExpired`].
    pub fn new(target: Arc<dyn SessionTarget>, id: u64, budget: Duration) -> Session {
        Session {
            target,
            budget,
            numbering: LazySession::opened(id),
        }
    }

    /// A session opened through `target` on the first write, and opened
    /// again on the next write after it expires.
    pub fn lazy(target: Arc<dyn SessionTarget>, budget: Duration) -> Session {
        Session {
            target,
            budget,
            numbering: LazySession::new(),
        }
    }

    /// The session's id (0 while a lazy session is not open).
    pub fn id(&self) -> u64 {
        self.numbering.id()
    }

    /// Proposes an encoded user entry as the session's next write; applied
    /// exactly once if it returns `Ok`, at most once otherwise.
    pub async fn propose(&self, encoded: Vec<u8>) -> Result<Vec<u8>> {
        self.numbering
            .propose(self.target.as_ref(), self.budget, encoded)
            .await
    }
}

/// A cluster reached through a transport, as [`call_cluster`] reaches it:
/// the target of [`cluster_session`].
struct ClusterTarget {
    transport: Arc<dyn Transport>,
    addrs: Vec<String>,
    timeout: Duration,
}

#[async_trait]
impl SessionTarget for ClusterTarget {
    async fn open_session(&self) -> Result<u64> {
        // A retried opening may open a second session: unused, it expires.
        call_cluster(
            self.transport.as_ref(),
            &self.addrs,
            self.timeout,
            Idempotence::Idempotent,
            |node| async move { node.open_session().await },
        )
        .await
    }

    async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>> {
        let entry = &entry;
        call_cluster(
            self.transport.as_ref(),
            &self.addrs,
            self.timeout,
            Idempotence::Idempotent,
            |node| async move { node.propose_in_session(w, entry.clone()).await },
        )
        .await
    }
}

/// A lazy [`Session`] on the cluster at `addrs`, reached through
/// `transport` as [`call_cluster`] reaches it: writes through it are
/// retried after ambiguous failures and applied once. Each attempt may
/// take up to `timeout`; a write is retried for up to three of them.
///
/// ```
/// # use raftify_core::{client_session::cluster_session, InProcNetwork, Transport};
/// # use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let net = InProcNetwork::new(1);
/// let session = cluster_session(net.transport(9), vec![net.addr_of(1)], Duration::from_millis(100));
/// // No node answers: the session cannot even be opened.
/// assert!(session.propose(b"x".to_vec()).await.is_err());
/// # }
/// ```
pub fn cluster_session(
    transport: Arc<dyn Transport>,
    addrs: Vec<String>,
    timeout: Duration,
) -> Session {
    let target = ClusterTarget {
        transport,
        addrs,
        timeout,
    };
    Session::lazy(Arc::new(target), timeout.saturating_mul(3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A target that expires its first session once, and loses the first
    /// answer of every write numbered `lose`.
    struct Fake {
        opened: AtomicU64,
        calls: Mutex<Vec<SessionWrite>>,
        expire_first: bool,
        lose: Option<u64>,
    }

    #[async_trait]
    impl SessionTarget for Fake {
        async fn open_session(&self) -> Result<u64> {
            Ok(10 + self.opened.fetch_add(1, Ordering::SeqCst))
        }
        async fn propose_in_session(&self, w: SessionWrite, entry: Vec<u8>) -> Result<Vec<u8>> {
            let mut calls = self.calls.lock().unwrap();
            let repeat = calls.contains(&w);
            calls.push(w);
            if self.expire_first && w.session == 10 {
                return Err(Error::SessionExpired("idle".into()));
            }
            if Some(w.seq) == self.lose && !repeat {
                return Err(Error::Transport("lost".into()));
            }
            Ok(entry)
        }
    }

    fn fake(expire_first: bool, lose: Option<u64>) -> Arc<Fake> {
        Arc::new(Fake {
            opened: AtomicU64::new(0),
            calls: Mutex::new(Vec::new()),
            expire_first,
            lose,
        })
    }

    #[tokio::test]
    async fn a_lazy_session_opens_on_the_first_write_and_retries_an_unknown_one_with_its_number() {
        let f = fake(false, Some(2));
        let s = Session::lazy(f.clone(), Duration::from_secs(5));
        assert_eq!(s.id(), 0);
        assert_eq!(s.propose(b"a".to_vec()).await.unwrap(), b"a");
        assert_eq!(s.id(), 10);
        assert_eq!(s.propose(b"b".to_vec()).await.unwrap(), b"b");
        let calls = f.calls.lock().unwrap().clone();
        let seqs: Vec<(u64, u64, u64)> =
            calls.iter().map(|w| (w.session, w.seq, w.acked)).collect();
        // Write 2 was lost once and sent again with the same number; write
        // 1 was answered, so write 2 acknowledges it.
        assert_eq!(seqs, vec![(10, 1, 1), (10, 2, 2), (10, 2, 2)]);
        assert_eq!(f.opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_expired_lazy_session_is_replaced_but_an_opened_one_is_not() {
        let f = fake(true, None);
        let s = Session::lazy(f.clone(), Duration::from_secs(5));
        assert_eq!(s.propose(b"a".to_vec()).await.unwrap(), b"a");
        assert_eq!(s.id(), 11);
        let f = fake(true, None);
        let s = Session::new(f.clone(), 10, Duration::from_secs(5));
        assert!(matches!(
            s.propose(b"a".to_vec()).await,
            Err(Error::SessionExpired(_))
        ));
    }

    #[tokio::test]
    async fn an_expiry_after_an_unknown_outcome_is_reported_as_unknown() {
        // Write 1 is lost, then its session expires: it may have been
        // applied, so it is neither re-applied in a new session nor
        // reported as refused.
        struct LoseThenExpire(AtomicU64);
        #[async_trait]
        impl SessionTarget for LoseThenExpire {
            async fn open_session(&self) -> Result<u64> {
                Ok(1)
            }
            async fn propose_in_session(&self, _: SessionWrite, _: Vec<u8>) -> Result<Vec<u8>> {
                match self.0.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(Error::Transport("lost".into())),
                    _ => Err(Error::SessionExpired("idle".into())),
                }
            }
        }
        let t = Arc::new(LoseThenExpire(AtomicU64::new(0)));
        let s = Session::lazy(t.clone(), Duration::from_secs(5));
        let err = s.propose(b"a".to_vec()).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::OutcomeUnknown, "{err}");
        assert_eq!(t.0.load(Ordering::SeqCst), 2);
    }
}

//! The one leader-seeking retry loop, shared by every caller that sends a
//! request to a cluster: [`call_cluster`](crate::call_cluster), a follower
//! forwarding proposals, and `raftify-grpc`'s client.
//!
//! It decides by [`ErrorClass`] alone:
//!
//! * `Redirect` with an address: follow it at once (up to
//!   [`RetryPolicy::max_redirects`] hops in a row);
//! * `RetryLater` (and a `Redirect` without an address): back off, then the
//!   next address;
//! * `Fatal` from one node: that node cannot serve, try the next address
//!   (when there is another);
//! * `OutcomeUnknown`: sent again only when the request is idempotent —
//!   never a plain write whose first attempt may have been applied;
//! * `Rejected`: returned.

use crate::error::{Error, ErrorClass, Result};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How long and how often to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Overall deadline of the request, retries included.
    pub timeout: Duration,
    /// First pause after a `RetryLater` (doubles, jittered).
    pub backoff_base: Duration,
    /// Longest pause.
    pub backoff_max: Duration,
    /// Most `NotLeader` hints followed in a row before backing off.
    pub max_redirects: u32,
}

impl Default for RetryPolicy {
    /// 30 s overall, pauses from 50 ms to 500 ms, 3 redirects in a row.
    fn default() -> Self {
        RetryPolicy {
            timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            max_redirects: 3,
        }
    }
}

impl RetryPolicy {
    /// The default policy with an overall `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        RetryPolicy {
            timeout,
            ..RetryPolicy::default()
        }
    }

    /// Exponential backoff with jitter: a random pause in `[d/2, d]` with
    /// `d = min(base * 2^attempt, max)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_max);
        let half = exp / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=jitter_ms))
    }
}

/// The instant `timeout` from now, or a century from now when `timeout` is
/// too long to add (a deadline of "never" from a huge configured timeout
/// must not overflow).
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Whether a request may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotence {
    /// Reads, status, leader transfers, and writes that carry an
    /// exactly-once session: sending them again is harmless.
    Idempotent,
    /// A plain write: after an `OutcomeUnknown` failure it is not resent.
    NotIdempotent,
}

/// Sends a request with `op(address)` until it succeeds, fails for good, or
/// `policy.timeout` passes. `hint` (the last known leader) is tried first,
/// then `addrs` in turn. Returns the answer and the address that gave it.
///
/// The error returned is the last one seen, or [`Error::Timeout`] when the
/// deadline cut an attempt short; a definite error is never reported for a
/// request that an earlier attempt may have applied.
pub async fn seek_leader<T, F, Fut>(
    addrs: &[String],
    hint: Option<String>,
    policy: &RetryPolicy,
    idempotence: Idempotence,
    op: F,
) -> Result<(T, String)>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    seek_leader_following(addrs, hint, || None, policy, idempotence, op).await
}

/// [`seek_leader`] for a caller that learns of leaders on its own (a
/// node, from raft): when only a hint was given, each retry asks
/// `leader_now` first and goes to the leader it names — a leader elected
/// after the hinted one died — instead of asking the dead one again.
pub async fn seek_leader_following<T, F, Fut, L>(
    addrs: &[String],
    hint: Option<String>,
    mut leader_now: L,
    policy: &RetryPolicy,
    idempotence: Idempotence,
    mut op: F,
) -> Result<(T, String)>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T>>,
    L: FnMut() -> Option<String>,
{
    if addrs.is_empty() && hint.is_none() {
        return Err(Error::InvalidArgument("no cluster address given".into()));
    }
    let idempotent = idempotence == Idempotence::Idempotent;
    let deadline = deadline_after(policy.timeout);
    let mut next = hint;
    let mut last = String::new();
    let mut turn = 0usize;
    let mut attempt = 0u32;
    let mut redirects = 0u32;
    let mut ambiguous: Option<Error> = None;
    loop {
        let addr = match next.take() {
            Some(a) => a,
            // Only a hint was given: the leader known now, else the hint
            // again (a node in an election names the new leader once it
            // knows it).
            None if addrs.is_empty() => leader_now().unwrap_or_else(|| last.clone()),
            None => {
                turn += 1;
                addrs[(turn - 1) % addrs.len()].clone()
            }
        };
        last = addr.clone();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let err = match tokio::time::timeout(remaining, op(addr.clone())).await {
            Ok(Ok(v)) => return Ok((v, addr)),
            Ok(Err(e)) => e,
            Err(_) => return Err(Error::Timeout(policy.timeout)),
        };
        let class = err.class();
        if class == ErrorClass::OutcomeUnknown && idempotent {
            ambiguous = Some(Error::Timeout(policy.timeout));
        }
        let retry = match class {
            ErrorClass::Redirect => true,
            ErrorClass::Fatal => addrs.len() > 1,
            other => other.may_retry(idempotent),
        };
        if !retry || Instant::now() >= deadline {
            // An idempotent request retried after an ambiguous failure must
            // not end on a definite error: an earlier attempt may have
            // succeeded.
            return Err(match (class, ambiguous) {
                (ErrorClass::OutcomeUnknown, _) | (_, None) => err,
                (_, Some(unknown)) => unknown,
            });
        }
        if let Error::NotLeader {
            leader_addr: Some(leader),
            ..
        } = &err
        {
            if *leader != addr && redirects < policy.max_redirects {
                redirects += 1;
                next = Some(leader.clone());
                continue;
            }
        }
        redirects = 0;
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(policy.backoff(attempt).min(remaining)).await;
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_huge_timeout_gives_a_far_deadline_instead_of_overflowing() {
        let d = deadline_after(Duration::MAX);
        assert!(d > Instant::now() + Duration::from_secs(365 * 24 * 3600));
        let near = deadline_after(Duration::from_secs(1));
        assert!(near <= Instant::now() + Duration::from_secs(1));
    }

    fn addrs() -> Vec<String> {
        vec!["a:1".into(), "b:1".into(), "c:1".into()]
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            timeout: Duration::from_secs(5),
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            max_redirects: 3,
        }
    }

    #[tokio::test]
    async fn follows_the_leader_hint() {
        let (v, at) = seek_leader(&addrs(), None, &quick(), Idempotence::NotIdempotent, |a| {
            let r = if a == "c:1" {
                Ok(7)
            } else {
                Err(Error::NotLeader {
                    leader_id: 3,
                    leader_addr: Some("c:1".into()),
                })
            };
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!((v, at.as_str()), (7, "c:1"));
    }

    #[tokio::test]
    async fn a_write_with_an_unknown_outcome_is_sent_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let err = seek_leader(&addrs(), None, &quick(), Idempotence::NotIdempotent, |_| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Error::Transport("connection reset".into())) }
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Transport(_)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_idempotent_request_is_retried_and_never_ends_definite() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let err = seek_leader(&addrs(), None, &quick(), Idempotence::Idempotent, |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                Err::<(), _>(if n == 0 {
                    Error::Transport("reset".into())
                } else {
                    Error::InvalidArgument("later refused".into())
                })
            }
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(err.class(), ErrorClass::OutcomeUnknown, "{err}");
    }

    #[tokio::test]
    async fn retry_later_goes_on_until_it_works() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let (v, _) = seek_leader(&addrs(), None, &quick(), Idempotence::NotIdempotent, |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 4 {
                    Err(Error::NoLeader)
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 4);
    }

    #[tokio::test]
    async fn with_only_a_hint_it_is_asked_again() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let (v, at) = seek_leader(
            &[],
            Some("h:1".into()),
            &quick(),
            Idempotence::NotIdempotent,
            |a| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => Err(Error::NoLeader),
                        _ => Ok(a),
                    }
                }
            },
        )
        .await
        .unwrap();
        assert_eq!((v.as_str(), at.as_str()), ("h:1", "h:1"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn rejected_is_returned_at_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let err = seek_leader(&addrs(), None, &quick(), Idempotence::Idempotent, |_| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Error::NotAMember(9)) }
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::NotAMember(9)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy::default();
        for attempt in 0..40 {
            assert!(p.backoff(attempt) <= p.backoff_max);
        }
    }
}

//! Distributed locks with leases and fencing tokens, applied through the
//! log (see [`crate::Op::Lock`]).
//!
//! A lock is granted to one holder at a time. Its lease runs on the
//! replicated clock (the largest entry stamp applied), never a node's own
//! clock, so every node agrees on who holds it. The token a grant returns
//! is the log index of the granting entry: a later grant always has a
//! larger one, so a resource that remembers the largest token it has seen
//! refuses a deposed holder.

use crate::reply::Reply;
use bytes::Bytes;
use std::collections::BTreeMap;

/// Longest lease a lock may be given (one day).
pub const MAX_LEASE_MS: u64 = 24 * 3600 * 1000;

/// Who holds a lock, with which token, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The holder's id.
    pub holder: u64,
    /// The fencing token: the log index of the grant.
    pub fence: u64,
    /// When the lease ends (ms on the replicated clock).
    pub expires_ms: u64,
}

/// Every lock whose lease has not been seen to end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locks(BTreeMap<Bytes, Held>);

impl Locks {
    /// The lock's holder, if its lease runs at `clock`.
    pub fn holder(&self, name: &[u8], clock: u64) -> Option<Held> {
        self.0.get(name).copied().filter(|h| h.expires_ms > clock)
    }

    /// Every lock recorded (leases that ended included until purged).
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Held)> {
        self.0.iter()
    }

    /// Records a lock read from a snapshot.
    pub(crate) fn restore(&mut self, name: Bytes, held: Held) {
        self.0.insert(name, held);
    }

    /// Takes or renews the lock at log index `index`; replies
    /// `[index, fence]` or `[index, nil]` when another holder has it.
    pub fn lock(&mut self, index: u64, clock: u64, name: &Bytes, holder: u64, lease: u64) -> Reply {
        if lease == 0 || lease > MAX_LEASE_MS {
            return Reply::err(format!(
                "a lock's lease must be 1 ms to {MAX_LEASE_MS} ms, not {lease}"
            ));
        }
        let expires_ms = clock.saturating_add(lease);
        let fence = match self.holder(name, clock) {
            Some(h) if h.holder != holder => {
                return Reply::Array(vec![Reply::Int(index as i64), Reply::Nil])
            }
            // Renewed by its holder: the token stays.
            Some(h) => h.fence,
            None => index,
        };
        self.0.insert(
            name.clone(),
            Held {
                holder,
                fence,
                expires_ms,
            },
        );
        Reply::Array(vec![Reply::Int(index as i64), Reply::Int(fence as i64)])
    }

    /// Releases the lock if `fence` is its token and its lease runs;
    /// replies 1 or 0.
    pub fn unlock(&mut self, clock: u64, name: &[u8], fence: u64) -> Reply {
        match self.holder(name, clock) {
            Some(h) if h.fence == fence => {
                self.0.remove(name);
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        }
    }

    /// Forgets every lock whose lease ended by `clock`.
    pub fn purge(&mut self, clock: u64) {
        self.0.retain(|_, h| h.expires_ms > clock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(r: &Reply) -> Option<i64> {
        match r {
            Reply::Array(v) => match v.get(1) {
                Some(Reply::Int(f)) => Some(*f),
                _ => None,
            },
            _ => None,
        }
    }

    #[test]
    fn one_holder_at_a_time_and_later_grants_have_larger_tokens() {
        let mut l = Locks::default();
        let name = Bytes::from("job");
        assert_eq!(granted(&l.lock(5, 1_000, &name, 1, 100)), Some(5));
        assert_eq!(granted(&l.lock(6, 1_050, &name, 2, 100)), None);
        // The holder renews: same token, longer lease.
        assert_eq!(granted(&l.lock(7, 1_090, &name, 1, 100)), Some(5));
        assert_eq!(granted(&l.lock(8, 1_150, &name, 2, 100)), None);
        // The lease ran out on the replicated clock: holder 2 gets it with
        // a larger token, and holder 1's unlock with its old token fails.
        assert_eq!(granted(&l.lock(9, 1_190, &name, 2, 100)), Some(9));
        assert_eq!(l.unlock(1_191, b"job", 5), Reply::Int(0));
        assert_eq!(l.unlock(1_192, b"job", 9), Reply::Int(1));
        assert_eq!(l.holder(b"job", 1_192), None);
        assert!(l.lock(10, 1_200, &name, 3, 0).is_error());
        l.lock(11, 1_200, &name, 3, 10);
        l.purge(1_210);
        assert_eq!(l.iter().count(), 0);
    }
}

//! [`LockGuard`]: a held distributed lock, renewed while held, released
//! on drop.

use super::error::CacheError;
use super::Cache;
use crate::{CacheEntry, Op, Reply};
use bytes::Bytes;
use raftify_core::unix_ms;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Shortest lease a lock may be asked for (renewals run every third of it).
pub const MIN_LEASE: Duration = Duration::from_millis(100);

/// A held lock. Its fencing token ([`LockGuard::token`]) is the log index
/// that granted it: a later holder's is larger, so a resource that keeps
/// the largest token it has seen refuses a holder that was deposed (its
/// lease ran out while it was cut off). The lease is renewed every third
/// of its length while the guard lives; [`LockGuard::is_held`] turns false
/// when renewals stop succeeding and the lease may have ended. Dropping the
/// guard releases the lock (in the background; [`LockGuard::release`]
/// waits for it).
pub struct LockGuard {
    cache: Cache,
    name: Bytes,
    fence: u64,
    /// Until when the lease surely runs, by this process's monotonic
    /// clock (renewals push it on).
    until: Arc<Mutex<Instant>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("token", &self.fence)
            .finish()
    }
}

impl LockGuard {
    /// The fencing token.
    pub fn token(&self) -> u64 {
        self.fence
    }

    /// Whether the lease surely still runs (measured from before the
    /// request that granted or last renewed it).
    pub fn is_held(&self) -> bool {
        self.until.lock().is_ok_and(|u| Instant::now() < *u)
    }

    /// Releases the lock now; whether it was still held.
    pub async fn release(mut self) -> Result<bool, CacheError> {
        self.released = true;
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        unlock(&self.cache, &self.name, self.fence).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.released {
            return;
        }
        let (cache, name, fence) = (self.cache.clone(), self.name.clone(), self.fence);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = unlock(&cache, &name, fence).await;
            });
        }
        // Outside a runtime the lease simply runs out.
    }
}

async fn unlock(cache: &Cache, name: &Bytes, fence: u64) -> Result<bool, CacheError> {
    let entry = CacheEntry {
        clock_ms: unix_ms(),
        op: Op::Unlock {
            name: name.clone(),
            fence,
        },
    };
    Ok(matches!(cache.propose(entry).await?, Reply::Int(1)))
}

/// Keeps the lease of the lock granted to `holder` with token `fence`
/// running: a renewal is due once a third of the lease has passed since
/// the last sure start (at once when the grant itself was slow); a failed
/// renewal is retried every tenth of the lease until the lease surely
/// ended. A reply that shows the lease ended (another holder, or a new
/// token) ends the guard's hold at once.
async fn renew(
    cache: Cache,
    name: Bytes,
    holder: u64,
    fence: u64,
    lease: Duration,
    until: Arc<Mutex<Instant>>,
) {
    let retry = (lease / 10).max(Duration::from_millis(10));
    let mut failed = false;
    loop {
        let Ok(last) = until.lock().map(|u| *u) else {
            return;
        };
        if failed {
            if Instant::now() >= last {
                return;
            }
            tokio::time::sleep(retry).await;
        } else {
            let due = last.checked_sub(lease * 2 / 3).unwrap_or(last);
            tokio::time::sleep_until(due).await;
        }
        let asked = Instant::now();
        match request(&cache, &name, holder, lease).await {
            Ok(Some(f)) if f == fence => {
                if let Ok(mut u) = until.lock() {
                    *u = (*u).max(asked + lease);
                }
                failed = false;
            }
            // Deposed: the lease ran out and the lock went to another
            // holder, or was granted afresh (a new token nobody fences with).
            Ok(_) => {
                if let Ok(mut u) = until.lock() {
                    *u = asked.min(*u);
                }
                return;
            }
            Err(_) => failed = true,
        }
    }
}

/// One lock request: `Some(token)` when granted.
async fn request(
    cache: &Cache,
    name: &Bytes,
    holder: u64,
    lease: Duration,
) -> Result<Option<u64>, CacheError> {
    let entry = CacheEntry {
        clock_ms: unix_ms(),
        op: Op::Lock {
            name: name.clone(),
            holder,
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        },
    };
    match cache.propose(entry).await? {
        Reply::Int(fence) => Ok(Some(fence as u64)),
        Reply::Nil => Ok(None),
        Reply::Error(e) => Err(CacheError::Rejected(e)),
        other => Err(CacheError::Rejected(format!("unexpected reply {other:?}"))),
    }
}

impl Cache {
    /// Takes the lock `name` if free; `None` when another holder has it.
    pub async fn try_lock(
        &self,
        name: &str,
        lease: Duration,
    ) -> Result<Option<LockGuard>, CacheError> {
        if lease < MIN_LEASE {
            return Err(CacheError::Rejected(format!(
                "a lock's lease must be at least {MIN_LEASE:?}"
            )));
        }
        let name = Bytes::copy_from_slice(name.as_bytes());
        let holder = fastrand::u64(1..);
        let start = Instant::now();
        // A request whose outcome is unknown is sent again: for the same
        // holder a second grant is a renewal with the same token.
        let fence = loop {
            match request(self, &name, holder, lease).await {
                Err(CacheError::OutcomeUnknown(_)) if start.elapsed() < lease => continue,
                r => break r?,
            }
        };
        let Some(fence) = fence else {
            return Ok(None);
        };
        let until = Arc::new(Mutex::new(start + lease));
        let renewer = tokio::spawn(renew(
            self.clone(),
            name.clone(),
            holder,
            fence,
            lease,
            until.clone(),
        ));
        Ok(Some(LockGuard {
            cache: self.clone(),
            name,
            fence,
            until,
            renewer: Some(renewer),
            released: false,
        }))
    }

    /// Takes the lock `name`, waiting while another holder has it (wrap
    /// in `tokio::time::timeout` to bound the wait).
    pub async fn lock(&self, name: &str, lease: Duration) -> Result<LockGuard, CacheError> {
        let mut pause = Duration::from_millis(10);
        loop {
            match self.try_lock(name, lease).await {
                Ok(Some(g)) => return Ok(g),
                Ok(None) | Err(CacheError::Unavailable(_)) => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(lease / 4).max(Duration::from_millis(10));
        }
    }
}

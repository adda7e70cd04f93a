//! The counter workload of the simulation: clients that increment one
//! counter in client sessions and retry every write whose outcome they do
//! not know, with the same session and sequence number, until they do.
//! Whatever the faults, the counter must end equal to the increments they
//! were acknowledged ([`crate::invariants::exactly_once`]).

use crate::rng::SimRng;
use crate::sm::{Cmd, SimNode};
use raftify_core::{AbstractLogEntry, Error, ErrorClass, SessionWrite};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The key the counter clients increment.
pub const COUNTER_KEY: &str = "counter";

/// What the counter clients were told.
#[derive(Debug, Default)]
pub struct Tally {
    /// Increments acknowledged.
    pub acked: AtomicU64,
    /// Increments whose outcome a client never learned (it gave up when the
    /// run ended).
    pub unresolved: AtomicU64,
    /// Session writes refused as expired (none expected: sessions outlive
    /// a run).
    pub expired: AtomicU64,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long, after the run stops, a client keeps retrying its last write.
const SETTLE: Duration = Duration::from_secs(60);

/// One counter client: `pick` gives a running node (any), `stop` ends the
/// run (the write in flight is still retried, for up to [`SETTLE`]).
pub async fn run(
    cid: u64,
    mut rng: SimRng,
    pick: impl Fn(&mut SimRng) -> Option<SimNode>,
    quiet: impl Fn() -> Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    // A session, opened through whichever node answers.
    let session = loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        if let Some(node) = pick(&mut rng) {
            let opened = tokio::time::timeout(CALL_TIMEOUT, node.handle().open_session()).await;
            if let Ok(Ok(id)) = opened {
                break id;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(rng.range(5, 60))).await;
        let wait = quiet();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        seq += 1;
        let cmd = Cmd::Incr {
            key: COUNTER_KEY.into(),
            nonce: format!("{cid}.{seq}"),
        };
        let Ok(entry) = cmd.encode() else {
            return;
        };
        let w = SessionWrite {
            session,
            seq,
            // Writes go one at a time: every earlier answer was received.
            acked: seq,
        };
        let mut settle_until = None;
        loop {
            if stop.load(Ordering::Acquire) {
                let until =
                    *settle_until.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
                if tokio::time::Instant::now() >= until {
                    tally.unresolved.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            let Some(node) = pick(&mut rng) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let sent = node.handle().propose_in_session(w, entry.clone());
            match tokio::time::timeout(CALL_TIMEOUT, sent).await {
                Ok(Ok(_)) => {
                    tally.acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(Error::SessionExpired(_))) => {
                    // Not applied now; it may have been before. Counted as
                    // unknown, and reported.
                    tally.expired.fetch_add(1, Ordering::Relaxed);
                    tally.unresolved.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Retried with the same number whatever happened: timeouts,
                // lost leaders, stopped nodes, refusals to forward.
                Ok(Err(e)) if e.class() == ErrorClass::Rejected => {
                    tally.unresolved.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

//! The safety and liveness properties every run is checked against, one per
//! file. Checks report into a shared [`Violations`] list rather than
//! panicking, so a run finishes, reports every violation it saw, and names
//! its seed.
//!
//! | file | property |
//! | --- | --- |
//! | [`election_safety`] | at most one leader per term; no node votes twice in a term |
//! | [`log_matching`] | two logs with an entry of the same index and term agree on every entry up to it |
//! | [`leader_completeness`] | a new leader's log holds every entry committed in earlier terms |
//! | [`state_machine_safety`] | every node applies the same command at each index, in order |
//! | [`no_lost_commits`] | a committed entry never changes or disappears; an acknowledged write is applied everywhere |
//! | [`liveness`] | once faults stop: one leader, new writes succeed, state machines converge |
//! | [`exactly_once`] | a command is applied at one index at most; session increments are counted once |

pub mod election_safety;
pub mod exactly_once;
pub mod leader_completeness;
pub mod liveness;
pub mod log_matching;
pub mod no_lost_commits;
pub mod state_machine_safety;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One property violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The property (file name in `invariants/`).
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
    /// Seen after an OS crash lost unsynced writes of a `no_sync` node:
    /// raftify documents that this may break Raft's safety, so such a
    /// violation is reported, not failed on.
    pub after_data_loss: bool,
}

/// The shared list of violations of a run.
#[derive(Clone, Default)]
pub struct Violations {
    list: Arc<Mutex<Vec<Violation>>>,
    data_lost: Arc<AtomicBool>,
}

impl Violations {
    /// Records a violation.
    pub fn report(&self, invariant: &'static str, detail: String) {
        let after_data_loss = self.data_lost.load(Ordering::Acquire);
        let mut l = self.list.lock().unwrap_or_else(|p| p.into_inner());
        // Keep reports readable: one line per distinct detail.
        if l.iter().any(|v| v.detail == detail) || l.len() >= 200 {
            return;
        }
        l.push(Violation {
            invariant,
            detail,
            after_data_loss,
        });
    }

    /// Records a violation that no `no_sync` data loss excuses (a node
    /// that cannot restart, a store left inconsistent).
    pub fn report_always(&self, invariant: &'static str, detail: String) {
        let mut l = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() < 200 {
            l.push(Violation {
                invariant,
                detail,
                after_data_loss: false,
            });
        }
    }

    /// Marks that durable-looking state was lost (an OS crash under
    /// `no_sync` dropped writes): later violations are informational.
    pub fn mark_data_lost(&self) {
        self.data_lost.store(true, Ordering::Release);
    }

    /// Whether [`Violations::mark_data_lost`] was called.
    pub fn data_lost(&self) -> bool {
        self.data_lost.load(Ordering::Acquire)
    }

    /// Every violation so far.
    pub fn all(&self) -> Vec<Violation> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The violations that fail a run (not excused by documented data loss).
    pub fn strict(&self) -> Vec<Violation> {
        self.all()
            .into_iter()
            .filter(|v| !v.after_data_loss)
            .collect()
    }
}

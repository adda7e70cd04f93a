//! The errors raftify returns, and the one classification every front-end
//! maps them by.
//!
//! Each [`Error`] has an [`ErrorClass`] that says what the caller may do:
//!
//! * [`ErrorClass::Redirect`] — send it to the leader ([`Error::NotLeader`]
//!   names it). Nothing was applied.
//! * [`ErrorClass::RetryLater`] — nothing was applied; the same request may
//!   be sent again after a pause ([`Error::NoLeader`],
//!   [`Error::ProposalDropped`], [`Error::Overloaded`], [`Error::Unreachable`],
//!   a membership change while another is in progress, ...).
//! * [`ErrorClass::OutcomeUnknown`] — the request may or may not have been
//!   applied ([`Error::Timeout`], [`Error::LeadershipLost`],
//!   [`Error::Interrupted`], [`Error::Transport`]). Only an idempotent request
//!   may be sent again; anything else must be read back first.
//! * [`ErrorClass::Rejected`] — the request itself is wrong or was refused
//!   for good; sending it again gives the same answer.
//! * [`ErrorClass::Fatal`] — this node cannot serve (it stopped, or its
//!   storage failed); another node may.
//!
//! gRPC codes, memstore's HTTP statuses and the Python exception classes are
//! all derived from this classification; retries ([`crate::retry`]) are
//! decided by it, never by an error's text.

use crate::storage::StorageError;
use std::time::Duration;

/// Result alias used across raftify-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller may do after an error. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Not applied; send the request to the leader the error names.
    Redirect,
    /// Not applied; the same request may be sent again after a pause.
    RetryLater,
    /// May or may not have been applied.
    OutcomeUnknown,
    /// Refused for good: the request is invalid or not allowed.
    Rejected,
    /// This node cannot serve; another node may.
    Fatal,
}

impl ErrorClass {
    /// Whether a request that failed with this class may be sent again
    /// without risk of applying it twice: always after `Redirect` and
    /// `RetryLater`, after `OutcomeUnknown` only when the request is
    /// idempotent (a read, or a write that carries an exactly-once session).
    pub fn may_retry(self, idempotent: bool) -> bool {
        match self {
            ErrorClass::Redirect | ErrorClass::RetryLater => true,
            ErrorClass::OutcomeUnknown => idempotent,
            ErrorClass::Rejected | ErrorClass::Fatal => false,
        }
    }

    /// The class's name in snake case (`redirect`, `retry_later`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Redirect => "redirect",
            ErrorClass::RetryLater => "retry_later",
            ErrorClass::OutcomeUnknown => "outcome_unknown",
            ErrorClass::Rejected => "rejected",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// Why a membership change was refused before it entered the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Another membership change is still being applied; retry when it is.
    InProgress,
    /// The change removes or demotes the leader: leadership must move to a
    /// voter the change keeps first (the handle's membership calls do it).
    LeaderMustMove,
    /// No voter that the change keeps can take leadership over.
    NoSuccessor,
    /// The change is impossible in the current configuration.
    Invalid(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::InProgress => f.write_str(
                "another membership change is still in progress; retry when it is applied",
            ),
            Rejection::LeaderMustMove => {
                f.write_str("the change removes or demotes the leader: transfer leadership first")
            }
            Rejection::NoSuccessor => {
                f.write_str("no voter that this change keeps can take over leadership")
            }
            Rejection::Invalid(why) => f.write_str(why),
        }
    }
}

/// Everything a raftify node call can fail with. [`Error::class`] says what
/// the caller may do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node is not the leader; send the request to `leader_addr`.
    #[error("not the leader; the leader is node {leader_id} at {leader_addr:?}")]
    NotLeader {
        /// The leader this node knows of.
        leader_id: u64,
        /// Its raft address, when known.
        leader_addr: Option<String>,
    },
    /// No leader is known right now (an election is in progress or this node
    /// is partitioned); retry later.
    #[error("no leader is known; retry after the election")]
    NoLeader,
    /// The proposal was dropped by raft before entering the log (leader
    /// changing, transfer in progress, ...). Nothing was applied; retry.
    #[error("proposal dropped by raft: {0}")]
    ProposalDropped(String),
    /// Leadership was lost while the proposal was in flight; it may still be
    /// committed by the new leader.
    #[error("leadership lost while the request was in flight; its outcome is unknown")]
    LeadershipLost,
    /// The request did not complete in time; its outcome is unknown.
    #[error("timed out after {0:?}; the outcome is unknown")]
    Timeout(Duration),
    /// The request was in the log (or on its way to a leader) when it was
    /// cut off — the node stopped, a forwarding task ended; its outcome is
    /// unknown.
    #[error("interrupted before its outcome was known: {0}")]
    Interrupted(String),
    /// Too many proposals are waiting; back off.
    #[error("too many pending proposals ({0}); back off and retry")]
    Overloaded(usize),
    /// The node is shutting down or has stopped; the request was not taken.
    #[error("the raft node has shut down")]
    Shutdown,
    /// The log entry could not be encoded or decoded.
    #[error("log entry codec error: {0}")]
    Encode(String),
    /// The state machine returned an error while applying the entry (the
    /// entry is committed; every node saw the same error).
    #[error("state machine error: {0}")]
    StateMachine(String),
    /// A membership change was refused before it entered the log.
    #[error("membership change rejected: {0}")]
    ConfChangeRejected(Rejection),
    /// A session write whose session expired (idle too long) or whose
    /// sequence number is older than what the session keeps: it was not
    /// applied now, and may have been before. Open a new session.
    #[error("session expired: {0}")]
    SessionExpired(String),
    /// The node named by a membership change or a transfer is not a member.
    #[error("node {0} is not a member")]
    NotAMember(u64),
    /// The process asked hosts no replica of this Raft group (a process
    /// that hosts many groups, see sharding): the sender's idea of where
    /// the group lives is stale, or the replica is not created yet.
    /// Nothing was applied.
    #[error("this node hosts no replica of raft group {0}")]
    NoSuchGroup(u64),
    /// A leadership transfer ended with another node leading.
    #[error("leadership went to node {leader} instead of {to}")]
    TransferFailed {
        /// The node leadership was to go to.
        to: u64,
        /// The node that leads now.
        leader: u64,
    },
    /// A request argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The server refused the caller's credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The storage failed; the node stops accepting work.
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    /// The node stopped after a fatal error (storage failure, corrupted
    /// replicated data); it must be restarted or replaced.
    #[error("the raft node stopped after a fatal error: {0}")]
    Fatal(String),
    /// The request could not be delivered (connection refused, the node is
    /// not on the network): it was not applied.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A request to another node failed after it may have been delivered.
    #[error("transport error: {0}")]
    Transport(String),
    /// raft-rs reported an error.
    #[error("raft error: {0}")]
    Raft(String),
}

impl Error {
    /// What the caller may do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::NotLeader { .. } => ErrorClass::Redirect,
            Error::NoLeader
            | Error::ProposalDropped(_)
            | Error::Overloaded(_)
            | Error::Unreachable(_)
            | Error::TransferFailed { .. }
            | Error::NoSuchGroup(_)
            | Error::ConfChangeRejected(Rejection::InProgress | Rejection::LeaderMustMove) => {
                ErrorClass::RetryLater
            }
            Error::LeadershipLost
            | Error::Timeout(_)
            | Error::Interrupted(_)
            | Error::Transport(_) => ErrorClass::OutcomeUnknown,
            Error::Encode(_)
            | Error::StateMachine(_)
            | Error::ConfChangeRejected(Rejection::NoSuccessor | Rejection::Invalid(_))
            | Error::NotAMember(_)
            | Error::SessionExpired(_)
            | Error::InvalidArgument(_)
            | Error::InvalidConfig(_)
            | Error::Unauthenticated(_)
            | Error::Raft(_) => ErrorClass::Rejected,
            Error::Shutdown | Error::Storage(_) | Error::Fatal(_) => ErrorClass::Fatal,
        }
    }

    /// The name of the variant, as used in [`ErrorInfo::kind`](crate::ErrorInfo).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotLeader { .. } => "not_leader",
            Error::NoLeader => "no_leader",
            Error::ProposalDropped(_) => "proposal_dropped",
            Error::SessionExpired(_) => "session_expired",
            Error::LeadershipLost => "leadership_lost",
            Error::Timeout(_) => "timeout",
            Error::Interrupted(_) => "interrupted",
            Error::Overloaded(_) => "overloaded",
            Error::Shutdown => "shutdown",
            Error::Encode(_) => "encode",
            Error::StateMachine(_) => "state_machine",
            Error::ConfChangeRejected(r) => match r {
                Rejection::InProgress => "conf_change_in_progress",
                Rejection::LeaderMustMove => "conf_change_leader_must_move",
                Rejection::NoSuccessor => "conf_change_no_successor",
                Rejection::Invalid(_) => "conf_change_rejected",
            },
            Error::NotAMember(_) => "not_a_member",
            Error::NoSuchGroup(_) => "no_such_group",
            Error::TransferFailed { .. } => "transfer_failed",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::InvalidConfig(_) => "invalid_config",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Storage(_) => "storage",
            Error::Fatal(_) => "fatal",
            Error::Unreachable(_) => "unreachable",
            Error::Transport(_) => "transport",
            Error::Raft(_) => "raft",
        }
    }
}

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::ProposalDropped => Error::ProposalDropped("raft refused it".into()),
            other => Error::Raft(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_outcomes_are_only_retried_when_idempotent() {
        for e in [
            Error::Timeout(Duration::from_secs(1)),
            Error::LeadershipLost,
            Error::Interrupted("stopping".into()),
            Error::Transport("reset".into()),
        ] {
            assert_eq!(e.class(), ErrorClass::OutcomeUnknown, "{e}");
            assert!(!e.class().may_retry(false), "{e}");
            assert!(e.class().may_retry(true), "{e}");
        }
        for e in [
            Error::NoLeader,
            Error::Unreachable("refused".into()),
            Error::ConfChangeRejected(Rejection::InProgress),
            Error::NoSuchGroup(7),
        ] {
            assert!(e.class().may_retry(false), "{e}");
        }
        for e in [
            Error::NotAMember(3),
            Error::ConfChangeRejected(Rejection::Invalid("x".into())),
            Error::Shutdown,
        ] {
            assert!(!e.class().may_retry(true), "{e}");
        }
    }
}

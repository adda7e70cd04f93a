//! The errors raftify returns, split by what the caller should do.
//!
//! * Retry elsewhere: [`Error::NotLeader`] (go to `leader_addr`),
//!   [`Error::NoLeader`] (retry after an election).
//! * Outcome unknown: [`Error::LeadershipLost`], [`Error::Timeout`] — the
//!   entry may or may not have been committed; make commands idempotent or
//!   read back.
//! * Not applied: [`Error::ProposalDropped`], [`Error::Overloaded`].
//! * The request itself is wrong: [`Error::InvalidArgument`],
//!   [`Error::ConfChangeRejected`], [`Error::Encode`].
//! * The node is gone or broken: [`Error::Shutdown`], [`Error::Storage`].

use crate::storage::StorageError;

/// Result alias used across raftify-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a raftify node call can fail with.
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
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Too many proposals are waiting; back off.
    #[error("too many pending proposals ({0}); back off and retry")]
    Overloaded(usize),
    /// The node is shutting down or has stopped.
    #[error("the raft node has shut down")]
    Shutdown,
    /// The log entry could not be encoded or decoded.
    #[error("log entry codec error: {0}")]
    Encode(String),
    /// The state machine returned an error while applying the entry (the
    /// entry is committed; every node saw the same error).
    #[error("state machine error: {0}")]
    StateMachine(String),
    /// A membership change was refused (invalid, or another one is pending).
    #[error("membership change rejected: {0}")]
    ConfChangeRejected(String),
    /// A request argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The storage failed; the node stops accepting work.
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    /// The node stopped after a fatal error (storage failure, corrupted
    /// replicated data); it must be restarted or replaced.
    #[error("the raft node stopped after a fatal error: {0}")]
    Fatal(String),
    /// A request to another node failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// raft-rs reported an error.
    #[error("raft error: {0}")]
    Raft(String),
}

impl Error {
    /// True for errors after which the same request may simply be retried
    /// (possibly on another node) without risk of double application.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::NoLeader
                | Error::ProposalDropped(_)
                | Error::Overloaded(_)
        )
    }
}

/// An [`Error`] as plain data, for transports: every variant maps to a
/// `kind` and back, so a caller on another node gets the same variant (a
/// [`Error::NotLeader`] keeps its leader hint).
///
/// ```
/// use raftify_core::{Error, ErrorInfo};
/// let info = ErrorInfo::from(&Error::NotLeader { leader_id: 2, leader_addr: Some("10.0.0.2:60061".into()) });
/// assert_eq!(info.kind, "not_leader");
/// assert!(matches!(info.into_error(), Some(Error::NotLeader { leader_id: 2, .. })));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorInfo {
    /// The variant, in snake case (`not_leader`, `timeout`, ...).
    pub kind: String,
    /// The variant's text payload, or the error's message.
    pub message: String,
    /// [`Error::NotLeader`]'s leader id.
    pub leader_id: u64,
    /// [`Error::NotLeader`]'s leader address.
    pub leader_addr: Option<String>,
    /// [`Error::Timeout`] in milliseconds, [`Error::Overloaded`]'s count.
    pub number: u64,
}

impl Error {
    /// The name of the variant, as used in [`ErrorInfo::kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotLeader { .. } => "not_leader",
            Error::NoLeader => "no_leader",
            Error::ProposalDropped(_) => "proposal_dropped",
            Error::LeadershipLost => "leadership_lost",
            Error::Timeout(_) => "timeout",
            Error::Overloaded(_) => "overloaded",
            Error::Shutdown => "shutdown",
            Error::Encode(_) => "encode",
            Error::StateMachine(_) => "state_machine",
            Error::ConfChangeRejected(_) => "conf_change_rejected",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::InvalidConfig(_) => "invalid_config",
            Error::Storage(_) => "storage",
            Error::Fatal(_) => "fatal",
            Error::Transport(_) => "transport",
            Error::Raft(_) => "raft",
        }
    }
}

impl From<&Error> for ErrorInfo {
    fn from(err: &Error) -> Self {
        let message = match err {
            Error::ProposalDropped(m)
            | Error::Encode(m)
            | Error::StateMachine(m)
            | Error::ConfChangeRejected(m)
            | Error::InvalidArgument(m)
            | Error::InvalidConfig(m)
            | Error::Fatal(m)
            | Error::Transport(m)
            | Error::Raft(m) => m.clone(),
            other => other.to_string(),
        };
        let (leader_id, leader_addr) = match err {
            Error::NotLeader {
                leader_id,
                leader_addr,
            } => (*leader_id, leader_addr.clone()),
            _ => (0, None),
        };
        let number = match err {
            Error::Timeout(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Error::Overloaded(n) => *n as u64,
            _ => 0,
        };
        ErrorInfo {
            kind: err.kind().to_string(),
            message,
            leader_id,
            leader_addr,
            number,
        }
    }
}

impl ErrorInfo {
    /// The error this describes; `None` for an unknown kind (a newer peer).
    pub fn into_error(self) -> Option<Error> {
        let msg = self.message;
        Some(match self.kind.as_str() {
            "not_leader" => Error::NotLeader {
                leader_id: self.leader_id,
                leader_addr: self.leader_addr,
            },
            "no_leader" => Error::NoLeader,
            "proposal_dropped" => Error::ProposalDropped(msg),
            "leadership_lost" => Error::LeadershipLost,
            "timeout" => Error::Timeout(std::time::Duration::from_millis(self.number)),
            "overloaded" => Error::Overloaded(usize::try_from(self.number).unwrap_or(usize::MAX)),
            "shutdown" => Error::Shutdown,
            "encode" => Error::Encode(msg),
            "state_machine" => Error::StateMachine(msg),
            "conf_change_rejected" => Error::ConfChangeRejected(msg),
            "invalid_argument" => Error::InvalidArgument(msg),
            "invalid_config" => Error::InvalidConfig(msg),
            "storage" => {
                Error::Storage(StorageError::Backend(format!("remote node: {msg}").into()))
            }
            "fatal" => Error::Fatal(msg),
            "transport" => Error::Transport(msg),
            "raft" => Error::Raft(msg),
            _ => return None,
        })
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

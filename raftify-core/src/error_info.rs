//! [`ErrorInfo`]: an [`Error`] as plain data, for transports.

use crate::error::{Error, Rejection};
use crate::storage::StorageError;
use std::time::Duration;

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
    /// [`Error::NotLeader`]'s leader id, [`Error::TransferFailed`]'s leader.
    pub leader_id: u64,
    /// [`Error::NotLeader`]'s leader address.
    pub leader_addr: Option<String>,
    /// [`Error::Timeout`] in milliseconds, [`Error::Overloaded`]'s count,
    /// the node of [`Error::NotAMember`] and [`Error::TransferFailed`].
    pub number: u64,
}

impl From<&Error> for ErrorInfo {
    fn from(err: &Error) -> Self {
        let message = match err {
            Error::ProposalDropped(m)
            | Error::SessionExpired(m)
            | Error::Interrupted(m)
            | Error::Encode(m)
            | Error::StateMachine(m)
            | Error::ConfChangeRejected(Rejection::Invalid(m))
            | Error::InvalidArgument(m)
            | Error::InvalidConfig(m)
            | Error::Unauthenticated(m)
            | Error::Fatal(m)
            | Error::Unreachable(m)
            | Error::Transport(m)
            | Error::Raft(m) => m.clone(),
            other => other.to_string(),
        };
        let (leader_id, leader_addr) = match err {
            Error::NotLeader {
                leader_id,
                leader_addr,
            } => (*leader_id, leader_addr.clone()),
            Error::TransferFailed { leader, .. } => (*leader, None),
            _ => (0, None),
        };
        let number = match err {
            Error::Timeout(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Error::Overloaded(n) => *n as u64,
            Error::NotAMember(id)
            | Error::NoSuchGroup(id)
            | Error::TransferFailed { to: id, .. } => *id,
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
            "session_expired" => Error::SessionExpired(msg),
            "leadership_lost" => Error::LeadershipLost,
            "timeout" => Error::Timeout(Duration::from_millis(self.number)),
            "interrupted" => Error::Interrupted(msg),
            "overloaded" => Error::Overloaded(usize::try_from(self.number).unwrap_or(usize::MAX)),
            "shutdown" => Error::Shutdown,
            "encode" => Error::Encode(msg),
            "state_machine" => Error::StateMachine(msg),
            "conf_change_in_progress" => Error::ConfChangeRejected(Rejection::InProgress),
            "conf_change_leader_must_move" => Error::ConfChangeRejected(Rejection::LeaderMustMove),
            "conf_change_no_successor" => Error::ConfChangeRejected(Rejection::NoSuccessor),
            "conf_change_rejected" => Error::ConfChangeRejected(Rejection::Invalid(msg)),
            "not_a_member" => Error::NotAMember(self.number),
            "no_such_group" => Error::NoSuchGroup(self.number),
            "transfer_failed" => Error::TransferFailed {
                to: self.number,
                leader: self.leader_id,
            },
            "invalid_argument" => Error::InvalidArgument(msg),
            "invalid_config" => Error::InvalidConfig(msg),
            "unauthenticated" => Error::Unauthenticated(msg),
            "storage" => {
                Error::Storage(StorageError::Backend(format!("remote node: {msg}").into()))
            }
            "fatal" => Error::Fatal(msg),
            "unreachable" => Error::Unreachable(msg),
            "transport" => Error::Transport(msg),
            "raft" => Error::Raft(msg),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_survives_the_round_trip() {
        let all = vec![
            Error::NotLeader {
                leader_id: 2,
                leader_addr: Some("a:1".into()),
            },
            Error::NoLeader,
            Error::ProposalDropped("x".into()),
            Error::SessionExpired("gone".into()),
            Error::LeadershipLost,
            Error::Timeout(Duration::from_millis(1500)),
            Error::Interrupted("stop".into()),
            Error::Overloaded(7),
            Error::Shutdown,
            Error::Encode("e".into()),
            Error::StateMachine("boom".into()),
            Error::ConfChangeRejected(Rejection::InProgress),
            Error::ConfChangeRejected(Rejection::LeaderMustMove),
            Error::ConfChangeRejected(Rejection::NoSuccessor),
            Error::ConfChangeRejected(Rejection::Invalid("bad".into())),
            Error::NotAMember(4),
            Error::NoSuchGroup(9),
            Error::TransferFailed { to: 2, leader: 3 },
            Error::InvalidArgument("a".into()),
            Error::InvalidConfig("c".into()),
            Error::Unauthenticated("token".into()),
            Error::Fatal("f".into()),
            Error::Unreachable("refused".into()),
            Error::Transport("reset".into()),
            Error::Raft("r".into()),
        ];
        for e in all {
            let back = ErrorInfo::from(&e)
                .into_error()
                .unwrap_or_else(|| panic!("{e:?} did not come back"));
            assert_eq!(back.kind(), e.kind());
            assert_eq!(back.class(), e.class());
            assert_eq!(back.to_string(), e.to_string());
        }
        let storage = Error::Storage(StorageError::Backend("disk".into()));
        let back = ErrorInfo::from(&storage).into_error();
        assert!(matches!(back, Some(Error::Storage(_))));
    }
}

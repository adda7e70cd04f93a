//! Mapping between raftify-core's [`Error`] and [`tonic::Status`].
//!
//! A server turns an `Error` into a status with a fitting gRPC code, the
//! error's text as message, and metadata naming the variant
//! (`x-raftify-error`) plus its fields (`x-raftify-leader-id`,
//! `x-raftify-leader-addr`, ...). The calling side rebuilds the same
//! variant, so [`Error::NotLeader`] keeps its leader hint across the wire.
//! Statuses without that metadata (the transport itself failed, a proxy, a
//! wrong token) map by code.

use raftify_core::{Error, StorageError};
use std::time::Duration;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

const KIND: &str = "x-raftify-error";
const LEADER_ID: &str = "x-raftify-leader-id";
const LEADER_ADDR: &str = "x-raftify-leader-addr";
const NUMBER: &str = "x-raftify-number";

fn put(md: &mut MetadataMap, key: &'static str, value: &str) {
    if let Ok(v) = MetadataValue::try_from(value) {
        md.insert(key, v);
    }
}

fn get<'a>(md: &'a MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key).and_then(|v| v.to_str().ok())
}

/// Converts a core error into a gRPC status carrying enough metadata to be
/// turned back into the same error by [`status_to_error`].
pub fn error_to_status(err: &Error) -> Status {
    let (code, kind) = match err {
        Error::NotLeader { .. } => (Code::FailedPrecondition, "not_leader"),
        Error::NoLeader => (Code::Unavailable, "no_leader"),
        Error::ProposalDropped(_) => (Code::Aborted, "proposal_dropped"),
        Error::LeadershipLost => (Code::Aborted, "leadership_lost"),
        Error::Timeout(_) => (Code::DeadlineExceeded, "timeout"),
        Error::Overloaded(_) => (Code::ResourceExhausted, "overloaded"),
        Error::Shutdown => (Code::Unavailable, "shutdown"),
        Error::Encode(_) => (Code::InvalidArgument, "encode"),
        Error::StateMachine(_) => (Code::Unknown, "state_machine"),
        Error::ConfChangeRejected(_) => (Code::FailedPrecondition, "conf_change_rejected"),
        Error::InvalidArgument(_) => (Code::InvalidArgument, "invalid_argument"),
        Error::InvalidConfig(_) => (Code::InvalidArgument, "invalid_config"),
        Error::Storage(_) => (Code::Internal, "storage"),
        Error::Fatal(_) => (Code::Internal, "fatal"),
        Error::Transport(_) => (Code::Unavailable, "transport"),
        Error::Raft(_) => (Code::Internal, "raft"),
    };
    // Variants with a payload send the payload alone as the message, so the
    // other side rebuilds the exact error; the rest send the error's text.
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
    let mut status = Status::new(code, message);
    let md = status.metadata_mut();
    put(md, KIND, kind);
    match err {
        Error::NotLeader {
            leader_id,
            leader_addr,
        } => {
            put(md, LEADER_ID, &leader_id.to_string());
            if let Some(addr) = leader_addr {
                put(md, LEADER_ADDR, addr);
            }
        }
        Error::Timeout(d) => put(md, NUMBER, &d.as_millis().to_string()),
        Error::Overloaded(n) => put(md, NUMBER, &n.to_string()),
        _ => {}
    }
    status
}

/// Converts a gRPC status back into a core error (see [`error_to_status`]).
pub fn status_to_error(status: &Status) -> Error {
    let md = status.metadata();
    let msg = status.message().to_string();
    let number = get(md, NUMBER).and_then(|n| n.parse::<u64>().ok());
    match get(md, KIND) {
        Some("not_leader") => Error::NotLeader {
            leader_id: get(md, LEADER_ID).and_then(|s| s.parse().ok()).unwrap_or(0),
            leader_addr: get(md, LEADER_ADDR).map(str::to_string),
        },
        Some("no_leader") => Error::NoLeader,
        Some("proposal_dropped") => Error::ProposalDropped(msg),
        Some("leadership_lost") => Error::LeadershipLost,
        Some("timeout") => Error::Timeout(Duration::from_millis(number.unwrap_or(0))),
        Some("overloaded") => Error::Overloaded(number.unwrap_or(0) as usize),
        Some("shutdown") => Error::Shutdown,
        Some("encode") => Error::Encode(msg),
        Some("state_machine") => Error::StateMachine(msg),
        Some("conf_change_rejected") => Error::ConfChangeRejected(msg),
        Some("invalid_argument") => Error::InvalidArgument(msg),
        Some("invalid_config") => Error::InvalidConfig(msg),
        Some("storage") => {
            Error::Storage(StorageError::Backend(format!("remote node: {msg}").into()))
        }
        Some("fatal") => Error::Fatal(msg),
        Some("transport") => Error::Transport(msg),
        Some("raft") => Error::Raft(msg),
        _ => by_code(status),
    }
}

fn by_code(status: &Status) -> Error {
    let msg = status.message();
    match status.code() {
        Code::DeadlineExceeded => Error::Timeout(Duration::ZERO),
        Code::InvalidArgument | Code::OutOfRange => {
            Error::InvalidArgument(format!("rejected by the server: {msg}"))
        }
        Code::ResourceExhausted => Error::Transport(format!("resource exhausted: {msg}")),
        // A wrong or missing token is a configuration problem: not retried.
        Code::Unauthenticated => Error::InvalidConfig(format!("unauthenticated: {msg}")),
        Code::PermissionDenied => Error::InvalidConfig(format!("permission denied: {msg}")),
        Code::Unimplemented => Error::Transport(format!("unimplemented: {msg}")),
        code => Error::Transport(format!("{code:?}: {msg}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(e: Error) -> Error {
        status_to_error(&error_to_status(&e))
    }

    #[test]
    fn errors_survive_the_wire() {
        match roundtrip(Error::NotLeader {
            leader_id: 3,
            leader_addr: Some("127.0.0.1:4000".into()),
        }) {
            Error::NotLeader {
                leader_id: 3,
                leader_addr: Some(a),
            } => assert_eq!(a, "127.0.0.1:4000"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            roundtrip(Error::NotLeader {
                leader_id: 0,
                leader_addr: None
            }),
            Error::NotLeader {
                leader_id: 0,
                leader_addr: None
            }
        ));
        assert!(matches!(roundtrip(Error::NoLeader), Error::NoLeader));
        assert!(matches!(
            roundtrip(Error::LeadershipLost),
            Error::LeadershipLost
        ));
        assert!(matches!(roundtrip(Error::Shutdown), Error::Shutdown));
        assert!(matches!(
            roundtrip(Error::Timeout(Duration::from_millis(1500))),
            Error::Timeout(d) if d == Duration::from_millis(1500)
        ));
        assert!(matches!(
            roundtrip(Error::Overloaded(7)),
            Error::Overloaded(7)
        ));
        assert!(matches!(
            roundtrip(Error::ConfChangeRejected("pending".into())),
            Error::ConfChangeRejected(m) if m == "pending"
        ));
        assert!(matches!(
            roundtrip(Error::StateMachine("boom".into())),
            Error::StateMachine(m) if m == "boom"
        ));
        assert!(matches!(
            roundtrip(Error::ProposalDropped("x".into())),
            Error::ProposalDropped(m) if m == "x"
        ));
        assert!(matches!(
            status_to_error(&Status::unavailable("connection refused")),
            Error::Transport(_)
        ));
        assert!(matches!(
            status_to_error(&Status::deadline_exceeded("slow")),
            Error::Timeout(_)
        ));
        assert_eq!(error_to_status(&Error::NoLeader).code(), Code::Unavailable);
        assert_eq!(
            error_to_status(&Error::InvalidArgument("x".into())).code(),
            Code::InvalidArgument
        );
    }
}

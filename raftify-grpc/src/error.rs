//! Mapping between raftify-core's [`Error`] and [`tonic::Status`].
//!
//! A server turns an `Error` into a status with a fitting gRPC code, the
//! error's text as message, and metadata naming the variant
//! (`x-raftify-error`) plus its fields (`x-raftify-leader-id`,
//! `x-raftify-leader-addr`, ...). The calling side rebuilds the same
//! variant, so [`Error::NotLeader`] keeps its leader hint across the wire.
//! Statuses without that metadata (the transport itself failed, a proxy, a
//! wrong token) map by code.

use raftify_core::{Error, ErrorClass, ErrorInfo};
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

/// The gRPC code an error is sent with: by its [`ErrorClass`], refined per
/// variant where gRPC has a closer code. (The receiving side rebuilds the
/// exact variant from the metadata; the code is for other gRPC clients.)
pub fn code_of(err: &Error) -> Code {
    match (err.class(), err) {
        (_, Error::Overloaded(_)) => Code::ResourceExhausted,
        (_, Error::Timeout(_)) => Code::DeadlineExceeded,
        (_, Error::ProposalDropped(_) | Error::LeadershipLost | Error::Interrupted(_)) => {
            Code::Aborted
        }
        (_, Error::StateMachine(_)) => Code::Unknown,
        (_, Error::Unauthenticated(_)) => Code::Unauthenticated,
        (_, Error::NotAMember(_) | Error::NoSuchGroup(_)) => Code::NotFound,
        (ErrorClass::Redirect, _) => Code::FailedPrecondition,
        (_, Error::ConfChangeRejected(_)) => Code::FailedPrecondition,
        (ErrorClass::RetryLater | ErrorClass::OutcomeUnknown, _) => Code::Unavailable,
        (ErrorClass::Rejected, _) => Code::InvalidArgument,
        (ErrorClass::Fatal, Error::Shutdown) => Code::Unavailable,
        (ErrorClass::Fatal, _) => Code::Internal,
    }
}

/// Converts a core error into a gRPC status carrying enough metadata to be
/// turned back into the same error by [`status_to_error`].
pub fn error_to_status(err: &Error) -> Status {
    // Variants with a payload send the payload alone as the message, so the
    // other side rebuilds the exact error; the rest send the error's text.
    let info = ErrorInfo::from(err);
    let mut status = Status::new(code_of(err), info.message);
    let md = status.metadata_mut();
    put(md, KIND, &info.kind);
    if let Error::NotLeader { .. } = err {
        put(md, LEADER_ID, &info.leader_id.to_string());
        if let Some(addr) = &info.leader_addr {
            put(md, LEADER_ADDR, addr);
        }
    }
    if info.number != 0 {
        put(md, NUMBER, &info.number.to_string());
    }
    status
}

/// Converts a gRPC status back into a core error (see [`error_to_status`]).
pub fn status_to_error(status: &Status) -> Error {
    let md = status.metadata();
    let Some(kind) = get(md, KIND) else {
        return by_code(status);
    };
    let info = ErrorInfo {
        kind: kind.to_string(),
        message: status.message().to_string(),
        leader_id: get(md, LEADER_ID).and_then(|s| s.parse().ok()).unwrap_or(0),
        leader_addr: get(md, LEADER_ADDR).map(str::to_string),
        number: get(md, NUMBER).and_then(|n| n.parse().ok()).unwrap_or(0),
    };
    info.into_error().unwrap_or_else(|| by_code(status))
}

fn by_code(status: &Status) -> Error {
    let msg = status.message();
    match status.code() {
        Code::DeadlineExceeded => Error::Timeout(Duration::ZERO),
        Code::InvalidArgument | Code::OutOfRange => {
            Error::InvalidArgument(format!("rejected by the server: {msg}"))
        }
        Code::ResourceExhausted => Error::Transport(format!("resource exhausted: {msg}")),
        // A wrong or missing credential: not retried.
        Code::Unauthenticated => Error::Unauthenticated(msg.to_string()),
        Code::PermissionDenied => Error::Unauthenticated(format!("permission denied: {msg}")),
        // Refused for good: the server is another raftify version, or not
        // a raftify raft port at all.
        Code::Unimplemented => Error::InvalidArgument(format!(
            "the server does not serve this call (another raftify version, or not a raftify raft port?): {msg}"
        )),
        Code::Unavailable if never_sent(status) => {
            Error::Unreachable(format!("cannot connect: {}", describe(status)))
        }
        code => Error::Transport(format!("{code:?}: {}", describe(status))),
    }
}

/// Whether the RPC failed before any of it could reach a server: the
/// connection was never established (refused, no route, connect timeout).
/// Anything later (a reset, a broken stream) may have been delivered.
fn never_sent(status: &Status) -> bool {
    use std::error::Error as _;
    let mut source = status.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            );
        }
        source = e.source();
    }
    false
}

/// A status's message with its causes (`message: cause: cause`).
fn describe(status: &Status) -> String {
    use std::error::Error as _;
    let mut out = status.message().to_string();
    let mut source = status.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftify_core::Rejection;

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
            roundtrip(Error::ConfChangeRejected(Rejection::InProgress)),
            Error::ConfChangeRejected(Rejection::InProgress)
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

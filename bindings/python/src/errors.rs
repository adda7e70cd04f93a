//! raftify-core errors as Python exceptions.
//!
//! The exception classes are plain Python classes defined in
//! `raftify/_errors.py` (so they can inherit from two bases, e.g.
//! `raftify.TimeoutError` is also a builtin `TimeoutError`); this module
//! looks them up and instantiates them.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use raftify_core::Error;

/// Instantiates `raftify.<class_name>(*args)` as a `PyErr`.
pub fn raftify_err<'py, A>(py: Python<'py>, class_name: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let made = py
        .import("raftify._errors")
        .and_then(|m| m.getattr(class_name))
        .and_then(|cls| cls.call1(args));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

/// A `raftify.<class_name>(message)`.
pub fn raftify_msg(py: Python<'_>, class_name: &str, message: impl Into<String>) -> PyErr {
    raftify_err(py, class_name, (message.into(),))
}

/// The exception class for a core error.
fn class_of(e: &Error) -> &'static str {
    match e {
        Error::NotLeader { .. } => "NotLeaderError",
        Error::NoLeader => "NoLeaderError",
        Error::ProposalDropped(_) => "ProposalDroppedError",
        Error::SessionExpired(_) => "SessionExpiredError",
        Error::LeadershipLost => "LeadershipLostError",
        Error::Timeout(_) => "TimeoutError",
        Error::Interrupted(_) => "OutcomeUnknownError",
        Error::Overloaded(_) => "OverloadedError",
        Error::Shutdown => "ShutdownError",
        Error::Encode(_) => "CodecError",
        Error::StateMachine(_) => "StateMachineError",
        Error::ConfChangeRejected(_) => "ConfChangeError",
        Error::NotAMember(_) => "NotAMemberError",
        Error::NoSuchGroup(_) => "NoSuchGroupError",
        Error::TransferFailed { .. } => "TransferFailedError",
        Error::InvalidArgument(_) => "InvalidArgumentError",
        Error::InvalidConfig(_) => "ConfigError",
        Error::Unauthenticated(_) => "UnauthenticatedError",
        Error::Storage(_) => "StorageError",
        Error::Fatal(_) => "FatalError",
        Error::Unreachable(_) => "UnreachableError",
        Error::Transport(_) => "TransportError",
        Error::Raft(_) => "RaftError",
    }
}

/// Converts a core error into the matching Python exception, with its
/// `error_class` and `retryable` set from the error's class (the same
/// classification every front-end maps by).
pub fn to_pyerr(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    let class = e.class();
    let err = match e {
        Error::NotLeader {
            leader_id,
            leader_addr,
        } => raftify_err(py, "NotLeaderError", (message, leader_id, leader_addr)),
        Error::Timeout(d) => raftify_err(py, "TimeoutError", (message, d.as_secs_f64())),
        other => raftify_msg(py, class_of(&other), message),
    };
    let value = err.value(py);
    // Attribute writes on a fresh exception instance cannot fail in practice;
    // if one did, the class attributes still give the right answer.
    let _ = value.setattr("error_class", class.as_str());
    let _ = value.setattr("retryable", class.may_retry(false));
    err
}

/// An error in the bindings' own plumbing (should not happen).
pub fn internal(message: impl Into<String>) -> PyErr {
    PyRuntimeError::new_err(message.into())
}

/// The text of a Python exception as a core error message:
/// `ValueError: bad command`.
pub fn describe(py: Python<'_>, e: &PyErr) -> String {
    let ty = e
        .get_type(py)
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let text = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    if text.is_empty() {
        ty
    } else {
        format!("{ty}: {text}")
    }
}

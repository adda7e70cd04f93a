//! [`CacheError`]: what the embedded cache's calls fail with.

use raftify_core::ErrorClass;

/// Why a call of [`Cache`](super::Cache) failed.
///
/// [`CacheError::class`] says whether it may be retried: a write that
/// failed with [`CacheError::OutcomeUnknown`] may have been applied, and is
/// only safe to repeat if it is idempotent (a put of the same value, a
/// delete), not an `incr`.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No cache of this name was configured.
    #[error("no cache named {0:?} (configure it with CacheBuilder::cache)")]
    UnknownCache(String),
    /// The value could not be serialized.
    #[error("cannot serialize the value: {0}")]
    Serialize(String),
    /// The stored value does not deserialize as the requested type; the
    /// cache is unchanged.
    #[error("the value of {cache}/{key} does not deserialize as the requested type: {error}")]
    Deserialize {
        /// The cache.
        cache: String,
        /// The key (lossy UTF-8).
        key: String,
        /// serde's message.
        error: String,
    },
    /// Refused for good: the request is invalid (a value over the cache's
    /// byte bound, an increment of a value that is not an integer, ...).
    #[error("{0}")]
    Rejected(String),
    /// The cluster cannot serve it now (no leader, quorum lost): nothing
    /// was applied; it may be sent again later.
    #[error("the cache is unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been applied (the node lost its
    /// leader or the answer while it was in flight).
    #[error("the outcome is not known: {0}")]
    OutcomeUnknown(String),
    /// The write is committed (and will be applied on every member), but
    /// with [`WriteAck::AllLive`](super::WriteAck::AllLive) these live
    /// members had not applied it within `limit`. Do not repeat it.
    #[error(
        "entry {index} is committed, but members {missing:?} had not applied it within {limit:?}"
    )]
    AckTimeout {
        /// The write's log index.
        index: u64,
        /// The members that had not applied it.
        missing: Vec<u64>,
        /// How long the call waited.
        limit: std::time::Duration,
    },
    /// A configuration value is invalid; names the variable or setting.
    #[error("{var}: {message}")]
    Config {
        /// The environment variable or builder setting.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// The node did not start.
    #[error("the cache node did not start: {0}")]
    Launch(#[from] raftify::LaunchError),
    /// The node has stopped.
    #[error("the cache has been shut down")]
    Shutdown,
}

impl CacheError {
    /// How a caller may react (the core's one classification).
    pub fn class(&self) -> ErrorClass {
        match self {
            CacheError::Unavailable(_) => ErrorClass::RetryLater,
            CacheError::OutcomeUnknown(_) => ErrorClass::OutcomeUnknown,
            CacheError::Launch(_) | CacheError::Shutdown => ErrorClass::Fatal,
            _ => ErrorClass::Rejected,
        }
    }

    pub(crate) fn config(var: &str, message: impl Into<String>) -> Self {
        CacheError::Config {
            var: var.to_string(),
            message: message.into(),
        }
    }

    /// A core error, classified.
    pub(crate) fn from_raft(e: raftify_core::Error) -> Self {
        match e.class() {
            ErrorClass::Redirect | ErrorClass::RetryLater => CacheError::Unavailable(e.to_string()),
            ErrorClass::OutcomeUnknown => CacheError::OutcomeUnknown(e.to_string()),
            ErrorClass::Rejected => CacheError::Rejected(e.to_string()),
            ErrorClass::Fatal => match e {
                raftify_core::Error::Shutdown => CacheError::Shutdown,
                e => CacheError::Unavailable(e.to_string()),
            },
        }
    }
}

"""raftify's exception classes; raised by the native module."""

from __future__ import annotations

import builtins
from typing import Optional


class RaftifyError(Exception):
    """Base class of every raftify error.

    ``error_class`` says what the caller may do (the same classification as
    the Rust ``ErrorClass``): ``"redirect"`` (go to the leader),
    ``"retry_later"`` (nothing was applied), ``"outcome_unknown"`` (the
    request may or may not have been applied: read back before retrying a
    write), ``"rejected"`` (refused for good) or ``"fatal"`` (this node
    cannot serve).
    """

    #: True when the same request may simply be retried (possibly on another
    #: node) without risk of applying it twice.
    retryable: bool = False
    #: What the caller may do; see the class docstring.
    error_class: str = "rejected"


class OutcomeUnknownError(RaftifyError):
    """The request may or may not have been applied (it was cut off after it
    left: a timeout, a lost leadership, a stopping node, a broken
    connection). Never resend a write after it without reading back."""

    error_class = "outcome_unknown"


class NotLeaderError(RaftifyError):
    """This node is not the leader; send the request to ``leader_addr``."""

    retryable = True

    def __init__(
        self, message: str, leader_id: int = 0, leader_addr: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_addr = leader_addr


class NoLeaderError(RaftifyError):
    """No leader is known (an election is in progress); retry later."""

    retryable = True


class TimeoutError(OutcomeUnknownError, builtins.TimeoutError):
    """The request did not complete in time; its outcome is unknown."""

    def __init__(self, message: str, timeout: Optional[float] = None) -> None:
        super().__init__(message)
        self.timeout = timeout


class LeadershipLostError(OutcomeUnknownError):
    """Leadership changed while the request was in flight; its outcome is
    unknown (the new leader may still commit it)."""


class ProposalDroppedError(RaftifyError):
    """Raft dropped the proposal before it entered the log; nothing was
    applied: retry."""

    retryable = True


class SessionExpiredError(RaftifyError):
    """A session write whose session expired (idle too long) or whose
    sequence number is older than what the session keeps: not applied now
    (it may have been before). Open a new session."""


class OverloadedError(RaftifyError):
    """Too many requests are waiting; back off and retry."""

    retryable = True


class ShutdownError(RaftifyError):
    """The node is shutting down or has stopped."""


class CodecError(RaftifyError):
    """An entry could not be encoded or decoded."""


class StateMachineError(RaftifyError):
    """The state machine raised while applying the entry. The entry is
    committed, and every node saw the same error."""


class ConfChangeError(RaftifyError):
    """A membership change was refused (invalid, or another is pending)."""


class InvalidArgumentError(RaftifyError, ValueError):
    """A request argument is invalid."""


class ConfigError(InvalidArgumentError):
    """The configuration is invalid."""


class StorageError(RaftifyError):
    """The storage failed; the node stops accepting work."""


class FatalError(RaftifyError):
    """The node stopped after a fatal error and must be restarted."""


class TransportError(RaftifyError):
    """A request to another node failed. Its ``error_class`` says whether
    it may have been delivered (``"outcome_unknown"``) or not."""

    error_class = "outcome_unknown"


class UnreachableError(TransportError):
    """The request could not be delivered (connection refused, no route):
    nothing was applied."""

    retryable = True
    error_class = "retry_later"


class NoSuchGroupError(RaftifyError):
    """The node asked hosts no replica of the Raft group named (a sharded
    deployment whose placement moved): nothing was applied; ask again
    where the group lives now."""

    retryable = True
    error_class = "retry_later"


class NotAMemberError(InvalidArgumentError):
    """The node a request names is not a member of the cluster."""


class TransferFailedError(RaftifyError):
    """A leadership transfer ended with another node leading; retry."""

    retryable = True
    error_class = "retry_later"


class UnauthenticatedError(RaftifyError):
    """The server refused the credentials (a missing or wrong token)."""


class RaftError(RaftifyError):
    """raft-rs reported an error."""

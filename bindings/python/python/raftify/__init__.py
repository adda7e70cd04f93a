"""raftify: replicated state machines in Python.

Write a state machine class (``apply``, ``snapshot``, ``restore`` and
optionally ``read``), hand it to a :class:`Node` with a :class:`Config`,
``start()`` it, and ``propose()`` entries: raftify (Rust, over tikv's
raft-rs) replicates them through the Raft log to every node, over gRPC,
durably in LMDB, and returns ``apply``'s output to the proposer.

See the README for a complete example.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional, Protocol, runtime_checkable

if sys.version_info >= (3, 11):
    from typing import TypedDict
else:  # pragma: no cover
    from typing_extensions import TypedDict

from ._errors import (
    CodecError,
    ConfChangeError,
    ConfigError,
    FatalError,
    InvalidArgumentError,
    LeadershipLostError,
    NoLeaderError,
    NoSuchGroupError,
    NotAMemberError,
    NotLeaderError,
    OutcomeUnknownError,
    OverloadedError,
    ProposalDroppedError,
    RaftError,
    SessionExpiredError,
    RaftifyError,
    ShutdownError,
    StateMachineError,
    StorageError,
    TimeoutError,
    TransferFailedError,
    TransportError,
    UnauthenticatedError,
    UnreachableError,
)
from ._raftify import Config, JoinTicket, Node, __version__, request_join_ticket, save_snapshot



@runtime_checkable
class StateMachine(Protocol):
    """What a :class:`Node` replicates.

    ``apply`` is called once per committed entry, in log order, on every node,
    from raftify's runtime thread (holding the GIL): it must be deterministic
    and should not block. Its return value (bytes or None) goes back to the
    proposer; an exception becomes a :class:`StateMachineError` for the
    proposer, and the node moves on. Implement ``apply_at(index, entry)``
    instead to receive the entry's log index. ``read(query)``, if present,
    serves :meth:`Node.read`.
    """

    def apply(self, entry: Any) -> Optional[bytes]: ...

    def snapshot(self) -> bytes: ...

    def restore(self, snapshot: bytes) -> None: ...


@runtime_checkable
class Codec(Protocol):
    """Turns log entries into bytes and back (give it to :class:`Node` to
    propose Python objects instead of bytes)."""

    def encode(self, entry: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class JsonCodec:
    """A codec for JSON-serializable entries (dicts, lists, str, numbers)."""

    def encode(self, entry: Any) -> bytes:
        return json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


class Member(TypedDict):
    """A voter or learner, as returned by :meth:`Node.members`."""

    id: int
    addr: Optional[str]
    role: str


class PeerProgress(TypedDict):
    """Replication progress of a peer (on the leader)."""

    matched: int
    next_index: int
    state: str
    recent_active: bool


class Status(TypedDict):
    """:meth:`Node.status`'s result."""

    id: int
    cluster_id: str
    role: str
    term: int
    vote: int
    leader_id: int
    commit_index: int
    applied_index: int
    first_index: int
    last_index: int
    snapshot_index: int
    members: List[Member]
    joint: bool
    progress: Dict[int, PeerProgress]


__all__ = [
    "Codec",
    "CodecError",
    "ConfChangeError",
    "Config",
    "ConfigError",
    "FatalError",
    "InvalidArgumentError",
    "JoinTicket",
    "JsonCodec",
    "LeadershipLostError",
    "Member",
    "NoLeaderError",
    "NoSuchGroupError",
    "NotAMemberError",
    "Node",
    "NotLeaderError",
    "OutcomeUnknownError",
    "OverloadedError",
    "PeerProgress",
    "ProposalDroppedError",
    "RaftError",
    "SessionExpiredError",
    "RaftifyError",
    "ShutdownError",
    "StateMachine",
    "StateMachineError",
    "Status",
    "StorageError",
    "TimeoutError",
    "TransferFailedError",
    "TransportError",
    "UnauthenticatedError",
    "UnreachableError",
    "__version__",
    "request_join_ticket",
    "save_snapshot",
]

"""Type stubs of the raftify package (checked against the built module by
``python -m mypy.stubtest raftify`` in ci.sh)."""

import asyncio
import builtins
import os
import sys
from typing import Any, Dict, List, Optional, Protocol, Sequence, Union, final, runtime_checkable


if sys.version_info >= (3, 11):
    from typing import TypedDict
else:
    from typing_extensions import TypedDict

__version__: str
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

_Addrs = Union[str, Sequence[str]]

# ---- errors -------------------------------------------------------------

class RaftifyError(Exception):
    retryable: bool
    error_class: str

class OutcomeUnknownError(RaftifyError): ...

class NotLeaderError(RaftifyError):
    leader_id: int
    leader_addr: Optional[str]
    def __init__(
        self, message: str, leader_id: int = 0, leader_addr: Optional[str] = None
    ) -> None: ...

class NoLeaderError(RaftifyError): ...

class TimeoutError(OutcomeUnknownError, builtins.TimeoutError):
    timeout: Optional[float]
    def __init__(self, message: str, timeout: Optional[float] = None) -> None: ...

class LeadershipLostError(OutcomeUnknownError): ...
class ProposalDroppedError(RaftifyError): ...
class SessionExpiredError(RaftifyError): ...
class OverloadedError(RaftifyError): ...
class ShutdownError(RaftifyError): ...
class CodecError(RaftifyError): ...
class StateMachineError(RaftifyError): ...
class ConfChangeError(RaftifyError): ...
class InvalidArgumentError(RaftifyError, ValueError): ...
class ConfigError(InvalidArgumentError): ...
class StorageError(RaftifyError): ...
class FatalError(RaftifyError): ...
class TransportError(RaftifyError): ...
class UnreachableError(TransportError): ...
class NoSuchGroupError(RaftifyError): ...
class NotAMemberError(InvalidArgumentError): ...
class TransferFailedError(RaftifyError): ...
class UnauthenticatedError(RaftifyError): ...
class RaftError(RaftifyError): ...

# ---- user protocols -----------------------------------------------------

@runtime_checkable
class StateMachine(Protocol):
    def apply(self, entry: Any) -> Optional[bytes]: ...
    def snapshot(self) -> bytes: ...
    def restore(self, snapshot: bytes) -> None: ...

@runtime_checkable
class Codec(Protocol):
    def encode(self, entry: Any) -> bytes: ...
    def decode(self, data: bytes) -> Any: ...

class JsonCodec:
    def encode(self, entry: Any) -> bytes: ...
    def decode(self, data: bytes) -> Any: ...

class Member(TypedDict):
    id: int
    addr: Optional[str]
    role: str

class PeerProgress(TypedDict):
    matched: int
    next_index: int
    state: str
    recent_active: bool

class Status(TypedDict):
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

# ---- native -------------------------------------------------------------

@final
class Config:
    node_id: int
    raft_addr: str
    listen_addr: Optional[str]
    data_dir: Optional[str]
    storage: str
    no_sync: bool
    peers: Dict[int, str]
    cluster_id: str
    tick_ms: int
    election_tick: int
    heartbeat_tick: int
    snapshot_threshold: int
    snapshot_log_retention: int
    proposal_timeout: float
    read_timeout: float
    conf_change_timeout: float
    tls_cert: Optional[str]
    tls_key: Optional[str]
    tls_ca: Optional[str]
    auth_token: Optional[str]
    peer_token: Optional[str]
    log_level: str
    accept_tokens: List[str]
    accept_peer_tokens: List[str]
    def __new__(
        cls,
        node_id: int = 0,
        raft_addr: str = "127.0.0.1:0",
        *,
        listen_addr: Optional[str] = None,
        data_dir: Optional[str] = None,
        storage: Optional[str] = None,
        no_sync: bool = False,
        peers: Optional[Dict[int, str]] = None,
        cluster_id: str = "raftify",
        tick_ms: int = 100,
        election_tick: int = 10,
        heartbeat_tick: int = 2,
        snapshot_threshold: int = 100000,
        snapshot_log_retention: int = 1000,
        proposal_timeout: float = 10.0,
        read_timeout: float = 5.0,
        conf_change_timeout: float = 20.0,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        tls_ca: Optional[str] = None,
        auth_token: Optional[str] = None,
        log_level: str = "warning",
        peer_token: Optional[str] = None,
        accept_tokens: Optional[List[str]] = None,
        accept_peer_tokens: Optional[List[str]] = None,
    ) -> Config: ...
    def validate(self) -> None: ...

@final
class JoinTicket:
    @property
    def reserved_id(self) -> int: ...
    @property
    def cluster_id(self) -> str: ...
    @property
    def leader_id(self) -> int: ...
    @property
    def peers(self) -> Dict[int, str]: ...
    @property
    def cluster_uid(self) -> int: ...
    def __new__(
        cls,
        reserved_id: int,
        cluster_id: str,
        leader_id: int,
        peers: Dict[int, str],
        cluster_uid: int = 0,
    ) -> JoinTicket: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(data: str) -> JoinTicket: ...

@final
class Node:
    def __new__(
        cls, config: Config, state_machine: Any, *, codec: Optional[Any] = None
    ) -> Node: ...
    def start(
        self, *, bootstrap: str = "auto", join: Optional[_Addrs] = None, as_learner: bool = False
    ) -> None: ...
    @property
    def node_id(self) -> int: ...
    @property
    def raft_addr(self) -> str: ...
    @property
    def config(self) -> Config: ...
    @property
    def state_machine(self) -> Any: ...
    @property
    def running(self) -> bool: ...
    def propose(
        self, entry: Any, *, forward: bool = True, idempotency_key: Optional[str] = None
    ) -> bytes: ...
    def propose_async(
        self, entry: Any, *, forward: bool = True, idempotency_key: Optional[str] = None
    ) -> asyncio.Future[bytes]: ...
    def read(self, query: Any = None) -> Any: ...
    def read_async(self, query: Any = None) -> asyncio.Future[Any]: ...
    def read_index(self) -> int: ...
    def read_index_async(self) -> asyncio.Future[int]: ...
    def stale_read(self, query: Any = None) -> Any: ...
    def wait_for_leader(self, timeout: float = 10.0) -> int: ...
    def wait_for_leader_async(self, timeout: float = 10.0) -> asyncio.Future[int]: ...
    def leader_id(self) -> Optional[int]: ...
    def leader_addr(self) -> Optional[str]: ...
    def is_leader(self) -> bool: ...
    def state(self) -> Dict[str, Any]: ...
    def status(self) -> Status: ...
    def status_async(self) -> asyncio.Future[Status]: ...
    def members(self) -> List[Member]: ...
    def peers(self) -> Dict[int, str]: ...
    def metrics(self) -> Dict[str, int]: ...
    def add_voter(self, node_id: int, addr: str) -> List[Member]: ...
    def add_voter_async(self, node_id: int, addr: str) -> asyncio.Future[List[Member]]: ...
    def add_learner(self, node_id: int, addr: str) -> List[Member]: ...
    def add_learner_async(self, node_id: int, addr: str) -> asyncio.Future[List[Member]]: ...
    def promote_learner(self, node_id: int) -> List[Member]: ...
    def remove_node(self, node_id: int) -> List[Member]: ...
    def remove_node_async(self, node_id: int) -> asyncio.Future[List[Member]]: ...
    def leave(self) -> None: ...
    def leave_async(self) -> asyncio.Future[None]: ...
    def transfer_leader(self, node_id: int) -> None: ...
    def transfer_leader_async(self, node_id: int) -> asyncio.Future[None]: ...
    def campaign(self) -> None: ...
    def take_snapshot(self) -> int: ...
    def take_snapshot_async(self) -> asyncio.Future[int]: ...
    def request_id(self, addr: str) -> JoinTicket: ...
    def join_cluster(self, ticket: JoinTicket, *, as_learner: bool = False) -> List[Member]: ...
    def shutdown(self) -> None: ...
    def __enter__(self) -> Node: ...
    def __exit__(self, *_exc: object) -> bool: ...

def request_join_ticket(
    member_addrs: _Addrs,
    self_addr: str,
    *,
    config: Optional[Config] = None,
    timeout: float = 30.0,
) -> JoinTicket: ...
def save_snapshot(
    addr: str,
    path: Union[str, os.PathLike[str]],
    *,
    config: Optional[Config] = None,
    take: bool = True,
    timeout: float = 300.0,
) -> Dict[str, int]: ...

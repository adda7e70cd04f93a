"""In-process tests of the raftify Python API: a single node on memory
storage, the error classes, asyncio, lifecycle, LMDB restart, and a small
in-process cluster for membership and leadership."""

from __future__ import annotations

import asyncio
import builtins
import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

import raftify
from conftest import free_ports, wait_until

FAST: Dict[str, Any] = dict(tick_ms=20, log_level="warn")


class KV:
    """A replicated dict; entries are JSON through raftify.JsonCodec."""

    def __init__(self) -> None:
        self.data: Dict[str, Any] = {}
        self.restored = 0
        self.indexes: List[int] = []

    def apply(self, entry: Any) -> Optional[bytes]:
        op = entry.get("op")
        if op == "set":
            old = self.data.get(entry["k"])
            self.data[entry["k"]] = entry["v"]
            return json.dumps(old).encode()
        if op == "raise":
            raise ValueError(entry.get("msg", "boom"))
        if op == "bad-output":
            return 42  # type: ignore[return-value]
        if op == "none":
            return None
        raise KeyError(op)

    def snapshot(self) -> bytes:
        return json.dumps(self.data).encode()

    def restore(self, snapshot: bytes) -> None:
        self.data = json.loads(snapshot)
        self.restored += 1

    def read(self, key: Any) -> Any:
        return self.data.get(key)


class RawCounter:
    """Bytes in, bytes out, with apply_at."""

    def __init__(self) -> None:
        self.entries: List[bytes] = []
        self.indexes: List[int] = []

    def apply_at(self, index: int, entry: bytes) -> bytes:
        self.indexes.append(index)
        self.entries.append(entry)
        return b"%d" % len(self.entries)

    def snapshot(self) -> bytes:
        return b"\n".join(self.entries)

    def restore(self, snapshot: bytes) -> None:
        self.entries = snapshot.split(b"\n") if snapshot else []


@pytest.fixture
def node() -> Iterator[raftify.Node]:
    n = raftify.Node(raftify.Config(1, **FAST), KV(), codec=raftify.JsonCodec())
    n.start()
    n.wait_for_leader(10)
    try:
        yield n
    finally:
        n.shutdown()


# ---- error classes and config ----------------------------------------------


def test_error_hierarchy() -> None:
    names = [
        "NotLeaderError", "NoLeaderError", "TimeoutError", "LeadershipLostError",
        "ProposalDroppedError", "OverloadedError", "ShutdownError", "CodecError",
        "StateMachineError", "ConfChangeError", "InvalidArgumentError", "ConfigError",
        "StorageError", "FatalError", "TransportError", "RaftError",
    ]
    for name in names:
        cls = getattr(raftify, name)
        assert issubclass(cls, raftify.RaftifyError), name
        assert name in raftify.__all__
    assert issubclass(raftify.TimeoutError, builtins.TimeoutError)
    assert issubclass(raftify.InvalidArgumentError, ValueError)
    assert issubclass(raftify.ConfigError, raftify.InvalidArgumentError)
    e = raftify.NotLeaderError("not the leader", 3, "127.0.0.1:5")
    assert (e.leader_id, e.leader_addr, e.retryable) == (3, "127.0.0.1:5", True)
    assert raftify.NoLeaderError.retryable and not raftify.StateMachineError.retryable


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    c = raftify.Config(7)
    assert (c.node_id, c.raft_addr, c.storage, c.cluster_id, c.tick_ms) == (7, "127.0.0.1:0", "memory", "raftify", 100)
    assert (c.election_tick, c.heartbeat_tick, c.snapshot_threshold, c.log_level) == (10, 2, 100_000, "warning")
    assert raftify.Config(1, data_dir=str(tmp_path)).storage == "lmdb"
    c.validate()
    c.peers = {1: "127.0.0.1:1", 2: "127.0.0.1:2"}
    assert c.peers == {1: "127.0.0.1:1", 2: "127.0.0.1:2"}
    bad = [
        raftify.Config(1, election_tick=2, heartbeat_tick=2),
        raftify.Config(1, storage="lmdb"),
        raftify.Config(1, storage="rocks"),
        raftify.Config(1, log_level="loud"),
        raftify.Config(1, tls_cert="/nonexistent.pem"),
        raftify.Config(1, proposal_timeout=0),
        raftify.Config(1, peers={0: "127.0.0.1:1"}),
        raftify.Config(1, peers={1: "no-port"}),
    ]
    for cfg in bad:
        with pytest.raises(raftify.ConfigError):
            cfg.validate()
    with pytest.raises(raftify.ConfigError, match="election_tick"):
        raftify.Node(raftify.Config(1, election_tick=1), KV()).start()
    with pytest.raises(raftify.ConfigError, match="node_id"):
        raftify.Node(raftify.Config(0), KV()).start()


def test_state_machine_and_codec_are_checked() -> None:
    class NoApply:
        def snapshot(self) -> bytes:
            return b""

        def restore(self, b: bytes) -> None:
            pass

    with pytest.raises(TypeError, match="apply"):
        raftify.Node(raftify.Config(1), NoApply())
    with pytest.raises(TypeError, match="codec"):
        raftify.Node(raftify.Config(1), KV(), codec=object())
    assert isinstance(KV(), raftify.StateMachine)
    assert isinstance(raftify.JsonCodec(), raftify.Codec)


# ---- a single node ----------------------------------------------------------


def test_propose_read_and_status(node: raftify.Node) -> None:
    assert node.node_id == 1 and node.running
    assert node.raft_addr.startswith("127.0.0.1:") and not node.raft_addr.endswith(":0")
    assert node.propose({"op": "set", "k": "a", "v": 1}) == b"null"
    assert node.propose({"op": "set", "k": "a", "v": 2}) == b"1"
    assert node.propose({"op": "none"}, forward=False) == b""
    assert node.read("a") == 2
    assert node.read("missing") is None
    assert node.stale_read("a") == 2
    assert node.read_index() >= 3
    assert node.leader_id() == 1 and node.is_leader()
    assert node.leader_addr() == node.raft_addr
    state = node.state()
    assert state["role"] == "leader" and state["leader_id"] == 1
    status = node.status()
    assert status["role"] == "leader" and status["applied_index"] >= 3
    assert status["members"] == [{"id": 1, "addr": node.raft_addr, "role": "voter"}]
    assert set(status) >= {"term", "commit_index", "last_index", "snapshot_index", "progress", "joint"}
    assert node.members() == status["members"]
    assert node.peers() == {1: node.raft_addr}
    assert node.metrics()["applied_entries"] >= 3
    index = node.take_snapshot()
    assert index >= 3 and node.status()["snapshot_index"] == index
    assert "running" in repr(node)


def test_a_write_with_an_idempotency_key_is_applied_once(node: raftify.Node) -> None:
    first = {"op": "set", "k": "a", "v": 1}
    assert node.propose(first, idempotency_key="req-1") == b"null"
    assert node.propose({"op": "set", "k": "a", "v": 2}) == b"1"
    applied = node.metrics()["applied_entries"]
    # The repeat answers the first output and does not set "a" back to 1.
    assert node.propose(first, idempotency_key="req-1") == b"null"
    assert node.read("a") == 2
    assert node.metrics()["applied_entries"] == applied + 1, "the repeat is one entry, not applied"
    # Another key applies again; a refused write is refused again.
    assert node.propose({"op": "set", "k": "a", "v": 3}, idempotency_key="req-2") == b"2"
    for _ in range(2):
        with pytest.raises(raftify.StateMachineError, match="ValueError: once"):
            node.propose({"op": "raise", "msg": "once"}, idempotency_key="req-3")

    async def main() -> bytes:
        return await node.propose_async({"op": "set", "k": "b", "v": 0}, idempotency_key="req-2")

    assert asyncio.run(main()) == b"2", "the first answer of req-2"
    assert node.read("b") is None
    with pytest.raises(raftify.InvalidArgumentError, match="idempotency key"):
        node.propose(first, idempotency_key="")
    with pytest.raises(raftify.InvalidArgumentError, match="forward=True"):
        node.propose(first, idempotency_key="req-4", forward=False)


def test_apply_exception_reaches_proposer_and_node_keeps_serving(node: raftify.Node) -> None:
    with pytest.raises(raftify.StateMachineError, match="ValueError: kaboom"):
        node.propose({"op": "raise", "msg": "kaboom"})
    with pytest.raises(raftify.StateMachineError, match="KeyError"):
        node.propose({"op": "unknown"})
    with pytest.raises(raftify.StateMachineError, match="must return bytes"):
        node.propose({"op": "bad-output"})
    assert node.propose({"op": "set", "k": "x", "v": "ok"}) == b"null"
    assert node.read("x") == "ok"
    assert node.status()["role"] == "leader"


def test_codec_and_input_errors(node: raftify.Node) -> None:
    with pytest.raises(raftify.CodecError):
        node.propose({"not-json": object()})
    raw = raftify.Node(raftify.Config(2, **FAST), RawCounter())
    with raw:
        raw.start()
        raw.wait_for_leader(10)
        assert raw.propose(b"a") == b"1"
        assert raw.propose(bytearray(b"b")) == b"2"
        assert raw.propose(memoryview(b"c")) == b"3"
        with pytest.raises(TypeError):
            raw.propose("a str")
        sm = raw.state_machine
        assert sm.entries == [b"a", b"b", b"c"]
        assert sm.indexes == sorted(sm.indexes) and len(set(sm.indexes)) == 3
        with pytest.raises(TypeError, match="read"):
            raw.read(b"q")  # RawCounter has no read()
    assert not raw.running


def test_single_voter_cannot_leave(node: raftify.Node) -> None:
    with pytest.raises(raftify.InvalidArgumentError, match="last voter"):
        node.leave()


def test_blocking_call_inside_apply_is_refused() -> None:
    holder: Dict[str, raftify.Node] = {}

    class Reentrant(KV):
        def apply(self, entry: Any) -> Optional[bytes]:
            if entry.get("op") == "reenter":
                holder["node"].propose({"op": "none"})
            return super().apply(entry)

    with raftify.Node(raftify.Config(1, **FAST), Reentrant(), codec=raftify.JsonCodec()) as n:
        holder["node"] = n
        n.start()
        n.wait_for_leader(10)
        with pytest.raises(raftify.StateMachineError, match="own threads"):
            n.propose({"op": "reenter"})
        assert n.propose({"op": "set", "k": "k", "v": 1}) == b"null"


def test_lifecycle() -> None:
    n = raftify.Node(raftify.Config(1, **FAST), KV(), codec=raftify.JsonCodec())
    assert not n.running
    with pytest.raises(raftify.RaftifyError, match="not started"):
        n.propose({"op": "none"})
    n.start()
    with pytest.raises(raftify.RaftifyError, match="already started"):
        n.start()
    n.wait_for_leader(10)
    n.shutdown()
    n.shutdown()  # idempotent
    assert not n.running
    with pytest.raises(raftify.ShutdownError):
        n.propose({"op": "none"})
    with pytest.raises(raftify.ShutdownError):
        n.start()


def test_blocking_waits_release_the_gil() -> None:
    """A node that is never added to a cluster has no leader: wait_for_leader
    times out with raftify.TimeoutError, while other threads keep running."""
    n = raftify.Node(raftify.Config(1, **FAST), KV())
    n.start(bootstrap="none")
    try:
        ticks = 0
        stop = threading.Event()

        def spin() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                time.sleep(0.001)

        t = threading.Thread(target=spin)
        t.start()
        started = time.monotonic()
        with pytest.raises(raftify.TimeoutError) as info:
            n.wait_for_leader(0.5)
        stop.set()
        t.join()
        assert time.monotonic() - started >= 0.45
        assert ticks > 50
        assert isinstance(info.value, builtins.TimeoutError)
        with pytest.raises(raftify.NoLeaderError):
            n.read_index()
    finally:
        n.shutdown()


def test_asyncio_api(node: raftify.Node) -> None:
    async def main() -> None:
        assert await node.wait_for_leader_async(5) == 1
        outs = await asyncio.gather(
            *(node.propose_async({"op": "set", "k": f"k{i}", "v": i}) for i in range(50))
        )
        assert outs == [b"null"] * 50
        assert await node.read_async("k7") == 7
        assert await node.read_index_async() >= 50
        status = await node.status_async()
        assert status["applied_index"] >= 50
        with pytest.raises(raftify.StateMachineError):
            await node.propose_async({"op": "raise"})
        assert await node.take_snapshot_async() >= 50
        # A cancelled await does not break the node.
        task = asyncio.ensure_future(node.propose_async({"op": "set", "k": "c", "v": 1}))
        task.cancel()
        await asyncio.sleep(0.1)
        assert await node.read_async("c") in (None, 1)

    asyncio.run(main())
    assert node.read("k49") == 49


def test_lmdb_restart_keeps_data(tmp_path: Path) -> None:
    cfg = raftify.Config(1, data_dir=str(tmp_path / "n1"), **FAST)
    with raftify.Node(cfg, KV(), codec=raftify.JsonCodec()) as n:
        n.start()
        n.wait_for_leader(10)
        for i in range(20):
            n.propose({"op": "set", "k": f"k{i}", "v": i})
        n.take_snapshot()
        n.propose({"op": "set", "k": "after-snapshot", "v": True})
    # The same directory, and an id read from it.
    again = KV()
    with raftify.Node(raftify.Config(0, data_dir=str(tmp_path / "n1"), **FAST), again, codec=raftify.JsonCodec()) as n:
        n.start()
        assert n.node_id == 1
        n.wait_for_leader(10)
        assert n.read("k19") == 19 and n.read("after-snapshot") is True
        assert again.restored == 1
    # Another node id on that directory is refused.
    with pytest.raises(raftify.ConfigError, match="belongs to node 1"):
        raftify.Node(raftify.Config(2, data_dir=str(tmp_path / "n1"), **FAST), KV()).start()


# ---- an in-process cluster --------------------------------------------------


def test_in_process_cluster_membership_and_leadership() -> None:
    ports = free_ports(3)
    peers = {i: f"127.0.0.1:{p}" for i, p in zip((1, 2, 3), ports)}
    nodes = [
        raftify.Node(
            raftify.Config(i, peers=peers, snapshot_log_retention=0, **FAST),
            KV(),
            codec=raftify.JsonCodec(),
        )
        for i in (1, 2, 3)
    ]
    extra: List[raftify.Node] = []
    try:
        for n in nodes:
            n.start()
        leader_id = wait_until("a leader", lambda: nodes[0].leader_id() if all(n.leader_id() == nodes[0].leader_id() for n in nodes) else None)
        leader = nodes[leader_id - 1]
        follower = next(n for n in nodes if n is not leader)

        # Followers forward; forward=False names the leader.
        assert wait_until("a forwarded write", lambda: follower.propose({"op": "set", "k": "a", "v": 1})) == b"null"
        with pytest.raises(raftify.NotLeaderError) as info:
            follower.propose({"op": "set", "k": "a", "v": 2}, forward=False)
        assert info.value.leader_id == leader_id and info.value.leader_addr == peers[leader_id]
        with pytest.raises(raftify.StateMachineError):
            follower.propose({"op": "raise"})
        assert follower.read("a") == 1

        # Leadership transfer.
        leader.transfer_leader(follower.node_id)
        wait_until("the transfer", lambda: follower.is_leader())
        leader, follower = follower, leader

        # A fourth node joins through a ticket, after a snapshot compacted the
        # log: it catches up by installing the snapshot (restore()).
        for i in range(10):
            leader.propose({"op": "set", "k": f"s{i}", "v": i})
        leader.take_snapshot()
        (port4,) = free_ports(1)
        addr4 = f"127.0.0.1:{port4}"
        ticket = follower.request_id(addr4)
        assert ticket.reserved_id == 4 and ticket.cluster_id == "raftify"
        assert raftify.JoinTicket.from_json(ticket.to_json()) == ticket
        kv4 = KV()
        n4 = raftify.Node(raftify.Config(ticket.reserved_id, addr4, **FAST), kv4, codec=raftify.JsonCodec())
        extra.append(n4)
        n4.start(bootstrap="none")
        members = n4.join_cluster(ticket, as_learner=True)
        assert {"id": 4, "addr": addr4, "role": "learner"} in members
        wait_until("node 4 to catch up", lambda: n4.stale_read("s9") == 9)
        assert kv4.restored >= 1
        with pytest.raises(raftify.InvalidArgumentError, match="already belongs"):
            n4.join_cluster(ticket)

        # Promote, then remove; node 3... leaves on its own.
        members = leader.promote_learner(4)
        assert {"id": 4, "addr": addr4, "role": "voter"} in members
        assert n4.read("a") == 1
        members = follower.remove_node(4)
        assert all(m["id"] != 4 for m in members)
        leaving = next(n for n in nodes if n is not leader)
        leaving.leave()
        remaining = [n for n in nodes if n is not leaving]
        wait_until("the leave", lambda: sorted(leader.peers()) == sorted(n.node_id for n in remaining))
        assert leader.propose({"op": "set", "k": "end", "v": 0}) == b"null"

        # request_join_ticket from outside the cluster (module function).
        (port5,) = free_ports(1)
        t5 = raftify.request_join_ticket([leader.raft_addr], f"127.0.0.1:{port5}", timeout=10)
        assert t5.reserved_id == 5 and leader.node_id in t5.peers
        with pytest.raises(raftify.InvalidArgumentError, match="host:port"):
            leader.add_voter(6, "not an address")
    finally:
        for n in nodes + extra:
            n.shutdown()


def test_auth_token_is_required_by_the_cluster() -> None:
    cfg = raftify.Config(1, auth_token="s3cret", **FAST)
    with raftify.Node(cfg, KV(), codec=raftify.JsonCodec()) as n:
        n.start()
        n.wait_for_leader(10)
        (port,) = free_ports(1)
        me = f"127.0.0.1:{port}"
        with pytest.raises(raftify.RaftifyError):
            raftify.request_join_ticket(n.raft_addr, me, config=raftify.Config(auth_token="wrong"), timeout=2)
        with pytest.raises(raftify.RaftifyError):
            raftify.request_join_ticket(n.raft_addr, me, timeout=2)
        ticket = raftify.request_join_ticket(n.raft_addr, me, config=raftify.Config(auth_token="s3cret"), timeout=10)
        assert ticket.reserved_id == 2 and ticket.peers == {1: n.raft_addr}
        # A joiner with the token joins through Node.start(join=...).
        joiner = raftify.Node(raftify.Config(0, auth_token="s3cret", **FAST), KV(), codec=raftify.JsonCodec())
        with joiner:
            joiner.start(join=[n.raft_addr])
            assert joiner.node_id == 3
            assert joiner.propose({"op": "set", "k": "j", "v": 1}) == b"null"
            assert n.read("j") == 1


def test_a_rotated_token_is_accepted_beside_the_new_one() -> None:
    cfg = raftify.Config(1, auth_token="new-s3cret", accept_tokens=["0ld-s3cret"], **FAST)
    assert cfg.accept_tokens == ["0ld-s3cret"] and cfg.accept_peer_tokens == []
    with raftify.Node(cfg, KV(), codec=raftify.JsonCodec()) as n:
        n.start()
        n.wait_for_leader(10)
        (port,) = free_ports(1)
        me = f"127.0.0.1:{port}"
        for token in ["new-s3cret", "0ld-s3cret"]:
            t = raftify.request_join_ticket(n.raft_addr, me, config=raftify.Config(auth_token=token), timeout=10)
            assert t.peers == {1: n.raft_addr}
        with pytest.raises(raftify.RaftifyError):
            raftify.request_join_ticket(n.raft_addr, me, config=raftify.Config(auth_token="other"), timeout=2)
    with pytest.raises(raftify.ConfigError, match="needs auth_token"):
        raftify.Config(1, accept_tokens=["0ld-s3cret"]).validate()


def test_a_backup_is_saved_over_the_network(tmp_path: Path) -> None:
    cfg = raftify.Config(1, data_dir=str(tmp_path / "n1"), auth_token="s3cret", **FAST)
    with raftify.Node(cfg, KV(), codec=raftify.JsonCodec()) as n:
        n.start()
        n.wait_for_leader(10)
        for i in range(20):
            n.propose({"op": "set", "k": f"k{i}", "v": i})
        backup = tmp_path / "backup.snap"
        with pytest.raises(raftify.UnauthenticatedError):
            raftify.save_snapshot(n.raft_addr, backup, timeout=10)
        assert not backup.exists()
        saved = raftify.save_snapshot(n.raft_addr, str(backup), config=raftify.Config(auth_token="s3cret"))
        assert saved["index"] > 20 and saved["size"] == backup.stat().st_size
        assert backup.read_bytes().startswith(b"RFTYSNP2")
        # Without taking one first: the same stored snapshot, saved again.
        again = raftify.save_snapshot(n.raft_addr, backup, config=raftify.Config(auth_token="s3cret"), take=False)
        assert again == saved
        assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.snap", "n1"]


def test_concurrent_blocking_proposals_from_threads(node: raftify.Node) -> None:
    errors: List[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(25):
                assert node.propose({"op": "set", "k": f"t{t}-{i}", "v": i}) == b"null"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert all(node.read(f"t{t}-24") == 24 for t in range(8))
    assert len(node.state_machine.data) == 200

"""Three Python processes (examples/hashstore_node.py) form a raftify cluster
on loopback: proposals on any node, the leader SIGKILLed, restarts from the
LMDB data directories, a state machine exception reaching the proposer."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Dict, List

from conftest import Cluster, HttpError, NodeProc, free_ports, wait_until

TICK = ["--tick-ms", "50"]


def leader_of(nodes: List[NodeProc]) -> int:
    """The leader id all live nodes agree on (0 while they do not)."""
    ids = {n.status()["leader_id"] for n in nodes if n.alive()}
    return ids.pop() if len(ids) == 1 and 0 not in ids else 0


def voters(n: NodeProc) -> List[int]:
    return sorted(m["id"] for m in n.status()["members"] if m["role"] == "voter")


def has_voters(n: NodeProc, ids: List[int]) -> bool:
    return voters(n) == ids


def put_retrying(n: NodeProc, key: str, value: str, timeout: float = 20.0) -> str:
    """PUT through n, retrying while the cluster elects a leader."""

    def attempt() -> object:
        try:
            return ("ok", n.put(key, value))
        except HttpError as e:
            if e.code in (421, 503, 504, 500):
                return None
            raise

    return str(wait_until(f"PUT {key} through node {n.id}", attempt, timeout)[1])  # type: ignore[index]


def get_retrying(n: NodeProc, key: str, timeout: float = 20.0) -> object:
    """A linearizable GET through n, retried while n knows no leader (a node
    that just restarted may time out into pre-vote before its peers' transports
    reconnect to it)."""

    def attempt() -> object:
        try:
            return ("ok", n.get(key))
        except HttpError as e:
            if e.code in (503, 504):
                return None
            raise

    return wait_until(f"GET {key} through node {n.id}", attempt, timeout)[1]  # type: ignore[index]


def check_all(nodes: List[NodeProc], expected: Dict[str, str]) -> None:
    for n in nodes:
        for k, v in expected.items():
            assert get_retrying(n, k) == v, f"node {n.id}: {k}"


def test_join_propose_kill_leader_restart(cluster: Cluster, tmp_path: Path) -> None:
    dirs = {i: str(tmp_path / f"n{i}") for i in (1, 2, 3)}
    n1 = cluster.spawn("n1", ["--id", "1", "--raft-addr", "127.0.0.1:0", "--data-dir", dirs[1], *TICK])
    n2 = cluster.spawn("n2", ["--join", n1.raft_addr, "--raft-addr", "127.0.0.1:0", "--data-dir", dirs[2], *TICK])
    n3 = cluster.spawn("n3", ["--join", n1.raft_addr, "--raft-addr", "127.0.0.1:0", "--data-dir", dirs[3], *TICK])
    nodes = [n1, n2, n3]
    assert sorted(n.id for n in nodes) == [1, 2, 3]
    for n in nodes:
        wait_until(f"node {n.id} to see 3 voters", partial(has_voters, n, [1, 2, 3]))
    addrs = {n.id: n.raft_addr for n in nodes}

    # Proposals through every node (followers forward) return apply's output.
    expected: Dict[str, str] = {}
    for i in range(12):
        n = nodes[i % 3]
        assert n.put(f"k{i}", f"v{i}") == ""
        expected[f"k{i}"] = f"v{i}"
    assert n2.put("k0", "again") == "v0"
    assert n3.put("k0", "v0") == "again"
    check_all(nodes, expected)

    # A Python exception in apply reaches the proposer; every node keeps serving.
    for n in (n1, n3):
        try:
            n.propose_raw({"op": "explode"})
            raise AssertionError("apply should have raised")
        except HttpError as e:
            assert e.code == 422, e.body
            assert e.json()["error"] == "StateMachineError"
            assert "ValueError" in e.json()["message"]
    assert n3.put("after-error", "fine") == ""
    expected["after-error"] = "fine"
    check_all(nodes, expected)

    # SIGKILL the leader: a new one is elected and takes writes.
    old = wait_until("an agreed leader", lambda: leader_of(nodes))
    victim = next(n for n in nodes if n.id == old)
    victim.kill()
    survivors = [n for n in nodes if n is not victim]
    for i in range(5):
        put_retrying(survivors[i % 2], f"after-kill-{i}", str(i))
        expected[f"after-kill-{i}"] = str(i)
    new = wait_until("a new leader", lambda: leader_of(survivors))
    assert new != old
    check_all(survivors, expected)

    # The killed node restarts from its data dir (same address) and catches up.
    back = cluster.spawn(
        f"n{old}-restarted", ["--data-dir", dirs[old], "--raft-addr", addrs[old], *TICK]
    )
    assert back.id == old
    wait_until(f"node {old} to catch up", lambda: back.get("after-kill-4", stale=True) == "4")
    nodes = survivors + [back]
    check_all(nodes, expected)
    assert back.put("from-restarted", "yes") == ""
    expected["from-restarted"] = "yes"

    # Everyone down (SIGKILL), everyone back from disk: the data survives.
    cluster.kill_all()
    restarted = [
        cluster.spawn(f"n{i}-again", ["--data-dir", dirs[i], "--raft-addr", addrs[i], *TICK])
        for i in (1, 2, 3)
    ]
    wait_until("a leader after the full restart", lambda: leader_of(restarted), timeout=20)
    check_all(restarted, expected)
    assert put_retrying(restarted[0], "k1", "final") == "v1"
    for n in restarted:
        assert n.terminate() == 0, n.log()


def test_static_members_cluster(cluster: Cluster, tmp_path: Path) -> None:
    ports = free_ports(3)
    peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in zip((1, 2, 3), ports))
    nodes = [
        cluster.spawn(f"s{i}", ["--id", str(i), "--peers", peers, "--data-dir", str(tmp_path / f"s{i}"), *TICK])
        for i in (1, 2, 3)
    ]
    wait_until("a leader", lambda: leader_of(nodes))
    for i, n in enumerate(nodes):
        assert put_retrying(n, f"s{i}", str(i)) == ""
    check_all(nodes, {f"s{i}": str(i) for i in range(3)})
    status = nodes[0].status()
    assert sorted(m["id"] for m in status["members"]) == [1, 2, 3]
    assert {m["addr"] for m in status["members"]} == {f"127.0.0.1:{p}" for p in ports}

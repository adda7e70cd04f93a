"""redis-py against raftify-redis: the plain client over RESP2 and RESP3,
pipelines and transactions, and RedisCluster following a leader that is
SIGKILLed in the middle of its writes.

Run by raftify-redis/ci.sh (which makes a venv with redis-py and pytest);
RAFTIFY_REDIS_BIN names the server binary.
"""

import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

BIN = os.environ.get("RAFTIFY_REDIS_BIN", "target/debug/raftify-redis")
TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, fn, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


class Cluster:
    def __init__(self, n: int, extra=()):
        self.dir = tempfile.TemporaryDirectory()
        self.ports = {i: free_port() for i in range(1, n + 1)}
        self.rafts = {i: f"127.0.0.1:{free_port()}" for i in range(1, n + 1)}
        self.peers = ",".join(f"{i}={a}" for i, a in self.rafts.items())
        self.extra = list(extra)
        self.procs = {}
        for i in self.ports:
            self.start(i)

    def start(self, i: int):
        log = open(os.path.join(self.dir.name, f"n{i}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            [BIN, "--id", str(i), "--port", str(self.ports[i]), "--raft-addr", self.rafts[i],
             "--peers", self.peers, "--data-dir", os.path.join(self.dir.name, f"n{i}"),
             "--tick-ms", "30", *self.extra],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def kill(self, i: int):
        p = self.procs.pop(i)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()

    def client(self, i: int, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=10, **kw)

    def leader(self) -> int:
        def agreed():
            seen = set()
            for i in self.procs:
                info = self.client(i).info("raft")
                seen.add(int(info["raft_leader_id"]))
            return seen.pop() if len(seen) == 1 and 0 not in seen else None
        return wait_for("a leader", agreed)

    def stop(self):
        for i in list(self.procs):
            self.kill(i)
        self.dir.cleanup()


@pytest.fixture
def cluster3():
    c = Cluster(3, ["--no-sync"])
    yield c
    c.stop()


@pytest.mark.parametrize("protocol", [2, 3])
def test_plain_client_commands_pipelines_and_transactions(cluster3, protocol):
    leader = cluster3.leader()
    follower = next(i for i in cluster3.ports if i != leader)
    r = cluster3.client(follower, protocol=protocol, decode_responses=True)
    assert r.ping()
    assert r.set("k", "v", ex=100)
    assert r.get("k") == "v"
    assert 0 < r.ttl("k") <= 100
    assert r.incr("n") == 1
    assert r.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hgetall("h") == {"a": "1", "b": "2"}
    assert r.zadd("z", {"x": 1.5, "y": 2}) == 2
    assert r.zscore("z", "x") == 1.5
    # Pairs: tuples over RESP2, lists over RESP3 (as redis-py gives them
    # from a real Redis).
    assert [list(p) for p in r.zrange("z", 0, -1, withscores=True)] == [["x", 1.5], ["y", 2.0]]
    assert r.sadd("s", "a", "b") == 2 and r.smembers("s") == {"a", "b"}
    # A pipeline of 1,000 commands, replies in order.
    p = r.pipeline(transaction=False)
    for i in range(1000):
        p.rpush("list", i)
    assert p.execute() == list(range(1, 1001))
    assert r.lrange("list", 0, 2) == ["0", "1", "2"]
    # A transaction: MULTI ... EXEC, one log entry.
    t = r.pipeline(transaction=True)
    t.incr("n").incr("n").get("n")
    assert t.execute() == [2, 3, "3"]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.incr("h")
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.execute_command("NOSUCH")
    # Every node has it, linearizably.
    for i in cluster3.ports:
        assert cluster3.client(i, decode_responses=True).get("n") == "3"


def test_redis_cluster_follows_a_killed_leader():
    c = Cluster(3)
    try:
        leader = c.leader()
        follower = next(i for i in c.ports if i != leader)
        wait_for("every member in CLUSTER SLOTS",
                 lambda: len(c.client(follower).execute_command("CLUSTER SLOTS")[0]) == 5)
        rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", c.ports[follower])],
                          decode_responses=True, socket_timeout=5)
        acked = 0
        for i in range(50):
            assert rc.incr("counter") == i + 1
            acked += 1
        c.kill(leader)
        # Writes go on once a new leader is elected: RedisCluster finds it.
        deadline = time.monotonic() + TIMEOUT
        unknown = 0
        while acked < 100:
            assert time.monotonic() < deadline, "no writes after the leader kill"
            try:
                rc.incr("counter")
                acked += 1
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError,
                    redis.exceptions.ClusterError, redis.exceptions.RedisClusterException) as e:
                # The outcome of that INCR is not known (or it was refused).
                unknown += 1
                assert unknown < 200, f"too many failures: {e!r}"
                time.sleep(0.1)
        value = int(rc.get("counter"))
        assert acked <= value <= acked + unknown, (acked, unknown, value)
        rc.close()
    finally:
        c.stop()


@pytest.mark.parametrize("protocol", [2, 3])
def test_pubsub_across_nodes(cluster3, protocol):
    cluster3.leader()
    sub = cluster3.client(1, protocol=protocol, decode_responses=True).pubsub()
    sub.subscribe("events")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    pub = cluster3.client(3, decode_responses=True)
    for i in range(5):
        pub.publish("events", f"e{i}")
    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < 5 and time.monotonic() < deadline:
        m = sub.get_message(timeout=1)
        if m and m["type"] == "message":
            got.append(m["data"])
    assert got == [f"e{i}" for i in range(5)]
    sub.close()


def test_a_backup_read_in_ranges_is_the_whole_snapshot(cluster3):
    """docs/REDIS.md's backup loop, with redis-py."""
    leader = cluster3.leader()
    r = cluster3.client(leader, protocol=3)
    for i in range(200):
        r.set(f"k{i}", "v" * 100)
    index = r.execute_command("RAFT", "SNAPSHOT", "NOW")
    [snap] = r.execute_command("RAFT", "SNAPSHOT", "LIST")
    assert snap[b"index"] == index and snap[b"id"].endswith(b"-%d" % index)
    assert snap[b"size"] > 200 * 100
    backup = b""
    offset = 0
    while chunk := r.execute_command("RAFT", "SNAPSHOT", "READ", snap[b"id"], offset, 4096):
        backup += chunk
        offset += len(chunk)
    assert backup == r.execute_command("RAFT", "SNAPSHOT", "READ", snap[b"id"])
    assert backup.startswith(b"RFTYSNP2")


class Sharded:
    """raftify-redis --sharded: node 1 alone, the others joining it."""

    def __init__(self, n: int):
        self.dir = tempfile.TemporaryDirectory()
        self.ports = {i: free_port() for i in range(1, n + 1)}
        self.rafts = {i: f"127.0.0.1:{free_port()}" for i in range(1, n + 1)}
        self.procs = {}
        for i in self.ports:
            self.start(i)
            if i == 1:
                wait_for("the first node", lambda: self.client(1).set("probe", "1"))

    def start(self, i: int):
        log = open(os.path.join(self.dir.name, f"n{i}.log"), "ab")
        how = ["--id", "1"] if i == 1 else ["--join", self.rafts[1]]
        self.procs[i] = subprocess.Popen(
            [BIN, "--sharded", *how, "--port", str(self.ports[i]), "--raft-addr", self.rafts[i],
             "--data-dir", os.path.join(self.dir.name, f"n{i}"), "--tick-ms", "30"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def client(self, i: int, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=10,
                           decode_responses=True, **kw)

    def info(self, i: int) -> dict:
        return self.client(i).info()

    def kill(self, i: int):
        p = self.procs.pop(i)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()

    def stop(self):
        for i in list(self.procs):
            self.kill(i)
        self.dir.cleanup()


def test_redis_cluster_over_a_sharded_cluster_with_a_node_killed():
    c = Sharded(3)
    try:
        wait_for("three nodes in the placement", lambda: c.info(1)["nodes"] == 3)
        assert c.client(1).execute_command("RAFT", "REBALANCE") == "OK"
        wait_for("the rebalance", lambda: c.info(1)["groups"] == 3 and str(
            c.client(1).execute_command("RAFT", "REBALANCE", "STATUS")).startswith("done"),
            timeout=120)
        slots = c.client(2).execute_command("CLUSTER SLOTS")
        assert len(slots) == 3, slots
        rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", c.ports[2])],
                          decode_responses=True, socket_timeout=5)
        for i in range(300):
            assert rc.set(f"k{i}", f"v{i}")
        # scan_iter asks every primary: each node answers for the groups
        # it leads, so every key comes back.
        assert set(rc.scan_iter(match="k*", count=50)) == {f"k{i}" for i in range(300)}
        # Cluster pub/sub: redis-py subscribes on the node of the
        # channel's slot and publishes wherever it routes PUBLISH; the
        # message goes through the metadata group, so it arrives.
        sub = rc.pubsub()
        sub.subscribe("events")
        assert sub.get_message(timeout=5)["type"] == "subscribe"
        other = c.client(3).pubsub()
        other.psubscribe("ev*")
        assert other.get_message(timeout=5)["type"] == "psubscribe"
        for i in range(5):
            assert rc.publish("events", f"e{i}") >= 0
        for s, kind in ((sub, "message"), (other, "pmessage")):
            got = []
            deadline = time.monotonic() + TIMEOUT
            while len(got) < 5 and time.monotonic() < deadline:
                m = s.get_message(timeout=1)
                if m and m["type"] == kind:
                    got.append(m["data"])
            assert got == [f"e{i}" for i in range(5)], kind
            s.close()
        counters = [f"counter:{j}" for j in range(6)]
        acked = {k: 0 for k in counters}
        for k in counters:
            for _ in range(5):
                rc.incr(k)
                acked[k] += 1
        # The node leading the first group dies: its groups elect new
        # leaders among the two others, and the client follows them.
        c.kill(1)
        deadline = time.monotonic() + 60
        unknown = {k: 0 for k in counters}
        for k in counters:
            while acked[k] < 10:
                assert time.monotonic() < deadline, "no writes after the kill"
                try:
                    rc.incr(k)
                    acked[k] += 1
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError,
                        redis.exceptions.ClusterError, redis.exceptions.RedisClusterException):
                    unknown[k] += 1
                    time.sleep(0.1)
        for k in counters:
            value = int(rc.get(k))
            assert acked[k] <= value <= acked[k] + unknown[k], (k, acked[k], unknown[k], value)
        for i in range(300):
            assert rc.get(f"k{i}") == f"v{i}"
        rc.close()
    finally:
        c.stop()

#!/usr/bin/env python3
"""What a snapshot costs in memory: 1,000,000 keys of 100 bytes in a
raftify-redis node (release build, fsync on), a snapshot taken (RAFT
SNAPSHOT NOW, which compacts the log), then a second node joins and must
install that snapshot. The resident memory of both is sampled every 10 ms
throughout; reported: anonymous memory (the heap: what the process holds)
and file-backed pages (mapped files the kernel can reclaim), at rest and at
their peaks.

    cargo build --release -p raftify-redis
    target/redis-venv/bin/python scripts/bench_snapshot_memory.py [KEYS]

RAFTIFY_REDIS_BIN names another binary (to compare builds in one sitting).
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import redis

BIN = os.environ.get("RAFTIFY_REDIS_BIN", "target/release/raftify-redis")
KEYS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
MIB = 2**20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_parts(pid):
    """(anonymous, file-backed) resident bytes."""
    parts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                parts[line.split(":")[0]] = int(line.split()[1]) * 1024
    return parts.get("RssAnon", 0), parts.get("RssFile", 0)


class Peak:
    """Samples a process's resident memory every 10 ms until stopped."""

    def __init__(self, pid):
        self.pid, self.anon, self.file, self.stop = pid, 0, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                a, f = rss_parts(self.pid)
            except OSError:
                return
            self.anon, self.file = max(self.anon, a), max(self.file, f)
            time.sleep(0.01)

    def done(self):
        self.stop = True
        self.thread.join()
        return self.anon, self.file


def wait_ping(r, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            if r.ping():
                return
        except redis.RedisError:
            time.sleep(0.05)
    raise SystemExit("the node did not answer PING")


def main():
    d = tempfile.mkdtemp()
    procs = []
    try:
        raft1 = f"127.0.0.1:{free_port()}"
        p1, port1 = None, free_port()
        p1 = subprocess.Popen(
            [BIN, "--id", "1", "--port", str(port1), "--raft-addr", raft1,
             "--data-dir", os.path.join(d, "n1")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p1)
        r1 = redis.Redis(port=port1)
        wait_ping(r1)
        v = "x" * 100
        for i in range(0, KEYS, 1000):
            r1.mset({f"key:{j:08d}": v for j in range(i, min(KEYS, i + 1000))})
        rest1 = rss_parts(p1.pid)
        peak = Peak(p1.pid)
        t0 = time.time()
        r1.execute_command("RAFT", "SNAPSHOT", "NOW")
        snap_s = time.time() - t0
        snap1 = peak.done()
        snap_dir = os.path.join(d, "n1", "snap")
        size = sum(os.path.getsize(os.path.join(snap_dir, f))
                   for f in os.listdir(snap_dir) if f.endswith(".snap"))

        port2 = free_port()
        t0 = time.time()
        p2 = subprocess.Popen(
            [BIN, "--id", "2", "--port", str(port2),
             "--raft-addr", f"127.0.0.1:{free_port()}", "--join", raft1,
             "--data-dir", os.path.join(d, "n2")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p2)
        peak1, peak2 = Peak(p1.pid), Peak(p2.pid)
        r2 = redis.Redis(port=port2, socket_timeout=30)
        wait_ping(r2)
        end = t0 + 300
        n = 0
        while time.time() < end:
            try:
                n = r2.dbsize()
            except redis.RedisError:
                n = 0
            if n >= KEYS:
                break
            time.sleep(0.05)
        join_s = time.time() - t0
        send1, join2 = peak1.done(), peak2.done()
        rest2 = rss_parts(p2.pid)
        print(f"{KEYS} keys; snapshot file {size / MIB:.0f} MiB, taken in {snap_s:.2f} s; "
              f"node 2 had {n} keys after {join_s:.2f} s")
        print("node                       anonymous MiB   file-backed MiB")
        for what, (a, f) in [
            ("node 1 at rest", rest1),
            ("node 1 peak, snapshot", snap1),
            ("node 1 peak, sending it", send1),
            ("node 2 peak, joining", join2),
            ("node 2 at rest, joined", rest2),
        ]:
            print(f"{what:<26} {a / MIB:>13.0f}   {f / MIB:>15.0f}")
        print(f"node 1 snapshot peak over rest (anonymous): {(snap1[0] - rest1[0]) / MIB:.0f} MiB; "
              f"node 2 peak over its final (anonymous): {(join2[0] - rest2[0]) / MIB:.0f} MiB")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

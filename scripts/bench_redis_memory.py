#!/usr/bin/env python3
"""Resident memory of 1,000,000 keys of 100 bytes in raftify-redis (one
node, release build) against redis-server without persistence, and the time
a restarted raftify-redis takes to serve the last key again.

    cargo build --release -p raftify-redis
    target/redis-venv/bin/python scripts/bench_redis_memory.py [raftify-redis flags...]

(target/redis-venv is the venv raftify-redis/ci.sh makes, with redis-py.)
Extra arguments go to raftify-redis (e.g. --no-sync). RAFTIFY_REDIS_BIN
names another binary (to compare builds in one sitting).
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import redis
BIN = os.environ.get("RAFTIFY_REDIS_BIN", "target/release/raftify-redis")
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) * 1024
def rss_parts(pid):
    """(anonymous, file-backed) resident bytes: LMDB's map is file-backed."""
    parts = {}
    for l in open(f"/proc/{pid}/status"):
        if l.startswith(("RssAnon:", "RssFile:")):
            parts[l.split(":")[0]] = int(l.split()[1]) * 1024
    return parts.get("RssAnon", 0), parts.get("RssFile", 0)
def load(r, n=1_000_000, batch=1000):
    v = "x" * 100
    for i in range(0, n, batch):
        r.mset({f"key:{j:08d}": v for j in range(i, i + batch)})
def wait(r):
    for _ in range(600):
        try:
            if r.ping(): return
        except Exception: time.sleep(0.05)
d = tempfile.mkdtemp()
# Redis
rp = free_port()
redis_proc = subprocess.Popen(["redis-server", "--port", str(rp), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
rr = redis.Redis(port=rp); wait(rr)
base_r = rss(redis_proc.pid); load(rr); redis_rss = rss(redis_proc.pid); n_r = rr.dbsize()
redis_proc.kill(); redis_proc.wait()
# raftify-redis
port, raft = free_port(), f"127.0.0.1:{free_port()}"
args = [BIN, "--port", str(port), "--raft-addr", raft, "--data-dir", os.path.join(d, "n1")] + sys.argv[1:]
p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
r = redis.Redis(port=port); wait(r)
base = rss(p.pid); t0 = time.time(); load(r); load_s = time.time() - t0; ours = rss(p.pid); n = r.dbsize()
anon, filed = rss_parts(p.pid)
# Read every key once (MGETs of 1,000): a value's first read may add a
# reference-count block to it.
for i in range(0, 1_000_000, 1000):
    r.mget([f"key:{j:08d}" for j in range(i, i + 1000)])
read_rss = rss(p.pid)
info = r.info("memory")
p.send_signal(signal.SIGTERM); p.wait()
t0 = time.time()
p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
r = redis.Redis(port=port)
while True:
    try:
        if r.get("key:00999999") is not None: break
    except Exception: pass
    time.sleep(0.02)
restart_s = time.time() - t0
after = rss(p.pid)
anon_after, file_after = rss_parts(p.pid)
p.send_signal(signal.SIGTERM); p.wait()
print(f"redis-server: {n_r} keys, RSS {redis_rss/2**20:.0f} MiB (empty {base_r/2**20:.0f} MiB)")
print(f"raftify-redis: {n} keys, RSS {ours/2**20:.0f} MiB = {anon/2**20:.0f} anonymous + {filed/2**20:.0f} file-backed (empty {base/2**20:.0f} MiB), load {load_s:.1f} s, used_memory estimate {info['used_memory']/2**20:.0f} MiB; after reading every key {read_rss/2**20:.0f} MiB ({read_rss/redis_rss:.2f}x)")
print(f"restart to serving the last key: {restart_s:.2f} s, RSS after {after/2**20:.0f} MiB = {anon_after/2**20:.0f} anonymous + {file_after/2**20:.0f} file-backed; ratio RSS {ours/redis_rss:.2f}x")

#!/usr/bin/env python3
"""One node of a replicated hash map, with raftify's Python bindings.

Start a three-node cluster on one machine:

    python hashstore_node.py --id 1 --raft-addr 127.0.0.1:60061 --data-dir /tmp/hs1 --http 127.0.0.1:8001
    python hashstore_node.py --join 127.0.0.1:60061 --raft-addr 127.0.0.1:60062 --data-dir /tmp/hs2 --http 127.0.0.1:8002
    python hashstore_node.py --join 127.0.0.1:60061 --raft-addr 127.0.0.1:60063 --data-dir /tmp/hs3 --http 127.0.0.1:8003

or a static one (the same --peers on every node):

    python hashstore_node.py --id 1 --peers 1=127.0.0.1:60061,2=127.0.0.1:60062,3=127.0.0.1:60063 --data-dir /tmp/hs1 --http 127.0.0.1:8001

and talk to any node over HTTP:

    curl -X PUT -d world 127.0.0.1:8002/kv/hello     # -> the previous value
    curl 127.0.0.1:8003/kv/hello                      # linearizable read
    curl 127.0.0.1:8001/status

Restarting a node with the same --data-dir (and --raft-addr) resumes it.
When it is up the node prints one JSON line on stdout:
{"event": "ready", "id": ..., "raft_addr": ..., "http_addr": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlparse

import raftify


class HashStore:
    """A replicated ``dict[str, str]``.

    Entries are JSON objects (through ``raftify.JsonCodec``):
    ``{"op": "set", "key": k, "value": v}`` and ``{"op": "delete", "key": k}``;
    both return the previous value. Any other entry raises, on every node
    alike, and the proposer gets a ``raftify.StateMachineError``.
    """

    def __init__(self) -> None:
        self.data: Dict[str, str] = {}

    def apply(self, entry: Any) -> bytes:
        op = entry.get("op") if isinstance(entry, dict) else None
        if op == "set":
            previous = self.data.get(entry["key"], "")
            self.data[entry["key"]] = str(entry["value"])
            return previous.encode()
        if op == "delete":
            return self.data.pop(entry["key"], "").encode()
        raise ValueError(f"unknown command {entry!r}")

    def snapshot(self) -> bytes:
        return json.dumps(self.data).encode()

    def restore(self, snapshot: bytes) -> None:
        self.data = json.loads(snapshot)

    def read(self, key: Any) -> Optional[str]:
        return self.data.get(key)


# HTTP status for each raftify error (default 500).
STATUS_OF = {
    raftify.StateMachineError: 422,
    raftify.NotLeaderError: 421,
    raftify.NoLeaderError: 503,
    raftify.TimeoutError: 504,
    raftify.InvalidArgumentError: 400,
    raftify.ShutdownError: 503,
}


def error_body(e: raftify.RaftifyError) -> Tuple[int, Dict[str, Any]]:
    code = next((c for cls, c in STATUS_OF.items() if isinstance(e, cls)), 500)
    body: Dict[str, Any] = {"error": type(e).__name__, "message": str(e)}
    if isinstance(e, raftify.NotLeaderError):
        body.update(leader_id=e.leader_id, leader_addr=e.leader_addr)
    return code, body


def make_handler(node: raftify.Node) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def reply(self, code: int, body: Any, text: Optional[str] = None) -> None:
            data = (text if text is not None else json.dumps(body)).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def route(self, method: str) -> None:
            url = urlparse(self.path)
            path = url.path
            try:
                if path.startswith("/kv/"):
                    key = unquote(path[len("/kv/"):])
                    if method == "GET":
                        stale = "stale" in parse_qs(url.query)
                        value = node.stale_read(key) if stale else node.read(key)
                        if value is None:
                            return self.reply(404, {"error": "not found"})
                        return self.reply(200, None, text=value)
                    if method == "PUT":
                        value = self.body().decode()
                        out = node.propose({"op": "set", "key": key, "value": value})
                        return self.reply(200, None, text=out.decode())
                    if method == "DELETE":
                        out = node.propose({"op": "delete", "key": key})
                        return self.reply(200, None, text=out.decode())
                if path == "/propose" and method == "POST":
                    out = node.propose(json.loads(self.body() or b"null"))
                    return self.reply(200, None, text=out.decode())
                if path == "/status" and method == "GET":
                    return self.reply(200, node.status())
                if path == "/leader" and method == "GET":
                    return self.reply(200, {"leader_id": node.leader_id(), "leader_addr": node.leader_addr()})
                if path == "/snapshot" and method == "POST":
                    return self.reply(200, {"index": node.take_snapshot()})
                if path == "/leave" and method == "POST":
                    node.leave()
                    return self.reply(200, {"left": True})
                self.reply(404, {"error": "no such endpoint"})
            except raftify.RaftifyError as e:
                self.reply(*error_body(e))
            except (ValueError, UnicodeDecodeError) as e:
                self.reply(400, {"error": type(e).__name__, "message": str(e)})

        def do_GET(self) -> None:
            self.route("GET")

        def do_PUT(self) -> None:
            self.route("PUT")

        def do_POST(self) -> None:
            self.route("POST")

        def do_DELETE(self) -> None:
            self.route("DELETE")

    return Handler


def parse_peers(text: str) -> Dict[int, str]:
    peers: Dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        node_id, _, addr = part.partition("=")
        if not addr:
            raise SystemExit(f"--peers entry {part!r} is not ID=HOST:PORT")
        peers[int(node_id)] = addr.strip()
    return peers


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description="One node of a raftify-replicated hash map.")
    p.add_argument("--id", type=int, default=0, help="node id (assigned by the cluster with --join; default 1)")
    p.add_argument("--raft-addr", default="", help="address peers reach this node at (port 0: pick one)")
    p.add_argument("--data-dir", help="LMDB data directory (omit for in-memory storage)")
    p.add_argument("--peers", help="static cluster: 1=HOST:PORT,2=HOST:PORT,... (the same on every node)")
    p.add_argument("--join", help="join a running cluster through a member's raft address")
    p.add_argument("--learner", action="store_true", help="join as a learner")
    p.add_argument("--http", help="serve the HTTP API on HOST:PORT (port 0: pick one)")
    p.add_argument("--cluster-id", default="raftify")
    p.add_argument("--tick-ms", type=int, default=100)
    p.add_argument("--snapshot-threshold", type=int, default=100_000)
    p.add_argument("--no-sync", action="store_true", help="do not fsync the log")
    p.add_argument("--auth-token")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)

    if args.join and args.peers:
        p.error("--join and --peers exclude each other")
    peers = parse_peers(args.peers) if args.peers else {}
    # 0: the cluster assigns the id (--join), or the data dir holds it (restart).
    resuming = bool(args.data_dir) and os.path.exists(os.path.join(args.data_dir, "data.mdb"))
    node_id = args.id or (0 if args.join or resuming else 1)
    raft_addr = args.raft_addr or (peers.get(node_id, "") if peers else "") or "127.0.0.1:0"
    config = raftify.Config(
        node_id,
        raft_addr,
        data_dir=args.data_dir,
        no_sync=args.no_sync,
        peers=peers,
        cluster_id=args.cluster_id,
        tick_ms=args.tick_ms,
        snapshot_threshold=args.snapshot_threshold,
        auth_token=args.auth_token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        log_level=args.log_level,
    )
    store = HashStore()
    node = raftify.Node(config, store, codec=raftify.JsonCodec())
    try:
        node.start(join=args.join, as_learner=args.learner)
    except raftify.RaftifyError as e:
        print(f"hashstore_node: cannot start: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    server = None
    http_addr = None
    if args.http:
        host, _, port = args.http.rpartition(":")
        server = ThreadingHTTPServer((host, int(port)), make_handler(node))
        server.daemon_threads = True
        http_addr = f"{host}:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    print(json.dumps({"event": "ready", "id": node.node_id, "raft_addr": node.raft_addr, "http_addr": http_addr}), flush=True)
    while not stop.wait(0.5):
        pass
    if server is not None:
        server.shutdown()
    node.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers: run examples/hashstore_node.py as child processes and talk to
them over HTTP. Every wait is bounded; every child is killed (by PID) at
teardown."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hashstore_node.py"
T = TypeVar("T")


def wait_until(what: str, fn: Callable[[], Optional[T]], timeout: float = 15.0, every: float = 0.05) -> T:
    """Calls ``fn`` until it returns something other than None/False (exceptions
    count as not yet); fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = fn()
            if value is not None and value is not False:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(every)


def free_ports(n: int) -> List[int]:
    """n distinct free loopback ports (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class HttpError(Exception):
    def __init__(self, code: int, body: str) -> None:
        super().__init__(f"HTTP {code}: {body}")
        self.code = code
        self.body = body

    def json(self) -> Dict[str, Any]:
        return json.loads(self.body)


class NodeProc:
    """One hashstore_node.py child process."""

    def __init__(self, name: str, args: List[str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.proc: Optional[subprocess.Popen] = None
        self.info: Dict[str, Any] = {}

    def start(self, timeout: float = 30.0) -> "NodeProc":
        log = open(self.log_path, "ab")
        cmd = [sys.executable, str(EXAMPLE), *self.args, "--http", "127.0.0.1:0", "--log-level", "warn"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                pytest.fail(f"{self.name} not ready after {timeout}s; log:\n{self.log()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.proc.wait(5)
                    pytest.fail(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log()}")
                line += chunk
        self.info = json.loads(line.decode().splitlines()[0])
        assert self.info["event"] == "ready"
        return self

    @property
    def id(self) -> int:
        return int(self.info["id"])

    @property
    def raft_addr(self) -> str:
        return str(self.info["raft_addr"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, by PID."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait (SIGKILL after timeout); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    # HTTP API
    def request(self, method: str, path: str, body: Optional[bytes] = None, timeout: float = 15.0) -> Tuple[int, str]:
        url = f"http://{self.info['http_addr']}{path}"
        req = urllib.request.Request(url, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            raise HttpError(e.code, e.read().decode()) from None

    def put(self, key: str, value: str) -> str:
        return self.request("PUT", f"/kv/{key}", value.encode())[1]

    def get(self, key: str, stale: bool = False) -> Optional[str]:
        try:
            return self.request("GET", f"/kv/{key}" + ("?stale=1" if stale else ""))[1]
        except HttpError as e:
            if e.code == 404:
                return None
            raise

    def propose_raw(self, command: Any) -> str:
        return self.request("POST", "/propose", json.dumps(command).encode())[1]

    def status(self) -> Dict[str, Any]:
        return json.loads(self.request("GET", "/status")[1])


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: List[NodeProc] = []

    def spawn(self, name: str, args: List[str], timeout: float = 30.0) -> NodeProc:
        p = NodeProc(name, args, self.tmp)
        self.procs.append(p)
        return p.start(timeout)

    def kill_all(self) -> None:
        for p in self.procs:
            p.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.kill_all()

"""Plumbing between raftify's runtime threads and Python (not public)."""

from __future__ import annotations

import asyncio
import atexit
import weakref
from typing import Any

_live_nodes: "weakref.WeakSet[Any]" = weakref.WeakSet()


def resolve(future: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    """Completes an awaitable returned by a ``*_async`` method (runs on the
    event loop, scheduled with ``call_soon_threadsafe``)."""
    if future.done():  # cancelled by the awaiting task
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def track(node: Any) -> None:
    """Remembers a started node so that it is shut down at interpreter exit."""
    _live_nodes.add(node)


@atexit.register
def _shutdown_all() -> None:
    for node in list(_live_nodes):
        try:
            node.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass

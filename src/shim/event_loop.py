"""The event loop a shim process runs on.

uvloop (libuv) is the default: every request crosses the loop several times (gRPC's poller
thread hands completions over, the writer thread hands commits back, watch sends queue on
it), and uvloop's cheaper scheduling and thread wake-ups cut 8-15 % of the server's CPU per
put, range, watch event and Kubernetes-mix request (bench/runs/2026-12-07-uvloop.md).
The PostgreSQL backend's asyncpg thread runs on the same kind of loop (13-42 % more requests per
second on shim-pg). ``--event-loop asyncio`` keeps the standard library's loop everywhere,
should uvloop misbehave somewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

KINDS = ("uvloop", "asyncio")
DEFAULT = "uvloop"


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop  # imported here: `shim --help` and the tools never need it

        return uvloop.new_event_loop
    if kind == "asyncio":
        return asyncio.new_event_loop
    raise ValueError(f"unknown event loop {kind!r} (choose from {', '.join(KINDS)})")


def run(main: Coroutine[Any, Any, T], kind: str = DEFAULT) -> T:
    """``asyncio.run(main)`` on a loop of ``kind``."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)

"""Admission of client calls, and the drain that lets a stop finish every call it received.

grpc-core cancels (CANCELLED, which etcd clients do not retry) every call it has received but
not yet handed to the server when the server's shutdown starts, and a busy asyncio server
always has some waiting. So a stop first closes this gate, while gRPC keeps handing calls
over: each new one is refused at once with etcd's UNAVAILABLE "etcdserver: server stopped",
each admitted one finishes. Only once none is in flight and none has arrived for a moment
(the ones gRPC still held have come through) does the gRPC server itself stop. Calls that
still arrive a while after that (SETTLE_SECONDS) are clients retrying what was refused, and
they go on as long as the server is up: the stop does not wait for them to cease.

A stream whose client sends as long as it lives (a lease's keep-alives) would hold the stop
for its whole grace and keep renewing: its requests end at the close (``unless_closed``), as
a stopping etcd ends every stream at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

SERVER_STOPPED = "etcdserver: server stopped"  # etcd's ErrGRPCStopped (UNAVAILABLE)
# How long no call may have arrived before the gRPC server stops: long enough for a call a
# client had already sent to reach the server on a loaded machine.
QUIET_SECONDS = 0.25
# The longest a drain waits for that quiet once no admitted call is in flight: gRPC hands over
# what it held well within it; later arrivals are new calls (etcd clients retry UNAVAILABLE,
# etcd3 for Node.js every 100 ms on a new connection), which would hold the stop to its end.
SETTLE_SECONDS = 1.0


class Stopping(Exception):
    """A stream's next request is not awaited any more: the server is stopping."""


class Gate:
    """Counts the calls in flight; once closed, admits no more."""

    def __init__(self) -> None:
        self.is_open = True
        self._in_flight = 0
        self._last_arrival = 0.0
        self._idle: asyncio.Event | None = None  # made when a drain waits for it
        self._closed: asyncio.Future[None] | None = None  # made when a stream waits on it

    def enter(self) -> bool:
        """A call arrives: True to serve it (then ``leave()`` when done), False to refuse it."""
        self._last_arrival = time.monotonic()
        if not self.is_open:
            return False
        self._in_flight += 1
        return True

    def admits(self) -> bool:
        """A call the stop does not wait for (a stream) arrives: True to serve it."""
        self._last_arrival = time.monotonic()
        return self.is_open

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    def close(self) -> None:
        self.is_open = False
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    async def unless_closed(self, step: Awaitable[T]) -> T:
        """What ``step`` gives (a stream's next request), unless the gate is or gets closed
        first: then ``Stopping``, and ``step`` is cancelled."""
        task = asyncio.ensure_future(step)
        try:
            if self.is_open:
                if self._closed is None:
                    self._closed = asyncio.get_running_loop().create_future()
                await asyncio.wait((task, self._closed), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
        finally:
            # The gate closed first, or the call ended while waiting (cancelled): the step
            # is not wanted, and a step that failed at the same moment is not worth a warning.
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()
        raise Stopping()

    async def drain(self, deadline: float) -> bool:
        """After ``close()``: wait until no admitted call is in flight and no call arrived for
        QUIET_SECONDS (at most SETTLE_SECONDS once none is in flight), or until ``deadline``
        (``time.monotonic()``). True if drained."""
        self._idle = asyncio.Event()
        settled_by: float | None = None
        while True:
            if self._in_flight:
                self._idle.clear()
                try:
                    await asyncio.wait_for(self._idle.wait(), deadline - time.monotonic())
                except TimeoutError:
                    return False
            now = time.monotonic()
            if settled_by is None:
                settled_by = min(now + SETTLE_SECONDS, deadline)
            quiet_for = now - self._last_arrival
            if not self._in_flight and (quiet_for >= QUIET_SECONDS or now >= settled_by):
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(max(0.0, min(QUIET_SECONDS - quiet_for, settled_by - now)))

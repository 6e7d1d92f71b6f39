"""Admission of client calls, and the drain that lets a stop finish every call it received.

grpc-core cancels (CANCELLED, which etcd clients do not retry) every call it has received but
not yet handed to the server when the server's shutdown starts, and a busy asyncio server
always has some waiting. So a stop first closes this gate, while gRPC keeps handing calls
over: each new one is refused at once with etcd's UNAVAILABLE "etcdserver: server stopped",
each admitted one finishes. Only once none is in flight and none has arrived for a moment
(the ones gRPC still held have come through) does the gRPC server itself stop. Calls that
still arrive a while after that (SETTLE_SECONDS) are clients retrying what was refused, and
they go on as long as the server is up: the stop does not wait for them to cease.
"""

from __future__ import annotations

import asyncio
import time

SERVER_STOPPED = "etcdserver: server stopped"  # etcd's ErrGRPCStopped (UNAVAILABLE)
# How long no call may have arrived before the gRPC server stops: long enough for a call a
# client had already sent to reach the server on a loaded machine.
QUIET_SECONDS = 0.25
# The longest a drain waits for that quiet once no admitted call is in flight: gRPC hands over
# what it held well within it; later arrivals are new calls (etcd clients retry UNAVAILABLE,
# etcd3 for Node.js every 100 ms on a new connection), which would hold the stop to its end.
SETTLE_SECONDS = 1.0


class Gate:
    """Counts the calls in flight; once closed, admits no more."""

    def __init__(self) -> None:
        self.is_open = True
        self._in_flight = 0
        self._last_arrival = 0.0
        self._idle: asyncio.Event | None = None  # made when a drain waits for it

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

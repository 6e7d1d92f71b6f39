"""When a link dials again, and how long it waits for the peer to answer.

A peer that cannot be reached (its packets dropped during a partition) is tried again about
four times a second: each attempt that has no connection after the connect timeout is
abandoned and the next sends a new SYN at once (TCP itself would send it again only a second
later, then 3 s...). So a link comes back within about a quarter of a second of the network
healing, for a few SYNs a second to an unreachable peer. An attempt that is connected waits
for the peer's answer (``link_stream.handshake``). Nothing listening (a refused connection) is
tried again every half second. A peer that answers but refuses, or a link that breaks once up,
is retried with a backoff (0.1 s doubling to 3 s), back to quick once a link stayed up a while.
"""

from __future__ import annotations

import grpc

RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 3.0
# Between attempts at an unreachable peer (each attempt itself waits up to the connect timeout).
UNREACHABLE_RETRY_SECONDS = 0.5
# The connect timeout: this, or 4x the last handshake's time on this link if that is longer
# (a link across a slow network); doubling while a link never came up, up to MAX.
CONNECT_MIN_SECONDS = 0.25
CONNECT_MAX_SECONDS = 6.0
# A link up this long ends a streak of failures: the next one is retried quickly.
STABLE_SECONDS = 30.0

UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Redial:
    """One dialed link's retry state."""

    def __init__(self) -> None:
        self._delay = RETRY_MIN_SECONDS
        self._handshake_seconds: float | None = None
        self._connect = CONNECT_MIN_SECONDS

    def connect_timeout(self) -> float:
        """How long to wait for the peer's Hello."""
        if self._handshake_seconds is not None:
            return min(CONNECT_MAX_SECONDS, max(CONNECT_MIN_SECONDS, 4 * self._handshake_seconds))
        return self._connect

    def linked(self, handshake_seconds: float) -> None:
        self._handshake_seconds = handshake_seconds

    def failed(self, exc: BaseException, linked: bool, lasted_seconds: float) -> float:
        """The pause before the next attempt, after an attempt that ended with ``exc``
        (``linked``: the handshake had completed; ``lasted_seconds``: the attempt's time)."""
        if linked and lasted_seconds >= STABLE_SECONDS:
            self._delay = RETRY_MIN_SECONDS
        if not linked and isinstance(exc, TimeoutError):
            # No answer in time: try again at once (the attempt itself took the timeout).
            if self._handshake_seconds is None:
                self._connect = min(CONNECT_MAX_SECONDS, self._connect * 2)
            return 0.0
        if not linked and isinstance(exc, grpc.aio.AioRpcError) and (
            exc.code() in UNREACHABLE_CODES
        ):
            return UNREACHABLE_RETRY_SECONDS  # nothing listening: a refused connection
        delay = self._delay
        self._delay = min(self._delay * 2, RETRY_MAX_SECONDS)
        return delay

"""When a link sends its next batch of new entries: at most one per interval while writes keep
coming, the first after a quiet spell at once.

Every batch costs both ends a fixed price whatever it carries: the sender a gRPC message (and
its compression) on the event loop that also serves the clients, the receiver a message, a
signature check and a durable commit. A node that sends each committed write on its own pays
that price once per write and per peer, so with one client and six peers the origin's event
loop spends most of its time sending, the replicas most of theirs committing, and the client's
writes wait for both (bench/runs/2026-12-05-flat.md). Sending what accumulated once per
interval makes the price per batch, not per write, and adds at most one interval to how soon
a peer sees a write; a lone write still goes at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# The shortest time between two batches of new entries on one link while writes keep coming.
BATCH_INTERVAL_SECONDS = 0.01


class Pacer:
    """One link's pace: ``delay()`` is how long its sender waits before reading what to send;
    ``sent()`` marks a batch of entries gone."""

    def __init__(self, interval: float = BATCH_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: float | None = None  # when the last batch of entries went

    def delay(self) -> float:
        """Seconds until the next batch may go (0: now)."""
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self._interval - self._clock())

    def sent(self) -> None:
        self._last = self._clock()

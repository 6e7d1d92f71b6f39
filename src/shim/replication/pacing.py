"""When a link sends its next batch of new entries: the first after a quiet spell at once; while
writes keep coming, at most one per interval, the interval growing from 10 ms up to the node's
``--replication-batch-delay`` (50 ms by default) as long as they keep coming.

Every batch costs both ends a fixed price whatever it carries: the sender a gRPC message (and
its compression) on the event loop that also serves the clients, the receiver a message, a
signature check and a durable commit. A node that sends each committed write on its own pays
that price once per write and per peer, so with one client and six peers the origin's event
loop spends most of its time sending, the replicas most of theirs committing, and the client's
writes wait for both (bench/runs/2026-12-05-flat.md). Sending what accumulated once per
interval makes the price per batch, not per write.

A longer interval makes it cheaper still (a replica's CPU per entry at one client and seven
nodes: 507-556 µs at 10 ms, 196-198 µs at 50 ms; bench/runs/2026-12-06-pacing.md) but delays every
write a peer sees by up to that interval. So the interval starts short and grows only while
writes keep coming: a batch that had to wait for its turn makes the next interval longer, a
write after a quiet spell (no batch for the whole current interval) goes at once and starts
again from the shortest. Sparse, causal writes (a controller answering what it saw) are not
delayed; a steady stream is delayed by at most the longest interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# The shortest time between two batches of new entries on one link while writes keep coming.
BATCH_INTERVAL_SECONDS = 0.01
# How much longer the next interval is after a batch that had to wait for its turn.
GROWTH = 1.5


class Pacer:
    """One link's pace, its interval between ``BATCH_INTERVAL_SECONDS`` (or ``longest``, if
    shorter; 0: every batch at once) and ``longest``. ``delay()`` is how long its sender waits
    before reading what to send (and notes a quiet spell: the interval starts again);
    ``sent()`` marks a batch of entries gone."""

    def __init__(self, longest: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._shortest = min(BATCH_INTERVAL_SECONDS, longest)
        self._longest = longest
        self.interval = self._shortest  # the current one
        self._clock = clock
        self._last: float | None = None  # when the last batch of entries went
        self._waited = False  # whether the batch about to go had to wait for its turn

    def delay(self) -> float:
        """Seconds until the next batch may go (0: now)."""
        if self._last is None:
            return 0.0
        left = self._last + self.interval - self._clock()
        if left <= 0:
            if not self._waited:
                self.interval = self._shortest  # a quiet spell: start again
            return 0.0
        self._waited = True
        return left

    def sent(self) -> None:
        if self._waited:
            # Writes kept coming: the next batch may gather longer.
            self.interval = min(self._longest, self.interval * GROWTH)
            self._waited = False
        self._last = self._clock()

"""Hybrid logical clock: wall-clock milliseconds in the high bits, a counter in the low 16.

Timestamps from one clock strictly increase, even when the wall clock stops or steps back, and
stay close to real time, so they order writes across nodes (replication builds on this).
"""

from __future__ import annotations

import time

LOGICAL_BITS = 16


def wall_ms(timestamp: int) -> int:
    return timestamp >> LOGICAL_BITS


class HybridClock:
    def __init__(self, last: int = 0) -> None:
        # Seeded from the largest timestamp already in the log, so it never goes backwards
        # across a restart.
        self._last = last

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        physical = time.time_ns() // 1_000_000 << LOGICAL_BITS
        self._last = physical if physical > self._last else self._last + 1
        return self._last

    def observe(self, remote: int) -> None:
        """A timestamp from another node: later local stamps sort after it (callers bound how
        far ahead of the wall clock a remote stamp may pull this clock)."""
        if remote > self._last:
            self._last = remote

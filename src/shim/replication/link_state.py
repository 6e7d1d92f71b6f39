"""What ``shim status`` shows of each link: up or down, since when, how many attempts failed
and the last reason. Kept in memory per link and written to the ``link`` table only when it
changes (or, for a link that keeps failing the same way, now and then), so an idle or broken
link costs no write per heartbeat or per attempt."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shim.mvcc.replica import ReplicaRequest

if TYPE_CHECKING:
    from shim.replication.tables import ReplicationTables

# A link that stayed up this long ends a streak of failures: the next failure starts a new one.
STABLE_SECONDS = 30.0
# A link failing the same way again and again has its count rewritten at most this often.
REWRITE_SECONDS = 30.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class LinkStatus(ReplicaRequest):
    """A write of one link's row (see ``link`` in the SQLite migrations)."""

    key: str  # the URL dialed, or the node id of a peer that dialed us
    role: str  # 'dial' or 'admit'
    node_id: str
    state: str  # 'up' or 'down'
    since_ms: int
    failures: int
    error: str
    error_ms: int

    def record(self, repl: ReplicationTables) -> int:
        """Write the row; answers the rows written (1)."""
        return repl.record_link(self.key, self.role, self.node_id, self.state, self.since_ms,
                                self.failures, self.error, self.error_ms)


class LinkTracker:
    """One link's state; ``up`` and ``down`` answer the write to make, or None."""

    def __init__(self, key: str, role: str) -> None:
        self.key, self.role = key, role
        self.node_id = ""
        self.state = ""
        self.since_ms = 0
        self.failures = 0
        self.error = ""
        self.error_ms = 0
        self._up_at = 0.0
        self._streak_ms = 0
        self._written_at = 0.0
        self._written_error = ""

    def up(self, node_id: str) -> LinkStatus:
        self.node_id, self.state, self.since_ms = node_id, "up", _now_ms()
        self._up_at = time.monotonic()
        return self._write()

    def down(self, reason: str) -> LinkStatus | None:
        now = time.monotonic()
        was = self.state
        if (was == "up" and now - self._up_at >= STABLE_SECONDS) or not self.failures:
            self.failures, self._streak_ms = 0, _now_ms()  # a new streak of failures
        self.state, self.since_ms = "down", self._streak_ms
        self.failures += 1
        self.error, self.error_ms = reason, _now_ms()
        if was != "down" or reason != self._written_error or (
            now - self._written_at >= REWRITE_SECONDS
        ):
            return self._write()
        return None

    def _write(self) -> LinkStatus:
        self._written_at, self._written_error = time.monotonic(), self.error
        return LinkStatus(self.key, self.role, self.node_id, self.state, self.since_ms,
                          self.failures, self.error, self.error_ms)

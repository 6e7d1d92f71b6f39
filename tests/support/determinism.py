"""What makes an in-process store's behaviour a function of the test's data alone.

Two things in a store are random or time-dependent and decide how replicated writes merge:
the node id (a random uuid in a fresh database; it breaks ties between equal clock stamps) and
the hybrid logical clock (wall-clock milliseconds plus a counter; the stamps order concurrent
writes). A property test whose draws depend on merged state (hypothesis replays a choice
sequence and must see the same draws) fixes both here, instead of changing the product:

- ``set_node_id`` gives a freshly opened SQLite backend the id the test chose, before any
  store uses it (what a database created with that id would hold).
- ``frozen_wall_clock`` stops the wall clock the hybrid clocks read: their stamps then count
  local writes and observed remote stamps only (a Lamport clock), the same on every run. The
  frozen instant lies in the past, so no stamp is ever "ahead of the wall clock" (skewed).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

from shim.backend.sqlite import SqliteBackend
from shim.mvcc import hlc

# 2026-01-01T00:00:00Z
FROZEN_WALL_NS = 1_767_225_600 * 1_000_000_000


def node_id_for(rank: int) -> str:
    """A node id in the form shim makes (32 hex digits) that sorts by ``rank``."""
    return f"{rank + 1:032x}"


def set_node_id(backend: SqliteBackend, node_id: str) -> None:
    """Give a just-opened backend ``node_id`` (before a Store is made on it)."""
    backend.writer().execute("UPDATE meta SET value = ? WHERE name = 'node_id'", (node_id,))
    backend.node_id = node_id


@contextlib.contextmanager
def frozen_wall_clock(wall_ns: int = FROZEN_WALL_NS) -> Iterator[None]:
    """While inside, every HybridClock reads ``wall_ns`` as the wall clock."""
    real = hlc.time
    hlc.time = types.SimpleNamespace(time_ns=lambda: wall_ns)  # type: ignore[assignment]  # a stand-in module
    try:
        yield
    finally:
        hlc.time = real

"""Reads of the log for the watch path: catch-up of a watcher that is behind, and the
sequencer filling in other writers' revisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shim.backend.base import LogEntry

# How many log rows one read fetches at most.
CATCH_UP_ROWS = 1000


@dataclass(slots=True)
class EntriesRead:
    """One read: log rows after a revision, and the snapshot they were read at."""

    entries: list[LogEntry]
    revision: int
    compact_revision: int


# (key, end, after_revision, limit) -> the rows read, at one snapshot (a worker thread's).
ReadEntries = Callable[[bytes, bytes | None, int, int], EntriesRead]

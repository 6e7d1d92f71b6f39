"""Commit ordering when several writers share one database (PostgreSQL servers on one
database, the serving processes of ``--processes N``).

The watch hub must publish revisions strictly in order. With one writer, its own commits
arrive in order and pass straight through. With others writing too, a local commit can arrive
after a gap (another writer took the revisions in between), and other writers' commits arrive
only as "the database reached revision N": the sequencer then reads the missing revisions from
the log and hands everything to the hub in revision order, holding local commits until the gap
before them is filled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from shim.backend.base import LogEntry
from shim.mvcc.events import Change, Revision
from shim.mvcc.log_reads import CATCH_UP_ROWS, ReadEntries

log = logging.getLogger(__name__)

# First pause before reading the log again after a failed read (doubling up to 2 s).
FILL_RETRY_SECONDS = 0.05

class RevisionSequencer:
    """Hands committed revisions to ``publish`` gap-free and in order; ``published()`` is the
    newest revision handed on so far (a revision with no changes only moves it on)."""

    def __init__(
        self,
        publish: Callable[[list[Revision]], None],
        published: Callable[[], int],
        read_entries: ReadEntries,
    ) -> None:
        self._publish = publish
        self._published = published
        self._read_entries = read_entries
        # Local commits waiting for earlier revisions that another writer made.
        self._held: list[Revision] = []
        self._fill_target = published()
        self._fill_task: asyncio.Task[None] | None = None

    def on_commit(self, revisions: list[Revision]) -> None:
        """Committed revisions from this process's write path (event loop thread)."""
        if not revisions:
            return
        if self._held or revisions[0].revision > self._published() + 1:
            # Another writer on the same database committed in between: read the missing
            # revisions from the log first.
            self._held.extend(revisions)
            self._request_fill(revisions[-1].revision - 1)
            return
        self._publish(revisions)

    def on_external_commit(self, revision: int) -> None:
        """Another writer on the same database committed up to ``revision``."""
        if revision > self._published():
            self._request_fill(revision)

    def _request_fill(self, revision: int) -> None:
        self._fill_target = max(self._fill_target, revision)
        if self._fill_task is None or self._fill_task.done():
            self._fill_task = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        """Publish, from the log, every revision up to the fill target that this process did
        not commit itself, then the held local ones, all in order."""
        retry_delay = FILL_RETRY_SECONDS
        while True:
            while self._published() < self._fill_target:
                try:
                    read = await asyncio.to_thread(
                        self._read_entries, b"\x00", b"", self._published(), CATCH_UP_ROWS
                    )
                except Exception as exc:
                    # The database is unreachable for now: keep the place and try again, or
                    # the held revisions would wait for the next commit to come along.
                    log.warning("reading committed revisions failed (%s); retrying", exc)
                    await asyncio.sleep(retry_delay)
                    retry_delay = min(retry_delay * 2, 2.0)
                    continue
                retry_delay = FILL_RETRY_SECONDS
                revisions = _group_by_revision(read.entries, up_to=self._fill_target)
                if not revisions:
                    if read.revision <= self._published():
                        # The notified revision is not visible yet; look again shortly.
                        await asyncio.sleep(0.005)
                        continue
                    # Revisions without log rows (none of them changed a key): move on.
                    self._publish([Revision(min(read.revision, self._fill_target))])
                    continue
                self._publish(revisions)
            held, self._held = self._held, []
            fresh = [r for r in held if r.revision > self._published()]
            if fresh and fresh[0].revision > self._published() + 1:
                self._held = fresh
                self._fill_target = max(self._fill_target, fresh[0].revision - 1)
                continue
            if fresh:
                self._publish(fresh)
            if not self._held and self._published() >= self._fill_target:
                return


def _group_by_revision(entries: list[LogEntry], up_to: int) -> list[Revision]:
    """Log rows (whole revisions) as committed revisions, none above ``up_to``."""
    revisions: list[Revision] = []
    for entry in entries:
        revision = entry.kv.mod_revision
        if revision > up_to:
            break
        if not revisions or revisions[-1].revision != revision:
            revisions.append(Revision(revision))
        revisions[-1].changes.append(Change(entry.kv, entry.prev, entry.deleted))
    return revisions

"""What links learn from their peers' heartbeats (cursor, newest position, acked, last seen:
``shim status``), written for all links together in one transaction at most once a heartbeat.

Each link used to write its own peer row once a heartbeat, one durable commit each: a node
with six peers committed six times a second for bookkeeping alone, each commit an fsync that a
client's write queued behind (and that sent the client's writes through the writer thread for
a while after). A batch of entries still records its peer's row in its own transaction; only
rows that nothing else writes wait here.
"""

from __future__ import annotations

import asyncio
import contextlib

from shim.mvcc.errors import StoreError
from shim.mvcc.store import Store
from shim.replication.pacing import Pacer
from shim.replication.requests import MergeRequest, PeerRecords


class HeartbeatRecorder:
    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self._pending: dict[str, MergeRequest] = {}  # by peer: the newest
        self._pacer = Pacer(interval)
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    def note(self, record: MergeRequest) -> None:
        """Write ``record`` (a peer's row from its heartbeat; no entries) with the next write
        of every link's rows: at once if none went in the last interval."""
        self._pending[record.peer] = record
        self._start()

    def forget(self, peer: str) -> None:
        """The link records a batch itself, with newer figures: nothing older may follow it.
        (A write already handed to the writer is applied before the link's, in order.)"""
        self._pending.pop(peer, None)

    async def close(self) -> None:
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

    async def _flush(self) -> None:
        try:
            if (delay := self._pacer.delay()) > 0:
                await asyncio.sleep(delay)
            records, self._pending = list(self._pending.values()), {}
            self._pacer.sent()
            if records:
                with contextlib.suppress(StoreError):  # status only: the links go on
                    await self._store.write_expecting(int, PeerRecords(records))
        finally:
            self._flusher = None
            if self._pending:  # noted while this write went on
                self._start()

    def _start(self) -> None:
        if self._flusher is None and not self._closed:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="record peers' heartbeats")

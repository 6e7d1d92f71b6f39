"""Long-running hygiene: automatic compaction of the MVCC history and, on a node that takes
part in replication, retention of replication entries (``shim.replication.retention``), so the
database stays near the size of the live data.

Both go through the single write path as ordinary requests (a CompactionRequest, as
kube-apiserver would send), so they never race with writes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shim.mvcc.errors import StoreError
from shim.mvcc.store import Store
from shim.pb.rpc_pb2 import CompactionRequest
from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JanitorSettings:
    # etcd's --auto-compaction-mode: "periodic" keeps `retention` seconds of history,
    # "revision" keeps the last `retention` revisions; "" turns automatic compaction off.
    compaction_mode: str = ""
    compaction_retention: float = 0.0
    # How often to look (etcd checks revision mode every 5 minutes).
    interval: float = 300.0


class Janitor:
    def __init__(
        self,
        store: Store,
        settings: JanitorSettings,
        prune: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        # Replication retention, every interval (None: no replication entries are kept).
        self._prune = prune
        self._task: asyncio.Task[None] | None = None
        # (monotonic time, revision) samples for periodic compaction.
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="janitor")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        settings = self._settings
        tick = settings.interval
        if settings.compaction_mode == "periodic":
            # Sample often enough that the kept window is close to the retention asked for.
            tick = min(tick, max(settings.compaction_retention / 10, 0.1))
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            try:
                await self._compact()
                if self._prune is not None and (
                    time.monotonic() - last_prune >= settings.interval
                ):
                    last_prune = time.monotonic()
                    await self._prune()
            except StoreError as exc:
                log.warning("maintenance skipped: %s", exc)

    async def _compact(self) -> None:
        settings = self._settings
        revision = self._store.revision
        if settings.compaction_mode == "revision":
            target = revision - int(settings.compaction_retention)
        elif settings.compaction_mode == "periodic":
            now = time.monotonic()
            self._samples.append((now, revision))
            target = 0
            while self._samples and now - self._samples[0][0] >= settings.compaction_retention:
                target = self._samples.popleft()[1]
        else:
            return
        if target <= max(self._store.compact_revision, 0):
            return
        await self._store.write(CompactionRequest(revision=target))
        log.info("auto-compacted history up to revision %d", target)

"""The store and what keeps it, in the process that owns the write path (a lone server, or the
store process of ``--processes N``): the Store with its Writer, the lessor (lease deadlines and
expiry) and the janitor (automatic compaction, replication retention)."""

from __future__ import annotations

from dataclasses import dataclass

from shim.mvcc.janitor import Janitor
from shim.mvcc.lease import Lessor
from shim.mvcc.store import Store


@dataclass(eq=False)
class OwnedStore:
    store: Store
    lessor: Lessor
    janitor: Janitor

    async def start(self) -> None:
        await self.store.start()
        self.lessor.start(self.store.leases())
        self.janitor.start()

    async def stop(self) -> None:
        """Stop the lessor and the janitor, then drain and stop the write path."""
        await self.lessor.close()
        await self.janitor.close()
        await self.store.close()

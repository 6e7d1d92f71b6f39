"""Retention of replication entries: the janitor's periodic pruning, on a node that keeps them.

Entries go through the single write path in chunks (``PruneEntries``), so pruning never races
with writes; only entries older than the retention that no merge can need any more go.
"""

from __future__ import annotations

import logging
import time

from shim.mvcc.store import Store
from shim.replication.requests import PruneEntries

log = logging.getLogger(__name__)

PRUNE_CHUNK = 1000


async def prune(store: Store, retention_seconds: float) -> None:
    cutoff = time.time_ns() // 1_000_000 - int(retention_seconds * 1000)
    total = 0
    while True:
        pruned = await store.write_expecting(int, PruneEntries(cutoff, PRUNE_CHUNK))
        total += pruned
        if pruned < PRUNE_CHUNK:
            break
    if total:
        log.info("replication retention pruned %d superseded entries", total)

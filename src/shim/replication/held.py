"""Entries stamped beyond ``--max-clock-skew`` wait apart until the clock reaches them.

A peer's entry whose clock stamp is further ahead of this node's wall clock than the bound is
stored (and forwarded) but not applied: applied, its far-ahead stamp would win over every
write made before the wall clock gets there, so acknowledged writes would vanish. The writer
keeps the smallest held stamp; this loop asks the write path to apply the held entries once
the wall clock is within the bound of them. An entry stamped decades ahead (2^63-1) is held
for good and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging

from shim import metrics
from shim.mvcc.errors import StoreError
from shim.mvcc.store import Store
from shim.replication.requests import MergeResult, ReleaseHeld
from shim.replication.resolve import Replica

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.25
RELEASE_CHUNK = 500


async def release_held_forever(store: Store, replica: Replica) -> None:
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        held = replica.min_held_hlc
        if held is None or not replica.due(held):
            continue
        try:
            while True:
                result = await store.write_expecting(MergeResult, ReleaseHeld(RELEASE_CHUNK))
                metrics.record_merge(
                    "held", result.applied, result.unchanged, 0, result.conflict_rules, None,
                    0, result.quarantined,
                )
                if result.received:
                    log.info("applied %d held entries the clock has reached", result.received)
                if result.received < RELEASE_CHUNK:
                    break
        except StoreError as exc:
            log.warning("held entries not released yet: %s", exc)

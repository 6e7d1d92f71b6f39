"""The lessor: lease deadlines, keep-alives and expiry, on the event loop thread.

Grants and revokes are writes: they go through the store's single write path, so a lease and
the keys its revocation deletes change in one transaction. Deadlines live in memory: after a
restart every lease gets its full TTL again, plus etcd's election-timeout extension, so a
restarted server never expires a lease earlier than etcd would.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time

from shim.auth.state import Caller
from shim.mvcc.errors import LeaseNotFoundError, StoreClosedError, StoreError
from shim.mvcc.store import Store
from shim.pb.rpc_pb2 import (
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
)
from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# etcd refreshes every lease on becoming leader with its election timeout (1 s by default).
RESTART_EXTENSION_SECONDS = 1.0
_MAX_ID = (1 << 63) - 1


class Lessor:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._ttl: dict[int, int] = {}
        self._deadline: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []
        self._refused = False  # the storage refused the last expiry (said once, not each try)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, leases: dict[int, int]) -> None:
        now = time.monotonic()
        for lease_id, ttl in leases.items():
            self._schedule(lease_id, ttl, now + ttl + RESTART_EXTENSION_SECONDS)
        self._task = asyncio.get_running_loop().create_task(self._expiry_loop())

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def _schedule(self, lease_id: int, ttl: int, deadline: float) -> None:
        self._ttl[lease_id] = ttl
        self._deadline[lease_id] = deadline
        heapq.heappush(self._heap, (deadline, lease_id))
        self._wake.set()

    def _forget(self, lease_id: int) -> None:
        self._ttl.pop(lease_id, None)
        self._deadline.pop(lease_id, None)

    # -- requests ------------------------------------------------------------------------------

    async def grant(self, req: LeaseGrantRequest) -> LeaseGrantResponse:
        if req.ID == 0:
            req = LeaseGrantRequest(TTL=req.TTL, ID=self._new_id())
        resp = await self._store.write_expecting(LeaseGrantResponse, req)
        self._schedule(resp.ID, resp.TTL, time.monotonic() + resp.TTL)
        return resp

    def _new_id(self) -> int:
        while True:
            candidate = random.randint(1, _MAX_ID)
            if candidate not in self._ttl:
                return candidate

    async def revoke(self, lease_id: int, caller: Caller | None = None) -> LeaseRevokeResponse:
        """Revoke a lease and delete its keys; on behalf of ``caller`` (None: expiry), who
        must be able to write every one of them."""
        resp = await self._store.write_expecting(
            LeaseRevokeResponse, LeaseRevokeRequest(ID=lease_id), caller
        )
        self._forget(lease_id)
        return resp

    async def renew(self, lease_id: int) -> int:
        """Refresh a lease's deadline; its TTL, or 0 if it does not exist (or just expired)."""
        ttl = self._ttl.get(lease_id)
        now = time.monotonic()
        if ttl is None or self._deadline[lease_id] <= now:
            return 0
        self._schedule(lease_id, ttl, now + ttl)
        return ttl

    async def time_to_live(self, lease_id: int) -> tuple[int, int] | None:
        """(remaining whole seconds, granted TTL), or None for an unknown lease."""
        ttl = self._ttl.get(lease_id)
        if ttl is None:
            return None
        remaining = int(self._deadline[lease_id] - time.monotonic())  # truncated, as etcd
        return remaining, ttl

    def count(self) -> int:
        return len(self._ttl)

    async def lease_ids(self) -> list[int]:
        """Every lease, the first to expire first (etcd's LeaseLeases order)."""
        return sorted(self._deadline, key=self._deadline.__getitem__)

    # -- expiry --------------------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            expired: list[int] = []
            while self._heap and self._heap[0][0] <= now:
                deadline, lease_id = heapq.heappop(self._heap)
                # Stale heap entries (renewed or revoked leases) are skipped.
                if self._deadline.get(lease_id) == deadline:
                    expired.append(lease_id)
            for lease_id in expired:
                await self._expire(lease_id)
            timeout = self._heap[0][0] - time.monotonic() if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _expire(self, lease_id: int) -> None:
        try:
            await self.revoke(lease_id)
            log.debug("lease %x expired", lease_id)
            if self._refused:
                log.info("expired leases are revoked again")
                self._refused = False
        except LeaseNotFoundError:
            self._forget(lease_id)  # revoked meanwhile
        except StoreClosedError:
            raise asyncio.CancelledError() from None
        except StoreError as exc:
            # The storage refuses writes (a full disk, an outage): said once, not with a
            # traceback at every try (the writes refused meanwhile log theirs).
            if self._refused:
                log.debug("revoking expired lease %x refused again: %s", lease_id, exc)
            else:
                log.warning("revoking expired lease %x failed, retrying until the storage "
                            "takes it: %s", lease_id, exc)
                self._refused = True
            self._schedule(lease_id, self._ttl.get(lease_id, 1), time.monotonic() + 0.5)
        except Exception:
            log.exception("revoking expired lease %x failed; retrying shortly", lease_id)
            # Try again a little later rather than leave the lease (and its keys) forever.
            self._schedule(lease_id, self._ttl.get(lease_id, 1), time.monotonic() + 0.5)

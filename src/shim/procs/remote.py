"""A serving process's view of the store process: its write path and its lessor, remotely.

Writes and lease operations travel to the store process as calls and come back as replies;
the store process's commit notices (every committed revision with its changes, in order)
arrive on the same channel and go to this process's commit listeners, the watch hub among
them, exactly as a local Writer would hand them over. A notice is sent before the reply of
any write in its batch, so a watcher here sees a revision before its writer is answered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from shim.auth.state import Caller
from shim.backend.base import Backend
from shim.mvcc.apply import WriteRequest, WriteResponse
from shim.mvcc.errors import StorageUnavailableError, StoreClosedError
from shim.mvcc.events import CommitListener, Revision
from shim.pb.rpc_pb2 import LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeResponse
from shim.procs.channel import Channel, ChannelClosed

log = logging.getLogger(__name__)

# Call names (the store process answers each; see shim.procs.store_process).
WRITE = "write"
LEASE_GRANT = "lease_grant"
LEASE_REVOKE = "lease_revoke"
LEASE_RENEW = "lease_renew"
LEASE_TTL = "lease_ttl"
LEASE_IDS = "lease_ids"

# Message kinds.
CALL = "call"  # serving -> store: (CALL, call id, call name, argument)
REPLY = "reply"  # store -> serving: (REPLY, call id, ok, value or exception)
COMMIT = "commit"  # store -> serving: (COMMIT, revisions)
START = "start"  # store -> serving, first: (START, ServerConfig, index)
READY = "ready"  # serving -> store: (READY, None) or (FAILED, one-line reason)
FAILED = "failed"


class StoreLink:
    """Calls to the store process and the notices it sends, over one channel."""

    def __init__(self, channel: Channel, revision: int, on_lost: Callable[[], None]) -> None:
        self._channel = channel
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._on_lost = on_lost
        self._listener: CommitListener | None = None
        self.revision = revision  # the newest revision this process has been told of
        self.lost = False
        self._closing = False

    def start(self, listener: CommitListener) -> None:
        self._listener = listener
        self._channel.set_handler(self._received, self._closed)

    def close(self) -> None:
        self._closing = True  # the channel closing now is this process's own stop
        self._channel.close()

    async def call(self, name: str, argument: Any) -> Any:
        if self.lost:
            raise StorageUnavailableError("the store process is gone")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        try:
            self._channel.send((CALL, call_id, name, argument))
            return await future
        except ChannelClosed:
            raise StorageUnavailableError("the store process is gone") from None
        finally:
            self._calls.pop(call_id, None)

    def _received(self, message: Any) -> None:
        if message[0] == REPLY:
            _, call_id, ok, value = message
            future = self._calls.get(call_id)
            if future is None or future.done():
                return  # its caller went away
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        elif message[0] == COMMIT:
            self._committed(message[1])
        else:
            log.error("unexpected message from the store process: %r", message[0])

    def _closed(self) -> None:
        if self.lost or self._closing:
            return
        log.error("the store process is gone; this serving process stops")
        self.lost = True
        for future in self._calls.values():
            if not future.done():
                future.set_exception(StorageUnavailableError("the store process is gone"))
        self._on_lost()

    def _committed(self, revisions: list[Revision]) -> None:
        # Notices older than this process's start (it read the revision from the database
        # after it was subscribed) were already in the database it started from.
        fresh = [r for r in revisions if r.revision > self.revision]
        if fresh:
            self.revision = fresh[-1].revision
            if self._listener is not None:
                self._listener(fresh)


class RemoteWritePath:
    """The Store's write path in a serving process: every write is the store process's."""

    replica = None  # replication runs in the store process only

    def __init__(self, link: StoreLink, on_commit: CommitListener, backend: Backend) -> None:
        self._link = link
        self._on_commit = on_commit
        self._backend = backend
        self.leases: dict[int, int] = {}  # the store process's lessor keeps them

    @property
    def revision(self) -> int:
        return self._link.revision

    @property
    def compact_revision(self) -> int:
        # Only the janitor asks, and it runs in the store process: read it when asked.
        with self._backend.read() as view:
            return view.compact_revision()

    def start(self) -> None:
        self._link.start(self._on_commit)

    async def write(self, request: WriteRequest) -> WriteResponse:
        if self._link.lost:
            raise StoreClosedError()
        response: WriteResponse = await self._link.call(WRITE, request)
        return response

    def stop(self) -> None:
        """Nothing queues here: every write already went to the store process."""


class RemoteLessor:
    """The lessor of the store process, for this process's Lease service."""

    def __init__(self, link: StoreLink) -> None:
        self._link = link

    def start(self, leases: dict[int, int]) -> None:
        """Deadlines and expiry live in the store process."""

    async def close(self) -> None:
        """Nothing runs here."""

    async def grant(self, req: LeaseGrantRequest) -> LeaseGrantResponse:
        response: LeaseGrantResponse = await self._link.call(LEASE_GRANT, req)
        return response

    async def revoke(self, lease_id: int, caller: Caller | None = None) -> LeaseRevokeResponse:
        response: LeaseRevokeResponse = await self._link.call(LEASE_REVOKE, (lease_id, caller))
        return response

    async def renew(self, lease_id: int) -> int:
        ttl: int = await self._link.call(LEASE_RENEW, lease_id)
        return ttl

    async def time_to_live(self, lease_id: int) -> tuple[int, int] | None:
        found: tuple[int, int] | None = await self._link.call(LEASE_TTL, lease_id)
        return found

    async def lease_ids(self) -> list[int]:
        ids: list[int] = await self._link.call(LEASE_IDS, None)
        return ids

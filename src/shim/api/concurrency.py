"""The building blocks of etcd's Lock and Election services.

As in etcd, whose recipes run through a client inside the server with the caller's token,
every key-value operation here is the caller's (``current_caller()``): with auth enabled the
caller needs read and write permission on the lock's or election's keys.

etcd serves both with its client-side concurrency recipes run inside the server: a session is
a lease; each contender puts a key "<name>/<lease in hex>" with that lease; contenders are
ordered by the keys' create revisions, and a contender waits for the deletion of every key
created before its own. Here the same recipes run directly on the store, the lessor and the
watch hub, so they behave the same in a lone server and in every serving process of
``--processes N``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from shim.api.lease import LeaseKeeper
from shim.api.validate import check_size
from shim.auth.guard import current_caller
from shim.mvcc.errors import CompactedError, StoreClosedError
from shim.mvcc.store import Store
from shim.mvcc.watch import WatchHub
from shim.pb import rpc_pb2
from shim.pb.kv_pb2 import Event, KeyValue
from shim.pb.rpc_pb2 import Compare, RangeRequest, RequestOp, ResponseHeader, TxnRequest

log = logging.getLogger(__name__)

# etcd's concurrency.Session grants a lease of this TTL when the request names none (lease 0).
DEFAULT_SESSION_TTL = 60


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) every key starting with ``prefix`` (etcd's
    GetPrefixRangeEnd): the last byte below 0xff incremented, or "\\0" (no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def contender_key(prefix: bytes, lease: int) -> bytes:
    """The key a contender holds: etcd formats the lease id in lower-case hex."""
    return prefix + format(lease, "x").encode()


def created_equals(key: bytes, revision: int) -> Compare:
    return Compare(
        key=key, target=Compare.CREATE, result=Compare.EQUAL, create_revision=revision
    )


def get_op(key: bytes) -> RequestOp:
    return RequestOp(request_range=RangeRequest(key=key))


def first_created(prefix: bytes) -> RangeRequest:
    """The oldest key under ``prefix``: the lock holder, or the election's leader."""
    return RangeRequest(
        key=prefix, range_end=prefix_end(prefix), limit=1,
        sort_order=RangeRequest.ASCEND, sort_target=RangeRequest.CREATE,
    )


# Clean-ups that outlive the request that started them (kept here so they are not collected).
_detached: set[asyncio.Task[Any]] = set()


def run_detached(cleanup: Coroutine[Any, Any, Any], what: str) -> None:
    """Run a clean-up after its caller has gone (cancelled): a contender that stops waiting
    removes its key, as etcd's recipes do; if that fails, the key's lease still ends it."""

    async def run() -> None:
        try:
            await cleanup
        except Exception as exc:
            log.debug("%s failed: %s", what, exc)

    task = asyncio.ensure_future(run())
    _detached.add(task)
    task.add_done_callback(_detached.discard)


class Recipes:
    """Store operations the Lock and Election services are made of."""

    def __init__(
        self, store: Store, lessor: LeaseKeeper, hub: WatchHub, max_request_bytes: int
    ) -> None:
        self.store = store
        self._lessor = lessor
        self._hub = hub
        self._max_request_bytes = max_request_bytes

    async def session_lease(self, lease: int) -> int:
        """The lease a contender's key carries: the one asked for, or a fresh 60 s lease."""
        if lease != 0:
            return lease
        granted = await self._lessor.grant(rpc_pb2.LeaseGrantRequest(TTL=DEFAULT_SESSION_TTL))
        return granted.ID

    async def txn(self, request: TxnRequest) -> rpc_pb2.TxnResponse:
        # The same size limit as a client's own Txn (a lock name can be as long as a key).
        check_size(request, self._max_request_bytes)
        return await self.store.txn(request, current_caller())

    async def put_if_absent(
        self, key: bytes, value: bytes, lease: int, *extra: RequestOp
    ) -> rpc_pb2.TxnResponse:
        """Create ``key`` unless it exists (then read it); ``extra`` reads run either way."""
        put = RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))
        return await self.txn(TxnRequest(
            compare=[created_equals(key, 0)],
            success=[put, *extra],
            failure=[get_op(key), *extra],
        ))

    async def join_queue(
        self, key: bytes, value: bytes, lease: int, *extra: RequestOp
    ) -> rpc_pb2.TxnResponse:
        """``put_if_absent`` of a contender's key, finished even when the caller goes away
        meanwhile: the write may already be committed (with ``--processes`` its answer
        crosses a socket), and then the key it created is removed, as when the caller goes
        away while waiting; otherwise the key would queue for a contender nobody waits on."""
        write = asyncio.ensure_future(self.put_if_absent(key, value, lease, *extra))
        try:
            return await asyncio.shield(write)
        except asyncio.CancelledError:
            run_detached(self._take_back(write, key), "removing an abandoned contender key")
            raise

    async def _take_back(self, write: asyncio.Future[rpc_pb2.TxnResponse], key: bytes) -> None:
        if (await write).succeeded:
            await self.delete(key)

    async def wait_deletes(self, prefix: bytes, max_create_revision: int) -> ResponseHeader:
        """Wait until no key under ``prefix`` created at or before ``max_create_revision``
        exists: each time, wait for the newest of them to be deleted, then look again."""
        while True:
            resp = await self.range(RangeRequest(
                key=prefix, range_end=prefix_end(prefix), limit=1,
                sort_order=RangeRequest.DESCEND, sort_target=RangeRequest.CREATE,
                max_create_revision=max_create_revision,
            ))
            if not resp.kvs:
                return resp.header
            await self.wait_delete(resp.kvs[0].key, resp.header.revision)

    async def wait_delete(self, key: bytes, start_revision: int) -> None:
        async with self.watch(key, b"", start_revision) as events:
            async for _, event in events:
                if event.type == Event.DELETE:
                    return

    @asynccontextmanager
    async def watch(
        self, key: bytes, range_end: bytes, start_revision: int
    ) -> AsyncIterator[AsyncIterator[tuple[ResponseHeader, Event]]]:
        """The events on [key, range_end) from ``start_revision`` on, each with the header of
        the watch response that carried it."""
        stream = self._hub.open_stream(client=False)
        self._hub.create(stream, rpc_pb2.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision,
        ))

        async def events() -> AsyncIterator[tuple[ResponseHeader, Event]]:
            while True:
                items = await stream.next_responses()
                if items is None:
                    raise StoreClosedError()  # the server is stopping
                for item in items:
                    resp = (
                        rpc_pb2.WatchResponse.FromString(item) if isinstance(item, bytes)
                        else item
                    )
                    if resp.canceled:
                        raise CompactedError()  # the only reason the hub cancels a watcher
                    for event in resp.events:
                        yield resp.header, event

        try:
            yield events()
        finally:
            self._hub.close_stream(stream)

    async def delete(self, key: bytes) -> rpc_pb2.DeleteRangeResponse:
        return await self.delete_range(rpc_pb2.DeleteRangeRequest(key=key))

    async def delete_range(
        self, request: rpc_pb2.DeleteRangeRequest
    ) -> rpc_pb2.DeleteRangeResponse:
        return await self.store.delete_range(request, current_caller())

    async def range(self, request: RangeRequest) -> rpc_pb2.RangeResponse:
        return await self.store.range(request, current_caller())

    async def get(self, key: bytes) -> rpc_pb2.RangeResponse:
        return await self.range(RangeRequest(key=key))


def kv_or_none(resp: rpc_pb2.RangeResponse) -> KeyValue | None:
    return resp.kvs[0] if resp.kvs else None


"""What one watch stream has yet to send, with a lagging watcher's revisions sent together.

Responses leave in the order they were queued. Event responses stay as their parts (the
watcher's encoded events) until the stream's sender takes them: while a watcher's events
wait unsent, later events for that watcher join them. So a stream that falls behind sends,
per watcher, one response with every revision it is behind on (events in revision order,
header = the newest revision included), as etcd does for a watcher that catches up; a
stream whose sender is waiting takes each revision at once: nothing waits for a batch to
fill, and no timer is involved.

A control response (created, canceled, progress) closes every waiting batch, so no event
queued after it is sent before it (a watcher's progress notification never claims a
revision older than an event the client already has).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from shim.mvcc import watch_wire as wire
from shim.pb.rpc_pb2 import WatchResponse

# Room a response needs beyond its events: header (field 1 with four varints), watch id,
# fragment flag. A batch plus this stays below the response limit.
_ENVELOPE_BYTES = 64

Outgoing = WatchResponse | bytes


class _Batch:
    """One watcher's events queued as one response, still open to later ones."""

    __slots__ = ("events", "fragment", "revision", "size", "watch_id")

    def __init__(
        self, watch_id: int, fragment: bool, events: list[bytes], size: int, revision: int
    ) -> None:
        self.watch_id = watch_id
        self.fragment = fragment
        self.events = events
        self.size = size
        self.revision = revision  # the header's: the newest revision included


class Outbox:
    """A stream's queue of responses (one consumer: the stream's sender)."""

    def __init__(
        self,
        header: Callable[[int], bytes],
        max_response_bytes: int,
        max_responses: int,
        max_bytes: int,
    ) -> None:
        self._header = header
        self._max_response_bytes = max_response_bytes
        self._max_responses = max_responses
        self._max_bytes = max_bytes
        self._items: deque[_Batch | WatchResponse | None] = deque()
        self._open: dict[int, _Batch] = {}  # by watch id: batches not taken yet
        self._bytes = 0  # event bytes queued
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def has_room(self) -> bool:
        return len(self._items) < self._max_responses and self._bytes < self._max_bytes

    def control(self, resp: WatchResponse) -> None:
        """Queue a response without events; batches queued before it take no more events."""
        self._open.clear()
        self._push(resp)

    def end(self) -> None:
        """The stream ends once everything queued so far is sent."""
        self._open.clear()
        self._push(None)

    def events(
        self, watch_id: int, fragment: bool, events: list[bytes], revision: int,
        always: bool = False,
    ) -> bool:
        """Queue a watcher's events (``events`` is kept, not copied), headed with
        ``revision`` or newer. False, with nothing queued, when the stream is full and
        ``always`` is not set."""
        size = sum(map(len, events))
        batch = self._open.get(watch_id)
        if (
            batch is not None
            and batch.size + size + _ENVELOPE_BYTES < self._max_response_bytes
            and (always or self._bytes < self._max_bytes)
        ):
            batch.events.extend(events)
            batch.size += size
            batch.revision = max(batch.revision, revision)
            self._bytes += size
            return True
        if not (always or self.has_room()):
            return False
        batch = _Batch(watch_id, fragment, events, size, revision)
        self._open[watch_id] = batch
        self._bytes += size
        self._push(batch)
        return True

    def _push(self, item: _Batch | WatchResponse | None) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Outgoing] | None:
        """The next response (several when a batch is sent in fragments); None: the end."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, _Batch):
            return self._encode(item)
        if item is None:
            self._items.appendleft(None)  # the end stays the end for a later call
            return None
        return [item]

    def _encode(self, batch: _Batch) -> list[Outgoing]:
        if self._open.get(batch.watch_id) is batch:
            del self._open[batch.watch_id]
        self._bytes -= batch.size
        header = self._header(batch.revision)
        if batch.fragment:
            return list(wire.split_fragments(
                header, batch.watch_id, batch.events, self._max_response_bytes
            ))
        return [wire.response(header, batch.watch_id, batch.events)]

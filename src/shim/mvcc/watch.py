"""The watch hub: turns committed revisions into per-watcher event streams.

Every committed revision reaches the hub from the store's commit path (``Store`` commit
listeners), on the event loop thread; ``shim.mvcc.sequencer`` puts them in revision order when
other writers share the database. A watcher is either

* **synced**: it has been sent everything up to the hub's revision and receives new revisions
  as they are published, or
* **unsynced**: it is behind (it asked for history, or its stream was too slow to take more)
  and the catch-up task feeds it from the log, a bounded chunk at a time, until it reaches the
  hub's revision and becomes synced again.

A watcher never receives a revision below its ``next_revision``, so the seam between catch-up
and live delivery has neither gap nor duplicate. Sending never blocks: a stream whose outbox is
full makes its watchers unsynced instead, so a stalled client costs bounded memory and never
slows writers or other watchers. This is etcd's synced/unsynced/victim design. A stream that
is merely slow sends each watcher's waiting revisions together (``watch_outbox``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from shim import metrics
from shim.mvcc import watch_wire as wire
from shim.mvcc.events import Revision
from shim.mvcc.keys import in_range
from shim.mvcc.log_reads import CATCH_UP_ROWS, ReadEntries
from shim.mvcc.sequencer import RevisionSequencer
from shim.mvcc.watch_outbox import Outbox
from shim.mvcc.watch_wire import EncodedEvent
from shim.pb.rpc_pb2 import WatchCreateRequest, WatchResponse
from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# How many responses, and how many bytes of events, a stream may hold before its watchers
# fall back to catching up from the log.
STREAM_QUEUE_LIMIT = 1024
STREAM_BYTES_LIMIT = 64 * 1024 * 1024
# Encoded response headers kept (by revision) for the streams that take their batches late.
HEADER_CACHE = 64

EMPTY_RANGE = "mvcc: watcher range is empty"
DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
PROGRESS_WATCH_ID = -1
REFUSED_WATCH_ID = -1


@dataclass(eq=False, slots=True)
class Watcher:
    id: int
    key: bytes
    end: bytes | None  # None: one key; b"": no upper bound
    stream: WatchStream
    prev_kv: bool
    no_put: bool
    no_delete: bool
    progress_notify: bool
    fragment: bool
    next_revision: int  # the first revision this watcher has not been sent
    synced: bool = False
    sent_since_progress: bool = False
    # Canceled by the server (its history was compacted): etcd keeps its id taken on the
    # stream until the client cancels it.
    dead: bool = False

    def matches(self, key: bytes) -> bool:
        return in_range(key, self.key, self.end)


@dataclass(eq=False)
class WatchStream:
    """The watchers of one gRPC Watch stream and the responses it has to send."""

    hub: WatchHub
    outbox: Outbox
    watchers: dict[int, Watcher] = field(default_factory=dict)
    _next_id: int = 0
    progress_requested: bool = False
    closed: bool = False
    client: bool = True  # a client's Watch call (else the server's own, see open_stream)
    stopped: bool = False  # ended by the server's stop, not by its client

    def has_room(self) -> bool:
        return self.outbox.has_room()

    def send(self, resp: WatchResponse) -> None:
        self.outbox.control(resp)

    async def next_responses(self) -> list[WatchResponse | bytes] | None:
        """What to send next, in order (a response, or the parts of a fragmented one);
        None ends the stream."""
        return await self.outbox.take()

    def end(self) -> None:
        """Finish the stream once what is queued is sent."""
        self.outbox.end()

    def all_synced(self) -> bool:
        return all(w.synced or w.dead for w in self.watchers.values())

    def allocate_id(self, requested: int) -> int | None:
        """The id for a new watcher: the client's choice if free, else the next free one."""
        if requested:
            return None if requested in self.watchers else requested
        while self._next_id in self.watchers:
            self._next_id += 1
        chosen = self._next_id
        self._next_id += 1
        return chosen


class WatchHub:
    """Fan-out of committed revisions to watchers, and catch-up from the log."""

    def __init__(
        self,
        revision: int,
        read_entries: ReadEntries,
        fill_header: Callable[[WatchResponse, int], None],
        max_response_bytes: int,
        current_revision: Callable[[], int] | None = None,
    ) -> None:
        self.revision = revision
        # The database's newest revision, where it can run ahead of what this hub has been
        # told (a serving process of --processes N hears of commits a moment later): a watch
        # "from now" starts after it, as it would on the process that made the commit.
        self._current_revision = current_revision
        self._read_entries = read_entries
        self._fill_header = fill_header
        self._max_response_bytes = max_response_bytes
        self._by_key: dict[bytes, set[Watcher]] = {}
        self._ranges: set[Watcher] = set()
        self._unsynced: set[Watcher] = set()
        self._progress_waiting: set[WatchStream] = set()
        self._streams: set[WatchStream] = set()
        # Puts commits in revision order when other writers share the database.
        self._sequencer = RevisionSequencer(self._publish, lambda: self.revision, read_entries)
        self._headers: dict[int, bytes] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, progress_interval: float) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._catch_up_loop())]
        if progress_interval > 0:
            self._tasks.append(loop.create_task(self._progress_loop(progress_interval)))

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    async def _progress_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.notify_progress()

    def open_stream(self, client: bool = True) -> WatchStream:
        """A stream for a client's Watch call, or (``client`` False) for the server's own
        use inside another call (a Lock waiting its turn, an election's Observe)."""
        outbox = Outbox(
            self._header, self._max_response_bytes, STREAM_QUEUE_LIMIT, STREAM_BYTES_LIMIT
        )
        stream = WatchStream(hub=self, outbox=outbox, client=client)
        self._streams.add(stream)
        return stream

    def watcher_count(self) -> int:
        return sum(len(stream.watchers) for stream in self._streams)

    def end_streams(self, client: bool) -> None:
        """Tell every open stream of a client's Watch call (``client``), or every one the
        server uses inside other calls, to finish: the server is stopping."""
        for stream in self._streams:
            if stream.client == client:
                stream.stopped = True
                stream.end()

    def close_stream(self, stream: WatchStream) -> None:
        self._streams.discard(stream)
        stream.closed = True
        self._progress_waiting.discard(stream)
        for watcher in list(stream.watchers.values()):
            self._remove(watcher)
        stream.watchers.clear()

    # -- watcher management --------------------------------------------------------------------

    def create(self, stream: WatchStream, req: WatchCreateRequest) -> None:
        """Register a watcher and queue its created (or refused) response, as etcd does."""
        key = req.key or b"\x00"  # etcd turns an empty watch key into "\0"
        end: bytes | None
        if not req.range_end:
            end = None
        elif req.range_end == b"\x00":
            end = b""
        else:
            end = req.range_end
        # Refusals carry watch_id -1 and use up no id.
        if end is not None and end != b"" and end <= key:
            self.refuse(stream, EMPTY_RANGE)
            return
        watch_id = stream.allocate_id(req.watch_id)
        if watch_id is None:
            self.refuse(stream, DUPLICATE_ID)
            return
        start = req.start_revision
        now = self.revision
        if start == 0 and self._current_revision is not None:
            now = max(now, self._current_revision())
        filters = set(req.filters)
        watcher = Watcher(
            id=watch_id, key=key, end=end, stream=stream, prev_kv=req.prev_kv,
            no_put=WatchCreateRequest.NOPUT in filters,
            no_delete=WatchCreateRequest.NODELETE in filters,
            progress_notify=req.progress_notify, fragment=req.fragment,
            next_revision=now + 1 if start == 0 else start,
        )
        created = WatchResponse(watch_id=watch_id, created=True)
        self._fill_header(created, now)
        stream.send(created)
        stream.watchers[watch_id] = watcher
        if watcher.end is None:
            self._by_key.setdefault(watcher.key, set()).add(watcher)
        else:
            self._ranges.add(watcher)
        if watcher.next_revision <= self.revision:
            # History first (a past or a negative start): the catch-up read also finds out,
            # at its snapshot, whether that history has been compacted.
            self._mark_unsynced(watcher)
        else:
            watcher.synced = True

    def cancel(self, stream: WatchStream, watch_id: int) -> None:
        watcher = stream.watchers.pop(watch_id, None)
        if watcher is None:
            return  # etcd answers nothing for an unknown id
        if not watcher.dead:
            self._remove(watcher)
        resp = WatchResponse(watch_id=watch_id, canceled=True)
        self._fill_header(resp, self.revision)
        stream.send(resp)
        self._maybe_send_progress(stream)

    def request_progress(self, stream: WatchStream) -> None:
        stream.progress_requested = True
        self._maybe_send_progress(stream)

    def refuse(self, stream: WatchStream, reason: str) -> None:
        """Answer a create request with a refusal (watch_id -1, created and canceled)."""
        resp = WatchResponse(
            watch_id=REFUSED_WATCH_ID, created=True, canceled=True, cancel_reason=reason
        )
        self._fill_header(resp, self.revision)
        stream.send(resp)

    def _remove(self, watcher: Watcher) -> None:
        watcher.synced = False
        self._unsynced.discard(watcher)
        if watcher.end is None:
            group = self._by_key.get(watcher.key)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del self._by_key[watcher.key]
        else:
            self._ranges.discard(watcher)

    def _mark_unsynced(self, watcher: Watcher) -> None:
        watcher.synced = False
        self._unsynced.add(watcher)
        self._wake.set()

    # -- live delivery -------------------------------------------------------------------------

    def on_commit(self, revisions: list[Revision]) -> None:
        """Committed revisions from this process's write path (event loop thread)."""
        self._sequencer.on_commit(revisions)

    def on_external_commit(self, revision: int) -> None:
        """Another writer on the same database committed up to ``revision``."""
        self._sequencer.on_external_commit(revision)

    def _publish(self, revisions: list[Revision]) -> None:
        """Fan committed revisions out to synced watchers (strictly in order). Each event is
        encoded once, however many watchers receive it; a watcher's events of one revision
        go to its stream's outbox together, which joins them to that watcher's events still
        waiting there (a stream that fell behind), or queues them as a response of their
        own."""
        queued = 0
        for rev in revisions:
            revision = rev.revision
            self.revision = revision
            batches: dict[Watcher, list[bytes]] = {}
            for change in rev.changes:
                encoded: EncodedEvent | None = None
                deleted = change.deleted
                for watcher in self._interested(change.kv.key):
                    if not watcher.synced or revision < watcher.next_revision:
                        continue
                    if watcher.no_delete if deleted else watcher.no_put:
                        continue
                    if encoded is None:
                        encoded = EncodedEvent.of_change(change)
                    event = encoded.get(watcher.prev_kv)
                    events = batches.get(watcher)
                    if events is None:
                        batches[watcher] = [event]
                    else:
                        events.append(event)
            for watcher, events in batches.items():
                queued += self._deliver(watcher, events, revision)
        if queued:
            metrics.WATCH_EVENTS_SENT.inc(queued)
        for stream in list(self._progress_waiting):
            self._maybe_send_progress(stream)

    def _header(self, revision: int) -> bytes:
        """A response header at ``revision`` as WatchResponse field 1 (the streams of one
        fan-out share a few revisions' headers)."""
        header = self._headers.get(revision)
        if header is None:
            if len(self._headers) >= HEADER_CACHE:
                self._headers.clear()
            shell = WatchResponse()
            self._fill_header(shell, revision)
            header = wire.header_field(shell.header.SerializeToString())
            self._headers[revision] = header
        return header

    def _all_synced(self) -> list[Watcher]:
        out: list[Watcher] = [w for group in self._by_key.values() for w in group if w.synced]
        out.extend(w for w in self._ranges if w.synced)
        return out

    def _interested(self, key: bytes) -> list[Watcher]:
        found = list(self._by_key.get(key, ()))
        found.extend(w for w in self._ranges if w.matches(key))
        return found

    def _deliver(self, watcher: Watcher, events: list[bytes], revision: int) -> int:
        """Queue one revision's events for a synced watcher (how many were queued), or make
        it catch up from that revision if its stream is full."""
        if watcher.stream.outbox.events(watcher.id, watcher.fragment, events, revision):
            watcher.next_revision = revision + 1
            watcher.sent_since_progress = True
            return len(events)
        watcher.next_revision = revision
        self._mark_unsynced(watcher)
        return 0

    def _maybe_send_progress(self, stream: WatchStream) -> None:
        """Answer a RequestProgress once every watcher of the stream has been sent everything
        up to the hub's revision (never earlier)."""
        if not stream.progress_requested:
            return
        if not stream.all_synced():
            self._progress_waiting.add(stream)
            return
        self._progress_waiting.discard(stream)
        stream.progress_requested = False
        resp = WatchResponse(watch_id=PROGRESS_WATCH_ID)
        self._fill_header(resp, self.revision)
        stream.send(resp)

    def notify_progress(self) -> None:
        """Periodic progress for watchers that asked for it and had nothing to send."""
        for watcher in self._all_synced():
            if not watcher.progress_notify or watcher.stream.closed:
                continue
            if watcher.sent_since_progress:
                watcher.sent_since_progress = False
                continue
            if watcher.stream.has_room():
                resp = WatchResponse(watch_id=watcher.id)
                self._fill_header(resp, self.revision)
                watcher.stream.send(resp)

    # -- catch-up ------------------------------------------------------------------------------

    async def _catch_up_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            progressed = True
            while self._unsynced and progressed:
                progressed = False
                for watcher in list(self._unsynced):
                    if watcher.stream.closed or watcher not in self._unsynced:
                        continue
                    if not watcher.stream.has_room():
                        continue
                    try:
                        await self._catch_up(watcher)
                    except Exception:
                        log.exception("watch catch-up failed for watcher %d", watcher.id)
                        continue
                    progressed = True
            if self._unsynced:
                # Someone is still blocked on a full stream: look again shortly.
                await asyncio.sleep(0.01)
                self._wake.set()

    async def _catch_up(self, watcher: Watcher) -> None:
        # Revisions start at 1: any start at or below 0 reads from the beginning (and a start
        # of int64's minimum must not reach the database as a revision below it).
        after = max(watcher.next_revision - 1, 0)
        read = await asyncio.to_thread(
            self._read_entries, watcher.key, watcher.end, after, CATCH_UP_ROWS
        )
        if watcher not in self._unsynced:
            return  # canceled while reading
        if watcher.next_revision < read.compact_revision:
            # History it still needs is gone (checked at the snapshot the rows came from).
            self._cancel_compacted(watcher, read.compact_revision)
            return
        entries = read.entries
        if watcher.next_revision <= 0:
            # A negative start that is not below the compaction point: etcd's history read
            # from it finds nothing, so the watcher goes on from the current revision.
            entries = []
            watcher.next_revision = read.revision + 1
        # Rows come in whole revisions; fewer than asked for means the snapshot's end.
        reached = read.revision if len(entries) < CATCH_UP_ROWS else entries[-1].kv.mod_revision
        events = [
            EncodedEvent.of_entry(entry).get(watcher.prev_kv)
            for entry in entries
            if entry.kv.mod_revision >= watcher.next_revision
            and not (watcher.no_delete if entry.deleted else watcher.no_put)
        ]
        if events:
            # Headed with the hub's revision, as etcd heads a catching-up watcher's batch.
            watcher.stream.outbox.events(
                watcher.id, watcher.fragment, events, max(reached, self.revision), always=True
            )
            watcher.sent_since_progress = True
            metrics.WATCH_EVENTS_SENT.inc(len(events))
        watcher.next_revision = max(watcher.next_revision, reached + 1)
        if watcher.next_revision > self.revision:
            # Caught up: from here on it gets revisions as they are published.
            self._unsynced.discard(watcher)
            watcher.synced = True
            self._maybe_send_progress(watcher.stream)

    def _cancel_compacted(self, watcher: Watcher, compacted: int) -> None:
        stream = watcher.stream
        self._remove(watcher)
        watcher.dead = True
        resp = WatchResponse(watch_id=watcher.id, canceled=True, compact_revision=compacted)
        self._fill_header(resp, 0)  # etcd leaves this header's revision unset
        stream.send(resp)
        self._maybe_send_progress(stream)


"""The single ordered write path, with group commit.

Requests from any number of callers queue up; the writer takes everything queued, applies it in
order inside one database transaction, commits durably, and only then answers every caller and
publishes the committed revisions. While one batch is being committed (the fsync), the next
batch gathers, so throughput grows with concurrency instead of queueing behind fsyncs.

Where the batch runs depends on the backend:

* ``LoopWriter`` (SQLite): on the event loop itself. Its statements are local and take
  microseconds; the fsync of COMMIT releases the GIL, so gRPC's own thread keeps reading
  requests meanwhile, and they form the next batch. No thread hand-offs, and no GIL contention
  between a writer thread and the gRPC loop (which cost a wait per statement).
* ``ThreadWriter`` (PostgreSQL): in its own thread, because every statement waits on the
  network.

The queue carries plain request messages and answers with response messages or errors, so a
socket can later stand in for it and let several serving processes share this one path.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass

from shim.backend.base import Backend, WriteTxn
from shim.mvcc.apply import Applier, CommitListener, Revision, WriteRequest, WriteResponse
from shim.mvcc.errors import StorageUnavailableError, StoreClosedError, StoreError
from shim.mvcc.hlc import HybridClock

log = logging.getLogger(__name__)

MAX_BATCH = 512


@dataclass(slots=True)
class _Pending:
    request: WriteRequest
    future: asyncio.Future[WriteResponse]


_STOP = object()


class Writer:
    """Group commit over a backend's write transactions; subclasses decide where it runs."""

    def __init__(
        self,
        backend: Backend,
        loop: asyncio.AbstractEventLoop,
        on_commit: CommitListener,
    ) -> None:
        self._backend = backend
        self._loop = loop
        self._on_commit = on_commit
        self._closed = False
        with backend.read() as view:
            self.revision = view.revision()
            self.compact_revision = view.compact_revision()
            self._clock = HybridClock(view.max_hlc())
            # Lease ids and TTLs, read and changed only by whoever runs the batches.
            self.leases = view.leases()

    def start(self) -> None:
        """Begin taking batches."""

    async def stop(self) -> None:
        """Finish everything already queued, then stop."""

    def submit(self, request: WriteRequest) -> asyncio.Future[WriteResponse]:
        """Queue a request; the future resolves once it is durably committed (or failed)."""
        future: asyncio.Future[WriteResponse] = self._loop.create_future()
        if self._closed:
            future.set_exception(StoreClosedError())
        else:
            self._enqueue(_Pending(request, future))
        return future

    def _enqueue(self, item: _Pending) -> None:
        raise NotImplementedError

    # -- one batch -----------------------------------------------------------------------------

    def _commit(
        self, batch: list[_Pending]
    ) -> tuple[list[WriteResponse | BaseException], list[Revision]]:
        """Apply and commit one batch: each request's outcome, and the committed revisions."""
        outcomes: list[WriteResponse | BaseException] = []
        try:
            with self._backend.write() as txn:
                if self._backend.shared:
                    self._refresh(txn)
                applier = Applier(
                    txn, self.revision, self.compact_revision, self._clock, self.leases
                )
                for item in batch:
                    txn.savepoint()
                    try:
                        outcomes.append(applier.apply(item.request))
                        txn.release()
                    except StoreError as exc:
                        txn.rollback_savepoint()
                        outcomes.append(exc)
                    except self._backend.errors as exc:
                        txn.rollback_savepoint()
                        log.error("storage error applying a request: %s", exc)
                        outcomes.append(StorageUnavailableError(f"storage error: {exc}"))
                    except Exception as exc:
                        # A bug must cost one request, never the writer or the batch.
                        txn.rollback_savepoint()
                        log.exception("internal error applying a request")
                        outcomes.append(exc)
                if applier.revision != self.revision:
                    txn.set_revision(applier.revision)
        except self._backend.errors as exc:
            # Nothing of this batch is committed: every caller gets a retryable error.
            log.error("write batch of %d failed, rolled back: %s", len(batch), exc)
            if not self._backend.shared:  # a shared backend's leases are read at batch start
                self._reload_leases()
            failure = StorageUnavailableError(f"storage write failed: {exc}")
            return [failure] * len(batch), []
        except Exception as exc:
            # A bug outside any one request (at BEGIN or COMMIT) fails this batch; the writer
            # must live on, or every later write would wait forever.
            log.exception("write batch of %d failed, rolled back", len(batch))
            if not self._backend.shared:
                self._reload_leases()
            return [exc] * len(batch), []
        self.revision = applier.revision
        self.compact_revision = applier.compact_revision
        return outcomes, applier.committed

    def _refresh(self, txn: WriteTxn) -> None:
        """Other servers write to a shared database: start each batch from what the database
        holds now (the backend's write transaction keeps it from changing until COMMIT)."""
        self.revision = txn.revision()
        self.compact_revision = txn.compact_revision()
        leases = txn.leases()
        if leases != self.leases:
            self.leases.clear()
            self.leases.update(leases)

    def _reload_leases(self) -> None:
        """After a failed commit, forget lease changes the rolled-back batch made."""
        try:
            with self._backend.read() as view:
                self.leases.clear()
                self.leases.update(view.leases())
        except self._backend.errors:
            log.exception("cannot reload leases after a failed commit")

    def _deliver(
        self,
        batch: list[_Pending],
        outcomes: list[WriteResponse | BaseException],
        committed: list[Revision],
    ) -> None:
        """On the event loop: publish the committed revisions, then answer the callers."""
        if committed:
            self._on_commit(committed)
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue  # the caller went away
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)


class LoopWriter(Writer):
    """Runs each batch on the event loop, as soon as the loop has taken in what is ready."""

    def __init__(
        self, backend: Backend, loop: asyncio.AbstractEventLoop, on_commit: CommitListener
    ) -> None:
        super().__init__(backend, loop, on_commit)
        self._pending: list[_Pending] = []
        self._scheduled = False

    def _enqueue(self, item: _Pending) -> None:
        self._pending.append(item)
        if not self._scheduled:
            # After the callbacks already due: requests that arrived together share a batch.
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, rest = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        self._pending = rest
        if rest:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        if batch:
            outcomes, committed = self._commit(batch)
            self._deliver(batch, outcomes, committed)

    async def stop(self) -> None:
        self._closed = True
        while self._pending:
            self._flush()


class ThreadWriter(Writer):
    """Runs each batch in its own thread; the event loop only queues and answers."""

    def __init__(
        self, backend: Backend, loop: asyncio.AbstractEventLoop, on_commit: CommitListener
    ) -> None:
        super().__init__(backend, loop, on_commit)
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="shim-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _enqueue(self, item: _Pending) -> None:
        self._queue.put(item)

    async def stop(self) -> None:
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Pending] = [first]  # type: ignore[list-item]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            outcomes, committed = self._commit(batch)
            self._loop.call_soon_threadsafe(self._deliver, batch, outcomes, committed)


def make_writer(
    backend: Backend, loop: asyncio.AbstractEventLoop, on_commit: CommitListener
) -> Writer:
    kind = LoopWriter if backend.writes_on_event_loop else ThreadWriter
    return kind(backend, loop, on_commit)

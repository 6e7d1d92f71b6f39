"""The single ordered write path, with group commit.

Requests from any number of callers queue up; one writer thread takes everything queued, applies
it in order inside one SQLite transaction, commits durably, and only then answers every caller
and publishes the committed revisions. While one batch is being committed (the fsync), the next
batch gathers, so throughput grows with concurrency instead of queueing behind fsyncs.

A lone client write on an idle writer (nothing else in flight, and no overlapping writes in the
last moments) is committed on the event loop thread itself: with nothing to group it with, the
two thread hand-offs would only add latency.

The queue carries plain request messages and answers with response messages or errors, so a
socket can later stand in for it and let several serving processes share this one path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shim import metrics
from shim.auth.apply import Authorized, AuthWriter
from shim.backend.base import Backend, WriteTxn
from shim.mvcc.alarms import CORRUPT, DAMAGED, DEFAULT_QUOTA_BYTES, AlarmState, member_id_of
from shim.mvcc.apply import Applier, WriteRequest, WriteResponse, compact_step
from shim.mvcc.errors import (
    StorageUnavailableError,
    StoreClosedError,
    StoreError,
    TooManyRequestsError,
)
from shim.mvcc.events import CommitListener, Revision
from shim.mvcc.hlc import HybridClock
from shim.mvcc.replica import ReplicaHook, ReplicaRequest
from shim.pb.rpc_pb2 import (
    CompactionRequest,
    DefragmentRequest,
    DefragmentResponse,
    DeleteRangeRequest,
    PutRequest,
    TxnRequest,
)

log = logging.getLogger(__name__)

MAX_BATCH = 512
# Clients' key writes: small enough to commit on the event loop when nothing else is in flight
# (replication merges, compactions and the like always go to the writer thread), and the only
# writes refused under overload.
_CLIENT_KEY_WRITES = (PutRequest, DeleteRangeRequest, TxnRequest)
# A replication request carrying at least this many writes (a part of a catch-up) commits in a
# transaction of its own, after the other requests taken with it: a client's write then waits
# for the part being applied when it arrived, not for the next part as well.
_ALONE_WRITES = 64
# Event loop turns a lone write waits for company before it commits on the loop.
_INLINE_YIELDS = 2
# After writes overlapped, how long every write goes to the writer thread: under steady
# concurrency a momentarily lone write would otherwise block the loop for a whole fsync while
# the others' requests wait unread.
_CROWD_MEMORY_SECONDS = 0.05
# Client writes waiting at once beyond which more are refused ("too many requests", as etcd
# does when its apply loop falls 5,000 entries behind): an overloaded node answers at once
# instead of holding ever more requests (and their memory) in its queue.
MAX_WAITING_WRITES = 5000
# After a compaction step failed (a storage error), how long before the next is tried.
_COMPACTION_RETRY_SECONDS = 5.0


def _client_key_write(request: WriteRequest) -> bool:
    """Put, DeleteRange or Txn (the writes that may commit on the loop, and be refused)."""
    if isinstance(request, Authorized):
        request = request.request
    return isinstance(request, _CLIENT_KEY_WRITES)


@dataclass(slots=True)
class _Pending:
    request: WriteRequest
    future: asyncio.Future[WriteResponse]



_Deliver = Callable[
    [list[_Pending], list[WriteResponse | BaseException], list[Revision] | None], None
]


class Writer:
    """Owns the backend's write connection; runs in its own thread."""

    def __init__(
        self,
        backend: Backend,
        loop: asyncio.AbstractEventLoop,
        on_commit: CommitListener,
        replica: ReplicaHook | None = None,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
    ) -> None:
        self._backend = backend
        self._loop = loop
        # Told after every committed batch, with its revisions (none when it changed no key:
        # replication senders still wake up for the entries it stored).
        self._on_commit = on_commit
        # None: stop once everything before it is done.
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._closed = False
        # Held while a batch is applied and committed, by the writer thread or the loop.
        self._committing = threading.Lock()
        # Requests submitted and not yet answered (event loop thread only).
        self._in_flight = 0
        self._crowded_until = 0.0  # loop time before which writes go to the writer thread
        # A shared database's transactions wait on other servers: never on the event loop.
        self._inline = not backend.shared
        # Replication's part of every write (None: this node takes no part in replication).
        self.replica = replica
        self.auth = AuthWriter(backend.node_id)
        with backend.read() as view:
            # Whether auth may be enabled: True from before the COMMIT that enables it until
            # after the one that disables it (answers kept in memory skip permission checks).
            self.auth_on = self.auth.enabled(view)
            self.revision = view.revision()
            # The revision of the batch being committed, set before its COMMIT can be seen
            # (readers that keep answers in memory wait while it is ahead of what they heard).
            self.committing_revision = self.revision
            self.compact_revision = view.compact_revision()
            max_hlc = view.max_hlc()
            if replica is not None:
                max_hlc = max(max_hlc, replica.newest_stamp(view))
            self._clock = HybridClock(max_hlc)
            # Lease ids and TTLs, changed only while a batch commits (under _committing).
            self.leases = view.leases()
            # Active alarms and the quota; alarms change only while a batch commits.
            self.alarms = AlarmState(member_id_of(backend.node_id), view.alarms(), quota_bytes)
        # Whether a compaction has history left to delete (writer thread, under _committing),
        # and when its next step may run (monotonic). After a restart the first step finds out.
        self._compaction_pending = self.compact_revision > 0
        self._next_compaction_step = 0.0
        # The same, as the event loop last heard it, and the physical compactions waiting
        # for the deletion to finish (event loop thread only).
        self._compaction_pending_seen = self._compaction_pending
        self._physical_waiters: list[asyncio.Future[None]] = []
        if replica is not None:
            with backend.write() as txn:
                replica.start(txn, self._clock, lambda: self.auth.objects(txn))
        self._thread = threading.Thread(target=self._run, name="shim-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def write(self, request: WriteRequest) -> WriteResponse:
        """Apply ``request``; returns once it is durably committed (or raises its error). A
        physical compaction returns once the history it compacted is deleted, as in etcd."""
        response = await self._write(request)
        inner = request.request if isinstance(request, Authorized) else request
        if isinstance(inner, CompactionRequest) and inner.physical:
            await self._compaction_finished()
        return response

    async def _write(self, request: WriteRequest) -> WriteResponse:
        if self._closed:
            raise StoreClosedError()
        if self._in_flight >= MAX_WAITING_WRITES and _client_key_write(request):
            # Only clients' key writes: replication, leases and maintenance always get in.
            raise TooManyRequestsError()
        future: asyncio.Future[WriteResponse] = self._loop.create_future()
        pending = _Pending(request, future)
        self._in_flight += 1
        now = self._loop.time()
        crowded = self._in_flight > 1
        if crowded:
            self._crowded_until = now + _CROWD_MEMORY_SECONDS
        elif (
            self._inline
            and now >= self._crowded_until
            and _client_key_write(request)
        ):
            # Let requests that have already arrived reach this point first: if one does,
            # both go to the writer thread and commit together.
            try:
                for _ in range(_INLINE_YIELDS):
                    await asyncio.sleep(0)
            except BaseException:
                self._in_flight -= 1  # cancelled before it was submitted anywhere
                raise
            if (
                self._in_flight == 1
                and not self._closed
                and self._committing.acquire(blocking=False)
            ):
                try:
                    self._commit([pending], self._deliver_inline)
                finally:
                    self._committing.release()
                return await future
        if self._closed:
            self._in_flight -= 1
            raise StoreClosedError()
        self._queue.put(pending)
        try:
            return await future
        finally:
            if crowded:
                # The memory runs from the crowd's answers, not its arrival: its clients send
                # their next writes once answered, however long the commit took (a slow disk).
                self._crowded_until = max(
                    self._crowded_until, self._loop.time() + _CROWD_MEMORY_SECONDS
                )

    def stop(self) -> None:
        """Finish everything already queued, then stop the thread. A compaction still
        deleting history goes on after the next start."""
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
            self._loop.call_soon_threadsafe(self._release_physical_waiters, StoreClosedError())

    # -- compaction ----------------------------------------------------------------------------

    async def _compaction_finished(self) -> None:
        if not self._compaction_pending_seen:
            return
        if self._closed:
            raise StoreClosedError()
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._physical_waiters.append(waiter)
        await waiter

    def _compaction_changed(self, pending: bool) -> None:
        """(event loop) The compaction has history left to delete, or no more."""
        self._compaction_pending_seen = pending
        if not pending:
            self._release_physical_waiters(None)

    def _release_physical_waiters(self, error: BaseException | None) -> None:
        waiters, self._physical_waiters = self._physical_waiters, []
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _set_compaction_pending(self, pending: bool) -> None:
        """(writer thread) Told to the loop before the answers of the batch that changed it,
        so a physical compaction's caller waits on what its own compaction left."""
        self._compaction_pending = pending
        self._loop.call_soon_threadsafe(self._compaction_changed, pending)

    def _compact_step(self) -> bool:
        """Delete one more window of compacted history (under ``_committing``); False if
        the step failed (the next is tried after a pause)."""
        started = time.monotonic()
        try:
            with self._backend.write() as txn:
                done = compact_step(txn)
        except Exception as exc:
            if isinstance(exc, self._backend.errors):
                log.error("compaction paused by a storage error, retried in %.0f s: %s",
                          _COMPACTION_RETRY_SECONDS, exc)
            else:
                log.exception("compaction paused by an internal error, retried in %.0f s",
                              _COMPACTION_RETRY_SECONDS)
            self._check_damage(exc)
            self._next_compaction_step = time.monotonic() + _COMPACTION_RETRY_SECONDS
            return False
        if done:
            self._set_compaction_pending(False)
        else:
            # Half the writer's time at most: a write arriving now waits for no step.
            self._next_compaction_step = 2 * time.monotonic() - started
        return True

    def _finish_compaction(self) -> None:
        """Run the compaction's remaining steps now (under ``_committing``), unless one
        fails."""
        while self._compaction_pending and self._compact_step():
            pass

    # -- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            if self._compaction_pending:
                # Compacted history is deleted a step at a time while nothing else waits.
                wait = self._next_compaction_step - time.monotonic()
                try:
                    first = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    with self._committing:
                        self._compact_step()
                    continue
            else:
                first = self._queue.get()
            if first is None:
                break
            batch: list[_Pending] = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            deliver = self._deliver_on_loop
            with self._committing:
                # The outcomes are handed to the event loop, which delivers them.
                for group in _transactions(batch):
                    if isinstance(group, _Pending):
                        self._run_exclusive(group, deliver)
                    else:
                        self._commit(group, deliver)

    def _deliver_on_loop(
        self,
        batch: list[_Pending],
        outcomes: list[WriteResponse | BaseException],
        committed: list[Revision] | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self._deliver, batch, outcomes, committed)

    def _run_exclusive(self, item: _Pending, deliver: _Deliver) -> None:
        """Defragment: outside any write transaction, while nothing else writes."""
        outcome: WriteResponse | BaseException
        started = time.perf_counter()
        try:
            self._finish_compaction()  # the space it frees is what defragmenting gives back
            self._backend.defragment()
            outcome = DefragmentResponse()
            log.info("defragmented the database in %.3f s", time.perf_counter() - started)
        except self._backend.errors as exc:
            log.error("defragmentation failed: %s", exc)
            outcome = StorageUnavailableError(f"defragmentation failed: {exc}")
        except Exception as exc:
            log.exception("defragmentation failed")
            outcome = exc
        deliver([item], [outcome], None)

    def _deliver_inline(
        self,
        batch: list[_Pending],
        outcomes: list[WriteResponse | BaseException],
        committed: list[Revision] | None,
    ) -> None:
        # As a loop callback would: a listener's error is logged, never handed to the caller
        # of a write that is committed.
        try:
            self._deliver(batch, outcomes, committed)
        except Exception as exc:
            self._loop.call_exception_handler(
                {"message": "error delivering a committed write", "exception": exc}
            )

    def _commit(self, batch: list[_Pending], deliver: _Deliver) -> None:
        """Apply ``batch`` in one transaction and commit it; then ``deliver`` the outcomes."""
        outcomes: list[WriteResponse | BaseException] = []
        # A rolled-back batch gives back what replication counted for it.
        mark = self.replica.checkpoint() if self.replica is not None else 0
        started = time.perf_counter()
        try:
            with self._backend.write() as txn:
                if self._backend.shared:
                    self._refresh(txn)
                applier = Applier(
                    txn, self.revision, self.compact_revision, self._clock, self.leases,
                    self.replica, self.alarms, self.auth,
                )
                for item in batch:
                    txn.savepoint()
                    request_mark = self.replica.checkpoint() if self.replica is not None else 0
                    try:
                        outcomes.append(applier.apply(item.request))
                        txn.release()
                    except StoreError as exc:
                        txn.rollback_savepoint()
                        self._rollback_replica(request_mark)
                        outcomes.append(exc)
                    except self._backend.errors as exc:
                        txn.rollback_savepoint()
                        self._rollback_replica(request_mark)
                        log.error("storage error applying a request: %s", exc)
                        self._check_damage(exc)
                        outcomes.append(StorageUnavailableError(f"storage error: {exc}"))
                    except Exception as exc:
                        # A bug must cost one request, never the writer or the batch.
                        txn.rollback_savepoint()
                        self._rollback_replica(request_mark)
                        log.exception("internal error applying a request")
                        self._check_damage(exc)
                        outcomes.append(exc)
                for alarm in self.alarms.raised:  # raised by refused or failed requests
                    txn.add_alarm(alarm)
                if applier.revision != self.revision:
                    txn.set_revision(applier.revision)
                    self.committing_revision = applier.revision
                if self.replica is not None:
                    self.replica.finish_batch(txn, mark)
                auth_on = self.auth.enabled(txn)
                self.auth_on = self.auth_on or auth_on
        except self._backend.errors as exc:
            # Nothing of this batch is committed: every caller gets a retryable error.
            log.error("write batch of %d failed, rolled back: %s", len(batch), exc)
            if not self._backend.shared:  # a shared backend's are read at batch start
                self._reload_leases()
                self._reload_alarms()
            self._check_damage(exc)
            self._store_raised_alarms()
            self._rollback_replica(mark)
            self.committing_revision = self.revision
            failure = StorageUnavailableError(f"storage write failed: {exc}")
            deliver(batch, [failure] * len(batch), None)
            return
        except Exception as exc:
            # A bug outside any one request (at BEGIN or COMMIT) fails this batch; the writer
            # thread must live on, or every later write would wait forever.
            log.exception("write batch of %d failed, rolled back", len(batch))
            if not self._backend.shared:
                self._reload_leases()
                self._reload_alarms()
            self._check_damage(exc)
            self._store_raised_alarms()
            self._rollback_replica(mark)
            self.committing_revision = self.revision
            deliver(batch, [exc] * len(batch), None)
            return
        self.alarms.raised = []
        metrics.observe_commit(time.perf_counter() - started, len(batch))
        self.revision = applier.revision
        self.compact_revision = applier.compact_revision
        self.auth_on = auth_on
        if applier.compaction_done is not None:
            self._set_compaction_pending(not applier.compaction_done)
        deliver(batch, outcomes, applier.committed)

    def _rollback_replica(self, mark: int) -> None:
        """A rolled-back request gives its sequence numbers back: an origin's entries stay
        gap-free, so a gap seen by a peer means something was lost (it is logged)."""
        if self.replica is not None:
            self.replica.rollback(mark)

    def _refresh(self, txn: WriteTxn) -> None:
        """Other servers write to a shared database: start each batch from what the database
        holds now (the backend's write transaction keeps it from changing until COMMIT)."""
        self.alarms.reload(txn.alarms())  # alarms are the whole database's, as in a cluster
        self.revision = txn.revision()
        self.compact_revision = txn.compact_revision()
        if txn.compact_progress() < self.compact_revision:
            # Another server's compaction left history to delete (it may have stopped).
            self._compaction_pending = True
        leases = txn.leases()
        if leases != self.leases:
            self.leases.clear()
            self.leases.update(leases)

    def _check_damage(self, exc: BaseException) -> None:
        """Damage the database reports while writing raises the CORRUPT alarm: refused
        writes from now on (at once, in memory), stored with the next batch that commits."""
        if not isinstance(exc, self._backend.corruption_errors):
            return
        alarm = (self.alarms.member_id, CORRUPT)
        if alarm in self.alarms.active:
            return
        self.alarms.active.add(alarm)
        self.alarms.raised.append(alarm)
        log.error(DAMAGED, exc)

    def _store_raised_alarms(self) -> None:
        """After a failed batch: store the alarms it raised in a transaction of their own, so
        every process (and a restart) sees them."""
        if not self.alarms.raised:
            return
        try:
            with self._backend.write() as txn:
                for alarm in self.alarms.raised:
                    txn.add_alarm(alarm)
        except Exception as exc:  # kept in memory; the next committed batch stores them
            log.error("cannot store the alarms raised: %s", exc)
            return
        self.alarms.raised = []

    def _reload_alarms(self) -> None:
        """After a failed commit, forget alarm changes the rolled-back batch made."""
        try:
            with self._backend.read() as view:
                self.alarms.reload(view.alarms())
        except self._backend.errors as exc:
            log.error("cannot reload alarms after a failed commit: %s", exc)

    def _reload_leases(self) -> None:
        """After a failed commit, forget lease changes the rolled-back batch made."""
        try:
            with self._backend.read() as view:
                self.leases.clear()
                self.leases.update(view.leases())
        except self._backend.errors:
            log.exception("cannot reload leases after a failed commit")

    # -- event loop ----------------------------------------------------------------------------

    def _deliver(
        self,
        batch: list[_Pending],
        outcomes: list[WriteResponse | BaseException],
        committed: list[Revision] | None,
    ) -> None:
        self._in_flight -= len(batch)
        if committed is not None:  # None: the batch was rolled back
            self._on_commit(committed)
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue  # the caller went away
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)


def _transactions(batch: list[_Pending]) -> list[list[_Pending] | _Pending]:
    """The batch as the transactions that commit it, in order: a request that needs the
    database to itself (Defragment) alone and outside any; between those, the ordinary
    requests together, then each large replication request alone. Requests taken together
    are concurrent (none is answered yet), so committing the large ones last changes nothing
    a client could have observed."""
    groups: list[list[_Pending] | _Pending] = []
    ordinary: list[_Pending] = []
    large: list[_Pending] = []

    def close_run() -> None:
        if ordinary:
            groups.append(ordinary.copy())
            ordinary.clear()
        groups.extend([item] for item in large)
        large.clear()

    for item in batch:
        request = item.request
        if isinstance(request, DefragmentRequest):
            close_run()
            groups.append(item)
        elif isinstance(request, ReplicaRequest) and request.writes() >= _ALONE_WRITES:
            large.append(item)
        else:
            ordinary.append(item)
    close_run()
    return groups

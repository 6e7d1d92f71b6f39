"""The store: etcd's KV semantics over a SQL log, for the gRPC edge to call.

Reads run on this process's read connection at one snapshot and never wait for the writer.
Writes go through the single ordered write path (``Writer``) and are answered only after they
are durably committed. Every committed revision is handed to the commit listeners (the watch
hub) before its writer is answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from shim.auth.apply import Authorized
from shim.auth.cache import AuthCache
from shim.auth.state import AuthState, Caller
from shim.backend.base import Backend, ReadView
from shim.mvcc.alarms import CORRUPT, DAMAGED, DEFAULT_QUOTA_BYTES, member_id_of
from shim.mvcc.apply import WriteRequest, WriteResponse
from shim.mvcc.current_values import CurrentValues, cacheable
from shim.mvcc.errors import StorageUnavailableError, StoreClosedError, StoreError
from shim.mvcc.events import CommitListener, Revision
from shim.mvcc.hash import KVHash, hash_all, hash_kv
from shim.mvcc.log_reads import EntriesRead
from shim.mvcc.range import execute_range, range_body
from shim.mvcc.replica import ReplicaHook
from shim.mvcc.txn import execute_read_txn, is_write
from shim.mvcc.writer import Writer
from shim.pb.rpc_pb2 import (
    AlarmRequest,
    AlarmResponse,
    CompactionRequest,
    CompactionResponse,
    DefragmentRequest,
    DefragmentResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class WritePath(Protocol):
    """Where the Store sends writes: this process's Writer, or (in a serving process of
    ``--processes N``) the store process's, through ``shim.procs.remote``."""

    @property
    def revision(self) -> int: ...
    @property
    def compact_revision(self) -> int: ...
    @property
    def replica(self) -> ReplicaHook | None: ...
    leases: dict[int, int]

    def start(self) -> None: ...
    async def write(self, request: WriteRequest) -> WriteResponse: ...
    def stop(self) -> None: ...


# Makes a write path that tells ``on_commit`` of every committed batch.
WritePathFactory = Callable[[CommitListener], WritePath]


class Store:
    def __init__(
        self,
        backend: Backend,
        replica: ReplicaHook | None = None,
        write_path: WritePathFactory | None = None,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
    ) -> None:
        self.backend = backend
        self._replica = replica
        self._quota_bytes = quota_bytes
        self._make_write_path = write_path or self._local_writer
        self._writer: WritePath | None = None
        self._listeners: list[CommitListener] = []
        # The auth state of the snapshots this process reads (the writer keeps its own).
        self.auth = AuthCache()
        # Single-key Range answers kept in memory (None: this process cannot keep them exact).
        self._current: CurrentValues | None = None
        self._damage_alarm: asyncio.Task[None] | None = None  # raised once a read met damage

    # -- life cycle ----------------------------------------------------------------------------

    def _local_writer(self, on_commit: CommitListener) -> WritePath:
        return Writer(
            self.backend, asyncio.get_running_loop(), on_commit, self._replica,
            self._quota_bytes,
        )

    async def start(self) -> None:
        writer = self._writer = self._make_write_path(self._publish)
        if isinstance(writer, Writer) and not self.backend.shared:
            # Only this process writes the database and it hears of every commit in time.
            self._current = CurrentValues(
                writer.revision, lambda: writer.committing_revision, lambda: writer.auth_on
            )
        writer.start()

    async def close(self) -> None:
        """Finish queued writes, then stop the writer. The backend is closed by its owner."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.to_thread(writer.stop)

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Called on the event loop after every committed write batch, with its revisions in
        order (an empty list when the batch changed no key), before its writers are answered."""
        self._listeners.append(listener)

    def _publish(self, committed: list[Revision]) -> None:
        if self._current is not None:
            self._current.published(committed)
        for listener in self._listeners:
            listener(committed)

    @property
    def replica(self) -> ReplicaHook | None:
        """The write path's replication hook (None: this node takes no part in replication)."""
        return self._writer.replica if self._writer is not None else None

    def leases(self) -> dict[int, int]:
        """Lease id -> granted TTL as the write path knew them at start."""
        assert self._writer is not None
        return dict(self._writer.leases)

    async def lease_keys(self, lease_id: int) -> list[bytes]:
        return await self.read(lambda view: view.lease_keys(lease_id))

    @property
    def revision(self) -> int:
        """The newest committed revision."""
        return self._writer.revision if self._writer is not None else 0

    @property
    def compact_revision(self) -> int:
        """The revision history is compacted to (-1: never)."""
        return self._writer.compact_revision if self._writer is not None else -1

    # -- reads ---------------------------------------------------------------------------------

    async def read(self, fn: Callable[[ReadView], T]) -> T:
        """Run ``fn`` on one read snapshot."""
        try:
            return await self.backend.read_async(fn)
        except self.backend.errors as exc:
            raise self._read_failed(exc) from exc

    async def read_auth(self, fn: Callable[[AuthState, ReadView], T]) -> T:
        """Run ``fn`` on one read snapshot and the auth state it holds."""
        return await self.read(lambda view: fn(self.auth.state(view), view))

    async def range(self, req: RangeRequest, caller: Caller | None = None) -> RangeResponse:
        """A Range; with ``caller``, first etcd's permission check, on the same snapshot."""

        def run(view: ReadView) -> RangeResponse:
            if caller is not None:
                self.auth.state(view).check_range(caller, req.key, req.range_end)
            return execute_range(view, req, view.revision(), view.compact_revision())

        return await self.read(run)

    async def range_bytes(
        self, req: RangeRequest, header: Callable[[int], bytes], caller: Caller | None = None
    ) -> bytes:
        """``range``'s answer as bytes, ``header(revision)`` first (the response's encoded
        header field): a large answer is its stored rows' bytes, with no message in between.
        A plain read of one key is answered from memory when it was read before and no
        commit changed it since (``CurrentValues``)."""
        # Kept answers are used only while auth is off: no caller needs a check then.
        kept_values = self._current if self._current is not None and cacheable(req) else None
        if kept_values is not None:
            kept = kept_values.get(req.key)
            if kept is not None:
                return header(kept_values.revision) + kept

        def run(view: ReadView) -> bytes:
            if caller is not None:
                self.auth.state(view).check_range(caller, req.key, req.range_end)
            current = view.revision()
            if kept_values is None:
                return range_body(view, req, current, view.compact_revision(), header(current))
            answer = range_body(view, req, current, view.compact_revision(), b"")
            kept_values.keep(req.key, answer, current)
            return header(current) + answer

        return await self.read(run)

    def read_watch_entries(
        self, key: bytes, end: bytes | None, after_revision: int, limit: int
    ) -> EntriesRead:
        """Log rows for a watcher catching up (called from a worker thread)."""
        with self.backend.read() as view:
            return EntriesRead(
                entries=view.entries(key, end, after_revision, limit),
                revision=view.revision(),
                compact_revision=view.compact_revision(),
            )

    def _read_failed(self, exc: BaseException) -> StorageUnavailableError:
        """What a client is told of a read the database refused. Damage it reports also
        raises the CORRUPT alarm, as when a write meets it: writes are refused from then on,
        and the operator is told (once) what to do."""
        if isinstance(exc, self.backend.corruption_errors) and self._damage_alarm is None:
            log.error(DAMAGED, exc)
            self._damage_alarm = asyncio.get_running_loop().create_task(self._raise_corrupt())
        return StorageUnavailableError(f"storage read failed: {exc}")

    async def _raise_corrupt(self) -> None:
        member = member_id_of(self.backend.node_id)
        try:
            await self.write(
                AlarmRequest(action=AlarmRequest.ACTIVATE, memberID=member, alarm=CORRUPT)
            )
        except StoreError as exc:  # the writer raises it in memory when it meets the damage
            log.warning("alarm CORRUPT not stored: %s", exc)

    # -- maintenance ---------------------------------------------------------------------------

    async def _read_in_thread(self, fn: Callable[[ReadView], T]) -> T:
        """A long read (a whole-history hash) on a worker thread's snapshot."""

        def run() -> T:
            with self.backend.read() as view:
                return fn(view)

        try:
            return await asyncio.to_thread(run)
        except self.backend.errors as exc:
            raise self._read_failed(exc) from exc

    async def hash_kv(self, revision: int) -> KVHash:
        return await self._read_in_thread(lambda view: hash_kv(view, revision))

    async def hash(self) -> tuple[int, int]:
        return await self._read_in_thread(hash_all)

    async def alarms(self) -> list[tuple[int, int]]:
        """The active alarms as stored (every process of --processes N reads the same)."""
        try:
            return await self.backend.read_async(lambda view: view.alarms())
        except self.backend.errors as exc:
            raise self._read_failed(exc) from exc

    async def alarm(self, req: AlarmRequest) -> AlarmResponse:
        """Activate or deactivate an alarm (through the write path, which enforces them)."""
        return _answer(AlarmResponse, await self.write(req))

    async def defragment(self) -> DefragmentResponse:
        return _answer(DefragmentResponse, await self.write(DefragmentRequest()))

    # -- writes --------------------------------------------------------------------------------

    async def write(self, req: WriteRequest) -> WriteResponse:
        if self._writer is None:
            raise StoreClosedError()
        return await self._writer.write(req)

    async def write_as(self, req: WriteRequest, caller: Caller | None) -> WriteResponse:
        """A write sent on behalf of ``caller``: the writer checks its permissions against
        the auth state of the transaction that applies it (None: no check)."""
        return await self.write(req if caller is None else Authorized(req, caller))

    async def write_expecting(
        self, kind: type[R], req: WriteRequest, caller: Caller | None = None
    ) -> R:
        """A write whose kind of answer is known (checked, so it is typed)."""
        return _answer(kind, await self.write_as(req, caller))

    async def put(self, req: PutRequest, caller: Caller | None = None) -> PutResponse:
        return _answer(PutResponse, await self.write_as(req, caller))

    async def delete_range(
        self, req: DeleteRangeRequest, caller: Caller | None = None
    ) -> DeleteRangeResponse:
        return _answer(DeleteRangeResponse, await self.write_as(req, caller))

    async def txn(self, req: TxnRequest, caller: Caller | None = None) -> TxnResponse:
        if is_write(req):
            return _answer(TxnResponse, await self.write_as(req, caller))

        def run(view: ReadView) -> TxnResponse:
            if caller is not None:
                self.auth.state(view).check_txn(caller, req)
            return execute_read_txn(view, req, view.revision(), view.compact_revision())

        return await self.read(run)

    async def compact(self, req: CompactionRequest) -> CompactionResponse:
        return _answer(CompactionResponse, await self.write(req))


def _answer(kind: type[R], resp: WriteResponse) -> R:
    """The answer to a request whose kind of answer is known (checked, so it is typed)."""
    if not isinstance(resp, kind):
        raise TypeError(f"expected {kind.__name__}, the write path answered {resp!r}")
    return resp

"""The write engine: applies Put, DeleteRange, Txn and Compact exactly as etcd 3.5 does.

An ``Applier`` works inside one open write transaction (``WriteTxn``) and may apply many requests
in a row (group commit). Each request that changes something takes the next revision; every
write of one request shares that revision. All compares of a Txn, nested ones included, are
evaluated against the state before the Txn writes anything, and every check that can fail runs
before the first write, so a failed request leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable

from shim.auth.apply import (
    Authorized,
    AuthWriter,
    AuthWriteRequest,
    AuthWriteResponse,
    is_auth_write,
)
from shim.backend.base import NewVersion, WriteTxn, kv_from_row
from shim.mvcc.alarms import AlarmState
from shim.mvcc.errors import (
    CompactedError,
    FutureRevisionError,
    KeyNotFoundError,
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
)
from shim.mvcc.events import Change, Revision
from shim.mvcc.hlc import HybridClock, wall_ms
from shim.mvcc.keys import range_end
from shim.mvcc.range import execute_range
from shim.mvcc.replica import ReplicaAnswer, ReplicaHook, ReplicaRequest, Resolved
from shim.mvcc.txn import TxnPath
from shim.pb.kv_pb2 import KeyValue
from shim.pb.rpc_pb2 import (
    AlarmRequest,
    AlarmResponse,
    AlarmType,
    CompactionRequest,
    CompactionResponse,
    DefragmentRequest,
    DefragmentResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    PutRequest,
    PutResponse,
    RequestOp,
    ResponseOp,
    TxnRequest,
    TxnResponse,
)

WriteRequest = (
    PutRequest | DeleteRangeRequest | TxnRequest | CompactionRequest
    | LeaseGrantRequest | LeaseRevokeRequest | ReplicaRequest
    | AlarmRequest | DefragmentRequest | Authorized | AuthWriteRequest
)
WriteResponse = (
    PutResponse | DeleteRangeResponse | TxnResponse | CompactionResponse
    | LeaseGrantResponse | LeaseRevokeResponse | ReplicaAnswer | int
    | AlarmResponse | DefragmentResponse | AuthWriteResponse
)

# Revisions of the log one compaction step goes through. A step deletes about 5 µs a row
# (bench/runs/2026-12-07-compaction.md), so writes queued behind one wait a few ms at most,
# where deleting the whole history at once held them for as long as it took.
COMPACT_STEP_REVISIONS = 250

# etcd's bounds on a lease's TTL (seconds): its minimum follows from the default election
# timeout (1.5 s, rounded up), its maximum is lease.MaxLeaseTTL.
MIN_LEASE_TTL = 2
MAX_LEASE_TTL = 9_000_000_000


class Applier:
    """Applies write requests on one write transaction, revision after revision."""

    def __init__(
        self,
        txn: WriteTxn,
        revision: int,
        compact_revision: int,
        clock: HybridClock,
        leases: dict[int, int],
        replica: ReplicaHook | None = None,
        alarms: AlarmState | None = None,
        auth: AuthWriter | None = None,
    ) -> None:
        self._txn = txn
        # Alarms and quota (shared with the writer, which stores alarms this batch raises).
        self._alarms = alarms
        self._database_size: int | None = None
        # Checks writes sent on behalf of a caller, and applies the auth store's own writes.
        self._auth = auth
        # Set when the backend keeps replication entries: every local write records one, and
        # merged entries from peers become local revisions.
        self._replica = replica
        self.revision = revision
        self.compact_revision = compact_revision
        self._clock = clock
        # id -> granted TTL; shared with the writer, which reloads it if a commit fails.
        self._leases = leases
        self.committed: list[Revision] = []
        self._pending: list[Change] = []
        # While a Txn runs: the current versions its compares read, until a write of the key
        # (a GuaranteedUpdate reads its key for the compare, then for the put).
        self._read: dict[bytes, KeyValue | None] | None = None
        # Set by a Compaction: whether its deletion of history is complete.
        self.compaction_done: bool | None = None

    # -- entry points --------------------------------------------------------------------------

    def apply(self, req: WriteRequest) -> WriteResponse:
        """Apply one request. On error nothing of it has been written (the caller still rolls
        back its savepoint, so a storage failure midway cannot leave half a request)."""
        self._pending = []
        try:
            if self._alarms is not None:
                # As etcd's alarm appliers, outside its auth applier: the request itself.
                inner = req.request if isinstance(req, Authorized) else req
                self._alarms.check(inner, self._size_at_batch_start)
            resp = self._dispatch(req)
        except BaseException:
            self._pending = []
            raise
        if self._pending:
            self.revision += 1
            self.committed.append(Revision(self.revision, self._pending))
            self._pending = []
        return resp

    def _size_at_batch_start(self) -> int:
        """The database's size for the quota, read once per batch (as etcd's backend size,
        it lags a little behind the writes in flight)."""
        if self._database_size is None:
            self._database_size = self._txn.database_size()
        return self._database_size

    def _dispatch(self, req: WriteRequest) -> WriteResponse:
        if isinstance(req, PutRequest):
            if req.lease and req.lease not in self._leases:
                raise LeaseNotFoundError()
            return self._put(req)
        if isinstance(req, DeleteRangeRequest):
            return self._delete_range(req)
        if isinstance(req, TxnRequest):
            return self._txn_request(req)
        if isinstance(req, CompactionRequest):
            return self._compact(req)
        if isinstance(req, LeaseGrantRequest):
            return self._lease_grant(req)
        if isinstance(req, LeaseRevokeRequest):
            return self._lease_revoke(req)
        if isinstance(req, Authorized):
            return self._authorized(req)
        if isinstance(req, ReplicaRequest):
            assert self._replica is not None, "a replication request on a node without it"
            return self._replica.apply(self._txn, req, self)
        if isinstance(req, AlarmRequest):
            return self._alarm(req)
        raise TypeError(f"not a write request: {type(req).__name__}")

    def _authorized(self, req: Authorized) -> WriteResponse:
        """A request sent on behalf of a caller: the auth store's own writes are applied by
        it; any other write first passes etcd's permission checks."""
        assert self._auth is not None, "the write path has no auth store"
        inner = req.request
        if is_auth_write(inner):
            hlc = self._clock.now()
            record = None
            if self._replica is not None:
                replica, txn = self._replica, self._txn

                def record(key: bytes, state: bytes, secret: str | None) -> None:
                    replica.local_auth(txn, key, state, secret, hlc)

            resp = self._auth.apply(self._txn, inner, req.caller, hlc, record)
            resp.header.revision = self.revision
            return resp
        self._auth.check(self._txn, inner, req.caller)
        return self._dispatch(inner)

    # -- single operations ---------------------------------------------------------------------

    @property
    def _next(self) -> int:
        return self.revision + 1

    @property
    def _visible_revision(self) -> int:
        """The revision a read inside the current request sees."""
        return self.revision + 1 if self._pending else self.revision

    def _current(self, key: bytes) -> KeyValue | None:
        """The key's current version, as this transaction sees it."""
        read = self._read
        if read is None:
            return self._txn.get(key, 0)
        if key in read:
            return read[key]
        kv = read[key] = self._txn.get(key, 0)
        return kv

    def _put(self, req: PutRequest) -> PutResponse:
        old = self._current(req.key)
        if (req.ignore_value or req.ignore_lease) and old is None:
            raise KeyNotFoundError()
        value = old.value if req.ignore_value and old is not None else req.value
        lease = old.lease if req.ignore_lease and old is not None else req.lease
        revision = self._next
        hlc = self._clock.now()
        resolved = self._record(req.key, old, value, lease, hlc, revision)
        if resolved is not None and resolved.value is None:
            # The merge rules keep the key absent (only with entries from a skewed clock).
            if old is not None:
                self._write(KeyValue(key=req.key, mod_revision=revision), old, True, hlc)
        else:
            if resolved is not None and resolved.value is not None:
                value, lease = resolved.value, resolved.lease
            self._write(_new_version(req.key, value, lease, old, revision), old, False, hlc)
        resp = PutResponse()
        resp.header.revision = self._visible_revision
        if req.prev_kv and old is not None:
            resp.prev_kv.CopyFrom(old)
        return resp

    def _delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        end = range_end(req.range_end)
        if end is None:
            old = self._current(req.key)
            victims = [] if old is None else [old]
        else:
            victims = [kv_from_row(row) for row in self._txn.range_rows(req.key, end, 0, 0)]
        revision = self._next
        for old in victims:
            self._delete(old, revision)
        resp = DeleteRangeResponse(deleted=len(victims))
        resp.header.revision = self._visible_revision
        if req.prev_kv:
            resp.prev_kvs.extend(victims)
        return resp

    def _delete(self, old: KeyValue, revision: int) -> None:
        hlc = self._clock.now()
        resolved = self._record(old.key, old, None, 0, hlc, revision)
        if resolved is not None and resolved.value is not None:
            # The merge rules keep the key (only with entries from a skewed clock).
            new = _new_version(old.key, resolved.value, resolved.lease, old, revision)
            self._write(new, old, False, hlc)
        else:
            self._write(KeyValue(key=old.key, mod_revision=revision), old, True, hlc)

    def _record(
        self, key: bytes, old: KeyValue | None, value: bytes | None, lease: int, hlc: int,
        revision: int,
    ) -> Resolved | None:
        """Record a local write as a replication entry; what the merge rules make of it."""
        if self._replica is None:
            return None
        return self._replica.local_write(self._txn, key, old, value, lease, hlc, revision)

    def _write(self, kv: KeyValue, prev: KeyValue | None, deleted: bool, hlc: int) -> None:
        if self._read is not None:
            self._read.pop(kv.key, None)
        self._txn.append([
            NewVersion(
                key=kv.key, value=kv.value, create_revision=kv.create_revision,
                revision=kv.mod_revision, version=kv.version, lease=kv.lease, deleted=deleted,
                prev_revision=prev.mod_revision if prev is not None else 0,
                hlc=hlc,
            )
        ])
        self._pending.append(Change(kv, prev, deleted))

    def _alarm(self, req: AlarmRequest) -> AlarmResponse:
        """Activate or deactivate one alarm, as etcd's applier does (GET is a read)."""
        assert self._alarms is not None, "alarms are kept by the writer"
        resp = AlarmResponse()
        resp.header.revision = self.revision
        alarm = (req.memberID, int(req.alarm))
        active = self._alarms.active
        if req.action == AlarmRequest.ACTIVATE:
            if req.alarm != AlarmType.Value("NONE") and alarm not in active:
                active.add(alarm)
                self._txn.add_alarm(alarm)
                resp.alarms.add(memberID=alarm[0], alarm=alarm[1])
        elif req.action == AlarmRequest.DEACTIVATE and alarm in active:
            active.discard(alarm)
            self._txn.remove_alarm(alarm)
            resp.alarms.add(memberID=alarm[0], alarm=alarm[1])
        return resp

    # -- replication ---------------------------------------------------------------------------

    def emit(
        self, key: bytes, old: KeyValue | None, value: bytes | None, lease: int,
        new_incarnation: bool,
    ) -> None:
        """Replication's one primitive (``RevisionSink``): what the merge rules decided for
        ``key`` becomes local revisions, each closed at once."""
        # The log row is this node's write: it carries this node's clock (an entry keeps its
        # origin's), so a skewed peer can never pull this node's clock forward across a restart.
        hlc = self._clock.now()
        if old is not None and (value is None or new_incarnation):
            self._pending = []
            self._write(KeyValue(key=key, mod_revision=self._next), old, True, hlc)
            self._close_revision()
            old = None
        if value is not None:
            self._pending = []
            self._write(_new_version(key, value, lease, old, self._next), old, False, hlc)
            self._close_revision()

    def merge_auth(self, key: bytes, value: bytes, secret: str | None) -> bool:
        """A user, role or setting from a peer: the auth store merges it (no revision)."""
        assert self._auth is not None, "the write path has no auth store"
        return self._auth.merge(self._txn, key, value, secret)

    def guarded(self, action: Callable[[], None]) -> Exception | None:
        """Run ``action`` inside a savepoint; if it raises, undo its rows and revisions and
        answer the exception (the batch goes on)."""
        revision, committed = self.revision, len(self.committed)
        self._txn.savepoint()
        try:
            action()
        except Exception as exc:
            self._txn.rollback_savepoint()
            self.revision, self._pending = revision, []
            del self.committed[committed:]
            return exc
        self._txn.release()
        return None

    def _close_revision(self) -> None:
        self.revision += 1
        self.committed.append(Revision(self.revision, self._pending))
        self._pending = []

    def _compact(self, req: CompactionRequest) -> CompactionResponse:
        if req.revision <= self.compact_revision:
            raise CompactedError()
        if req.revision > self.revision:
            raise FutureRevisionError()
        self._txn.set_compact_revision(req.revision)
        self._txn.set_compact_progress(0)
        # The first step now (a short history is gone with the answer); the writer takes the
        # rest, a step at a time between other writes. Oldest first: whether a row is
        # superseded is read from the newer rows of its key, still there.
        self.compaction_done = compact_step(self._txn)
        self.compact_revision = req.revision
        resp = CompactionResponse()
        resp.header.revision = self.revision
        return resp

    def _lease_grant(self, req: LeaseGrantRequest) -> LeaseGrantResponse:
        if req.ID == 0:
            raise LeaseNotFoundError()  # the edge picks an id before it gets here
        if req.TTL > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError()
        if req.ID in self._leases:
            raise LeaseExistsError()
        ttl = max(req.TTL, MIN_LEASE_TTL)
        self._txn.add_lease(req.ID, ttl, wall_ms(self._clock.now()))
        self._leases[req.ID] = ttl
        resp = LeaseGrantResponse(ID=req.ID, TTL=ttl)
        resp.header.revision = self.revision
        return resp

    def _lease_revoke(self, req: LeaseRevokeRequest) -> LeaseRevokeResponse:
        if req.ID not in self._leases:
            raise LeaseNotFoundError()
        # Every attached key goes in one revision, in key order, as etcd does.
        revision = self._next
        for key in self._txn.lease_keys(req.ID):
            old = self._txn.get(key, 0)
            if old is not None:
                self._delete(old, revision)
        self._txn.remove_lease(req.ID)
        del self._leases[req.ID]
        resp = LeaseRevokeResponse()
        resp.header.revision = self._visible_revision
        return resp

    # -- transactions --------------------------------------------------------------------------

    def _txn_request(self, req: TxnRequest) -> TxnResponse:
        self._read = {}
        try:
            path = TxnPath.evaluate(self._txn, req, self._current)
            path.check(
                self._txn, self._leases.__contains__, self.revision, self.compact_revision
            )
            resp = self._run_path(path)
        finally:
            self._read = None
        resp.header.revision = self._visible_revision
        return resp

    def _run_path(self, path: TxnPath) -> TxnResponse:
        resp = TxnResponse(succeeded=path.succeeded)
        for op, nested in zip(path.ops, path.nested, strict=True):
            out = resp.responses.add()
            self._run_op(op, nested, out)
        return resp

    def _run_op(self, op: RequestOp, nested: TxnPath | None, out: ResponseOp) -> None:
        kind = op.WhichOneof("request")
        if kind == "request_range":
            out.response_range.CopyFrom(
                execute_range(
                    self._txn, op.request_range, self._visible_revision, self.compact_revision
                )
            )
        elif kind == "request_put":
            out.response_put.CopyFrom(self._put(op.request_put))
        elif kind == "request_delete_range":
            out.response_delete_range.CopyFrom(self._delete_range(op.request_delete_range))
        elif kind == "request_txn" and nested is not None:
            resp = self._run_path(nested)
            # etcd leaves the header of a nested Txn response empty (but present).
            resp.header.SetInParent()
            out.response_txn.CopyFrom(resp)


def compact_step(txn: WriteTxn) -> bool:
    """One step of the compaction at the stored compacted revision: the oldest window of
    revisions it has not gone through yet. Returns whether it has gone through them all
    (reads already treat the history below as gone; deleting it frees the space)."""
    revision = txn.compact_revision()
    progress = txn.compact_progress()
    if progress >= revision:
        return True
    upto = min(progress + COMPACT_STEP_REVISIONS, revision)
    txn.compact(revision, progress, upto)
    txn.set_compact_progress(upto)
    return upto >= revision


def _new_version(
    key: bytes, value: bytes, lease: int, old: KeyValue | None, revision: int
) -> KeyValue:
    return KeyValue(
        key=key,
        value=value,
        create_revision=old.create_revision if old is not None else revision,
        mod_revision=revision,
        version=old.version + 1 if old is not None else 1,
        lease=lease,
    )

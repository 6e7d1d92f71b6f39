"""Request checks etcd's gRPC layer makes before a request reaches the store, in etcd's order.

The duplicate-key rule follows etcd's interval semantics exactly: a delete's range_end is taken
literally (so a range ending in "\\0" overlaps nothing), and puts in the two branches of one
nested Txn may name the same key because only one branch runs.
"""

from __future__ import annotations

from google.protobuf.message import Message

from shim.api import errors
from shim.pb.rpc_pb2 import (
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)

_SORT_TARGETS = frozenset(RangeRequest.SortTarget.values())
# etcd measures a write wrapped in its raft entry, which adds about this many bytes.
RAFT_WRAPPER_BYTES = 17


def check_size(request: Message, max_request_bytes: int) -> None:
    """etcd refuses a write whose raft entry would exceed --max-request-bytes."""
    if request.ByteSize() + RAFT_WRAPPER_BYTES > max_request_bytes:
        raise errors.REQUEST_TOO_LARGE()


def check_range(req: RangeRequest) -> None:
    if not req.key:
        raise errors.EMPTY_KEY()
    # etcd 3.5.1 crashes on an unknown sort target; we answer as etcd 3.6 does. An unknown
    # sort order is accepted and means "unsorted", as in 3.5.
    if req.sort_target not in _SORT_TARGETS:
        raise errors.INVALID_SORT_OPTION()


def check_put(req: PutRequest) -> None:
    if not req.key:
        raise errors.EMPTY_KEY()
    if req.ignore_value and req.value:
        raise errors.VALUE_PROVIDED()
    if req.ignore_lease and req.lease:
        raise errors.LEASE_PROVIDED()


def check_delete_range(req: DeleteRangeRequest) -> None:
    if not req.key:
        raise errors.EMPTY_KEY()


def check_txn(req: TxnRequest, max_txn_ops: int) -> None:
    _check_txn_shape(req, max_txn_ops)
    # Overlap checks come after the cheap checks, as in etcd, to avoid quadratic work on junk.
    _intervals(list(req.success))
    _intervals(list(req.failure))


def _check_txn_shape(req: TxnRequest, max_txn_ops: int) -> None:
    ops = max(len(req.compare), len(req.success), len(req.failure))
    if ops > max_txn_ops:
        raise errors.TOO_MANY_OPS()
    for cmp in req.compare:
        if not cmp.key:
            raise errors.EMPTY_KEY()
    for op in (*req.success, *req.failure):
        # A nested Txn may use what its parent left of the budget (each nested one, all of it).
        _check_op(op, max_txn_ops - ops)


def _check_op(op: RequestOp, max_txn_ops: int) -> None:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        check_range(op.request_range)
    elif kind == "request_put":
        check_put(op.request_put)
    elif kind == "request_delete_range":
        check_delete_range(op.request_delete_range)
    elif kind == "request_txn":
        _check_txn_shape(op.request_txn, max_txn_ops)
    else:
        raise errors.KEY_NOT_FOUND()  # an empty operation


class _Deletes:
    """The key intervals a Txn path deletes, with etcd's affine comparison (b"" = infinity)."""

    def __init__(self) -> None:
        self._intervals: list[tuple[bytes, bytes | None]] = []  # (begin, end); None = point

    def add(self, begin: bytes, end: bytes | None) -> None:
        self._intervals.append((begin, end))

    def extend(self, other: _Deletes) -> None:
        self._intervals.extend(other._intervals)

    def contains(self, key: bytes) -> bool:
        for begin, end in self._intervals:
            if end is None:
                if key == begin:
                    return True
            elif begin <= key and (end == b"" or key < end):
                return True
        return False


def _intervals(ops: list[RequestOp]) -> tuple[set[bytes], _Deletes]:
    deletes = _Deletes()
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            deletes.add(d.key, d.range_end if d.range_end else None)

    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, deletes_then = _intervals(list(op.request_txn.success))
        puts_else, deletes_else = _intervals(list(op.request_txn.failure))
        for key in puts_then:
            if key in puts or deletes.contains(key):
                raise errors.DUPLICATE_KEY()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or deletes.contains(key):
                raise errors.DUPLICATE_KEY()
            puts.add(key)
        deletes.extend(deletes_then)
        deletes.extend(deletes_else)

    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or deletes.contains(key):
            raise errors.DUPLICATE_KEY()
        puts.add(key)
    return puts, deletes

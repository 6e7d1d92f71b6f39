"""A ``range_end`` sent present but empty, read as etcd reads it.

Python's protobuf cannot tell a bytes field that is absent from one sent with length zero;
etcd's Go decoder can (an empty, non-nil slice), and its readers treat that slice as "\0":
every key from ``key`` on. A write goes through raft first, whose encoding drops the empty
field, so there it means the single key again. Hence, as etcd 3.5 answers (checked side by
side, tests/test_edges.py):

- Range: every key from ``key`` on;
- Txn whose every operation is a Range (etcd serves it without raft): the same, in its
  compares and its Ranges; any other Txn, DeleteRange, Watch: the single key.

Clients send it: etcd3 for Node.js encodes ``getAll().inRange(start)`` so. shim rewrites such
a field to "\0" as the request is decoded, so the auth check sees the range that is read
(etcd checks the single key, and then reads them all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shim.api.wire import fields
from shim.pb import rpc_pb2

_OPEN = b"\x00"
# Field numbers and their tag bytes (wire type 2), from etcd's rpc.proto.
_RANGE_END = 2  # RangeRequest.range_end
_COMPARE_RANGE_END = 64  # Compare.range_end
_TXN_COMPARE, _TXN_SUCCESS, _TXN_FAILURE = 1, 2, 3
_OP_REQUEST_RANGE = 1  # RequestOp.request_range
_EMPTY_RANGE_END_BYTES = b"\x12\x00"
_EMPTY_COMPARE_RANGE_END_BYTES = b"\x82\x04\x00"
_SCAN_FIRST_BYTES = 2048


def _may_hold_one(data: bytes) -> bool:
    return _EMPTY_RANGE_END_BYTES in data or _EMPTY_COMPARE_RANGE_END_BYTES in data


def _sent(data: bytes, number: int) -> bool:
    return any(field == number for field, _ in fields(data))


def _range(request: rpc_pb2.RangeRequest, data: bytes) -> None:
    if not request.range_end and _EMPTY_RANGE_END_BYTES in data and _sent(data, _RANGE_END):
        request.range_end = _OPEN


def _txn(request: rpc_pb2.TxnRequest, data: bytes) -> None:
    # The cheaper test first: scanning the bytes costs about 1 ns a byte, asking the message
    # whether every operation is a Range 3-4 µs; a large Txn is a write (with its values).
    if len(data) <= _SCAN_FIRST_BYTES and not _may_hold_one(data):
        return  # the common case: nothing to look at
    if not all(op.HasField("request_range") for op in (*request.success, *request.failure)):
        return  # a write: through raft, where the empty field is dropped
    if len(data) > _SCAN_FIRST_BYTES and not _may_hold_one(data):
        return
    # Each repeated field's elements come in the order of their own fields on the wire.
    compares = iter(request.compare)
    ops = {_TXN_SUCCESS: iter(request.success), _TXN_FAILURE: iter(request.failure)}
    for number, value in fields(data):
        if value is None:
            continue
        if number == _TXN_COMPARE:
            compare = next(compares)
            if not compare.range_end and _sent(value, _COMPARE_RANGE_END):
                compare.range_end = _OPEN
        elif number in ops:
            op = next(ops[number])
            for field, inner in fields(value):
                if field == _OP_REQUEST_RANGE and inner is not None:
                    _range(op.request_range, inner)


# By gRPC path: what a method's request gets once decoded (the request, its bytes).
ADJUSTERS: dict[str, Callable[[Any, bytes], None]] = {
    "/etcdserverpb.KV/Range": _range,
    "/etcdserverpb.KV/Txn": _txn,
}

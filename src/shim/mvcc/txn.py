"""Txn evaluation as etcd 3.5 does it: which branch a Txn takes (every compare, nested ones
included, against the state before the Txn writes anything), the checks that must pass before
its first write, and read-only Txns, which run on a read snapshot without the writer. The write
engine (``shim.mvcc.apply``) runs the writes of a chosen branch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from shim.backend.base import ReadView, kv_from_row
from shim.mvcc.errors import (
    CompactedError,
    FutureRevisionError,
    KeyNotFoundError,
    LeaseNotFoundError,
)
from shim.mvcc.keys import range_end
from shim.mvcc.range import execute_range
from shim.pb.kv_pb2 import KeyValue
from shim.pb.rpc_pb2 import Compare, RequestOp, TxnRequest, TxnResponse

# A key's current version (None: the key does not exist).
CurrentVersion = Callable[[bytes], KeyValue | None]


def is_write(req: TxnRequest) -> bool:
    """Whether any branch of the Txn, at any depth, writes (etcd decides this statically)."""
    for op in (*req.success, *req.failure):
        kind = op.WhichOneof("request")
        if kind in ("request_put", "request_delete_range"):
            return True
        if kind == "request_txn" and is_write(op.request_txn):
            return True
    return False


def execute_read_txn(
    view: ReadView, req: TxnRequest, current: int, compacted: int
) -> TxnResponse:
    """A Txn that cannot write runs on a read snapshot, without the writer."""
    path = TxnPath.evaluate(view, req)
    path.check(view, lambda _lease: True, current, compacted)
    resp = _read_path(view, path, current, compacted)
    resp.header.revision = current
    return resp


def _read_path(view: ReadView, path: TxnPath, current: int, compacted: int) -> TxnResponse:
    resp = TxnResponse(succeeded=path.succeeded)
    for op, nested in zip(path.ops, path.nested, strict=True):
        out = resp.responses.add()
        kind = op.WhichOneof("request")
        if kind == "request_range":
            out.response_range.CopyFrom(execute_range(view, op.request_range, current, compacted))
        elif kind == "request_txn" and nested is not None:
            inner = _read_path(view, nested, current, compacted)
            inner.header.SetInParent()
            out.response_txn.CopyFrom(inner)
    return resp


@dataclass(slots=True)
class TxnPath:
    """The branch a Txn takes, decided before anything is written, with its nested paths."""

    succeeded: bool
    ops: list[RequestOp]
    nested: list[TxnPath | None]

    @classmethod
    def evaluate(
        cls, view: ReadView, req: TxnRequest, current: CurrentVersion | None = None
    ) -> TxnPath:
        """``current``: reads a key's current version in place of ``view.get(key, 0)``."""
        if current is None:
            current = partial(_current_of, view)
        succeeded = all(_compare_holds(view, current, c) for c in req.compare)
        ops = list(req.success if succeeded else req.failure)
        nested = [
            cls.evaluate(view, op.request_txn, current)
            if op.WhichOneof("request") == "request_txn" else None
            for op in ops
        ]
        return cls(succeeded, ops, nested)

    def walk(self) -> list[RequestOp]:
        """Every non-Txn operation on the path, depth first."""
        out: list[RequestOp] = []
        for op, nested in zip(self.ops, self.nested, strict=True):
            if nested is not None:
                out.extend(nested.walk())
            else:
                out.append(op)
        return out

    def check(
        self, view: ReadView, lease_exists: Callable[[int], bool], current: int, compacted: int
    ) -> None:
        """The checks etcd makes before applying a Txn: leases and keys for puts, then the
        revisions of ranges."""
        ops = self.walk()
        for op in ops:
            if op.WhichOneof("request") != "request_put":
                continue
            put = op.request_put
            if (put.ignore_value or put.ignore_lease) and view.get(put.key, 0) is None:
                raise KeyNotFoundError()
            if put.lease and not lease_exists(put.lease):
                raise LeaseNotFoundError()
        for op in ops:
            if op.WhichOneof("request") != "request_range":
                continue
            revision = op.request_range.revision
            if revision == 0:
                continue
            if revision > current:
                raise FutureRevisionError()
            if revision < compacted:  # negative revisions land here too, as in etcd
                raise CompactedError()


def _current_of(view: ReadView, key: bytes) -> KeyValue | None:
    return view.get(key, 0)


def _compare_holds(view: ReadView, current: CurrentVersion, cmp: Compare) -> bool:
    end = range_end(cmp.range_end)
    if end is None:
        kv = current(cmp.key)
        kvs = [] if kv is None else [kv]
    else:
        kvs = [kv_from_row(row) for row in view.range_rows(cmp.key, end, 0, 0)]
    if not kvs:
        # A missing key has no value to compare with; its revisions and version are 0.
        if cmp.target == Compare.VALUE:
            return False
        return _compare_one(cmp, KeyValue())
    return all(_compare_one(cmp, kv) for kv in kvs)


def _compare_one(cmp: Compare, kv: KeyValue) -> bool:
    target = cmp.target
    union = cmp.WhichOneof("target_union")
    ours: int | bytes
    theirs: int | bytes
    if target == Compare.VALUE:
        ours, theirs = kv.value, cmp.value if union == "value" else b""
    elif target == Compare.CREATE:
        ours, theirs = kv.create_revision, cmp.create_revision if union == "create_revision" else 0
    elif target == Compare.MOD:
        ours, theirs = kv.mod_revision, cmp.mod_revision if union == "mod_revision" else 0
    elif target == Compare.VERSION:
        ours, theirs = kv.version, cmp.version if union == "version" else 0
    elif target == Compare.LEASE:
        ours, theirs = kv.lease, cmp.lease if union == "lease" else 0
    else:
        ours = theirs = 0
    result = (ours > theirs) - (ours < theirs)  # type: ignore[operator]  # both bytes or both int
    if cmp.result == Compare.EQUAL:
        return result == 0
    if cmp.result == Compare.NOT_EQUAL:
        return result != 0
    if cmp.result == Compare.GREATER:
        return result > 0
    if cmp.result == Compare.LESS:
        return result < 0
    return True

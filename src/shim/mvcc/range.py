"""Range semantics exactly as etcd 3.5 answers them, over any ``ReadView``."""

from __future__ import annotations

from itertools import chain
from typing import Final

from shim.backend.base import KvRow, ReadView, kv_row
from shim.backend.kv_wire import varint
from shim.mvcc.errors import CompactedError, FutureRevisionError
from shim.mvcc.gosort import go_sort, go_sort_reverse
from shim.mvcc.keys import range_end
from shim.pb.rpc_pb2 import RangeRequest, RangeResponse

INT64_MAX = 2**63 - 1
# RangeResponse's fields after kvs: more (3, varint true) and count (4, varint).
_MORE: Final = b"\x18\x01"
_COUNT: Final = b"\x20"

# Where each sort target sits in a KvRow (key, value, create, mod, version, lease).
_KEY: Final = 0
_VALUE: Final = 1
_CREATE: Final = 2
_MOD: Final = 3
_VERSION: Final = 4
_SORT_FIELDS: dict[int, int] = {
    RangeRequest.KEY: _KEY,
    RangeRequest.VERSION: _VERSION,
    RangeRequest.CREATE: _CREATE,
    RangeRequest.MOD: _MOD,
    RangeRequest.VALUE: _VALUE,
}


def check_revision(requested: int, current: int, compacted: int) -> int:
    """The revision to read at: 0 or less means current; errors as etcd's mvcc gives them."""
    if requested > current:
        raise FutureRevisionError()
    revision = current if requested <= 0 else requested
    if revision < compacted:
        raise CompactedError()
    return revision


def execute_range(
    view: ReadView, req: RangeRequest, current: int, compacted: int
) -> RangeResponse:
    """Answer ``req`` from ``view``, whose newest state is revision ``current``."""
    if _as_stored(req):
        resp = RangeResponse.FromString(_stored_body(view, req, current, compacted, b""))
    else:
        resp = _built(view, req, current, compacted)
    resp.header.revision = current
    return resp


def range_body(
    view: ReadView, req: RangeRequest, current: int, compacted: int, header: bytes
) -> bytes:
    """The answer to ``req`` as protobuf bytes, starting with ``header`` (its encoded header
    field, which the edge makes): the stored rows' bytes laid end to end wherever the answer
    is the rows as stored."""
    if _as_stored(req):
        return _stored_body(view, req, current, compacted, header)
    return header + _built(view, req, current, compacted).SerializeToString()


def _filtered(req: RangeRequest) -> bool:
    return bool(
        req.min_mod_revision or req.max_mod_revision
        or req.min_create_revision or req.max_create_revision
    )


def _as_stored(req: RangeRequest) -> bool:
    """Whether the answer is whole stored versions in key order (or its reverse)."""
    return (
        not (req.keys_only or req.count_only or _filtered(req))
        and req.sort_target == RangeRequest.KEY
    )


def _stored_body(
    view: ReadView, req: RangeRequest, current: int, compacted: int, header: bytes
) -> bytes:
    revision = check_revision(req.revision, current, compacted)
    read_at = 0 if revision == current else revision
    end = range_end(req.range_end)
    limit = req.limit if req.limit > 0 else 0
    descend = req.sort_order == RangeRequest.DESCEND
    # As in _built: one row more than the limit tells whether there is more.
    fetch = 0 if req.sort_order != RangeRequest.NONE or limit in (0, INT64_MAX) else limit + 1
    if end is None:
        # One key: the range up to its immediate successor.
        rows = view.range_encoded(req.key, req.key + b"\0", read_at, 0)
        total = len(rows)
    else:
        rows = view.range_encoded(req.key, end, read_at, fetch)
        total = view.count(req.key, end, read_at) if fetch and len(rows) == fetch else len(rows)
    if descend:
        rows.reverse()  # keys are unique: the reverse of key order is etcd's order
    tail = b""
    if limit and len(rows) > limit:
        del rows[limit:]
        tail = _MORE
    if total:
        tail += _COUNT + varint(total)
    return b"".join(chain((header,), chain.from_iterable(rows), (tail,)))


def _built(view: ReadView, req: RangeRequest, current: int, compacted: int) -> RangeResponse:
    """The answer built as a message, for the variants that are not the rows as stored."""
    revision = check_revision(req.revision, current, compacted)
    read_at = 0 if revision == current else revision
    end = range_end(req.range_end)
    resp = RangeResponse()

    if req.count_only:
        if end is None:
            resp.count = int(view.get(req.key, read_at) is not None)
        else:
            resp.count = view.count(req.key, end, read_at)
        return resp

    filtered = _filtered(req)
    sort_order = req.sort_order
    if req.sort_target != RangeRequest.KEY and sort_order == RangeRequest.NONE:
        # etcd sorts ascending by default when a non-key target is named.
        sort_order = RangeRequest.ASCEND
    needs_everything = req.sort_order != RangeRequest.NONE or filtered
    limit = req.limit if req.limit > 0 else 0
    # One row more than the limit tells whether there is more; at int64's maximum that row
    # cannot be asked for (nor exist), so every row is read.
    fetch = 0 if needs_everything or limit in (0, INT64_MAX) else limit + 1

    rows: list[KvRow]
    if end is None:
        kv = view.get(req.key, read_at)
        rows = [] if kv is None else [kv_row(kv)]
        total = len(rows)
    else:
        rows = view.range_rows(req.key, end, read_at, fetch)
        total = view.count(req.key, end, read_at) if fetch and len(rows) == fetch else len(rows)

    if filtered:
        rows = [row for row in rows if _passes_filters(row, req)]
    if sort_order in (RangeRequest.ASCEND, RangeRequest.DESCEND) and not (
        req.sort_target == RangeRequest.KEY and sort_order == RangeRequest.ASCEND
    ):
        field = _SORT_FIELDS.get(req.sort_target, _KEY)
        # etcd's Go sort is unstable: go_sort reproduces its exact order of ties.
        sort = go_sort_reverse if sort_order == RangeRequest.DESCEND else go_sort
        sort(rows, lambda x, y: x[field] < y[field])  # type: ignore[operator]  # one column: one type
    if limit and len(rows) > limit:
        del rows[limit:]
        resp.more = True
    resp.count = total
    # Straight from the rows into the response: building KeyValue messages first and copying
    # them in would cost more than the rest of a large LIST together.
    add = resp.kvs.add
    if req.keys_only:
        for key, _, create, mod, version, lease in rows:
            add(key=key, create_revision=create, mod_revision=mod, version=version, lease=lease)
    else:
        for key, value, create, mod, version, lease in rows:
            add(key=key, value=value, create_revision=create, mod_revision=mod, version=version,
                lease=lease)
    return resp


def _passes_filters(row: KvRow, req: RangeRequest) -> bool:
    if req.max_mod_revision and row[_MOD] > req.max_mod_revision:
        return False
    if req.min_mod_revision and row[_MOD] < req.min_mod_revision:
        return False
    if req.max_create_revision and row[_CREATE] > req.max_create_revision:
        return False
    return not (req.min_create_revision and row[_CREATE] < req.min_create_revision)

"""Range semantics exactly as etcd 3.5 answers them, over any ``ReadView``."""

from __future__ import annotations

from typing import Final

from shim.backend.base import KvRow, ReadView, kv_row
from shim.mvcc.errors import CompactedError, FutureRevisionError
from shim.mvcc.gosort import go_sort, go_sort_reverse
from shim.mvcc.keys import range_end
from shim.pb.rpc_pb2 import RangeRequest, RangeResponse

INT64_MAX = 2**63 - 1

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
    revision = check_revision(req.revision, current, compacted)
    # Reads at the newest revision use the table of current versions; older ones use history.
    read_at = 0 if revision == current else revision
    end = range_end(req.range_end)
    resp = RangeResponse()
    resp.header.revision = current

    if req.count_only:
        if end is None:
            resp.count = int(view.get(req.key, read_at) is not None)
        else:
            resp.count = view.count(req.key, end, read_at)
        return resp

    filtered = bool(
        req.min_mod_revision or req.max_mod_revision
        or req.min_create_revision or req.max_create_revision
    )
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

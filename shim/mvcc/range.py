"""Range semantics exactly as etcd 3.5 answers them, over any ``ReadView``."""

from __future__ import annotations

from collections.abc import Callable

from shim.backend.base import ReadView
from shim.mvcc.errors import CompactedError, FutureRevisionError
from shim.mvcc.gosort import go_sort, go_sort_reverse
from shim.mvcc.keys import range_end
from shim.pb.kv_pb2 import KeyValue
from shim.pb.rpc_pb2 import RangeRequest, RangeResponse

_SORT_KEYS: dict[int, Callable[[KeyValue], object]] = {
    RangeRequest.KEY: lambda kv: kv.key,
    RangeRequest.VERSION: lambda kv: kv.version,
    RangeRequest.CREATE: lambda kv: kv.create_revision,
    RangeRequest.MOD: lambda kv: kv.mod_revision,
    RangeRequest.VALUE: lambda kv: kv.value,
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
    fetch = 0 if needs_everything or limit == 0 else limit + 1

    if end is None:
        kv = view.get(req.key, read_at)
        kvs = [] if kv is None else [kv]
        total = len(kvs)
    else:
        kvs = view.range(req.key, end, read_at, fetch)
        total = view.count(req.key, end, read_at) if fetch and len(kvs) == fetch else len(kvs)

    if filtered:
        kvs = [kv for kv in kvs if _passes_filters(kv, req)]
    if sort_order in (RangeRequest.ASCEND, RangeRequest.DESCEND) and not (
        req.sort_target == RangeRequest.KEY and sort_order == RangeRequest.ASCEND
    ):
        sort_key = _SORT_KEYS.get(req.sort_target, _SORT_KEYS[RangeRequest.KEY])
        # etcd's Go sort is unstable: go_sort reproduces its exact order of ties.
        sort = go_sort_reverse if sort_order == RangeRequest.DESCEND else go_sort
        sort(kvs, lambda x, y: sort_key(x) < sort_key(y))  # type: ignore[operator]
    if limit and len(kvs) > limit:
        del kvs[limit:]
        resp.more = True
    resp.count = total
    if req.keys_only:
        for kv in kvs:
            kv.value = b""
    resp.kvs.extend(kvs)
    return resp


def _passes_filters(kv: KeyValue, req: RangeRequest) -> bool:
    if req.max_mod_revision and kv.mod_revision > req.max_mod_revision:
        return False
    if req.min_mod_revision and kv.mod_revision < req.min_mod_revision:
        return False
    if req.max_create_revision and kv.create_revision > req.max_create_revision:
        return False
    return not (req.min_create_revision and kv.create_revision < req.min_create_revision)

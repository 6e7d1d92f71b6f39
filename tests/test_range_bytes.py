"""Range answers laid out from the stored rows' bytes (shim.backend.kv_wire) decode to what a
message built field by field holds, with heads stored and for rows written without them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.backend.base import kv_from_row
from shim.backend.kv_wire import kv_head
from shim.backend.sqlite import SqliteBackend
from shim.mvcc.store import Store
from shim.pb.kv_pb2 import KeyValue
from shim.pb.rpc_pb2 import PutRequest, RangeRequest, RangeResponse, ResponseHeader

KEYS = [f"/k/{n:03d}".encode() for n in range(30)]


@pytest.mark.parametrize(
    "kv",
    [
        KeyValue(key=b"a", value=b"", create_revision=1, mod_revision=1, version=1),
        KeyValue(key=b"/x" * 100, value=b"v" * 300, create_revision=5, mod_revision=2**40,
                 version=7, lease=2**62 + 3),
        KeyValue(key=b"k", value=b"\0" * 20000, create_revision=127, mod_revision=128,
                 version=16384, lease=1),
    ],
)
def test_a_head_and_its_value_decode_as_the_version(kv: KeyValue) -> None:
    head = kv_head(kv.key, len(kv.value), kv.create_revision, kv.mod_revision, kv.version,
                   kv.lease)
    assert RangeResponse.FromString(head + kv.value).kvs == [kv]


# Every varint width, its edges (127/128, 2^14, 2^21, 2^63) and negative leases, which
# protobuf writes as their 64-bit two's complement.
_EDGES = st.sampled_from([0, 1, 127, 128, 2**14 - 1, 2**14, 2**21 - 1, 2**21, 2**63 - 1])
_REVISION = st.one_of(_EDGES, st.integers(0, 2**63 - 1))
_LEASE = st.one_of(_EDGES, st.integers(-(2**63), 2**63 - 1))


@settings(max_examples=300, derandomize=True)
@given(key=st.binary(min_size=1, max_size=300), value=st.binary(max_size=20000),
       create=_REVISION, mod=_REVISION, version=_REVISION, lease=_LEASE)
def test_a_head_is_the_messages_own_bytes_before_its_value(
    key: bytes, value: bytes, create: int, mod: int, version: int, lease: int
) -> None:
    kv = KeyValue(key=key, value=value, create_revision=create, mod_revision=mod,
                  version=version, lease=lease)
    head = kv_head(key, len(value), create, mod, version, lease)
    assert RangeResponse.FromString(head + value).kvs == [kv]
    # Byte for byte what protobuf writes, but with the value last.
    without_value = KeyValue(key=key, create_revision=create, mod_revision=mod,
                             version=version, lease=lease).SerializeToString()
    value_field = (b"\x2a" + _varint(len(value))) if value else b""
    body = without_value + value_field
    assert head == b"\x12" + _varint(len(body) + len(value)) + body


def _varint(n: int) -> bytes:
    return RangeResponse(count=n).SerializeToString()[1:]  # count is field 4, a varint


def _expected(rows: list[KeyValue], req: RangeRequest, revision: int) -> RangeResponse:
    """What etcd answers for these requests, from the rows in key order."""
    kvs = [kv for kv in rows if req.key <= kv.key < req.range_end]
    total = len(kvs)
    if req.sort_order == RangeRequest.DESCEND:
        kvs.reverse()
    more = bool(req.limit) and len(kvs) > req.limit
    if req.limit:
        kvs = kvs[: req.limit]
    return RangeResponse(header=ResponseHeader(revision=revision), kvs=kvs, more=more,
                         count=total)


REQUESTS = [
    RangeRequest(key=b"/k/", range_end=b"/k0"),
    RangeRequest(key=b"/k/", range_end=b"/k0", limit=7),
    RangeRequest(key=b"/k/005", range_end=b"/k/009", limit=4),
    RangeRequest(key=b"/k/", range_end=b"/k0", limit=5, sort_order=RangeRequest.DESCEND),
    RangeRequest(key=b"/k/010", range_end=b"/k/020", sort_order=RangeRequest.ASCEND),
    RangeRequest(key=b"/k/", range_end=b"/k/"),  # empty
]


async def _answers(db: Path) -> tuple[list[KeyValue], list[RangeResponse]]:
    backend = SqliteBackend(db)
    backend.open()
    store = Store(backend)
    await store.start()
    try:
        if not (await store.range(RangeRequest(key=b"/k/", range_end=b"/k0"))).kvs:
            for n, key in enumerate(KEYS):
                await store.put(PutRequest(key=key, value=b"v" * (n * 37)))
            await store.put(PutRequest(key=KEYS[3], value=b"again"))
        rows = await store.read(lambda view: view.range_rows(b"/k/", b"/k0", 0, 0))
        answers = []
        for req in REQUESTS:
            data = await store.range_bytes(req, lambda rev: b"\x0a\x02\x18" + bytes((rev,)))
            answers.append(RangeResponse.FromString(data))
            # The message path (Txn, locks) decodes the same bytes.
            assert await store.range(req) == answers[-1]
        # One key, and one key at an older revision (history, not the current table).
        one = await store.range(RangeRequest(key=KEYS[3]))
        assert [kv.value for kv in one.kvs] == [b"again"] and one.count == 1
        old = await store.range(RangeRequest(key=KEYS[3], revision=5))
        assert [kv.value for kv in old.kvs] == [b"v" * 111] and old.kvs[0].version == 1
        return [kv_from_row(row) for row in rows], answers
    finally:
        await store.close()
        backend.close()


def test_range_bytes_match_the_rows_with_and_without_stored_heads(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    rows, stored = asyncio.run(_answers(db))
    assert len(rows) == len(KEYS)
    for req, answer in zip(REQUESTS, stored, strict=True):
        assert answer == _expected(rows, req, 32), req
    # Rows written before heads were kept have none: they are encoded when read.
    conn = apsw.Connection(str(db))
    conn.execute("UPDATE log SET kv_head = NULL WHERE id % 2 = 0")
    conn.close()
    _, again = asyncio.run(_answers(db))
    assert again == stored

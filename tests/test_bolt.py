"""bbolt files as shim writes them (``shim.backend.bolt``): read back by shim's own reader and
by etcd's tools (`etcdctl snapshot status` opens them with bbolt, checks every page and walks
every bucket), whatever the shape of the trees (many leaves, several branch levels, values
spanning pages, empty buckets)."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import pytest

from shim.backend import sqlite_snapshot
from shim.backend.bolt import BoltError, BoltReader, BoltWriter, is_bolt
from shim.backend.sqlite import SqliteBackend
from shim.mvcc import snapshot_file
from shim.mvcc.store import Store
from shim.pb.rpc_pb2 import DeleteRangeRequest, LeaseGrantRequest, LeaseGrantResponse, PutRequest
from tests.support import etcdctl


def revision_key(main: int) -> bytes:
    return struct.pack(">q", main) + b"_" + struct.pack(">q", 0)


def write(path: Path, buckets: dict[bytes, list[tuple[bytes, bytes]]]) -> int:
    with open(path, "wb") as out:
        bolt = BoltWriter(out)
        for name, items in buckets.items():
            bolt.bucket(name, items)
        return bolt.close()


@pytest.mark.parametrize(("keys", "value_size"), [(0, 0), (3, 10), (30_000, 40), (20, 9_000)])
def test_etcds_tools_and_shims_reader_read_what_is_written(
    tmp_path: Path, keys: int, value_size: int
) -> None:
    items = [(revision_key(i + 2), bytes([i % 251]) * value_size) for i in range(keys)]
    pieces = [(struct.pack(">Q", i), bytes([i]) * 300_000) for i in range(3)]
    path = tmp_path / "db"
    size = write(path, {b"alarm": [], b"key": items, b"shim": pieces})
    assert path.stat().st_size == size and size % 4096 == 0

    with open(path, "rb") as source:
        assert is_bolt(source.read(64))
        reader = BoltReader(source)
        assert reader.buckets() == [b"alarm", b"key", b"shim"]
        assert list(reader.bucket(b"key")) == items
        assert list(reader.bucket(b"shim")) == pieces
        assert list(reader.bucket(b"absent")) == []

    # An offline command: the endpoint is never dialed.
    status = etcdctl("127.0.0.1:1", "snapshot", "status", str(path), "-w", "json", check=False)
    assert status.returncode == 0, status.stderr
    got = json.loads(status.stdout)
    assert (got["revision"], got["totalKey"], got["totalSize"]) == (
        keys + 1 if keys else 0, keys + len(pieces), size)


def test_what_is_not_bbolt_is_refused(tmp_path: Path) -> None:
    assert not is_bolt(b"SQLite format 3\0" + bytes(48))
    path = tmp_path / "db"
    write(path, {b"key": [(b"a", b"1")]})
    data = bytearray(path.read_bytes())
    for page in (0, 1):
        data[page * 4096 + 40] ^= 0xFF  # the root bucket's sequence: each meta's checksum fails
    path.write_bytes(bytes(data))
    with open(path, "rb") as source, pytest.raises(BoltError, match="no valid meta page"):
        BoltReader(source)


def test_keys_out_of_order_are_refused(tmp_path: Path) -> None:
    with open(tmp_path / "db", "wb") as out:
        bolt = BoltWriter(out)
        with pytest.raises(ValueError, match="ascending"):
            bolt.bucket(b"key", [(b"b", b""), (b"a", b"")])
        bolt.bucket(b"m", [])
        with pytest.raises(ValueError, match="ascending name order"):
            bolt.bucket(b"a", [])


def test_a_damaged_snapshot_gives_a_one_line_error_never_a_crash(tmp_path: Path) -> None:
    """Every 97th byte of a snapshot shim wrote, and of one laid out as etcd's, flipped in
    turn (the SHA-256 check skipped, so the damage reaches the readers): status either reads
    it or says what is wrong in one line."""
    async def fill(backend: SqliteBackend) -> None:
        store = Store(backend)
        await store.start()
        lease = await store.write(LeaseGrantRequest(ID=7, TTL=60))
        assert isinstance(lease, LeaseGrantResponse)
        for i in range(40):
            await store.put(PutRequest(key=b"k%d" % (i % 7), value=b"v%d" % i, lease=7 * (i % 2)))
        await store.delete_range(DeleteRangeRequest(key=b"k3"))
        await store.close()

    backend = SqliteBackend(tmp_path / "state.db")
    backend.open()
    try:
        asyncio.run(fill(backend))
        snapshot_file.make(backend, str(tmp_path / "snap"))
    finally:
        backend.close()
    # The same buckets without shim's database: an etcd snapshot, rebuilt on reading.
    with open(tmp_path / "snap", "rb") as source:
        reader = BoltReader(source)
        etcd_like = {name: list(reader.bucket(name))
                     for name in reader.buckets() if name != b"shim"}
    write(tmp_path / "etcd", etcd_like)
    damaged = tmp_path / "damaged"
    for name in ("snap", "etcd"):
        good = (tmp_path / name).read_bytes()
        outcomes = {"read": 0, "refused": 0}
        for at in range(0, len(good), 97):
            data = bytearray(good)
            data[at] ^= 0xFF
            damaged.write_bytes(bytes(data))
            try:
                sqlite_snapshot.status(damaged, skip_hash_check=True)
                outcomes["read"] += 1
            except sqlite_snapshot.SnapshotError as exc:
                assert "\n" not in str(exc) and "Traceback" not in str(exc)
                outcomes["refused"] += 1
        assert outcomes["read"] and outcomes["refused"], (name, outcomes)

"""A shim database rebuilt from an etcd snapshot (``shim snapshot restore`` of a file etcd
made): the way onto shim from etcd.

etcd's ``key`` bucket holds every stored version under its revision (8-byte big-endian main
revision, "_", 8-byte position inside the revision, "t" for a tombstone) as an encoded
``mvccpb.KeyValue``; ``lease`` holds the leases (``leasepb.Lease``), ``meta`` the compacted
revision. Each version becomes a log row with the same revision, create revision, version and
lease, in the same order, so the restored node answers with the same history (the same
HashKV). The auth buckets become shim's users and roles (etcd's bcrypt hashes are shim's
kind) through the ``auth`` writer the caller hands in (``shim.auth.etcd_layout``); without
one, a snapshot with auth enabled is refused rather than restored open.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from google.protobuf.message import DecodeError

from shim.backend.auth_tables import AuthTables
from shim.backend.base import BackendOpenError, NewVersion
from shim.backend.bolt import BoltReader
from shim.backend.sqlite import SqliteBackend, lock_path
from shim.mvcc.hlc import HybridClock
from shim.pb.kv_pb2 import KeyValue
from shim.pb.lease_pb2 import Lease

_MAIN = struct.Struct(">q")
_ROWS_PER_APPEND = 1000

# Writes a snapshot's auth buckets (found by name) into a new database's auth tables, as
# writes made at the (hybrid-clock time, node id) given; ValueError: buckets it cannot use.
AuthImport = Callable[
    [Callable[[bytes], Iterable[tuple[bytes, bytes]]], AuthTables, tuple[int, str]], None
]


class ImportRefused(Exception):
    """An etcd snapshot shim does not restore (one line)."""


def import_etcd(reader: BoltReader, target: Path, auth_import: AuthImport | None = None) -> None:
    """Write a new shim database at ``target`` holding what the etcd snapshot holds."""
    auth = dict(reader.bucket(b"auth"))
    if auth_import is None and auth.get(b"authEnabled", b"\x00") != b"\x00":
        raise ImportRefused(
            "the etcd snapshot has auth enabled; its users and roles cannot come across "
            "(etcd's password hashes are not shim's): disable auth in etcd, take a new "
            "snapshot, restore it, then set auth up again with etcdctl"
        )
    meta = dict(reader.bucket(b"meta"))
    finished = meta.get(b"finishedCompactRev")
    if finished is not None and len(finished) < _MAIN.size:
        raise ImportRefused("the meta bucket's finishedCompactRev is no etcd revision")
    compacted = _MAIN.unpack_from(finished)[0] if finished else -1
    backend = SqliteBackend(target)
    try:
        backend.open()
    except BackendOpenError as exc:
        raise ImportRefused(str(exc)) from None
    try:
        clock = HybridClock()
        newest: dict[bytes, int] = {}
        revision = 0
        with backend.write() as txn:
            rows: list[NewVersion] = []
            for bolt_key, stored in reader.bucket(b"key"):
                revision, deleted, kv = _version(bolt_key, stored)
                rows.append(NewVersion(
                    key=kv.key, value=b"" if deleted else kv.value,
                    create_revision=0 if deleted else kv.create_revision, revision=revision,
                    version=0 if deleted else kv.version, lease=0 if deleted else kv.lease,
                    deleted=deleted, prev_revision=newest.get(kv.key, 0), hlc=clock.now(),
                ))
                newest[kv.key] = revision
                if len(rows) >= _ROWS_PER_APPEND:
                    txn.append(rows)
                    rows = []
            txn.append(rows)
            granted_ms = int(time.time() * 1000)
            for _, stored in reader.bucket(b"lease"):
                lease_id, ttl = _lease(stored)
                txn.add_lease(lease_id, ttl, granted_ms)
            if revision > txn.revision():
                txn.set_revision(revision)
            if compacted >= 0:
                txn.set_compact_revision(compacted)
            if auth_import is not None:
                try:
                    auth_import(reader.bucket, txn.auth, (clock.now(), backend.node_id))
                except ValueError as exc:
                    raise ImportRefused(str(exc)) from None
    finally:
        backend.close()
        lock_path(target).unlink(missing_ok=True)


def _version(bolt_key: bytes, stored: bytes) -> tuple[int, bool, KeyValue]:
    """(revision, tombstone, the version) of one ``key`` bucket item."""
    if len(bolt_key) not in (17, 18) or bolt_key[8:9] != b"_" or bolt_key[17:] not in (b"", b"t"):
        raise ImportRefused(f"the key bucket holds {bolt_key!r}, which is no etcd revision")
    try:
        kv = KeyValue.FromString(stored)
    except DecodeError:
        raise ImportRefused(
            f"the version at {bolt_key!r} is not an mvccpb.KeyValue"
        ) from None
    return _MAIN.unpack_from(bolt_key)[0], len(bolt_key) == 18, kv


def _lease(message: bytes) -> tuple[int, int]:
    """(ID, TTL) of a ``lease`` bucket item (an encoded ``leasepb.Lease``)."""
    try:
        lease = Lease.FromString(message)
    except DecodeError:
        raise ImportRefused("a lease in the etcd snapshot is not etcd's leasepb.Lease") from None
    return lease.ID, lease.TTL

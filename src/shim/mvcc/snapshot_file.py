"""The file a Snapshot sends: a bbolt database laid out as etcd's, with shim's own database in
it (``shim.backend.bolt`` writes it; ``shim.backend.sqlite_snapshot`` reads it back).

etcd's tools read it as one of etcd's: its ``key`` bucket holds every stored version as etcd
stores it (the items HashKV hashes), ``lease`` the leases (``leasepb.Lease``), ``meta`` the
revision as etcd's consistent index, the compacted revision, a raft term and this member as
the one voter (etcd 3.6 finds a 3.5 file's schema by those two), ``cluster`` the cluster
version; `etcdctl snapshot status` reports shim's revision and keys. Membership is left out:
`etcdutl snapshot restore` writes the new cluster's. Bucket ``shim`` holds the copy of the
node's database the file was made from, in pieces: what ``shim snapshot restore`` brings
back, replication state and all. ``auth``, ``authRoles`` and ``authUsers`` hold the auth
store as etcd lays it out (``shim.auth.etcd_layout``), so etcd restores users, roles and
whether auth is on.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shim.auth.cache import state_from_rows
from shim.auth.etcd_layout import etcd_buckets
from shim.backend.base import Backend, ReadView
from shim.backend.bolt import SHIM_BUCKET, BoltWriter
from shim.etcd_version import RAFT_TERM, cluster_version
from shim.mvcc.alarms import member_id_of
from shim.mvcc.hash import bolt_items, stored_rows
from shim.pb.lease_pb2 import Lease

PIECE_BYTES = 1024 * 1024
_U64 = struct.Struct(">Q")
_REVISION = struct.Struct(">q")


def make(backend: Backend, target: str) -> int:
    """Write the snapshot file of ``backend``'s database to the new file ``target``
    (blocking; any thread); returns the revision it holds. The database is copied first,
    beside ``target``, and the copy removed after. ``UnsupportedError`` where the backend
    makes no copies."""
    copy = Path(f"{target}.db")
    try:
        revision = backend.snapshot(str(copy))
        with backend.read_copy(str(copy)) as view, open(target, "xb") as out:
            write(view, copy, out, member_id_of(backend.node_id))
            out.flush()
    finally:
        copy.unlink(missing_ok=True)
    return revision


def write(view: ReadView, database: Path, out: BinaryIO, member_id: int) -> int:
    """Write the snapshot of ``database`` (a standalone copy, read through ``view``) of
    member ``member_id`` to ``out``, an empty file; returns its length in bytes (no
    trailer)."""
    revision, compacted = view.revision(), view.compact_revision()
    bolt = BoltWriter(out)  # buckets in name order: auth, authRoles, authUsers, cluster, ...
    for name, items in etcd_buckets(state_from_rows(view.auth.load())):
        bolt.bucket(name, items)
    bolt.bucket(b"cluster", [(b"clusterVersion", cluster_version().encode())])
    bolt.bucket(b"key", bolt_items(stored_rows(view, revision)))
    bolt.bucket(b"lease", sorted(
        (_lease_key(lease_id), _lease(lease_id, ttl)) for lease_id, ttl in view.leases().items()
    ))
    # As Go's encoding/json writes raftpb.ConfState: one voter, no learners.
    conf_state = b'{"voters":[%d],"auto_leave":false}' % member_id
    meta = [(b"confState", conf_state), (b"consistent_index", _U64.pack(revision))]
    if compacted >= 0:
        at = _REVISION.pack(compacted) + b"_" + _REVISION.pack(0)
        meta += [(b"finishedCompactRev", at), (b"scheduledCompactRev", at)]
    meta.append((b"term", _U64.pack(RAFT_TERM)))
    bolt.bucket(b"meta", meta)
    bolt.bucket(SHIM_BUCKET, _pieces(database))
    return bolt.close()


def _pieces(database: Path) -> Iterator[tuple[bytes, bytes]]:
    with open(database, "rb") as source:
        for number, piece in enumerate(iter(lambda: source.read(PIECE_BYTES), b"")):
            yield _U64.pack(number), piece


def _lease_key(lease_id: int) -> bytes:
    """etcd's key for a lease: its ID as a big-endian uint64, so a negative ID (LeaseGrant
    takes any non-zero int64) sorts after the positive ones, as in etcd's bucket."""
    return _U64.pack(lease_id & 0xFFFF_FFFF_FFFF_FFFF)


def _lease(lease_id: int, ttl: int) -> bytes:
    """etcd's ``leasepb.Lease`` as its bucket stores it (zeros omitted, as Go's encoder does)."""
    return Lease(ID=lease_id, TTL=ttl).SerializeToString()

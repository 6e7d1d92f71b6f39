"""HashKV and Hash: etcd's checksum of the key-value history, computed from the log.

etcd hashes its bbolt ``key`` bucket with CRC-32C (Castagnoli): the bucket name, then for each
stored version up to the hashed revision its bbolt key (8-byte big-endian revision, "_", 8-byte
big-endian position inside the revision, and "t" for a tombstone) and its value (the
``mvccpb.KeyValue`` encoded; a tombstone encodes only its key). Versions at or below the
compacted revision count only if they are still their key's newest version at the hashed
revision (etcd's ``kvindex.Keep``), unless no key is live there at all. shim stores the same
versions in its log, so it computes the same checksum: two nodes (or shim and etcd) holding
the same history give the same hash.

One difference remains: shim does not store a version's position inside its revision, so it
numbers the rows of a revision that are still in the log. After compaction has removed some,
but not all, rows of a revision that changed several keys, the hash is still the same on every
shim node with that history, but no longer equal to etcd's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import crc32c

from shim.backend.base import HashRow, ReadView
from shim.mvcc.errors import CompactedError, FutureRevisionError
from shim.pb.kv_pb2 import KeyValue

# Revisions read per query: bounded memory on a large history, whole revisions per read.
WINDOW_REVISIONS = 5000
_REVISION = struct.Struct(">q")
_BUCKET = b"key"


@dataclass(frozen=True, slots=True)
class KVHash:
    hash: int
    compact_revision: int  # -1: never compacted (etcd's value too)
    revision: int  # the store's newest revision when the hash was taken (the header's)


def hash_kv(view: ReadView, revision: int) -> KVHash:
    """etcd's HashKV at ``revision`` (0: the newest; negative: nothing is hashed, as in
    etcd), on one snapshot."""
    current = view.revision()
    compacted = view.compact_revision()
    if 0 < revision <= compacted:
        raise CompactedError()
    if revision > current:
        raise FutureRevisionError()
    if revision == 0:
        revision = current
    checksum = crc32c.crc32c(_BUCKET)
    # With no key live at the hashed revision, etcd keeps nothing back: every stored row
    # counts.
    any_live = revision > 0 and bool(view.range_rows(b"\x00", b"", revision, 1))
    for bolt_key, stored in bolt_items(stored_rows(view, revision), any_live):
        checksum = crc32c.crc32c(bolt_key, checksum)
        checksum = crc32c.crc32c(stored, checksum)
    return KVHash(checksum, compacted, current)


def bolt_items(rows: Iterable[HashRow], any_live: bool = False) -> Iterator[tuple[bytes, bytes]]:
    """etcd's ``key`` bucket items for ``rows`` (whole revisions, in order): the bbolt key and
    the stored ``mvccpb.KeyValue``. ``any_live``: leave out the rows compaction no longer keeps
    at the hashed revision (``kept`` false)."""
    position, last_revision = 0, None
    for revision, key, value, create, version, lease, deleted, kept in rows:
        position = position + 1 if revision == last_revision else 0
        last_revision = revision
        if any_live and not kept:
            continue
        bolt_key = _REVISION.pack(revision) + b"_" + _REVISION.pack(position)
        if deleted:
            stored = KeyValue(key=key)
            bolt_key += b"t"
        else:
            stored = KeyValue(
                key=key, create_revision=create, mod_revision=revision, version=version,
                value=value, lease=lease,
            )
        yield bolt_key, stored.SerializeToString()


def stored_rows(view: ReadView, revision: int) -> Iterator[HashRow]:
    """Every version the log stores up to ``revision``, a window of revisions at a time."""
    compacted = view.compact_revision()
    after = 0
    while after < revision:
        upto = min(after + WINDOW_REVISIONS, revision)
        yield from view.hash_rows(after, upto, compacted, revision)
        after = upto


def hash_all(view: ReadView) -> tuple[int, int]:
    """The Hash RPC's checksum (etcd hashes its whole database file, which shim cannot
    reproduce): HashKV at the newest revision, continued over the leases (id and TTL, by id)
    and the alarms. Returns (hash, revision)."""
    kv = hash_kv(view, 0)
    checksum = crc32c.crc32c(b"lease", kv.hash)
    for lease_id, ttl in sorted(view.leases().items()):
        checksum = crc32c.crc32c(struct.pack(">qq", lease_id, ttl), checksum)
    checksum = crc32c.crc32c(b"alarm", checksum)
    for member, kind in view.alarms():
        checksum = crc32c.crc32c(struct.pack(">Qi", member, kind), checksum)
    return checksum, kv.revision

"""Entries on the wire: conversion between ``merge.Entry`` and the replication protobuf."""

from __future__ import annotations

from shim.pb import replication_pb2 as pb
from shim.replication import ops as field_ops
from shim.replication.framing import MAX_NUMBER
from shim.replication.merge import AUTH, Entry

# 2: Kubernetes objects stored as protobuf merge field by field (protocol 1 kept them whole, so
# nodes of both would not converge). The entry and its operations travel as in protocol 1.
# 3: entries also carry auth objects (kind, secret); a node speaking 2 would take them for keys.
PROTOCOL = 3
KINDS = ("", AUTH)


def to_wire(entry: Entry) -> pb.Entry:
    msg = pb.Entry(
        origin=entry.origin, seq=entry.seq, hlc=entry.hlc, key=entry.key, deleted=entry.deleted,
        value=entry.value, lease=entry.lease, base_uid=entry.base_uid or "", uid=entry.uid or "",
        kind=entry.kind, secret=entry.secret or "",
    )
    if entry.ops is not None:
        msg.has_ops = True
        msg.ops = field_ops.dumps(entry.ops).encode()
    return msg


class BadEntry(ValueError):
    """An entry from a peer that cannot be stored as it is."""


def from_wire(msg: pb.Entry) -> Entry:
    if not msg.origin or msg.seq <= 0 or not msg.key:
        raise BadEntry("an entry needs an origin, a positive seq and a key")
    if msg.seq > MAX_NUMBER or msg.hlc > MAX_NUMBER:
        raise BadEntry(f"entry {msg.origin}: seq {msg.seq} or hlc {msg.hlc} is out of range "
                       "(at most 2^63-1)")
    if msg.kind not in KINDS:
        raise BadEntry(f"entry {msg.origin}/{msg.seq}: unknown kind {msg.kind!r}")
    ops = None
    if msg.has_ops:
        try:
            ops = field_ops.loads(msg.ops)
        except field_ops.BadOps as exc:
            raise BadEntry(f"entry {msg.origin}/{msg.seq}: {exc}") from None
    return Entry(
        origin=msg.origin, seq=msg.seq, hlc=msg.hlc, key=msg.key, deleted=msg.deleted,
        value=msg.value, lease=msg.lease, ops=ops, base_uid=msg.base_uid or None,
        uid=msg.uid or None, kind=msg.kind, secret=msg.secret or None,
    )

"""Entries on the wire: conversion between ``merge.Entry`` and the replication protobuf."""

from __future__ import annotations

import json

from shim.pb import replication_pb2 as pb
from shim.replication.merge import Entry

PROTOCOL = 1


def to_wire(entry: Entry) -> pb.Entry:
    msg = pb.Entry(
        origin=entry.origin, seq=entry.seq, hlc=entry.hlc, key=entry.key, deleted=entry.deleted,
        value=entry.value, lease=entry.lease, base_uid=entry.base_uid or "", uid=entry.uid or "",
    )
    if entry.ops is not None:
        msg.has_ops = True
        msg.ops = json.dumps(entry.ops, separators=(",", ":")).encode()
    return msg


class BadEntry(ValueError):
    """An entry from a peer that cannot be stored as it is."""


def from_wire(msg: pb.Entry) -> Entry:
    if not msg.origin or msg.seq <= 0 or not msg.key:
        raise BadEntry("an entry needs an origin, a positive seq and a key")
    ops = None
    if msg.has_ops:
        try:
            ops = json.loads(msg.ops)
        except ValueError as exc:
            raise BadEntry(f"entry {msg.origin}/{msg.seq}: ops are not JSON") from exc
        if not isinstance(ops, list) or not all(
            isinstance(op, list) and len(op) >= 2 and isinstance(op[1], list) for op in ops
        ):
            raise BadEntry(f"entry {msg.origin}/{msg.seq}: ops must be a list of operations")
    return Entry(
        origin=msg.origin, seq=msg.seq, hlc=msg.hlc, key=msg.key, deleted=msg.deleted,
        value=msg.value, lease=msg.lease, ops=ops, base_uid=msg.base_uid or None,
        uid=msg.uid or None,
    )

"""Entries on the wire: conversion between ``entry.Entry`` and the replication protobuf."""

from __future__ import annotations

from shim.pb import replication_pb2 as pb
from shim.replication.entry import Entry

# 2: Kubernetes objects stored as protobuf merge field by field (protocol 1 kept them whole, so
# nodes of both would not converge). The entry and its operations travel as in protocol 1.
# 3: entries also carry auth objects (kind, secret); a node speaking 2 would take them for keys.
# 4: version vectors (Hello.vector, Have), a new origin per run, gapless origins (pruned
# entries travel as stubs), signed entries; a node speaking 3 would send duplicates, leave
# gaps and sign nothing.
# 5: origins sign their hash chain once for many entries (Entry.head_sig, prev_chain, tail);
# a node speaking 4 would take such entries for forged.
# 6: an operation may take a field from the entry's own value (``setv``) instead of restating
# it; a node speaking 5 would refuse such entries as malformed.
# 7: an entry's operations may be made since an earlier entry of its origin (``since``), worked
# out only by a replica that needs them; a node speaking 6 would refuse such entries.
PROTOCOL = 7


def to_wire(entry: Entry) -> pb.Entry:
    msg = pb.Entry(
        origin=entry.origin, seq=entry.seq, hlc=entry.hlc, key=entry.key, deleted=entry.deleted,
        value=entry.value, lease=entry.lease, base_uid=entry.base_uid or "", uid=entry.uid or "",
        kind=entry.kind, secret=entry.secret or "", pruned=entry.pruned, sig=entry.sig,
        digest=entry.digest if entry.pruned else b"", head_sig=entry.head_sig,
        prev_chain=entry.prev_chain, tail=entry.tail,
    )
    text = entry.ops_text()
    if text is not None and not entry.pruned:
        msg.has_ops = True
        msg.ops = text.encode()
    return msg

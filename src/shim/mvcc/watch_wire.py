"""WatchResponse bytes built by hand, so that fan-out encodes each event once.

A revision watched by many watchers used to cost a protobuf Event per watcher and a
serialization per response. Here each event is encoded once (with and without prev_kv) and a
watcher's response is its header, its watch id and the shared event bytes laid end to end,
which is exactly the protobuf wire format of a WatchResponse carrying those fields.
"""

from __future__ import annotations

from shim.backend.base import LogEntry
from shim.backend.kv_wire import field, varint
from shim.mvcc.events import Change
from shim.pb.kv_pb2 import KeyValue

# Field tags of etcdserverpb.WatchResponse and mvccpb.Event (field number << 3 | wire type).
_HEADER = b"\x0a"  # 1, length-delimited
_WATCH_ID = b"\x10"  # 2, varint
_FRAGMENT_TRUE = b"\x38\x01"  # 7, varint 1
_EVENT = b"\x5a"  # 11, length-delimited
_EVENT_DELETE = b"\x08\x01"  # Event.type = DELETE (PUT, 0, is not written)
_EVENT_KV = b"\x12"  # Event.kv, 2
_EVENT_PREV_KV = b"\x1a"  # Event.prev_kv, 3


class EncodedEvent:
    """One event's bytes as a WatchResponse.events field, encoded on first use."""

    __slots__ = ("_deleted", "_kv", "_plain", "_prev", "_with_prev")

    def __init__(self, kv: KeyValue, prev: KeyValue | None, deleted: bool) -> None:
        self._kv = kv
        self._prev = prev
        self._deleted = deleted
        self._plain: bytes | None = None
        self._with_prev: bytes | None = None

    @classmethod
    def of_change(cls, change: Change) -> EncodedEvent:
        return cls(change.kv, change.prev, change.deleted)

    @classmethod
    def of_entry(cls, entry: LogEntry) -> EncodedEvent:
        return cls(entry.kv, entry.prev, entry.deleted)

    @property
    def deleted(self) -> bool:
        return self._deleted

    @property
    def revision(self) -> int:
        return self._kv.mod_revision

    def get(self, with_prev: bool) -> bytes:
        if with_prev and self._prev is not None:
            if self._with_prev is None:
                self._with_prev = self._encode(self._prev)
            return self._with_prev
        if self._plain is None:
            self._plain = self._encode(None)
        return self._plain

    def _encode(self, prev: KeyValue | None) -> bytes:
        body = _EVENT_DELETE if self._deleted else b""
        body += field(_EVENT_KV, self._kv.SerializeToString())
        if prev is not None:
            body += field(_EVENT_PREV_KV, prev.SerializeToString())
        return field(_EVENT, body)


def header_field(header_bytes: bytes) -> bytes:
    """A serialized ResponseHeader as WatchResponse field 1."""
    return field(_HEADER, header_bytes)


def response(header: bytes, watch_id: int, events: list[bytes], fragment: bool = False) -> bytes:
    """A WatchResponse: ``header`` as from ``header_field``, ``events`` as from
    ``EncodedEvent.get``."""
    parts = [header]
    if watch_id:
        parts.append(_WATCH_ID + varint(watch_id))
    if fragment:
        parts.append(_FRAGMENT_TRUE)
    parts.extend(events)
    return b"".join(parts)


def split_fragments(
    header: bytes, watch_id: int, events: list[bytes], limit: int
) -> list[bytes]:
    """etcd's fragmentation: a response of ``limit`` bytes or more with two or more events is
    sent in parts, each filled until it would reach ``limit`` (at least one event per part),
    all but the last marked as fragments."""
    whole = len(header) + (len(_WATCH_ID + varint(watch_id)) if watch_id else 0)
    if len(events) < 2 or whole + sum(map(len, events)) < limit:
        return [response(header, watch_id, events)]
    base = whole + len(_FRAGMENT_TRUE)
    parts: list[bytes] = []
    chunk: list[bytes] = []
    size = base
    for event in events:
        if chunk and size + len(event) >= limit:
            parts.append(response(header, watch_id, chunk, fragment=True))
            chunk, size = [], base
        chunk.append(event)
        size += len(event)
    parts.append(response(header, watch_id, chunk))
    return parts

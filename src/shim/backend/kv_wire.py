"""A version's protobuf bytes, as a Range answer carries them, built without a message.

A RangeResponse's ``kvs`` (field 2) is a run of ``tag, length, KeyValue bytes``. The backends
keep, for each version they append, everything of that run but the value's own bytes (the
*head*: tag, length, key, revisions, version, lease, then the value's tag and length), so a
Range answer is its rows' heads and values laid end to end: no message, no encoding per row.
Field 2 is also ``mvccpb.Event.kv``, so the same bytes would serve watch events.
"""

from __future__ import annotations

from collections.abc import Iterable

from shim.backend.base import EncodedKv, KvRow

_UINT64 = (1 << 64) - 1
# Tags (field number << 3 | wire type) of RangeResponse.kvs and KeyValue's fields.
_KVS = b"\x12"
_KEY = b"\x0a"
_CREATE = b"\x10"
_MOD = b"\x18"
_VERSION = b"\x20"
_VALUE = b"\x2a"
_LEASE = b"\x30"
_SMALL = [bytes((n,)) for n in range(128)]


def varint(value: int) -> bytes:
    """Protobuf varint; negative int64 values take their two's complement, as protobuf does."""
    if 0 <= value < 128:
        return _SMALL[value]
    # Two and three bytes spelled out: every length and revision of a put until 2^21.
    if 0 < value < 1 << 14:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if 0 < value < 1 << 21:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    value &= _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def kv_head(
    key: bytes, value_length: int, create_revision: int, mod_revision: int, version: int,
    lease: int,
) -> bytes:
    """The bytes of one ``kvs`` field up to the value's bytes (see the module's note). The
    fields come in KeyValue's order except the value, last (any order decodes the same);
    proto3 leaves a zero out, as KeyValue.SerializeToString does."""
    body = b"".join((
        _KEY, varint(len(key)), key,
        _CREATE + varint(create_revision) if create_revision else b"",
        _MOD + varint(mod_revision) if mod_revision else b"",
        _VERSION + varint(version) if version else b"",
        _LEASE + varint(lease) if lease else b"",
        _VALUE + varint(value_length) if value_length else b"",
    ))
    return _KVS + varint(len(body) + value_length) + body


def encode_rows(rows: Iterable[KvRow]) -> list[EncodedKv]:
    """Each row's head and value, for rows stored without a head (or a backend that keeps
    none)."""
    return [
        (kv_head(key, len(value), create, mod, version, lease), value)
        for key, value, create, mod, version, lease in rows
    ]

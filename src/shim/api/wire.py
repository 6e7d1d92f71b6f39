"""Request bytes as etcd's generated (gogoproto) decoder reads them: why they do not decode,
in its words, and the fields they hold (what Python's decoder does not keep, see
``empty_range_end``).

Python's protobuf only says "Error parsing message"; etcd says "unexpected EOF", "proto: wrong
wireType = 0 for field Key", ... This walks the bytes the way that decoder does and returns
its first complaint. It runs only after Python's decoder has refused the bytes, so it costs
nothing on good requests.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.descriptor import Descriptor, FieldDescriptor

UNEXPECTED_EOF = "unexpected EOF"
INTEGER_OVERFLOW = "proto: integer overflow"
NEGATIVE_LENGTH = "proto: negative length found during unmarshaling"
END_OF_GROUP = "proto: unexpected end of group"
# Python refused bytes that etcd's decoder would take (e.g. a string that is not UTF-8).
OTHER = "proto: cannot parse invalid wire-format data"

_VARINT, _FIXED64, _BYTES, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_FIXED64_TYPES = {
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_DOUBLE,
}
_FIXED32_TYPES = {
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_FLOAT,
}
_BYTES_TYPES = {
    FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE,
}


class _Refused(Exception):
    pass


def refusal(descriptor: Descriptor, data: bytes) -> str | None:
    """etcd's reason to refuse ``data`` as a ``descriptor`` message, or None if it would
    decode it (Python's decoder takes some bytes etcd's refuses, e.g. a known field with the
    wrong wire type, which Python keeps as an unknown field)."""
    try:
        _walk(descriptor, data, 0, len(data))
    except _Refused as exc:
        return str(exc)
    return None


def fields(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(number, value) of each top-level field of bytes Python's decoder took, in wire
    order; the value of a field that is not length-delimited is None."""
    i, end = 0, len(data)
    while i < end:
        tag, after_tag = _varint(data, i, end)
        number = tag >> 3
        if tag & 7 == _BYTES:
            length, start = _length(data, after_tag, end)
            yield number, data[start:start + length]
            i = start + length
        else:
            i += _skip(data, i, end)
            yield number, None


def decode_error_reason(descriptor: Descriptor, data: bytes) -> str:
    """Why etcd refuses bytes that Python's decoder refused."""
    return refusal(descriptor, data) or OTHER


def go_field_name(name: str) -> str:
    """protoc-gen-gogo's CamelCase: prev_kv -> PrevKv, TTL -> TTL, dbSize -> DbSize."""
    out: list[str] = []
    i = 0
    if name.startswith("_"):
        out.append("X")
        i = 1
    while i < len(name):
        c = name[i]
        if c == "_" and i + 1 < len(name) and name[i + 1].islower():
            i += 1
            continue
        if c.isdigit():
            out.append(c)
            i += 1
            continue
        out.append(c.upper() if c.islower() else c)
        i += 1
        while i < len(name) and name[i].islower():
            out.append(name[i])
            i += 1
    return "".join(out)


def _varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if shift >= 64:
            raise _Refused(INTEGER_OVERFLOW)
        if i >= end:
            raise _Refused(UNEXPECTED_EOF)
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & 0xFFFF_FFFF_FFFF_FFFF, i
        shift += 7


def _length(data: bytes, i: int, end: int) -> tuple[int, int]:
    length, i = _varint(data, i, end)
    if length >= 1 << 63:  # a Go int: negative
        raise _Refused(NEGATIVE_LENGTH)
    return length, i


def _expected_wire_type(field: FieldDescriptor) -> int:
    if field.type in _BYTES_TYPES:
        return _BYTES
    if field.type in _FIXED64_TYPES:
        return _FIXED64
    if field.type in _FIXED32_TYPES:
        return _FIXED32
    return _VARINT


def _walk(descriptor: Descriptor, data: bytes, i: int, end: int) -> None:
    name = descriptor.name
    while i < end:
        start = i
        tag, i = _varint(data, i, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _END_GROUP:
            raise _Refused(f"proto: {name}: wiretype end group for non-group")
        if number <= 0:
            raise _Refused(f"proto: {name}: illegal tag {number} (wire type {tag})")
        field = descriptor.fields_by_number.get(number)
        if field is None:
            i = start + _skip(data, start, end)
            continue
        expected = _expected_wire_type(field)
        packed = field.is_repeated and expected != _BYTES
        if wire_type != expected and not (packed and wire_type == _BYTES):
            raise _Refused(f"proto: wrong wireType = {wire_type} for field "
                           f"{go_field_name(field.name)}")
        if wire_type == _VARINT:
            _, i = _varint(data, i, end)
        elif wire_type in (_FIXED64, _FIXED32):
            i += 8 if wire_type == _FIXED64 else 4
            if i > end:
                raise _Refused(UNEXPECTED_EOF)
        else:
            length, i = _length(data, i, end)
            if i + length > end:
                raise _Refused(UNEXPECTED_EOF)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                _walk(field.message_type, data, i, i + length)
            i += length
    if i > end:
        raise _Refused(UNEXPECTED_EOF)


def _skip(data: bytes, i: int, end: int) -> int:
    """The length of the unknown field at ``i`` (groups included), as gogo's skip does."""
    start, depth = i, 0
    while i < end:
        tag, i = _varint(data, i, end)
        wire_type = tag & 7
        if wire_type == _VARINT:
            _, i = _varint(data, i, end)
        elif wire_type == _FIXED64:
            i += 8
        elif wire_type == _BYTES:
            length, i = _length(data, i, end)
            i += length
        elif wire_type == _START_GROUP:
            depth += 1
        elif wire_type == _END_GROUP:
            if depth == 0:
                raise _Refused(END_OF_GROUP)
            depth -= 1
        elif wire_type == _FIXED32:
            i += 4
        else:
            raise _Refused(f"proto: illegal wireType {wire_type}")
        if depth == 0:
            if i > end:
                raise _Refused(UNEXPECTED_EOF)
            return i - start
    raise _Refused(UNEXPECTED_EOF)

"""Protobuf messages <-> JSON exactly as etcd 3.5's gateway maps them (grpc-gateway v1's
JSONPb marshaler over golang/protobuf's jsonpb, ``OrigName``, defaults left out).

Writing: fields in the order the .proto declares them, under their proto names; 64-bit
integers as strings, 32-bit ones as numbers, bytes as standard base64, enums by name; a
scalar equal to its default is left out, a set message or oneof member is kept even if
empty. Strings are escaped as Go's encoding/json escapes them.

Reading: a field is found under its proto name or its lowerCamelCase JSON name; unknown
fields are ignored; ``null`` leaves a field unset; integers may be numbers or strings; enums
names or numbers. What Go refuses gets Go's message ("json: cannot unmarshal number into Go
value of type []uint8", "illegal base64 data at input byte 4", ...).
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from shim.gateway.gojson import JsonNumber, go_quote, go_string, syntax_error, value_kind

F = FieldDescriptor
_INT64 = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64}
_UINT64 = {F.TYPE_UINT64, F.TYPE_FIXED64}
_INT32 = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32}
_UINT32 = {F.TYPE_UINT32, F.TYPE_FIXED32}
# Go type name and bounds of each integer kind, for "cannot unmarshal number N into Go value
# of type T".
_INTEGERS: dict[int, tuple[str, int, int]] = {
    **{t: ("int64", -(2**63), 2**63 - 1) for t in _INT64},
    **{t: ("uint64", 0, 2**64 - 1) for t in _UINT64},
    **{t: ("int32", -(2**31), 2**31 - 1) for t in _INT32},
    **{t: ("uint32", 0, 2**32 - 1) for t in _UINT32},
}
_ENUM_GO_TYPE = ("protoreflect.EnumNumber", -(2**31), 2**31 - 1)
_BYTE_GO_TYPE = ("uint8", 0, 255)


class JsonpbError(ValueError):
    """A request body etcd's gateway would refuse; the message is its message."""


# --- writing ---------------------------------------------------------------------------------


def to_json(message: Message) -> str:
    parts: list[str] = []
    _write_message(message, parts)
    return "".join(parts)


def _write_message(message: Message, out: list[str]) -> None:
    out.append("{")
    first = True
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            if not value:
                continue
        elif field.message_type is not None or field.has_presence:
            if not message.HasField(field.name):
                continue
        elif not value:
            continue
        if not first:
            out.append(",")
        first = False
        out.append(f'"{field.name}":')
        if field.is_repeated:
            out.append("[")
            for i, item in enumerate(value):
                if i:
                    out.append(",")
                _write_value(field, item, out)
            out.append("]")
        else:
            _write_value(field, value, out)
    out.append("}")


def _write_value(field: FieldDescriptor, value: Any, out: list[str]) -> None:
    kind = field.type
    if kind == F.TYPE_MESSAGE:
        _write_message(value, out)
    elif kind in _INT64 or kind in _UINT64:
        out.append(f'"{value}"')
    elif kind == F.TYPE_BOOL:
        out.append("true" if value else "false")
    elif kind == F.TYPE_BYTES:
        out.append('"' + base64.b64encode(value).decode("ascii") + '"')
    elif kind == F.TYPE_STRING:
        out.append(go_string(value))
    elif kind == F.TYPE_ENUM:
        named = field.enum_type.values_by_number.get(value)
        out.append(f'"{named.name}"' if named is not None else str(value))
    else:
        out.append(str(value))  # 32-bit integers (etcd's API has no floats)


# --- reading ---------------------------------------------------------------------------------


def from_json(value: Any, message_type: type[Message]) -> Message:
    """The message ``value`` (a decoded JSON value, see gojson.decode_first) describes."""
    message = message_type()
    _read_message(value, message)
    return message


def _type_error(value: Any, go_type: str) -> JsonpbError:
    kind = value_kind(value)
    return JsonpbError(f"json: cannot unmarshal {kind} into Go value of type {go_type}")


def _read_message(value: Any, message: Message) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _type_error(value, "map[string]json.RawMessage")
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        raw = value.get(field.name)
        if field.json_name != field.name and field.json_name in value:
            raw = value[field.json_name]  # as Go: the JSON name, read second, wins
        if raw is None:
            continue
        if field.is_repeated:
            if not isinstance(raw, list):
                raise _type_error(raw, "[]json.RawMessage")
            container = getattr(message, field.name)
            for item in raw:
                if field.type == F.TYPE_MESSAGE:
                    _read_message(item, container.add())
                else:
                    container.append(_read_scalar(field, item))
        elif field.type == F.TYPE_MESSAGE:
            child = getattr(message, field.name)
            child.SetInParent()
            _read_message(raw, child)
        else:
            setattr(message, field.name, _read_scalar(field, raw))


def _read_scalar(field: FieldDescriptor, raw: Any) -> Any:
    kind = field.type
    if kind in _INTEGERS:
        # jsonpb strips one pair of quotes and reads what is inside as a JSON number.
        text = raw if isinstance(raw, str) else raw.text if isinstance(raw, JsonNumber) else None
        if text is None:
            raise _type_error(raw, _INTEGERS[kind][0])
        return _integer(text, _INTEGERS[kind])
    if kind == F.TYPE_BOOL:
        if raw is None:
            return False
        if not isinstance(raw, bool):
            raise _type_error(raw, "bool")
        return raw
    if kind == F.TYPE_STRING:
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise _type_error(raw, "string")
        return raw
    if kind == F.TYPE_BYTES:
        return _bytes(raw)
    if kind == F.TYPE_ENUM:
        if isinstance(raw, str):
            named = field.enum_type.values_by_name.get(raw)
            if named is None:
                quoted = go_quote(f'"{raw}"'.encode())
                raise JsonpbError(f"unknown value {quoted} for enum {field.enum_type.full_name}")
            return named.number
        if raw is None:
            return 0
        if not isinstance(raw, JsonNumber):
            raise _type_error(raw, _ENUM_GO_TYPE[0])
        return _integer(raw.text, _ENUM_GO_TYPE)
    raise JsonpbError(f"shim: fields of type {kind} are not read from JSON")


def _integer(text: str, go_type: tuple[str, int, int]) -> int:
    """What Go's json.Unmarshal makes of ``text`` for an integer of ``go_type``."""
    name, low, high = go_type
    stripped = text.strip(" \t\r\n")
    error = syntax_error(text.encode(), stream=False)
    if error is not None:
        raise JsonpbError(error)
    if stripped == "null":
        return 0
    first = stripped[:1]
    if first in ('"', "t", "f", "[", "{"):
        kind = {'"': "string", "t": "bool", "f": "bool", "[": "array", "{": "object"}[first]
        raise JsonpbError(f"json: cannot unmarshal {kind} into Go value of type {name}")
    try:
        number = int(stripped, 10)
    except ValueError:
        number = None  # a fraction or an exponent
    if number is None or not low <= number <= high:
        raise JsonpbError(f"json: cannot unmarshal number {stripped} into Go value of type {name}")
    return number


def _bytes(raw: Any) -> bytes:
    if raw is None:
        return b""
    if isinstance(raw, str):
        return go_base64(raw)
    if isinstance(raw, list):  # Go reads an array of numbers into []byte, too
        return bytes(0 if item is None else _byte(item) for item in raw)
    raise _type_error(raw, "[]uint8")


def _byte(item: Any) -> int:
    if not isinstance(item, JsonNumber):
        raise _type_error(item, "uint8")
    return _integer(item.text, _BYTE_GO_TYPE)


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALID = frozenset(_B64_ALPHABET)


def go_base64(text: str) -> bytes:
    """Standard base64 as Go's encoding/base64 (StdEncoding) decodes it: padding required,
    CR and LF ignored, errors at the offset Go reports."""
    data = text.encode("utf-8", errors="surrogatepass")
    cleaned = data.replace(b"\r", b"").replace(b"\n", b"")
    if len(cleaned) % 4 == 0 and all(c in _B64_VALID for c in cleaned.rstrip(b"=")):
        try:
            return base64.b64decode(cleaned, validate=True)
        except ValueError:
            pass  # padding in the wrong place: find Go's offset below
    raise JsonpbError(f"illegal base64 data at input byte {_base64_error_offset(data)}")


def _base64_error_offset(src: bytes) -> int:
    """The offset of Go's CorruptInputError for ``src`` (which does not decode)."""
    si = 0
    n = len(src)
    while True:
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return n  # not reached for input that failed to decode
                return si - j
            c = src[si]
            si += 1
            if c in _B64_VALID:
                j += 1
                continue
            if c in (0x0A, 0x0D):
                continue
            if c != ord("="):
                return si - 1
            # padding
            if j in (0, 1):
                return si - 1
            if j == 2:
                while si < n and src[si] in (0x0A, 0x0D):
                    si += 1
                if si == n:
                    return n
                if src[si] != ord("="):
                    return si - 1
                si += 1
            while si < n and src[si] in (0x0A, 0x0D):
                si += 1
            return si if si < n else n

"""Kubernetes objects as kube-apiserver stores them in protobuf, to and from the merge's tree.

A stored value is ``k8s\\0`` followed by a ``runtime.Unknown`` envelope: typeMeta (apiVersion 1,
kind 2) at 1, the object's own protobuf at 2 (raw), contentEncoding at 3 and contentType at 4
(both empty). ``decode`` turns it into the tree the JSON merge works on: a ``ProtoObject`` (a
dict) holding ``apiVersion`` and ``kind`` and the object's fields under their JSON names as far
as ``k8s_schema`` knows them (maps as dicts, repeated fields as lists, bytes as base64 text).
A field the schema does not know is kept under ``"#<number>"`` as the base64 text of all its
occurrences, tags included, so it survives every merge and resolves as one value.

``encode`` writes a tree the way Go's generated marshallers do: fields in ascending number,
map entries sorted by key with key and value always written, scalars as Go writes them; so
every replica that merges the same entries stores the same bytes. The tree is plain JSON data,
so the merge's operations carry protobuf values like JSON ones.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from typing import Any

from shim.replication.k8s_schema import ENVELOPE_NAMES, Field, Kind, Message, object_message

PREFIX = b"k8s\x00"

Path_ = tuple[str, ...]

# The kinds, bound once: the decoding loop compares against them for every field.
_STRING, _MESSAGE, _OPAQUE, _BYTES = Kind.STRING, Kind.MESSAGE, Kind.OPAQUE, Kind.BYTES
_BOOL = Kind.BOOL

_MAX_FIELD = 1 << 29  # protobuf field numbers are below this
_INT64 = 1 << 63
_UINT64 = 1 << 64
_INT32 = 1 << 31


class ProtoObject(dict[str, Any]):
    """A Kubernetes object decoded from its protobuf storage form (see the module doc)."""

    __slots__ = ()


class DecodeError(ValueError):
    """Not a value this codec decodes; the value stays opaque."""


class EncodeError(ValueError):
    """A tree that does not fit the schema of its type."""


# -- decoding ----------------------------------------------------------------------------------


def decode(
    value: bytes, local_paths: Iterable[Path_] = (), memo: Memo | None = None
) -> ProtoObject | None:
    """The tree of a stored value, or None when it is not an object this codec reads
    (another encoding, encrypted at rest, not valid protobuf, a content encoding). A
    node-local field (``local_paths``) reads as its zero value, as kube-apiserver writes it.

    ``memo``: trees that share it share the decoded form of every message they hold in the
    same bytes (read-only use only: see ``decode_pair``)."""
    if not value.startswith(PREFIX):
        return None
    try:
        api_version, kind, start, end = _envelope(value)
        msg = object_message(api_version, kind)
        doc = ProtoObject(_message(value, start, end, msg, memo))
    except (DecodeError, UnicodeDecodeError):
        return None
    doc["apiVersion"] = api_version
    doc["kind"] = kind
    for path in local_paths:
        _zero_local(doc, msg, path)
    return doc


# Decoded messages by (the schema's message, bytes).
Memo = dict[tuple[int, bytes], dict[str, Any]]


def decode_pair(
    old: bytes, new: bytes, local_paths: Iterable[Path_] = ()
) -> tuple[ProtoObject | None, ProtoObject | None]:
    """Two versions of an object, decoded for comparing them: a message in the same bytes
    in both is decoded once and is the same object in both trees, so an unchanged spec
    costs neither a second decode nor a deep comparison. The trees share parts: read them,
    never change them."""
    memo: Memo = {}
    paths = list(local_paths)
    return decode(old, paths, memo), decode(new, paths, memo)


def object_type(value: bytes) -> tuple[str, str] | None:
    """(apiVersion, kind) of a stored protobuf object, reading only its envelope."""
    if not value.startswith(PREFIX):
        return None
    try:
        api_version, kind, _, _ = _envelope(value)
    except (DecodeError, UnicodeDecodeError):
        return None
    return api_version, kind


def _envelope(value: bytes) -> tuple[str, str, int, int]:
    """apiVersion, kind and the span of raw in the ``runtime.Unknown`` after the prefix."""
    pos, end = len(PREFIX), len(value)
    if end > 9 and value[4] == 0x0A and value[5] < 0x80 and value.endswith(_EMPTY_TAIL):
        # kube-apiserver's own framing (typeMeta, raw, then an empty contentEncoding and
        # contentType): checked without the general loop, which reads it the same.
        at = 6 + value[5]
        if at + 2 < end and value[at] == 0x12:
            size = value[at + 1]
            if size < 0x80:
                start = at + 2
            elif value[at + 2] < 0x80:
                size, start = size & 0x7F | value[at + 2] << 7, at + 3
            else:
                size, start = _varint(value, at + 1, end)
            if start + size + len(_EMPTY_TAIL) == end:
                known = _TYPES_READ.get(value[6:at])
                if known is not None:
                    return known[0], known[1], start, start + size
    type_meta: tuple[int, int] | None = None
    raw: tuple[int, int] | None = None
    while pos < end:
        key, pos = _varint(value, pos, end)
        if key & 7 != 2:
            raise DecodeError("the envelope has a field that is not length-delimited")
        size, pos = _varint(value, pos, end)
        stop = pos + size
        if stop > end:
            raise DecodeError("truncated envelope")
        number = key >> 3
        if number == 1 and type_meta is None:
            type_meta = (pos, stop)
        elif number == 2 and raw is None:
            raw = (pos, stop)
        elif number not in (3, 4) or size:
            # A content encoding or type (raw is then not plain protobuf), or a field twice.
            raise DecodeError("not a plain protobuf object")
        pos = stop
    if type_meta is None or raw is None:
        raise DecodeError("the envelope lacks typeMeta or raw")
    type_bytes = value[type_meta[0]:type_meta[1]]
    known = _TYPES_READ.get(type_bytes)
    if known is None:
        names = _message(type_bytes, 0, len(type_bytes), _TYPE_META, None)
        if len(names) != 2:
            raise DecodeError("typeMeta has other fields than apiVersion and kind")
        if len(_TYPES_READ) >= 256:
            _TYPES_READ.clear()
        known = _TYPES_READ[type_bytes] = (names["apiVersion"], names["kind"])
    return known[0], known[1], raw[0], raw[1]


# typeMeta bytes already read (a cluster stores few types; bounded all the same).
_TYPES_READ: dict[bytes, tuple[str, str]] = {}
_EMPTY_TAIL = b"\x1a\x00\x22\x00"


def _message(buf: bytes, pos: int, end: int, msg: Message, memo: Memo | None) -> dict[str, Any]:
    """The fields of the message in ``buf[pos:end]`` (the hot loop: one pass, no copies
    but of the values themselves)."""
    out: dict[str, Any] = {}
    by_number = msg.by_number
    run_number = run_start = 0  # the current run of a field the schema does not know
    while pos < end:
        start = pos
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        number = key >> 3
        wire_type = key & 7
        f = by_number.get(number)
        if f is None:
            if number == 0 or number >= _MAX_FIELD:
                raise DecodeError(f"field number {number}")
            if number != run_number:
                if run_number:
                    _keep_unknown(out, run_number, buf[run_start:start])
                run_number, run_start = number, start
            if wire_type == 2 and pos < end and buf[pos] < 0x80:  # most unknown fields
                pos += buf[pos] + 1
                if pos > end:
                    raise DecodeError(f"field {number} overruns its message")
            else:
                pos = _skip(buf, pos, end, wire_type)
            continue
        if run_number:
            _keep_unknown(out, run_number, buf[run_start:start])
            run_number = 0
        if wire_type != f.wire_type:
            raise DecodeError(f"field {f.name} has wire type {wire_type}")
        kind = f.kind
        if wire_type == 0:
            raw = buf[pos] if pos < end else 0x80
            if raw < 0x80 and kind is not _BOOL:
                pos += 1
                value: Any = raw
            else:
                raw, pos = _varint(buf, pos, end)
                value = _scalar(f, raw)
        else:
            size = buf[pos] if pos < end else 0x80
            if size < 0x80:
                pos += 1
            else:
                size, pos = _varint(buf, pos, end)
            stop = pos + size
            if stop > end:
                raise DecodeError(f"field {f.name} overruns its message")
            if kind is _STRING:
                value = buf[pos:stop].decode()
            elif kind is _MESSAGE:
                sub = f.message
                assert sub is not None
                if memo is None:
                    value = _message(buf, pos, stop, sub, None)
                else:
                    memo_key = (id(sub), buf[pos:stop])
                    value = memo.get(memo_key)
                    if value is None:
                        value = memo[memo_key] = _message(buf, pos, stop, sub, memo)
            elif kind is _OPAQUE or kind is _BYTES:
                value = _b64(buf[pos:stop])
            else:
                entry_key, entry_value = _map_entry(f, buf, pos, stop)
                entries = out.setdefault(f.name, {})
                if entry_key in entries:
                    raise DecodeError(f"map {f.name} repeats a key")
                entries[entry_key] = entry_value
                pos = stop
                continue
            pos = stop
        name = f.name
        if f.repeated:
            items = out.get(name)
            if items is None:
                out[name] = [value]
            else:
                items.append(value)
        elif name in out:
            raise DecodeError(f"field {name} occurs twice")
        else:
            out[name] = value
    if run_number:
        _keep_unknown(out, run_number, buf[run_start:end])
    return out


def _keep_unknown(out: dict[str, Any], number: int, chunk: bytes) -> None:
    """Keep the bytes of a field the schema does not know: all its occurrences, in order
    (Go writes them together; a writer that did not is read the same)."""
    name = f"#{number}"
    if name in out:
        chunk = _unb64(out[name], name) + chunk
    out[name] = _b2a(chunk, newline=False).decode("ascii")


_b2a = binascii.b2a_base64


def _scalar(f: Field, raw: int) -> bool | int:
    kind = f.kind
    if kind is Kind.BOOL:
        if raw > 1:
            raise DecodeError(f"bool {f.name} is {raw}")
        return raw == 1
    value = raw - _UINT64 if raw >= _INT64 else raw
    if kind is Kind.INT32 and not -_INT32 <= value < _INT32:
        raise DecodeError(f"int32 {f.name} out of range")
    return value


def _map_entry(f: Field, buf: bytes, pos: int, stop: int) -> tuple[str, str]:
    key = value = ""
    while pos < stop:
        tag, pos = _varint(buf, pos, stop)
        size, pos = _varint(buf, pos, stop)
        end = pos + size
        if end > stop or tag not in (0x0A, 0x12):
            raise DecodeError(f"a malformed entry of map {f.name}")
        if tag == 0x0A:
            key = buf[pos:end].decode()
        elif f.kind is Kind.MAP_STRING:
            value = buf[pos:end].decode()
        else:
            value = _b64(buf[pos:end])
        pos = end
    return key, value


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise DecodeError("truncated")
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    result, shift = byte & 0x7F, 7
    pos += 1
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >= _UINT64:
                raise DecodeError("a varint beyond 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise DecodeError("a truncated or overlong varint")


def _skip(buf: bytes, pos: int, end: int, wire_type: int) -> int:
    """The end of a field's value (groups, which Kubernetes never writes, are refused)."""
    if wire_type == 0:
        return _varint(buf, pos, end)[1]
    if wire_type == 2:
        size, pos = _varint(buf, pos, end)
        stop = pos + size
    elif wire_type == 1:
        stop = pos + 8
    elif wire_type == 5:
        stop = pos + 4
    else:
        raise DecodeError(f"wire type {wire_type}")
    if stop > end:
        raise DecodeError("truncated")
    return stop


def _zero_local(doc: dict[str, Any], msg: Message, path: Path_) -> None:
    node: Any = doc
    for name in path[:-1]:
        f = msg.by_name.get(name)
        node = node.get(name) if isinstance(node, dict) else None
        if f is None or f.message is None or f.repeated or not isinstance(node, dict):
            return
        msg = f.message
    last = msg.by_name.get(path[-1])
    if last is None or path[-1] not in node:
        return
    zero = _ZERO.get(last.kind)
    if zero is None or last.repeated:
        del node[path[-1]]
    else:
        node[path[-1]] = zero


_ZERO: dict[Kind, Any] = {Kind.STRING: "", Kind.BOOL: False, Kind.INT32: 0, Kind.INT64: 0}


# -- reading parts of an object ----------------------------------------------------------------


def envelope(value: bytes) -> tuple[str, str, int, int]:
    """apiVersion, kind and the span of the object's own bytes in a stored value
    (``DecodeError`` when the value is not one this codec reads)."""
    if not value.startswith(PREFIX):
        raise DecodeError("not a Kubernetes protobuf value")
    try:
        return _envelope(value)
    except UnicodeDecodeError:
        raise DecodeError("typeMeta is not UTF-8") from None


def split(buf: bytes, pos: int, end: int) -> dict[int, bytes]:
    """The message in ``buf[pos:end]`` cut by field number: each field's occurrences, tags
    included, in order, keyed in the order the fields first occur (the order ``decode``
    gives names). Only the framing is checked; ``read_fields`` checks the rest."""
    out: dict[int, bytes] = {}
    run_number, run_start = -1, pos  # consecutive occurrences of one field are cut once
    while pos < end:
        start = pos
        # One- and two-byte keys and lengths read inline: nearly every field (the hot loop;
        # a field numbered 16 or more, as managedFields, has a two-byte key).
        key = buf[pos]
        if key < 0x80:
            pos += 1
        elif pos + 1 < end and buf[pos + 1] < 0x80:
            key = key & 0x7F | buf[pos + 1] << 7
            pos += 2
        else:
            key, pos = _varint(buf, pos, end)
        if key & 7 == 2 and pos + 1 < end:
            size = buf[pos]
            if size < 0x80:
                pos += size + 1
            elif buf[pos + 1] < 0x80:
                pos += (size & 0x7F | buf[pos + 1] << 7) + 2
            else:
                pos = _skip(buf, pos, end, 2)
            if pos > end:
                raise DecodeError("truncated")
        else:
            pos = _skip(buf, pos, end, key & 7)
        number = key >> 3
        if number != run_number:
            if run_number >= 0:
                chunk = buf[run_start:start]  # ``_add_run``, inline (the hot loop)
                known = out.get(run_number)
                out[run_number] = chunk if known is None else known + chunk
            run_number, run_start = number, start
    if run_number >= 0:
        _add_run(out, run_number, buf[run_start:end])
    return out


def _add_run(out: dict[int, bytes], number: int, chunk: bytes) -> None:
    known = out.get(number)
    out[number] = chunk if known is None else known + chunk


def read_fields(chunk: bytes, msg: Message, memo: Memo | None = None) -> dict[str, Any]:
    """The decoded fields of ``chunk``, bytes of a message of type ``msg`` (e.g. a field of
    ``split``), exactly as ``decode`` reads them in the whole object (``memo``: as in
    ``decode``)."""
    try:
        return _message(chunk, 0, len(chunk), msg, memo)
    except UnicodeDecodeError:
        raise DecodeError("a string is not UTF-8") from None


def payload(chunk: bytes) -> tuple[int, int]:
    """The span of the value in ``chunk``, one occurrence of a length-delimited field."""
    end = len(chunk)
    _, pos = _varint(chunk, 0, end)
    size, pos = _varint(chunk, pos, end)
    if pos + size != end:
        raise DecodeError("not one length-delimited field")
    return pos, end


def zero_local(part: dict[str, Any], msg: Message, path: Path_) -> None:
    """Give the node-local field at ``path`` (from ``msg``, whose fields ``part`` holds) its
    zero value, as ``decode`` does in a whole object."""
    _zero_local(part, msg, path)


# -- encoding ----------------------------------------------------------------------------------


def encode(doc: ProtoObject) -> bytes:
    """The stored form of a tree; ``EncodeError`` if it does not fit its type's schema."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise EncodeError("apiVersion and kind must be strings")
    fields = {name: value for name, value in doc.items() if name not in ENVELOPE_NAMES}
    raw = bytearray()
    _encode_message(fields, object_message(api_version, kind), raw)
    type_meta = bytearray()
    _encode_message({"apiVersion": api_version, "kind": kind}, _TYPE_META, type_meta)
    out = bytearray(PREFIX)
    _delimited_field(out, 0x0A, type_meta)
    _delimited_field(out, 0x12, raw)
    out += b"\x1a\x00\x22\x00"  # contentEncoding and contentType: empty, always written
    return bytes(out)


def _encode_message(fields: dict[str, Any], msg: Message, out: bytearray) -> None:
    ordered: list[tuple[int, Field | None, Any]] = []
    for name, value in fields.items():
        f = msg.by_name.get(name)
        if f is not None:
            ordered.append((f.number, f, value))
            continue
        number = _opaque_number(name)
        if number is None or number in msg.by_number:
            raise EncodeError(f"{msg.name} has no field {name!r}")
        ordered.append((number, None, value))
    ordered.sort(key=lambda item: item[0])
    for number, f, value in ordered:
        if f is None:
            out += _opaque_field(number, value)
        elif f.kind is Kind.MAP_STRING or f.kind is Kind.MAP_BYTES:
            _encode_map(f, value, out)
        elif f.repeated:
            if not isinstance(value, list):
                raise EncodeError(f"{f.name} must be a list")
            for element in value:
                _encode_one(f, element, out)
        else:
            _encode_one(f, value, out)


def _encode_one(f: Field, value: Any, out: bytearray) -> None:
    kind = f.kind
    if kind is Kind.STRING:
        if not isinstance(value, str):
            raise EncodeError(f"{f.name} must be a string")
        _delimited_field(out, f.tag, value.encode())
    elif kind is Kind.MESSAGE:
        if not isinstance(value, dict):
            raise EncodeError(f"{f.name} must be an object")
        assert f.message is not None
        payload = bytearray()
        _encode_message(value, f.message, payload)
        _delimited_field(out, f.tag, payload)
    elif kind is Kind.OPAQUE or kind is Kind.BYTES:
        _delimited_field(out, f.tag, _unb64(value, f.name))
    elif kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise EncodeError(f"{f.name} must be a boolean")
        _put_varint(out, f.tag)
        out.append(int(value))
    else:
        limit = _INT32 if kind is Kind.INT32 else _INT64
        if not isinstance(value, int) or isinstance(value, bool) or not -limit <= value < limit:
            raise EncodeError(f"{f.name} must be an {kind.value}")
        _put_varint(out, f.tag)
        _put_varint(out, value % _UINT64)  # negative numbers as Go writes them: 10 bytes


def _encode_map(f: Field, value: Any, out: bytearray) -> None:
    if not isinstance(value, dict):
        raise EncodeError(f"{f.name} must be an object")
    # Go sorts the keys as byte strings; for UTF-8 that is the order of code points.
    for key in sorted(value):
        item = value[key]
        if f.kind is Kind.MAP_STRING:
            if not isinstance(item, str):
                raise EncodeError(f"{f.name}[{key!r}] must be a string")
            encoded = item.encode()
        else:
            encoded = _unb64(item, f"{f.name}[{key!r}]")
        entry = bytearray()
        _delimited_field(entry, 0x0A, key.encode())
        _delimited_field(entry, 0x12, encoded)
        _delimited_field(out, f.tag, entry)


def _opaque_number(name: str) -> int | None:
    if len(name) < 2 or name[0] != "#" or not name[1:].isdigit() or name[1] == "0":
        return None
    number = int(name[1:])
    return number if number < _MAX_FIELD else None


def _opaque_field(number: int, value: Any) -> bytes:
    """The bytes kept for a field the schema does not know, checked to be that field's."""
    raw = _unb64(value, f"#{number}")
    pos, end = 0, len(raw)
    try:
        while pos < end:
            key, pos = _varint(raw, pos, end)
            if key >> 3 != number:
                raise EncodeError(f"#{number} holds field {key >> 3}")
            pos = _skip(raw, pos, end, key & 7)
    except DecodeError as exc:
        raise EncodeError(f"#{number} is not protobuf: {exc}") from None
    if not raw:
        raise EncodeError(f"#{number} is empty")
    return raw


def _delimited_field(out: bytearray, tag: int, payload: bytes | bytearray) -> None:
    _put_varint(out, tag)
    _put_varint(out, len(payload))
    out += payload


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise EncodeError(f"{what} must be base64 text")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error:
        raise EncodeError(f"{what} is not base64") from None


_TYPE_META = Message("TypeMeta")
_TYPE_META.add(Field(1, "apiVersion", Kind.STRING))
_TYPE_META.add(Field(2, "kind", Kind.STRING))

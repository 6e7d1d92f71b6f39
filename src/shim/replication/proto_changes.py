"""What changed between two protobuf versions of an object, read from their bytes.

Recording a local write's field operations needs the fields that differ between the version
the writer saw and the one it wrote. Decoding both objects whole costs most of a put
(``k8sproto.decode``: every field, every condition, base64 of everything kept by number),
although a kubelet's status update changes two fields of a Pod. This compares the two
versions field by field on their bytes instead: a field in the same bytes in both is
unchanged and never decoded; a changed message the policy merges field by field
(``lww``) is compared the same way one level down; any other changed field is decoded, both
sides, and handed to the merge's differ. The result is exactly what diffing the two decoded
objects gives (``write_ops.describe_write`` turns the changes into operations the same way).

Skipping a field in the same bytes is only right when those bytes decode: the old version
must be one this process saw decode (``remember``), so its fields are known good; every
changed field of the new version is decoded, so the new version is then known good too
and the next write of the key compares against it. Anything else (a version not seen yet,
another type, bytes that do not decode) answers None: decode both whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shim.replication import k8sproto
from shim.replication.k8s_schema import Kind, Message, object_message
from shim.replication.policy import KeyRules, Path_

# What was read of recent versions, by their bytes, so the version a write replaces (the
# last one written, usually) costs nothing to read again: objects known to decode, by their
# whole stored value (so the old version's envelope is not read again), with their type and
# fields cut by number (``_GOOD``: only these are compared on their bytes), messages inside them cut
# the same way, decoded messages (``k8sproto``'s memo: identical conditions, times, ... are
# decoded once) and decoded fields. All emptied together once the versions read since
# exceed a budget; a version no longer known is decoded whole once more.
_GOOD: dict[bytes, tuple[str, str, Message, dict[int, bytes]]] = {}
_SPLITS: dict[bytes, dict[int, bytes]] = {}
_MEMO: k8sproto.Memo = {}
_READS: dict[tuple[int, bytes], dict[str, Any]] = {}
CACHE_BUDGET = 4 << 20  # bytes of versions read between two emptyings
_spent = 0


def remember(value: bytes) -> None:
    """Note that ``value`` decodes (``k8sproto.decode`` read it): the next write of its key
    can compare against it."""
    try:
        api_version, kind, start, end = k8sproto.envelope(value)
        _spend(end - start)
        _GOOD[value] = (
            api_version, kind, object_message(api_version, kind), k8sproto.split(value, start, end)
        )
    except k8sproto.DecodeError:
        pass


def forget() -> None:
    """Forget every version read (the next write of each key decodes both whole)."""
    global _spent
    for table in (_GOOD, _SPLITS, _MEMO, _READS):
        table.clear()
    _spent = 0


def _spend(size: int) -> None:
    global _spent
    _spent += size
    if _spent > CACHE_BUDGET:
        forget()
        _spent = size


@dataclass(slots=True)
class Change:
    """A field that differs: ``before`` and ``after`` hold it decoded (``{}``: absent)."""

    parent: Path_
    name: str
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(slots=True)
class Changes:
    changes: list[Change]  # in the order diffing the decoded objects meets them
    base_uid: str | None
    uid: str | None


def compare(old: bytes, new: bytes, rules: KeyRules) -> Changes | None:
    """The changed fields of ``new`` over ``old`` and both incarnations; None when only
    decoding both whole can tell (see the module doc)."""
    if not old.startswith(k8sproto.PREFIX) or not new.startswith(k8sproto.PREFIX):
        return None
    identity = rules.identity
    if identity is None or identity in rules.local_paths:
        return None
    known = _GOOD.get(old)
    if known is None:
        return None  # not known to decode
    api_version, kind, msg, old_fields = known
    try:
        new_type = k8sproto.envelope(new)
        if new_type[0] != api_version or new_type[1] != kind:
            return None  # another type: a whole write, decided on the decoded objects
        _spend(new_type[3] - new_type[2])
        new_fields = k8sproto.split(new, new_type[2], new_type[3])
        changes: list[Change] = []
        _compare(old_fields, new_fields, msg, (), rules, changes)
        base_uid = _identity(old_fields, msg, identity)
        uid = _identity(new_fields, msg, identity) if _differs(
            old_fields, new_fields, msg, identity) else base_uid
    except k8sproto.DecodeError:
        return None
    _GOOD[new] = (api_version, kind, msg, new_fields)  # every field read or as before: good
    return Changes(changes, base_uid, uid)


def identity_of(value: bytes, rules: KeyRules) -> str | None:
    """``values.identity`` of the protobuf object ``value``, read from the envelope and the
    fields on the way to the identity only (``DecodeError`` if they do not read)."""
    if rules.identity is None:
        return None
    api_version, kind, start, end = k8sproto.envelope(value)
    # Nothing read here is kept: only versions a write compares are, and their reads empty
    # the caches in time (``_spend``); a write made by reference compares nothing.
    fields = k8sproto.split(value, start, end)
    return _identity(fields, object_message(api_version, kind), rules.identity, _split_once)


def _split_once(chunk: bytes, field: bool) -> dict[int, bytes]:
    """``_split`` without keeping the result."""
    start, end = k8sproto.payload(chunk) if field else (0, len(chunk))
    return k8sproto.split(chunk, start, end)


def field_at(value: bytes, path: Path_, rules: KeyRules) -> dict[str, Any] | None:
    """The decoded fields of the message holding ``path``'s last field in the protobuf
    object ``value`` (it holds that field exactly when decoding ``value`` whole gives the
    field, and the same), read along the path only; None when only decoding whole can tell
    (not protobuf, a path through a map, a field the schema does not name, bad bytes).
    The result may be shared: read it, never change it."""
    if not value.startswith(k8sproto.PREFIX):
        return None
    try:
        known = _GOOD.get(value)
        if known is None:
            api_version, kind, start, end = k8sproto.envelope(value)
            msg = object_message(api_version, kind)
            _spend(end - start)
            fields = k8sproto.split(value, start, end)
        else:
            msg, fields = known[2], known[3]
        chunk, parent = _walk(fields, msg, path)
        return {} if chunk is None else _read(chunk, parent, path[:-1], rules)
    except k8sproto.DecodeError:
        return None


def _split(chunk: bytes, field: bool) -> dict[int, bytes]:
    """``k8sproto.split`` of a message: ``chunk`` itself, or (``field``) the value of the
    one field occurrence ``chunk`` holds."""
    found = _SPLITS.get(chunk)
    if found is None:
        start, end = k8sproto.payload(chunk) if field else (0, len(chunk))
        found = _SPLITS[chunk] = k8sproto.split(chunk, start, end)
    return found


def _compare(
    old: dict[int, bytes], new: dict[int, bytes], msg: Message, path: Path_,
    rules: KeyRules, out: list[Change],
) -> None:
    """Append the changes of one message, its fields cut by ``k8sproto.split``, in the
    order ``write_ops.diff`` visits the decoded fields: the new version's, then those only the
    old one has."""
    for number in [*new, *(n for n in old if n not in new)]:
        before, after = old.get(number), new.get(number)
        if before == after:
            continue
        f = msg.by_number.get(number)
        name = f"#{number}" if f is None else f.name
        here = (*path, name)
        if (
            f is not None and f.message is not None and f.kind is Kind.MESSAGE
            and not f.repeated and before is not None and after is not None
            and _policy(rules, here) == "lww"
        ):
            # An object both versions hold, merged field by field: compare inside it.
            _compare(_split(before, True), _split(after, True), f.message, here, rules, out)
            continue
        out.append(Change(
            path, name, _read(before, msg, path, rules), _read(after, msg, path, rules)
        ))


def _policy(rules: KeyRules, path: Path_) -> str:
    rule = rules.rule(path)
    return "lww" if rule is None else rule.policy


def _read(chunk: bytes | None, msg: Message, path: Path_, rules: KeyRules) -> dict[str, Any]:
    """One field's occurrences decoded, node-local fields inside zeroed as ``decode`` does.
    The result may be shared: read it, never change it."""
    if chunk is None:
        return {}
    depth = len(path)
    locals_inside = [
        local for local in rules.local_paths
        if len(local) > depth + 1 and local[:depth] == path
    ]
    if locals_inside:
        # Zeroing changes what was decoded: decoded apart from everything shared.
        part = k8sproto.read_fields(chunk, msg)
        for local in locals_inside:
            if local[depth] in part:
                k8sproto.zero_local(part, msg, local[depth:])
        return part
    found = _READS.get((id(msg), chunk))
    if found is None:
        found = _READS[(id(msg), chunk)] = k8sproto.read_fields(chunk, msg, _MEMO)
    return found


def _walk(
    fields: dict[int, bytes], msg: Message, path: Path_,
    split: Callable[[bytes, bool], dict[int, bytes]] = _split,
) -> tuple[bytes | None, Message]:
    """The bytes of the field at ``path`` (through single messages) and its parent message."""
    for name in path[:-1]:
        f = msg.by_name.get(name)
        if f is None or f.kind is not Kind.MESSAGE or f.repeated or f.message is None:
            raise k8sproto.DecodeError(f"{name} is not a message the schema knows")
        chunk = fields.get(f.number)
        if chunk is None:
            return None, msg
        fields = split(chunk, True)
        msg = f.message
    f = msg.by_name.get(path[-1])
    if f is None:
        raise k8sproto.DecodeError(f"{path[-1]} is not a field the schema knows")
    return fields.get(f.number), msg


def _differs(
    old: dict[int, bytes], new: dict[int, bytes], msg: Message, path: Path_
) -> bool:
    """Whether the top-level field holding ``path`` differs between the versions."""
    f = msg.by_name.get(path[0])
    return f is None or old.get(f.number) != new.get(f.number)


def _identity(
    fields: dict[int, bytes], msg: Message, path: Path_,
    split: Callable[[bytes, bool], dict[int, bytes]] = _split,
) -> str | None:
    """``values.identity`` of the object whose top-level fields are ``fields``."""
    chunk, parent = _walk(fields, msg, path, split)
    if chunk is None:
        return None
    found = _read(chunk, parent, path[:-1], _NO_RULES).get(path[-1])
    return found if isinstance(found, str) and found else None


_NO_RULES = KeyRules("fields")

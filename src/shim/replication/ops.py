"""Field operations: what a write changed in an object, as the merge applies it.

The origin turns a write into operations against the version its writer saw (``write_ops.diff``);
every replica applies them under the key's policy (``merge.apply_ops``). In memory each
operation is a small frozen dataclass; on the wire and in ``repl_entry.ops`` it is a JSON list
whose first element names it (``["set", ["spec", "replicas"], 3]``), the form protocol 1
already used. ``parse_ops`` is the one way in from that form: it refuses a malformed operation
with the reason, so nothing downstream meets a value of the wrong shape.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any, TypeAlias

Json = Any
Path_ = tuple[str, ...]

# Paths deeper than this are refused: no object the merge rules describe nests so deep, and a
# bound keeps a peer's operation from recursing without end.
MAX_PATH_DEPTH = 64
# Values nested deeper than this are refused: applying one copies it recursively, and Python's
# recursion stops near 1000 levels (Kubernetes objects nest a few dozen at most).
MAX_VALUE_DEPTH = 200


class BadOps(ValueError):
    """Operations that cannot be applied as they are; the message says why."""


@dataclass(frozen=True, slots=True)
class SetField:
    """Last writer wins: the field holds ``value``."""

    path: Path_
    value: Json


@dataclass(frozen=True, slots=True)
class SetFromValue:
    """Last writer wins: the field holds what the entry's own value holds at ``path`` (gone
    when the value has none). A put carries its whole new value anyway, so a subtree the
    write replaces whole (an atomic ``managedFields``, a list, an object only one side has)
    is not restated beside it: it costs no bytes and no encoding, and a replica reads it from
    the value only when it merges the entry (``merge.resolve_from_value``)."""

    path: Path_


@dataclass(frozen=True, slots=True)
class DeleteField:
    """Last writer wins: the field is gone."""

    path: Path_


@dataclass(frozen=True, slots=True)
class FirstWrite:
    """First write wins: the field holds ``value`` unless it already holds something."""

    path: Path_
    value: Json


@dataclass(frozen=True, slots=True)
class AddDelta:
    """A counter: concurrent changes add up."""

    path: Path_
    delta: int | float


@dataclass(frozen=True, slots=True)
class SetAdd:
    """A set gains ``element`` (unless the rules freeze additions)."""

    path: Path_
    element: Json


@dataclass(frozen=True, slots=True)
class SetRemove:
    """A set loses ``element``."""

    path: Path_
    element: Json


@dataclass(frozen=True, slots=True)
class KeyedSet:
    """A keyed list's element with ``element[key]``'s identity becomes ``element``."""

    path: Path_
    key: str
    element: dict[str, Json]


@dataclass(frozen=True, slots=True)
class KeyedDelete:
    """A keyed list loses the element whose ``key`` field is ``ident``."""

    path: Path_
    key: str
    ident: Json


@dataclass(frozen=True, slots=True)
class Reorder:
    """The writer's order of a set (``key`` None) or keyed list, by element identity."""

    path: Path_
    key: str | None
    order: list[Json]


@dataclass(frozen=True, slots=True)
class DropIfEmpty:
    """The writer dropped a map or list: drop it too if nothing was added concurrently."""

    path: Path_


@dataclass(frozen=True, slots=True)
class SinceEntry:
    """The write's operations by reference: whatever turns the value of its origin's entry
    ``seq`` (of the same key, which the writer wrote over and had stored as written) into the
    write's value, as ``write_ops.describe_write`` gives them. Made by the replica that needs them
    (one whose key holds something else); one that holds that value takes the write as it is.
    The only operation of its entry; it names no path."""

    seq: int
    path: Path_ = ()


Op: TypeAlias = (
    SetField | SetFromValue | DeleteField | FirstWrite | AddDelta | SetAdd | SetRemove
    | KeyedSet | KeyedDelete | Reorder | DropIfEmpty | SinceEntry
)

# Wire names, and the number of elements of each wire form (name included).
_NAMES: dict[type, str] = {
    SetField: "set", SetFromValue: "setv", DeleteField: "del", FirstWrite: "fww",
    AddDelta: "add", SetAdd: "sadd", SetRemove: "srem", KeyedSet: "kset", KeyedDelete: "kdel",
    Reorder: "order", DropIfEmpty: "del-empty", SinceEntry: "since",
}
_ARITY = {
    "set": 3, "setv": 2, "del": 2, "fww": 3, "add": 3, "sadd": 3, "srem": 3, "kset": 4, "kdel": 4,
    "order": 4, "del-empty": 2, "since": 2,
}
# Sequence numbers are unsigned 64-bit on the wire.
_MAX_SEQ = (1 << 64) - 1


def to_wire(op: Op) -> list[Json]:
    """The JSON list form of ``op``."""
    if isinstance(op, SinceEntry):
        return ["since", op.seq]  # no path
    head: list[Json] = [_NAMES[type(op)], list(op.path)]
    match op:
        case SetField(value=v) | FirstWrite(value=v):
            return [*head, v]
        case AddDelta(delta=d):
            return [*head, d]
        case SetAdd(element=e) | SetRemove(element=e):
            return [*head, e]
        case KeyedSet(key=k, element=e):
            return [*head, k, e]
        case KeyedDelete(key=k, ident=i):
            return [*head, k, i]
        case Reorder(key=k, order=o):
            return [*head, k, o]
    return head  # SetFromValue, DeleteField, DropIfEmpty


def dumps(ops: list[Op]) -> str:
    """The JSON text of ``ops`` (wire and ``repl_entry.ops``)."""
    return _encode([to_wire(op) for op in ops])


# ``json.dumps`` with these separators, its encoder made once (``json.dumps`` makes one per
# call whenever an option is not the default): every write encodes its operations.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def loads(text: str | bytes) -> list[Op]:
    """Operations from their JSON text; ``BadOps`` says what is wrong with them."""
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadOps(f"operations are not JSON: {exc}") from None
    # Each level of nesting opens with a bracket, so text with few of them nests no deeper
    # (brackets inside strings only make the bound looser): the walk is for the rest.
    if isinstance(text, str):
        brackets = text.count("[") + text.count("{")
    else:
        brackets = text.count(b"[") + text.count(b"{")
    return parse_ops(raw, check_depth=brackets > MAX_VALUE_DEPTH + 2)


@functools.lru_cache(maxsize=4096)
def loads_stored(text: str) -> list[Op]:
    """``loads`` of operations read back from the tables, kept for the next read: a key's
    entries are read again at every fold of the key (a heal folds each key both sides wrote
    once per batch), and their text is the same each time. The list is shared: not to be
    changed (nothing changes an entry's operations)."""
    return loads(text)


def _no_constant(name: str) -> None:
    # Python's json reads NaN and Infinity, which JSON (and every other replica's value) lacks.
    raise ValueError(f"{name} is not a JSON number")


def parse_ops(raw: object, check_depth: bool = True) -> list[Op]:
    if not isinstance(raw, list):
        raise BadOps("operations must be a list")
    ops = [_parse_op(i, item) for i, item in enumerate(raw)]
    if check_depth and _depth(raw) > MAX_VALUE_DEPTH + 2:  # the list and each operation
        raise BadOps(f"an operation's value nests deeper than {MAX_VALUE_DEPTH} levels")
    return ops


def _depth(value: object) -> int:
    """How deeply ``value`` nests lists and objects (iteratively: it may be very deep)."""
    deepest = 0
    todo: list[tuple[object, int]] = [(value, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in node)
    return deepest


def _parse_op(index: int, raw: object) -> Op:
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise BadOps(f"operation {index}: not a list starting with an operation name")
    name = raw[0]
    arity = _ARITY.get(name)
    if arity is None:
        raise BadOps(f"operation {index}: unknown operation {name!r}")
    if len(raw) != arity:
        raise BadOps(f"operation {index} ({name}): {len(raw) - 1} arguments, wants {arity - 1}")
    if name == "since":
        seq = raw[1]
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq <= _MAX_SEQ:
            raise BadOps(f"operation {index} (since): the entry must be a sequence number")
        return SinceEntry(seq)
    path = _path(index, name, raw[1])
    args = raw[2:]
    match name:
        case "set":
            return SetField(path, args[0])
        case "setv":
            return SetFromValue(path)
        case "del":
            return DeleteField(path)
        case "fww":
            return FirstWrite(path, args[0])
        case "add":
            delta = args[0]
            if not _is_number(delta) or not math.isfinite(delta):
                raise BadOps(f"operation {index} (add): the delta must be a finite number")
            return AddDelta(path, delta)
        case "sadd":
            return SetAdd(path, args[0])
        case "srem":
            return SetRemove(path, args[0])
        case "kset":
            key, element = _key(index, name, args[0]), args[1]
            if not isinstance(element, dict) or not _is_ident(element.get(key, [])):
                raise BadOps(
                    f"operation {index} (kset): the element must be an object whose {key!r} "
                    "is a string, number, boolean or null"
                )
            return KeyedSet(path, key, element)
        case "kdel":
            key, ident = _key(index, name, args[0]), args[1]
            if not _is_ident(ident):
                raise BadOps(f"operation {index} (kdel): the identity must be a scalar")
            return KeyedDelete(path, key, ident)
        case "order":
            key, order = args[0], args[1]
            if key is not None:
                key = _key(index, name, key)
            if not isinstance(order, list):
                raise BadOps(f"operation {index} (order): the order must be a list")
            return Reorder(path, key, order)
    return DropIfEmpty(path)  # "del-empty": the only name left


def _path(index: int, name: str, raw: object) -> Path_:
    if (
        not isinstance(raw, list)
        or not raw
        or len(raw) > MAX_PATH_DEPTH
        or not all(isinstance(part, str) and part for part in raw)
    ):
        raise BadOps(
            f"operation {index} ({name}): the path must be a list of 1 to {MAX_PATH_DEPTH} "
            "non-empty field names"
        )
    return tuple(raw)


def _key(index: int, name: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise BadOps(f"operation {index} ({name}): the key field must be a non-empty string")
    return raw


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_ident(value: object) -> bool:
    """An element identity: compared by value, so never a container."""
    return value is None or isinstance(value, (str, int, float, bool))

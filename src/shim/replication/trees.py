"""The trees objects are merged as (JSON, or Kubernetes protobuf read as the same tree):
dicts, lists and immutable leaves. Copying them, comparing them as JSON does (``same``), and
reading, writing and deleting a field by its path.

``copy.deepcopy`` would do, at about eight times the cost (it keeps a memo of every node for
shared references, which a tree read from bytes never has). Folding a key copies its object
once per entry with field operations, and a heal folds every key both sides wrote.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from shim.replication.k8sproto import ProtoObject
from shim.replication.policy import Path_

Json = Any

_LEAVES = frozenset({str, int, float, bool, type(None), bytes})


def copy_tree(node: Any) -> Any:
    """A deep copy of ``node``; what is not a dict, a list or an immutable leaf is copied
    by ``copy.deepcopy``."""
    kind = type(node)
    if kind in _LEAVES:
        return node
    if kind is dict or kind is ProtoObject:
        return kind({key: copy_tree(value) for key, value in node.items()})
    if kind is list:
        return [copy_tree(item) for item in node]
    return copy.deepcopy(node)


# A field that is not there (None is a value: JSON null).
MISSING: Any = object()


def same(a: Json, b: Json) -> bool:
    """JSON equality that tells true from 1 and 1 from 1.0 (Python's == does not)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def contains(items: list[Json], element: Json) -> bool:
    return any(same(e, element) for e in items)


def hashable(value: Json) -> tuple[Any, Any]:
    """A hashable stand-in for a JSON value: equal exactly when ``same`` says so."""
    if isinstance(value, (dict, list)):
        return ("json", json.dumps(value, sort_keys=True))
    return (type(value), value)


def is_set(value: Json) -> bool:
    """Missing, or a list of distinct values."""
    if value is MISSING:
        return True
    if not isinstance(value, list):
        return False
    return len({hashable(e) for e in value}) == len(value)


def keyed_list(value: Json, key: str) -> list[Json] | None:
    """``value`` if it is a list of objects with distinct, present, scalar ``key`` fields (a
    missing list counts as an empty one)."""
    if value is MISSING:
        return []
    if not isinstance(value, list):
        return None
    seen: set[tuple[Any, Any]] = set()
    for e in value:
        if not isinstance(e, dict):
            return None
        ident = e.get(key, MISSING)
        if ident is MISSING or isinstance(ident, (dict, list)):
            return None
        seen.add((type(ident), ident))  # ``hashable`` of a scalar, inline
    return value if len(seen) == len(value) else None


def is_number(value: Json) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def get_at(doc: Json, path: Path_) -> Json:
    node = doc
    for name in path:
        if not isinstance(node, dict) or name not in node:
            return MISSING
        node = node[name]
    return node


def put_at(doc: dict[str, Json], path: Path_, value: Json) -> None:
    node = doc
    for name in path[:-1]:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    node[path[-1]] = value


def delete_at(doc: dict[str, Json], path: Path_) -> None:
    node: Json = doc
    for name in path[:-1]:
        node = node.get(name)
        if not isinstance(node, dict):
            return
    node.pop(path[-1], None)

"""The origin side of the merge: a write becomes field operations against the version its
writer saw (``describe_write``, ``diff``), as the key's policy reads each field; two protobuf
versions are compared on their bytes first (``proto_changes``), decoding only what changed.
Every replica applies the operations in the fold (``merge``)."""

from __future__ import annotations

import json

from shim.replication import k8sproto, proto_changes
from shim.replication.k8sproto import ProtoObject
from shim.replication.ops import (
    AddDelta,
    DeleteField,
    DropIfEmpty,
    FirstWrite,
    KeyedDelete,
    KeyedSet,
    Op,
    Reorder,
    SetAdd,
    SetField,
    SetFromValue,
    SetRemove,
    SinceEntry,
)
from shim.replication.policy import KeyRules, Path_
from shim.replication.trees import MISSING, Json, hashable, is_number, is_set, keyed_list, same
from shim.replication.values import decode, identity


def describe_write(
    old: bytes | None, new: bytes | None, rules: KeyRules
) -> tuple[list[Op] | None, str | None, str | None]:
    """(ops, base_uid, uid) of a write of ``new`` (None: a delete) over ``old``."""
    if old is not None and new is not None and rules.merge == "fields":
        # Two protobuf versions: compared on their bytes, decoding only what changed.
        quick = proto_changes.compare(old, new, rules)
        if quick is not None:
            if quick.uid != quick.base_uid:
                return None, quick.base_uid, quick.uid
            ops: list[Op] = []
            for change in quick.changes:
                name = change.name
                _diff_field(
                    ops, (*change.parent, name), change.before.get(name, MISSING),
                    change.after.get(name, MISSING), rules,
                )
            return ops, quick.base_uid, quick.uid
    base, doc = _decode_versions(old, new, rules)
    if new is not None and isinstance(doc, ProtoObject):
        proto_changes.remember(new)  # the next write of the key compares against it
    base_uid = identity(base, rules)
    if new is None:
        return None, base_uid, None
    uid = identity(doc, rules)
    if (
        isinstance(base, dict)
        and isinstance(doc, dict)
        and _same_form(base, doc)
        and uid == base_uid
    ):
        return diff(base, doc, rules), base_uid, uid
    return None, base_uid, uid


def _decode_versions(
    old: bytes | None, new: bytes | None, rules: KeyRules
) -> tuple[Json | bytes | None, Json | bytes | None]:
    """``decode`` of both, for reading only: two protobuf versions of an object share what
    they have in common (decoded once, compared by identity)."""
    if (
        old is not None
        and new is not None
        and rules.merge == "fields"
        and old.startswith(k8sproto.PREFIX)
        and new.startswith(k8sproto.PREFIX)
    ):
        base, doc = k8sproto.decode_pair(old, new, rules.local_paths)
        return (old if base is None else base), (new if doc is None else doc)
    return (
        None if old is None else decode(old, rules),
        None if new is None else decode(new, rules),
    )


def _same_form(base: dict[str, Json], doc: dict[str, Json]) -> bool:
    """Whether operations made on ``base`` mean the same on ``doc``: both JSON, or both
    protobuf of one type (a value written in another form is written whole)."""
    if isinstance(base, ProtoObject):
        return (
            isinstance(doc, ProtoObject)
            and doc.get("apiVersion") == base.get("apiVersion")
            and doc.get("kind") == base.get("kind")
        )
    return not isinstance(doc, ProtoObject)


def same_form_as_value(doc: dict[str, Json], value: bytes) -> bool:
    """``_same_form`` of a stored object and an entry's value, reading only what it must."""
    if isinstance(doc, ProtoObject):
        return k8sproto.object_type(value) == (doc.get("apiVersion"), doc.get("kind"))
    return not value.startswith(k8sproto.PREFIX)


# Operations that, applied to the base they were made from, give exactly what the writer
# wrote. Not so: a first write over a value already there, an addition to a set the rules
# have frozen, a delta in floating point (either may be refused or rounded).
_EXACT_OPS = (
    SetField, SetFromValue, DeleteField, SetRemove, KeyedSet, KeyedDelete, Reorder, DropIfEmpty,
    SinceEntry,  # over the value it names, the write itself (``step``)
)


def reproduces_write(ops: list[Op], rules: KeyRules | None = None) -> bool:
    """Whether applying ``ops`` to the base they came from yields the written value itself
    (no rule of the policy changed anything): then a write that sorts last keeps its bytes.
    Not so either: replacing or deleting an object that may hold a protected field (the
    fold keeps that field), which only ``rules`` tell."""
    return all(
        (isinstance(op, _EXACT_OPS) or (isinstance(op, AddDelta) and isinstance(op.delta, int)))
        and not (
            rules is not None
            and isinstance(op, (SetField, SetFromValue, DeleteField))
            and rules.protected_under(op.path)
        )
        for op in ops
    )


def diff(
    base: dict[str, Json], new: dict[str, Json], rules: KeyRules, path: Path_ = ()
) -> list[Op]:
    """Field operations that turn ``base`` into ``new`` under the key's rules."""
    ops: list[Op] = []
    for name in list(new) + [k for k in base if k not in new]:
        _diff_field(ops, (*path, name), base.get(name, MISSING), new.get(name, MISSING), rules)
    return ops


def _diff_field(ops: list[Op], here: Path_, before: Json, after: Json, rules: KeyRules) -> None:
    """Append the operations that turn one field's ``before`` into its ``after``."""
    if _unchanged(before, after):
        return
    rule = rules.rule(here)
    policy = rule.policy if rule is not None else "lww"
    if policy == "local":
        return
    if policy in ("first-write-wins", "identity"):
        if after is not MISSING:
            ops.append(FirstWrite(here, after))
    elif policy == "counter" and is_number(before) and is_number(after):
        ops.append(AddDelta(here, after - before))
    elif policy == "set" and is_set(before) and is_set(after):
        ops.extend(_diff_list(here, before, after, None))
    elif (
        policy == "keyed-list"
        and rule is not None
        and rule.key is not None
        and keyed_list(before, rule.key) is not None
        and keyed_list(after, rule.key) is not None
    ):
        ops.extend(_diff_list(here, before, after, rule.key))
    elif policy == "map" and _is_map(before) and _is_map(after):
        ops.extend(_diff_map(here, before, after, rules))
    elif policy == "lww" and isinstance(before, dict) and isinstance(after, dict):
        ops.extend(diff(before, after, rules, here))
    elif after is MISSING:
        ops.append(DeleteField(here))
    elif isinstance(after, (dict, list)):
        ops.append(SetFromValue(here))  # the entry's value holds it: not restated
    else:
        ops.append(SetField(here, after))


def _is_map(value: Json) -> bool:
    return value is MISSING or isinstance(value, dict)


def _diff_map(path: Path_, before: Json, after: Json, rules: KeyRules) -> list[Op]:
    """Key-by-key operations of a map. A missing map is an empty one (Kubernetes omits empty
    labels), so two writers who each add the first label both keep theirs."""
    old: dict[str, Json] = {} if before is MISSING else before
    new: dict[str, Json] = {} if after is MISSING else after
    ops = diff(old, new, rules, path)
    if before is MISSING and not new:
        ops.append(FirstWrite(path, {}))  # the writer wrote an empty map
    elif after is MISSING:
        ops.append(DropIfEmpty(path))  # the writer dropped the map: drop it if empty
    return ops


def _unchanged(before: Json, after: Json) -> bool:
    """``same``, fast: Python's == (in C) settles most cases, but it treats 1, 1.0 and true
    alike, and a change between those must be replicated like any other (every node must
    store the writer's value); equal containers are compared again as canonical JSON (in C)."""
    if before is after:
        return True  # e.g. a part two protobuf versions share (``_decode_versions``)
    if type(before) is not type(after) or before != after:
        return False
    if isinstance(before, (dict, list)):
        return json.dumps(before, sort_keys=True) == json.dumps(after, sort_keys=True)
    return True


def _diff_list(path: Path_, before: Json, after: Json, key: str | None) -> list[Op]:
    """Element operations of a set (``key`` None) or keyed list. A missing list is an empty
    one (Kubernetes omits empty lists), so the first element added and the last one removed
    merge element by element like any other."""
    old: list[Json] = [] if before is MISSING else before
    new: list[Json] = [] if after is MISSING else after
    ops: list[Op]
    if key is None:
        old_ids, new_ids = old, new
        old_keys, new_keys = [hashable(k) for k in old_ids], [hashable(k) for k in new_ids]
    else:
        old_ids, new_ids = [e[key] for e in old], [e[key] for e in new]
        # ``hashable`` of scalars (``keyed_list`` checked the keys), inline: a list per write.
        old_keys = [(type(k), k) for k in old_ids]
        new_keys = [(type(k), k) for k in new_ids]
    if key is not None and old_keys == new_keys:
        # The same elements in the same order (a status update): only changed ones are set;
        # nothing is deleted and the order stands.
        ops = [KeyedSet(path, key, e) for o, e in zip(old, new, strict=True) if not same(o, e)]
    else:
        old_set, new_set = set(old_keys), set(new_keys)
        if key is None:
            ops = [
                SetRemove(path, e) for e, k in zip(old, old_keys, strict=True) if k not in new_set
            ]
            ops += [
                SetAdd(path, e) for e, k in zip(new, new_keys, strict=True) if k not in old_set
            ]
        else:
            by_id = dict(zip(old_keys, old, strict=True))
            ops = [
                KeyedDelete(path, key, i)
                for i, k in zip(old_ids, old_keys, strict=True)
                if k not in new_set
            ]
            ops += [
                KeyedSet(path, key, e)
                for e, k in zip(new, new_keys, strict=True)
                if not same(by_id.get(k, MISSING), e)
            ]
        # Kept elements stay where they are and new ones are appended: say so when the
        # writer's order is another, so an unconflicted write keeps its order.
        kept = [k for k in old_keys if k in new_set]
        added = [k for k in new_keys if k not in old_set]
        if kept + added != new_keys:
            ops.append(Reorder(path, key, new_ids))
    if before is MISSING and not new:
        ops.append(FirstWrite(path, []))  # the writer wrote an empty list
    elif after is MISSING:
        ops.append(DropIfEmpty(path))  # the writer dropped the list: drop it if empty
    return ops

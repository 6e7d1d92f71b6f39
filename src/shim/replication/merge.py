"""The merge: a key's state is one deterministic function of the set of its entries.

Entries are folded in stamp order, ``(hlc, origin, seq)``, so any two replicas holding the same
entries hold the same value, byte for byte, whatever order the entries arrived in. A new entry
that sorts after everything a replica already has for the key is applied to the stored state
directly (``step``); one that arrives late makes the replica fold the key's entries again.

Opaque values (anything but an object, or a key whose policy says ``whole``) resolve by last
writer wins. Objects resolve field by field: JSON objects, and Kubernetes objects stored as
protobuf, which ``k8sproto`` decodes into the same tree (so one policy governs both). The origin
turns each write into field-level operations against the version the writer saw (``diff``), and
the fold applies them under the key's policy (``apply_ops``). Object incarnations are told apart
by their identity field (``metadata.uid``): a delete wins over concurrent updates of its
incarnation, and of two incarnations created concurrently the earlier one wins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shim.replication import k8sproto, proto_changes
from shim.replication.entry import Entry
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
from shim.replication.trees import copy_tree

Json = Any

_MISSING: Any = object()
# Looks like a JSON object (checked without copying a possibly large value).
_JSON_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")


@dataclass(slots=True)
class KeyState:
    """A key's merged state: the value (JSON object, opaque bytes, or absent), its lease, and
    the incarnations that were deleted (they never come back)."""

    doc: Json | bytes | None = None
    lease: int = 0
    tombstones: set[str] = field(default_factory=set)
    # Bytes known to encode ``doc`` (the stored value); None once ``doc`` changes.
    raw: bytes | None = None
    # The last entry that changed ``doc``: its bytes are kept when they encode the result.
    last: Entry | None = None

    @classmethod
    def from_stored(
        cls, value: bytes | None, lease: int, tombstones: Iterable[str], rules: KeyRules
    ) -> KeyState:
        doc = None if value is None else decode(value, rules)
        return cls(doc=doc, lease=lease, tombstones=set(tombstones), raw=value)

    def value(self, rules: KeyRules) -> bytes | None:
        """The bytes to store: the last writer's own bytes when they encode the result (so
        an unconflicted write is stored as written), else the canonical encoding (canonical
        JSON, or protobuf as Go writes it)."""
        if self.doc is None:
            return None
        if isinstance(self.doc, bytes):
            return self.doc
        if self.raw is not None:
            return self.raw
        last = self.last
        if last is not None and not last.deleted and same(decode(last.value, rules), self.doc):
            return last.value
        return canonical(self.doc)


def canonical(doc: Json) -> bytes:
    """The one encoding of a merged object every replica stores."""
    if isinstance(doc, ProtoObject):
        return k8sproto.encode(doc)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def may_be_object(value: bytes, rules: KeyRules) -> bool:
    """Whether ``decode`` may find an object in ``value`` (False: it gives the bytes), from
    the value's first bytes only."""
    return rules.merge == "fields" and (
        value.startswith(k8sproto.PREFIX) or _JSON_OBJECT_START.match(value) is not None
    )


def decode(value: bytes, rules: KeyRules) -> Json | bytes:
    """An object (with node-local fields dropped) when the key merges field by field and the
    value is a JSON object or a Kubernetes protobuf object; otherwise the bytes themselves."""
    if not may_be_object(value, rules):
        return value
    if value.startswith(k8sproto.PREFIX):
        return _decode_proto(value, rules.local_paths)
    try:
        doc = json.loads(value)
    except ValueError:
        return value
    if not isinstance(doc, dict):
        return value
    for path in rules.local_paths:
        _delete(doc, path)
    return doc


# Protobuf objects decoded lately, by their bytes: a replica decodes each version of an
# object as an entry's value, and again as the key's stored value when the key's next entry
# comes. Decoded objects are shared, so nothing changes one in place (``step`` copies before
# it applies operations; ``k8sproto.decode_pair`` shares parts the same way). Emptied whole
# once the bytes decoded since exceed the budget: a decoded Pod takes about 6 times its bytes
# in memory, so 1 MiB of versions (~600 Pods) holds some 6 MiB.
_DECODED: dict[tuple[bytes, tuple[Path_, ...]], ProtoObject | bytes] = {}
DECODED_BUDGET = 1 << 20
_decoded_bytes = 0


def _decode_proto(value: bytes, local_paths: tuple[Path_, ...]) -> ProtoObject | bytes:
    """``k8sproto.decode`` of ``value`` (the bytes themselves when they do not decode)."""
    global _decoded_bytes
    found = _DECODED.get((value, local_paths))
    if found is None:
        proto = k8sproto.decode(value, local_paths)
        found = value if proto is None else proto
        _decoded_bytes += len(value)
        if _decoded_bytes > DECODED_BUDGET:
            _DECODED.clear()
            _decoded_bytes = len(value)
        _DECODED[(value, local_paths)] = found
    return found


def identity(doc: Json | bytes | None, rules: KeyRules) -> str | None:
    path = rules.identity
    if path is None or not isinstance(doc, dict):
        return None
    found = _get(doc, path)
    # An empty uid is none: Go's marshaller writes the field even when it is empty.
    return found if isinstance(found, str) and found else None


# -- the origin side: a write becomes an entry ------------------------------------------------


def value_identity(value: bytes, rules: KeyRules) -> str | None:
    """``identity`` of the object ``value`` holds; of a protobuf object, read from the fields
    that hold it only."""
    if rules.merge != "fields" or rules.identity is None:
        return None
    if value.startswith(k8sproto.PREFIX):
        try:
            return proto_changes.identity_of(value, rules)
        except k8sproto.DecodeError:
            pass  # what ``decode`` makes of it, below
    return identity(decode(value, rules), rules)


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
                    ops, (*change.parent, name), change.before.get(name, _MISSING),
                    change.after.get(name, _MISSING), rules,
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


def _same_form_as_value(doc: dict[str, Json], value: bytes) -> bool:
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
        _diff_field(ops, (*path, name), base.get(name, _MISSING), new.get(name, _MISSING), rules)
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
        if after is not _MISSING:
            ops.append(FirstWrite(here, after))
    elif policy == "counter" and _is_number(before) and _is_number(after):
        ops.append(AddDelta(here, after - before))
    elif policy == "set" and _is_set(before) and _is_set(after):
        ops.extend(_diff_list(here, before, after, None))
    elif (
        policy == "keyed-list"
        and rule is not None
        and rule.key is not None
        and _keyed(before, rule.key) is not None
        and _keyed(after, rule.key) is not None
    ):
        ops.extend(_diff_list(here, before, after, rule.key))
    elif policy == "map" and _is_map(before) and _is_map(after):
        ops.extend(_diff_map(here, before, after, rules))
    elif policy == "lww" and isinstance(before, dict) and isinstance(after, dict):
        ops.extend(diff(before, after, rules, here))
    elif after is _MISSING:
        ops.append(DeleteField(here))
    elif isinstance(after, (dict, list)):
        ops.append(SetFromValue(here))  # the entry's value holds it: not restated
    else:
        ops.append(SetField(here, after))


def _is_map(value: Json) -> bool:
    return value is _MISSING or isinstance(value, dict)


def _diff_map(path: Path_, before: Json, after: Json, rules: KeyRules) -> list[Op]:
    """Key-by-key operations of a map. A missing map is an empty one (Kubernetes omits empty
    labels), so two writers who each add the first label both keep theirs."""
    old: dict[str, Json] = {} if before is _MISSING else before
    new: dict[str, Json] = {} if after is _MISSING else after
    ops = diff(old, new, rules, path)
    if before is _MISSING and not new:
        ops.append(FirstWrite(path, {}))  # the writer wrote an empty map
    elif after is _MISSING:
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
    old: list[Json] = [] if before is _MISSING else before
    new: list[Json] = [] if after is _MISSING else after
    ops: list[Op]
    if key is None:
        old_ids, new_ids = old, new
        old_keys, new_keys = [_ident(k) for k in old_ids], [_ident(k) for k in new_ids]
    else:
        old_ids, new_ids = [e[key] for e in old], [e[key] for e in new]
        # ``_ident`` of scalars (``_keyed`` checked the keys), inline: a list per write.
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
                if not same(by_id.get(k, _MISSING), e)
            ]
        # Kept elements stay where they are and new ones are appended: say so when the
        # writer's order is another, so an unconflicted write keeps its order.
        kept = [k for k in old_keys if k in new_set]
        added = [k for k in new_keys if k not in old_set]
        if kept + added != new_keys:
            ops.append(Reorder(path, key, new_ids))
    if before is _MISSING and not new:
        ops.append(FirstWrite(path, []))  # the writer wrote an empty list
    elif after is _MISSING:
        ops.append(DropIfEmpty(path))  # the writer dropped the list: drop it if empty
    return ops


# -- the fold ----------------------------------------------------------------------------------


def step(state: KeyState, entry: Entry, rules: KeyRules, base: bytes | None = None) -> bool:
    """Apply one entry that sorts after every entry already folded into ``state``; ``base``:
    the value of the entry its operations are made since (``SinceEntry``), None when that
    entry is not among the key's. Returns whether the value (or its lease) changed."""
    # Tombstones are a function of the set of entries, whatever order they were folded in (a
    # node keeps every tombstone it ever saw, across re-folds): only a delete, and a write
    # that replaced the incarnation its writer saw by another, end an incarnation.
    ended = _ended(entry)
    if ended is not None:
        state.tombstones.add(ended)
    current_uid = identity(state.doc, rules)
    if entry.deleted:
        if state.doc is None:
            return False
        if entry.base_uid is not None and current_uid is not None and entry.base_uid != current_uid:
            return False  # a delete of another incarnation than the one alive here
        _set_doc(state, None, entry)
        return True
    if entry.ops is not None:
        # An update applies to the incarnation it was made on, while that one is alive here:
        # one deleted (the delete wins), gone, or replaced by another changes nothing.
        if state.doc is None or entry.uid != current_uid or entry.uid in state.tombstones:
            return False
    elif entry.uid is not None and entry.uid in state.tombstones:
        return False  # a deleted incarnation never comes back, not even written whole
    elif state.doc is None:
        _take_written(state, decode(entry.value, rules), entry)
        return True
    elif (
        entry.uid is not None
        and current_uid is not None
        and entry.uid != current_uid
        and entry.base_uid != current_uid
    ):
        return False  # two incarnations created concurrently: the earlier (here) wins
    since = since_of(entry)
    if since is not None:
        if base is None:
            raise MissingBase(f"entry {since} of its origin, which it was written over, is not "
                              "among the key's entries")
        if state.value(rules) == base:
            # The key holds what the writer wrote over: the write is taken as it is.
            if entry.value == base and entry.lease == state.lease:
                return False
            _take_written(state, decode(entry.value, rules), entry)
            return True
        ops, _, _ = describe_write(base, entry.value, rules)  # None: another form, whole
        entry = entry.copy_with(ops=ops, ops_json=None)
    if (
        entry.ops is None
        or not isinstance(state.doc, dict)
        or not _same_form_as_value(state.doc, entry.value)
    ):
        _take_written(state, decode(entry.value, rules), entry)
        return True
    ops = resolve_from_value(entry, rules)
    if ops is None:
        return False  # fields to read from a value that is not an object: refused
    doc = copy_tree(state.doc)
    apply_ops(doc, ops, rules)
    if isinstance(doc, ProtoObject):
        if same(decode(entry.value, rules), doc):
            # What the writer wrote (an update over the state it saw, or the same object in
            # other bytes): its bytes, which encode the result, are stored, so the result
            # is neither encoded (to know the schema holds it) nor decoded again.
            if entry.lease == state.lease and (
                entry.value == state.raw if state.raw is not None
                else same(doc, state.doc) and entry.value == state.value(rules)
            ):
                return False
            _take_written(state, doc, entry)
            return True
        if not _encodes(doc):
            return False  # operations the object's protobuf schema cannot hold: refused
    if same(doc, state.doc) and entry.lease == state.lease:
        if entry.value == state.value(rules) or not same(decode(entry.value, rules), doc):
            return False
        # The same object in other bytes (formatting, key order, a node-local field): the
        # writer's bytes, as for any write whose result is what the writer wrote.
        state.raw = None
        state.last = entry
        return True
    _set_doc(state, doc, entry)
    return True


class MissingBase(Exception):
    """An entry's operations are made since an entry the fold does not have."""


def since_of(entry: Entry) -> int | None:
    """The seq of the entry ``entry``'s operations are made since (``SinceEntry``), if so."""
    ops = entry.ops
    if ops and isinstance(ops[0], SinceEntry):
        return ops[0].seq
    return None


def base_value(entry: Entry, entries: Mapping[tuple[str, int], Entry]) -> bytes | None:
    """The value ``step`` takes as ``entry``'s base, from ``entries`` by (origin, seq)."""
    since = since_of(entry)
    named = None if since is None else entries.get((entry.origin, since))
    return None if named is None or named.deleted else named.value


def resolve_from_value(entry: Entry, rules: KeyRules) -> list[Op] | None:
    """``entry.ops`` with each field the entry's value holds (``SetFromValue``) read from
    the value, as decoding it whole gives it: ``SetField`` with it, or ``DeleteField`` where
    the value has none. A protobuf value is read along the path only (its other fields stay
    undecoded); None when the value is not an object of the key's merge."""
    ops = entry.ops or []
    if not any(isinstance(op, SetFromValue) for op in ops):
        return ops
    written: Json | bytes | None = None
    out: list[Op] = []
    for op in ops:
        if not isinstance(op, SetFromValue):
            out.append(op)
            continue
        parent = proto_changes.field_at(entry.value, op.path, rules)
        if parent is not None:
            found = parent.get(op.path[-1], _MISSING)
        else:
            if written is None:
                written = decode(entry.value, rules)
            if not isinstance(written, dict):
                return None
            found = _get(written, op.path)
        out.append(DeleteField(op.path) if found is _MISSING else SetField(op.path, found))
    return out


def _encodes(doc: ProtoObject) -> bool:
    try:
        k8sproto.encode(doc)
    except k8sproto.EncodeError:
        return False
    return True


def _ended(entry: Entry) -> str | None:
    """The incarnation an entry ends: a delete's, or the one a writer replaced by another."""
    if entry.base_uid is None:
        return None
    if entry.deleted or (
        entry.ops is None and entry.uid is not None and entry.uid != entry.base_uid
    ):
        return entry.base_uid
    return None


def _set_doc(state: KeyState, doc: Json | bytes | None, entry: Entry) -> None:
    state.doc = doc
    state.lease = 0 if doc is None else entry.lease
    state.raw = None
    state.last = entry


def _take_written(state: KeyState, doc: Json | bytes, entry: Entry) -> None:
    """``_set_doc`` with ``doc`` what ``entry``'s value decodes to: those bytes are stored."""
    _set_doc(state, doc, entry)
    state.raw = entry.value


def fold(
    entries: Iterable[Entry], rules: KeyRules, failed: list[tuple[Entry, str]] | None = None
) -> KeyState:
    """The state the set of ``entries`` of one key resolves to (an entry given twice counts
    once: entries are identified by origin and seq). With ``failed``, an entry whose step
    raises is left out (the state stays as before it) and listed there with the reason."""
    unique = {(e.origin, e.seq): e for e in entries}
    state = KeyState()
    for entry in sorted(unique.values(), key=lambda e: e.stamp):
        base = base_value(entry, unique)
        if failed is None:
            step(state, entry, rules, base)
            continue
        before = (state.doc, state.lease, state.raw, state.last)
        ended = _ended(entry)
        new_tombstone = ended is not None and ended not in state.tombstones
        try:
            step(state, entry, rules, base)
        except Exception as exc:  # whatever it is, this entry must not stop the key
            state.doc, state.lease, state.raw, state.last = before
            if new_tombstone:
                state.tombstones.discard(ended)
            failed.append((entry, f"applying it failed ({type(exc).__name__}: {exc})"))
    return state


def apply_ops(doc: dict[str, Json], ops: list[Op], rules: KeyRules) -> None:
    # A set that refuses additions once a path is set judges by the object before this write:
    # the write that sets the path may add elements itself (Kubernetes adds the
    # foregroundDeletion finalizer in the update that sets deletionTimestamp), whatever the
    # order of the fields in the writer's JSON.
    frozen = {
        path
        for path, rule in rules.fields.items()
        if rule.no_additions_once is not None
        and _get(doc, rule.no_additions_once) not in (_MISSING, None)
    }
    for op in ops:
        path = op.path
        match op:
            case SetField() | DeleteField() if rules.protected_under(path):
                _replace_keeping(doc, op, rules.protected_under(path))
            case SetField(value=value):
                _put(doc, path, copy_tree(value))
            case DeleteField():
                _delete(doc, path)
            case FirstWrite(value=value):
                if _get(doc, path) is _MISSING:
                    _put(doc, path, copy_tree(value))
            case AddDelta(delta=delta):
                current = _get(doc, path)
                _put(doc, path, (current if _is_number(current) else 0) + delta)
            case SetAdd(element=element):
                _apply_set(doc, path, False, element, path in frozen)
            case SetRemove(element=element):
                _apply_set(doc, path, True, element, False)
            case KeyedSet(key=key, element=element):
                _apply_keyed(doc, path, False, key, element)
            case KeyedDelete(key=key, ident=ident):
                _apply_keyed(doc, path, True, key, ident)
            case Reorder(key=key, order=order):
                _apply_order(doc, path, key, order)
            case DropIfEmpty():
                if _get(doc, path) in ([], {}):
                    _delete(doc, path)


def _replace_keeping(
    doc: dict[str, Json], op: SetField | DeleteField, kept: tuple[Path_, ...]
) -> None:
    """Replace (or delete) an object but not the protected fields it holds: first-write-wins
    and identity fields are never changed by a later write, whatever path it names."""
    held = [(path, _get(doc, path)) for path in kept]
    if isinstance(op, SetField):
        _put(doc, op.path, copy_tree(op.value))
    else:
        _delete(doc, op.path)
    for path, value in held:
        if value is not _MISSING:
            _put(doc, path, value)


def _apply_set(
    doc: dict[str, Json], path: Path_, remove: bool, element: Json, frozen: bool
) -> None:
    current = _get(doc, path)
    items = list(current) if isinstance(current, list) else []
    if remove:
        if not isinstance(current, list):
            return  # nothing to remove (and no empty list to create)
        items = [e for e in items if not same(e, element)]
    else:
        if frozen:
            return  # no additions once the rule's path is set
        if not _contains(items, element):
            items.append(copy_tree(element))
    _put(doc, path, items)


def _apply_keyed(doc: dict[str, Json], path: Path_, remove: bool, key: str, arg: Json) -> None:
    current = _get(doc, path)
    items = list(current) if isinstance(current, list) else []
    if remove:
        if not isinstance(current, list):
            return  # nothing to remove (and no empty list to create)
        items = [e for e in items if not (isinstance(e, dict) and same(e.get(key, _MISSING), arg))]
    elif isinstance(arg, dict):
        ident = arg.get(key, _MISSING)
        for i, e in enumerate(items):
            if isinstance(e, dict) and same(e.get(key, _MISSING), ident):
                items[i] = copy_tree(arg)
                break
        else:
            items.append(copy_tree(arg))
    _put(doc, path, items)


def _apply_order(doc: dict[str, Json], path: Path_, key: str | None, order: list[Json]) -> None:
    """Sort the list's elements (identified by themselves, or by their ``key`` field) as in
    ``order``; elements it does not name keep their relative order after those it does."""
    current = _get(doc, path)
    if not isinstance(current, list):
        return

    def rank(element: Json) -> int:
        ident = element if key is None else (
            element.get(key, _MISSING) if isinstance(element, dict) else _MISSING
        )
        for i, wanted in enumerate(order):
            if same(wanted, ident):
                return i
        return len(order)

    _put(doc, path, sorted(current, key=rank))


# -- JSON helpers ----------------------------------------------------------------------------


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


def _contains(items: list[Json], element: Json) -> bool:
    return any(same(e, element) for e in items)


def _ident(value: Json) -> tuple[Any, Any]:
    """A hashable stand-in for a JSON value: equal exactly when ``same`` says so."""
    if isinstance(value, (dict, list)):
        return ("json", json.dumps(value, sort_keys=True))
    return (type(value), value)


def _is_set(value: Json) -> bool:
    """Missing, or a list of distinct values."""
    if value is _MISSING:
        return True
    if not isinstance(value, list):
        return False
    return len({_ident(e) for e in value}) == len(value)


def _keyed(value: Json, key: str) -> list[Json] | None:
    """``value`` if it is a list of objects with distinct, present, scalar ``key`` fields (a
    missing list counts as an empty one)."""
    if value is _MISSING:
        return []
    if not isinstance(value, list):
        return None
    seen: set[tuple[Any, Any]] = set()
    for e in value:
        if not isinstance(e, dict):
            return None
        ident = e.get(key, _MISSING)
        if ident is _MISSING or isinstance(ident, (dict, list)):
            return None
        seen.add((type(ident), ident))  # ``_ident`` of a scalar, inline
    return value if len(seen) == len(value) else None


def _is_number(value: Json) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _get(doc: Json, path: Path_) -> Json:
    node = doc
    for name in path:
        if not isinstance(node, dict) or name not in node:
            return _MISSING
        node = node[name]
    return node


def _put(doc: dict[str, Json], path: Path_, value: Json) -> None:
    node = doc
    for name in path[:-1]:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    node[path[-1]] = value


def _delete(doc: dict[str, Json], path: Path_) -> None:
    node: Json = doc
    for name in path[:-1]:
        node = node.get(name)
        if not isinstance(node, dict):
            return
    node.pop(path[-1], None)

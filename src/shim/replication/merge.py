"""The merge: a key's state is one deterministic function of the set of its entries.

Entries are folded in stamp order, ``(hlc, origin, seq)``, so any two replicas holding the same
entries hold the same value, byte for byte, whatever order the entries arrived in. A new entry
that sorts after everything a replica already has for the key is applied to the stored state
directly (``step``); one that arrives late makes the replica fold the key's entries again.

Opaque values (anything but an object, or a key whose policy says ``whole``) resolve by last
writer wins. Objects resolve field by field: JSON objects, and Kubernetes objects stored as
protobuf, which ``k8sproto`` decodes into the same tree (so one policy governs both). The origin
turns each write into field-level operations against the version the writer saw
(``write_ops``), and the fold applies them under the key's policy (``apply_ops``); what a value
is as an object, ``values``; the trees' helpers, ``trees``. Object incarnations are told apart
by their identity field (``metadata.uid``): a delete wins over concurrent updates of its
incarnation, and of two incarnations created concurrently the earlier one wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
from shim.replication.trees import (
    MISSING,
    Json,
    contains,
    copy_tree,
    delete_at,
    get_at,
    is_number,
    put_at,
    same,
)
from shim.replication.values import canonical, decode, identity
from shim.replication.write_ops import describe_write, same_form_as_value


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
        or not same_form_as_value(state.doc, entry.value)
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
            found = parent.get(op.path[-1], MISSING)
        else:
            if written is None:
                written = decode(entry.value, rules)
            if not isinstance(written, dict):
                return None
            found = get_at(written, op.path)
        out.append(DeleteField(op.path) if found is MISSING else SetField(op.path, found))
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
        and get_at(doc, rule.no_additions_once) not in (MISSING, None)
    }
    for op in ops:
        path = op.path
        match op:
            case SetField() | DeleteField() if rules.protected_under(path):
                _replace_keeping(doc, op, rules.protected_under(path))
            case SetField(value=value):
                put_at(doc, path, copy_tree(value))
            case DeleteField():
                delete_at(doc, path)
            case FirstWrite(value=value):
                if get_at(doc, path) is MISSING:
                    put_at(doc, path, copy_tree(value))
            case AddDelta(delta=delta):
                current = get_at(doc, path)
                put_at(doc, path, (current if is_number(current) else 0) + delta)
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
                if get_at(doc, path) in ([], {}):
                    delete_at(doc, path)


def _replace_keeping(
    doc: dict[str, Json], op: SetField | DeleteField, kept: tuple[Path_, ...]
) -> None:
    """Replace (or delete) an object but not the protected fields it holds: first-write-wins
    and identity fields are never changed by a later write, whatever path it names."""
    held = [(path, get_at(doc, path)) for path in kept]
    if isinstance(op, SetField):
        put_at(doc, op.path, copy_tree(op.value))
    else:
        delete_at(doc, op.path)
    for path, value in held:
        if value is not MISSING:
            put_at(doc, path, value)


def _apply_set(
    doc: dict[str, Json], path: Path_, remove: bool, element: Json, frozen: bool
) -> None:
    current = get_at(doc, path)
    items = list(current) if isinstance(current, list) else []
    if remove:
        if not isinstance(current, list):
            return  # nothing to remove (and no empty list to create)
        items = [e for e in items if not same(e, element)]
    else:
        if frozen:
            return  # no additions once the rule's path is set
        if not contains(items, element):
            items.append(copy_tree(element))
    put_at(doc, path, items)


def _apply_keyed(doc: dict[str, Json], path: Path_, remove: bool, key: str, arg: Json) -> None:
    current = get_at(doc, path)
    items = list(current) if isinstance(current, list) else []
    if remove:
        if not isinstance(current, list):
            return  # nothing to remove (and no empty list to create)
        items = [e for e in items if not (isinstance(e, dict) and same(e.get(key, MISSING), arg))]
    elif isinstance(arg, dict):
        ident = arg.get(key, MISSING)
        for i, e in enumerate(items):
            if isinstance(e, dict) and same(e.get(key, MISSING), ident):
                items[i] = copy_tree(arg)
                break
        else:
            items.append(copy_tree(arg))
    put_at(doc, path, items)


def _apply_order(doc: dict[str, Json], path: Path_, key: str | None, order: list[Json]) -> None:
    """Sort the list's elements (identified by themselves, or by their ``key`` field) as in
    ``order``; elements it does not name keep their relative order after those it does."""
    current = get_at(doc, path)
    if not isinstance(current, list):
        return

    def rank(element: Json) -> int:
        ident = element if key is None else (
            element.get(key, MISSING) if isinstance(element, dict) else MISSING
        )
        for i, wanted in enumerate(order):
            if same(wanted, ident):
                return i
        return len(order)

    put_at(doc, path, sorted(current, key=rank))

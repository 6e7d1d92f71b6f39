"""Entries and folds for the merge tests (pure functions of shim.replication.merge)."""

from __future__ import annotations

import itertools

from shim.replication.entry import Entry
from shim.replication.merge import KeyState, base_value, fold, step
from shim.replication.ops import SinceEntry
from shim.replication.policy import KeyRules
from shim.replication.write_ops import describe_write


def write(
    origin: str,
    seq: int,
    hlc: int,
    base: bytes | None,
    new: bytes | None,
    rules: KeyRules,
    key: bytes,
    lease: int = 0,
) -> Entry:
    """The entry a writer at ``origin`` makes for writing ``new`` (None: a delete) over the
    value ``base`` it saw."""
    ops, base_uid, uid = describe_write(base, new, rules)
    return Entry(
        origin, seq, hlc, key, new is None, new or b"", lease if new is not None else 0,
        ops, base_uid, uid,
    )


def write_since(
    origin: str, seq: int, hlc: int, over: Entry, new: bytes, rules: KeyRules
) -> Entry:
    """The entry ``origin`` makes for writing ``new`` over its own entry ``over``, stored as
    written: operations by reference (``SinceEntry``), as shim.replication.resolve makes them."""
    assert over.origin == origin and over.uid is not None
    return Entry(origin, seq, hlc, over.key, False, new, 0, [SinceEntry(over.seq)], over.uid,
                 over.uid)


def resolve(entries: list[Entry], rules: KeyRules) -> bytes | None:
    """The value ``entries`` fold to, checked to be the same for every arrival order."""
    values = {fold(order, rules).value(rules) for order in itertools.permutations(entries)}
    assert len(values) == 1, values
    return values.pop()


def as_resolve_keeps_it(arrivals: list[Entry], rules: KeyRules) -> bytes | None:
    """What shim.replication.resolve stores after ``arrivals``: a newest entry is stepped
    from the stored value and the tombstone table, a late one re-folds the key; the tombstone
    table is only ever added to. Checked to equal the fold of all of them."""
    value: bytes | None = None
    lease = 0
    tombstones: set[str] = set()
    seen: list[Entry] = []
    for entry in arrivals:
        seen.append(entry)
        if all(e.stamp < entry.stamp for e in seen[:-1]):
            state = KeyState.from_stored(value, lease, tombstones, rules)
            step(state, entry, rules, base_value(entry, {(e.origin, e.seq): e for e in seen}))
        else:
            state = fold(seen, rules)
        tombstones |= state.tombstones
        value, lease = state.value(rules), state.lease
    assert value == fold(arrivals, rules).value(rules)
    return value

"""Property tests of the merge (pure functions, no database): replicas that write concurrently
and exchange entries in any order, with duplicates and delays, converge to one value per key,
byte for byte, equal to the fold of all entries. With ``since``, a replica that writes over
its own write, stored as written, makes its operations by reference (``SinceEntry``), as
shim.replication.resolve does; entries then arrive after those of their origin before them,
as links deliver them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from shim.replication.entry import Entry
from shim.replication.merge import KeyState, base_value, fold, step
from shim.replication.ops import SinceEntry
from shim.replication.values import identity
from shim.replication.write_ops import describe_write
from tests.support.merge_values import KEYS, RULES, Uids, next_value

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- replicas -----------------------------------------------------------------------------------


@dataclass
class Incremental:
    """A key as a replica keeps it: a state stepped entry by entry, re-folded when an entry
    arrives late."""

    state: KeyState = field(default_factory=KeyState)
    top: tuple[int, str, int] | None = None


@dataclass
class Stored:
    """A key as resolve.Replica keeps it in the database: the stored value and lease, the
    tombstone table (only ever added to), stepped from the stored bytes, re-folded late."""

    value: bytes | None = None
    lease: int = 0
    tombstones: set[str] = field(default_factory=set)


@dataclass
class Replica:
    name: str
    skew: int
    clock: int = 0
    seq: int = 0
    known: dict[tuple[str, int], Entry] = field(default_factory=dict)
    keys: dict[bytes, Incremental] = field(default_factory=dict)
    stored: dict[bytes, Stored] = field(default_factory=dict)
    deleted_uids: set[str] = field(default_factory=set)
    since: bool = False
    # Keys whose stored value is exactly this replica's newest entry of them: (seq, uid).
    as_written: dict[bytes, tuple[int, str]] = field(default_factory=dict)

    def entries(self, key: bytes) -> list[Entry]:
        return [e for e in self.known.values() if e.key == key]

    def value(self, key: bytes) -> bytes | None:
        return fold(self.entries(key), RULES[key]).value(RULES[key])

    def tick(self, now: int) -> int:
        self.clock = max(self.clock + 1, now + self.skew)
        return self.clock

    def write(self, key: bytes, new: bytes | None, now: int, lease: int = 0) -> Entry:
        ops, base_uid, uid = describe_write(self.value(key), new, RULES[key])
        written = self.as_written.get(key)
        if self.since and written is not None and ops is not None and uid == written[1]:
            ops = [SinceEntry(written[0])]
        self.seq += 1
        entry = Entry(self.name, self.seq, self.tick(now), key, new is None, new or b"",
                      lease if new is not None else 0, ops, base_uid, uid)
        self.receive(entry)
        stored = self.stored[key]
        if new is not None and uid is not None and stored.value == new:
            self.as_written[key] = (entry.seq, uid)
        return entry

    def receive_from(self, source: dict[tuple[str, int], Entry], entry: Entry) -> None:
        """``entry`` as a link delivers it: after its origin's entries before it."""
        for seq in range(1, entry.seq):
            earlier = source.get((entry.origin, seq))
            if earlier is not None and (entry.origin, seq) not in self.known:
                self.receive(earlier)
        self.receive(entry)

    def receive(self, entry: Entry) -> None:
        ident = (entry.origin, entry.seq)
        if ident in self.known:
            assert self.known[ident] == entry
            return
        self.clock = max(self.clock, entry.hlc)
        self.known[ident] = entry
        rules = RULES[entry.key]
        if entry.deleted and entry.base_uid is not None:
            self.deleted_uids.add(entry.base_uid)
        inc = self.keys.setdefault(entry.key, Incremental())
        if inc.top is None or entry.stamp > inc.top:
            step(inc.state, entry, rules, base_value(entry, self.known))
            inc.top = entry.stamp
        else:
            inc.state = fold(self.entries(entry.key), rules)
        # resolve.Replica's way: newest entries step the stored bytes, late ones re-fold.
        stored = self.stored.setdefault(entry.key, Stored())
        newer = all(e.stamp < entry.stamp for e in self.entries(entry.key) if e is not entry)
        if newer:
            state = KeyState.from_stored(stored.value, stored.lease, stored.tombstones, rules)
            step(state, entry, rules, base_value(entry, self.known))
        else:
            state = fold(self.entries(entry.key), rules)
        stored.tombstones |= state.tombstones
        if state.value(rules) != stored.value:
            self.as_written.pop(entry.key, None)  # a write of its own sets it again
        stored.value, stored.lease = state.value(rules), state.lease


def check_replica(replica: Replica, key: bytes, persisted: bool) -> None:
    rules = RULES[key]
    want = fold(replica.entries(key), rules)
    inc = replica.keys.get(key, Incremental())
    assert inc.state.value(rules) == want.value(rules)
    assert inc.state.lease == want.lease
    # No deleted incarnation is alive again.
    assert identity(inc.state.doc, rules) not in replica.deleted_uids
    if persisted:
        stored = replica.stored.get(key, Stored())
        assert stored.value == want.value(rules)


def simulate(data: st.DataObject, persisted: bool, since: bool = False) -> None:
    draw = data.draw
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    # Where writes by reference are made, fewer replicas and keys (those of objects with an
    # identity) and less skewed clocks: more writes are stamped between a replica's write and
    # its next one over it, which are then worked out as operations where that one arrives.
    count = draw(st.integers(2, 3 if since else 5))
    keys = [key for key in KEYS if RULES[key].identity is not None] if since else KEYS
    skew = 3 if since else 30
    replicas = [Replica(f"n{i}", draw(st.integers(-skew, skew)), since=since)
                for i in range(count)]
    uids = Uids()
    now = 100
    written: list[Entry] = []
    for _ in range(draw(st.integers(1, 25))):
        now += draw(st.integers(0, 20))
        if draw(st.integers(0, 2)):
            replica = replicas[draw(st.integers(0, count - 1))]
            key = draw(st.sampled_from(keys))
            new = next_value(draw, key, replica.value(key), uids)
            if new is None and replica.value(key) is None:
                continue
            written.append(replica.write(key, new, now))
            note(f"{replica.name} writes {written[-1]}")
            check_replica(replica, key, persisted)
        else:
            # A partial delivery: some of what one replica knows, in any order, duplicated.
            src = replicas[draw(st.integers(0, count - 1))]
            dst = replicas[draw(st.integers(0, count - 1))]
            known = list(src.known.values())
            if not known:
                continue
            batch = [rng.choice(known) for _ in range(draw(st.integers(1, 2 * len(known))))]
            note(f"{src.name} -> {dst.name}: {[(e.origin, e.seq) for e in batch]}")
            for entry in batch:
                dst.receive_from(src.known, entry)
            for key in {e.key for e in batch}:
                check_replica(dst, key, persisted)
    # Finally everything everywhere, in a different order at each replica.
    everything_known = {(e.origin, e.seq): e for e in written}
    for replica in replicas:
        pending = written + rng.sample(written, len(written) // 2)
        rng.shuffle(pending)
        for entry in pending:
            replica.receive_from(everything_known, entry)
    for key in KEYS:
        rules = RULES[key]
        everything = [e for e in written if e.key == key]
        want = fold(everything, rules).value(rules)
        for replica in replicas:
            check_replica(replica, key, persisted)
            assert replica.value(key) == want
            assert replica.keys.get(key, Incremental()).state.value(rules) == want


@SETTINGS
@given(st.data())
def test_replicas_converge_to_the_fold_of_all_entries(data: st.DataObject) -> None:
    simulate(data, persisted=False)


@SETTINGS
@given(st.data())
def test_replicas_converge_as_resolve_keeps_keys(data: st.DataObject) -> None:
    """The same, stepping the stored bytes and a tombstone table that is only added to, as
    shim.replication.resolve.Replica does."""
    simulate(data, persisted=True)


@SETTINGS
@given(st.data())
def test_replicas_converge_with_operations_by_reference(data: st.DataObject) -> None:
    """The same, with writes over a replica's own stored write made by reference
    (``SinceEntry``): worked out only where the key holds something else."""
    simulate(data, persisted=True, since=True)


@SETTINGS
@given(st.data())
def test_fold_ignores_order_and_duplicates(data: st.DataObject) -> None:
    draw = data.draw
    key = draw(st.sampled_from(KEYS))
    rules = RULES[key]
    replicas = [Replica(f"n{i}", draw(st.integers(-30, 30))) for i in range(3)]
    uids = Uids()
    entries: list[Entry] = []
    now = 100
    for _ in range(draw(st.integers(1, 12))):
        now += draw(st.integers(0, 20))
        replica = replicas[draw(st.integers(0, 2))]
        if entries and draw(st.booleans()):
            replica.receive(draw(st.sampled_from(entries)))
        new = next_value(draw, key, replica.value(key), uids)
        if new is None and replica.value(key) is None:
            continue
        entries.append(replica.write(key, new, now))
    want = fold(entries, rules)
    shuffled = draw(st.permutations(entries + draw(st.lists(st.sampled_from(entries)))))
    got = fold(shuffled, rules)
    assert got.value(rules) == want.value(rules)
    assert got.lease == want.lease
    assert got.tombstones == want.tombstones


@SETTINGS
@given(st.data())
def test_a_single_writers_chain_folds_to_its_last_write(data: st.DataObject) -> None:
    draw = data.draw
    key = draw(st.sampled_from(KEYS))
    rules = RULES[key]
    writer = Replica("w", 0)
    uids = Uids()
    last: bytes | None = None
    for i in range(draw(st.integers(1, 15))):
        base = writer.value(key)
        assert base == last
        new = next_value(draw, key, base, uids, single_writer=True)
        if new is None and base is None:
            continue
        writer.write(key, new, 100 + i)
        last = new
        state = writer.keys[key].state
        assert state.value(rules) == last
    assert fold(writer.entries(key), rules).value(rules) == last

"""Property tests of the merge (pure functions, no database): replicas that write concurrently
and exchange entries in any order, with duplicates and delays, converge to one value per key,
byte for byte, equal to the fold of all entries."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from shim.replication.merge import Entry, KeyState, describe_write, fold, identity, step
from shim.replication.policy import Policy

POLICY = Policy.load()
KEYS = [
    b"/registry/deployments/default/web",  # field merge, Kubernetes rules
    b"/registry/pods/default/p",
    b"/registry/leases/kube-system/l",  # whole-value
    b"/plain/config",  # field merge, default rules only (no identity)
]
RULES = {key: POLICY.rules_for(key) for key in KEYS}

LABEL_KEYS = ["app", "tier", "x", "y"]
FINALIZERS = ["f/a", "f/b", "f/c"]
CONDITIONS = ["Ready", "Available", "Progressing"]
OWNERS = ["o1", "o2"]
NODES = ["node-a", "node-b", "node-c"]

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- values -------------------------------------------------------------------------------------


def encode(doc: Any, style: int) -> bytes:
    """JSON in one of several byte forms (the merge must keep a writer's own bytes)."""
    if style == 0:
        return json.dumps(doc).encode()
    if style == 1:
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps(doc, indent=2).encode() + b"\n"


def new_object(draw: Any, uid: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "uid": uid,
            "generation": 1,
            "creationTimestamp": f"T-{uid}",
        },
        "spec": {
            "replicas": draw(st.integers(0, 5)),
            "template": {"spec": {"containers": [{"name": "c", "image": "img:1"}]}},
        },
    }
    labels = draw(st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from("12"), max_size=2))
    if labels:
        doc["metadata"]["labels"] = labels
    finalizers = draw(st.lists(st.sampled_from(FINALIZERS), unique=True, max_size=2))
    if finalizers:
        doc["metadata"]["finalizers"] = finalizers
    if draw(st.booleans()):
        doc["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    if draw(st.booleans()):
        doc["metadata"]["ownerReferences"] = [{"kind": "RS", "name": "o1", "uid": "o1"}]
    return doc


def patch(draw: Any, base: dict[str, Any], single_writer: bool) -> dict[str, Any]:
    """One to three edits of the kind controllers and users make. A single writer only makes
    edits the rules keep as written (no first-write-wins change, no finalizer added after
    deletion started)."""
    doc = copy.deepcopy(base)
    meta = doc.setdefault("metadata", {})
    spec = doc.setdefault("spec", {})
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 12))
        if kind == 0:
            meta.setdefault("labels", {})[draw(st.sampled_from(LABEL_KEYS))] = draw(
                st.sampled_from("123"))
        elif kind == 1:
            labels = meta.get("labels", {})
            if labels:
                del labels[draw(st.sampled_from(sorted(labels)))]
                if not labels:
                    del meta["labels"]  # Kubernetes omits empty maps
        elif kind == 2:
            meta.setdefault("annotations", {})[draw(st.sampled_from(LABEL_KEYS))] = draw(
                st.sampled_from("ab"))
        elif kind == 3 and "deletionTimestamp" not in meta:
            finalizers = meta.setdefault("finalizers", [])
            name = draw(st.sampled_from(FINALIZERS))
            if name not in finalizers:
                finalizers.insert(draw(st.integers(0, len(finalizers))), name)
        elif kind == 4 and meta.get("finalizers"):
            meta["finalizers"].remove(draw(st.sampled_from(meta["finalizers"])))
            if not meta["finalizers"]:
                del meta["finalizers"]  # Kubernetes omits empty lists
        elif kind == 5:
            # A spec change bumps the generation.
            if draw(st.booleans()):
                spec["replicas"] = draw(st.integers(0, 9))
            else:
                spec.setdefault("template", {})["image"] = draw(st.sampled_from("abc"))
            if isinstance(meta.get("generation"), int):
                meta["generation"] += 1
        elif kind == 6 and "nodeName" not in spec:
            spec["nodeName"] = draw(st.sampled_from(NODES))
        elif kind == 7:
            conditions = doc.setdefault("status", {}).setdefault("conditions", [])
            ctype = draw(st.sampled_from(CONDITIONS))
            condition = {"type": ctype, "status": draw(st.sampled_from(["True", "False"]))}
            for i, c in enumerate(conditions):
                if c["type"] == ctype:
                    conditions[i] = condition
                    break
            else:
                conditions.insert(draw(st.integers(0, len(conditions))), condition)
        elif kind == 8 and doc.get("status", {}).get("conditions"):
            conditions = doc["status"]["conditions"]
            conditions.pop(draw(st.integers(0, len(conditions) - 1)))
            if draw(st.booleans()):
                del doc["status"]["conditions"]
        elif kind == 9 and "deletionTimestamp" not in meta:
            meta["deletionTimestamp"] = draw(st.sampled_from(["D1", "D2"]))
        elif kind == 10:
            owners = meta.setdefault("ownerReferences", [])
            uid = draw(st.sampled_from(OWNERS))
            owners[:] = [o for o in owners if o["uid"] != uid]
            if draw(st.booleans()):
                owners.append({"kind": "RS", "name": uid, "uid": uid,
                               "controller": draw(st.booleans())})
            if not owners:
                del meta["ownerReferences"]
        elif kind == 11:
            doc.setdefault("status", {})["observedGeneration"] = meta.get("generation", 0)
        elif kind == 12:
            # JSON tells 1, 1.0 and true apart (Python's == does not).
            spec["paused"] = draw(st.sampled_from([0, 1, 1.0, True, False]))
    if not single_writer and draw(st.integers(0, 9)) == 0:
        # A concurrent writer that breaks a rule: changes a write-once field.
        spec["nodeName"] = draw(st.sampled_from(NODES))
    return doc


@dataclass
class Uids:
    n: int = 0

    def next(self) -> str:
        self.n += 1
        return f"uid-{self.n}"


def next_value(
    draw: Any,
    key: bytes,
    base: bytes | None,
    uids: Uids,
    single_writer: bool = False,
    replace: bool = True,
) -> bytes | None:
    """What a client writes over ``base`` (None: a delete). ``replace``: a put may replace
    an object by another incarnation in one write."""
    rules = RULES[key]
    style = draw(st.integers(0, 2))
    base_doc = None if base is None else json.loads(base) if base[:1] == b"{" else base
    choice = draw(st.integers(0, 19))
    if choice == 0:
        return b"k8s\x00" + bytes([draw(st.integers(0, 255))]) + b"\x01opaque"
    if isinstance(base_doc, dict) and choice < 3:
        return None
    if isinstance(base_doc, dict) and choice < 4 and replace and rules.identity is not None:
        # The object replaced by a new incarnation in one write.
        return encode(new_object(draw, uids.next()), style)
    if not isinstance(base_doc, dict):
        return encode(new_object(draw, uids.next()), style)
    return encode(patch(draw, base_doc, single_writer), style)


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

    def entries(self, key: bytes) -> list[Entry]:
        return [e for e in self.known.values() if e.key == key]

    def value(self, key: bytes) -> bytes | None:
        return fold(self.entries(key), RULES[key]).value(RULES[key])

    def tick(self, now: int) -> int:
        self.clock = max(self.clock + 1, now + self.skew)
        return self.clock

    def write(self, key: bytes, new: bytes | None, now: int, lease: int = 0) -> Entry:
        ops, base_uid, uid = describe_write(self.value(key), new, RULES[key])
        self.seq += 1
        entry = Entry(self.name, self.seq, self.tick(now), key, new is None, new or b"",
                      lease if new is not None else 0, ops, base_uid, uid)
        self.receive(entry)
        return entry

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
            step(inc.state, entry, rules)
            inc.top = entry.stamp
        else:
            inc.state = fold(self.entries(entry.key), rules)
        # resolve.Replica's way: newest entries step the stored bytes, late ones re-fold.
        stored = self.stored.setdefault(entry.key, Stored())
        newer = all(e.stamp < entry.stamp for e in self.entries(entry.key) if e is not entry)
        if newer:
            state = KeyState.from_stored(stored.value, stored.lease, stored.tombstones, rules)
            step(state, entry, rules)
        else:
            state = fold(self.entries(entry.key), rules)
        stored.tombstones |= state.tombstones
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


def simulate(data: st.DataObject, persisted: bool) -> None:
    draw = data.draw
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(2, 5))
    replicas = [Replica(f"n{i}", draw(st.integers(-30, 30))) for i in range(count)]
    uids = Uids()
    now = 100
    written: list[Entry] = []
    for _ in range(draw(st.integers(1, 25))):
        now += draw(st.integers(0, 20))
        if draw(st.integers(0, 2)):
            replica = replicas[draw(st.integers(0, count - 1))]
            key = draw(st.sampled_from(KEYS))
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
                dst.receive(entry)
            for key in {e.key for e in batch}:
                check_replica(dst, key, persisted)
    # Finally everything everywhere, in a different order at each replica.
    for replica in replicas:
        pending = written + rng.sample(written, len(written) // 2)
        rng.shuffle(pending)
        for entry in pending:
            replica.receive(entry)
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

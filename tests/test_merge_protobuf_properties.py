"""Property tests of the merge on Kubernetes protobuf objects (pure functions, no database).

Sites edit a Deployment the way controllers and users do (labels, finalizers, conditions,
scale, fields shim's schema does not know, deletes, re-creations, values in another form) and
exchange entries in any order, with duplicates, on skewed clocks. Every site must hold, at
every moment, the fold of the entries it has (stepping its stored bytes as resolve.Replica does,
re-folding late arrivals), and in the end the same bytes everywhere. Values are written by
Google's protobuf runtime (tests/support/k8s_pb.py). Deterministic: hypothesis derandomized,
every choice drawn from it, no clock or node id that varies between runs.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from shim.replication import k8sproto
from shim.replication.entry import Entry
from shim.replication.merge import KeyState, fold, step
from shim.replication.policy import Policy
from shim.replication.values import identity
from shim.replication.write_ops import describe_write, reproduces_write
from tests.support import k8s_pb

POLICY = Policy.load()
KEY = b"/registry/deployments/default/web"
RULES = POLICY.rules_for(KEY)
SETTINGS = settings(
    max_examples=60, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LABELS = ["app", "tier", "x"]
FINALIZERS = ["f/a", "f/b", "f/c"]
CONDITIONS = ["Progressing", "Available", "ReplicaFailure"]
OWNERS = ["o1", "o2"]


# -- what writers write ------------------------------------------------------------------------


def edit(draw: Any, obj: Any, rule_abiding: bool) -> Any:
    """One to three edits of a Deployment. A rule-abiding writer (a single writer whose
    writes must be kept exactly) changes no write-once field and adds no finalizer once
    deletion started."""
    d = k8s_pb.edited(obj, lambda _: None)
    meta, spec, status = d.metadata, d.spec, d.status
    deleting = meta.HasField("deletionTimestamp")
    for _ in range(draw(st.integers(1, 3))):
        choice = draw(st.integers(0, 13))
        if choice == 0:
            meta.labels[draw(st.sampled_from(LABELS))] = draw(st.sampled_from("123"))
        elif choice == 1 and meta.labels:
            del meta.labels[draw(st.sampled_from(sorted(meta.labels)))]
        elif choice == 2:
            meta.annotations[draw(st.sampled_from(LABELS))] = draw(st.sampled_from("ab"))
        elif choice == 3 and not deleting:
            name = draw(st.sampled_from(FINALIZERS))
            if name not in meta.finalizers:
                meta.finalizers.insert(draw(st.integers(0, len(meta.finalizers))), name)
        elif choice == 4 and meta.finalizers:
            meta.finalizers.remove(draw(st.sampled_from(list(meta.finalizers))))
        elif choice == 5:
            spec.replicas = draw(st.integers(-1, 9))
            meta.generation += 1
        elif choice == 6:
            spec.paused = draw(st.booleans())  # a field shim's schema does not know
        elif choice == 7:
            spec.template.spec.containers[0].image = draw(st.sampled_from(["a:1", "b:2"]))
            meta.generation += 1
        elif choice == 8:
            ctype = draw(st.sampled_from(CONDITIONS))
            new = k8s_pb.condition(ctype, draw(st.sampled_from(["True", "False"])),
                                   draw(st.integers(0, 3)))
            for i, c in enumerate(status.conditions):
                if c.type == ctype:
                    status.conditions[i].CopyFrom(new)
                    break
            else:
                status.conditions.insert(draw(st.integers(0, len(status.conditions))), new)
        elif choice == 9 and status.conditions:
            del status.conditions[draw(st.integers(0, len(status.conditions) - 1))]
        elif choice == 10:
            status.replicas = draw(st.integers(0, 5))
            status.observedGeneration = meta.generation
        elif choice == 11 and not deleting:
            meta.deletionTimestamp.seconds = draw(st.sampled_from([1, 2]))
            meta.deletionTimestamp.nanos = 0
            deleting = True
        elif choice == 12:
            uid = draw(st.sampled_from(OWNERS))
            kept = [o for o in meta.ownerReferences if o.uid != uid]
            del meta.ownerReferences[:]
            meta.ownerReferences.extend(kept)
            if draw(st.booleans()):
                meta.ownerReferences.add(kind="ReplicaSet", name=uid, uid=uid,
                                         apiVersion="apps/v1", controller=draw(st.booleans()))
        elif choice == 13:
            meta.managedFields[0].time.seconds += draw(st.integers(1, 5))
    if not rule_abiding and draw(st.integers(0, 9)) == 0:
        meta.creationTimestamp.seconds = draw(st.integers(0, 3))  # write-once: ignored
    return d


Uids = Iterator[int]  # numbers for new incarnations, one run of the test each


def next_value(draw: Any, base: bytes | None, uids: Uids, rule_abiding: bool) -> bytes | None:
    """What a client writes over ``base`` (None: a delete)."""
    current = k8s_pb.parse(base, "Deployment") if base and _is_deployment(base) else None
    choice = draw(st.integers(0, 24))
    if current is None:
        if choice == 0:
            return b"k8s:enc:aescbc:v1:key1:" + bytes([draw(st.integers(0, 255))])
        return k8s_pb.stored(k8s_pb.deployment(f"uid-{next(uids)}", draw(st.integers(0, 3))))
    if choice == 0:
        return None
    if choice == 1:  # replaced by another incarnation in one write
        return k8s_pb.stored(k8s_pb.deployment(f"uid-{next(uids)}", draw(st.integers(0, 3))))
    if choice == 2:  # the same object written in another form (JSON), whole
        return json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
            "name": "web", "uid": current.metadata.uid}}).encode()
    return k8s_pb.stored(edit(draw, current, rule_abiding))


def _is_deployment(value: bytes | None) -> bool:
    return value is not None and k8sproto.object_type(value) == ("apps/v1", "Deployment")


# -- sites --------------------------------------------------------------------------------------


@dataclass
class Site:
    """A replica of the key: every entry it has, and the value it stores, kept the way
    resolve.Replica keeps it (a newest entry steps the stored bytes and a tombstone table
    that is only added to; a late one re-folds)."""

    name: str
    skew: int
    clock: int = 0
    seq: int = 0
    known: dict[tuple[str, int], Entry] = field(default_factory=dict)
    value: bytes | None = None
    lease: int = 0
    tombstones: set[str] = field(default_factory=set)

    def fold(self) -> bytes | None:
        return fold(self.known.values(), RULES).value(RULES)

    def write(self, new: bytes | None, now: int) -> Entry:
        ops, base_uid, uid = describe_write(self.value, new, RULES)
        self.seq += 1
        self.clock = max(self.clock + 1, now + self.skew)
        entry = Entry(self.name, self.seq, self.clock, KEY, new is None, new or b"", 0, ops,
                      base_uid, uid)
        if new is not None and ops is not None and reproduces_write(ops, RULES):
            # resolve.Replica's fast path stores the written bytes without folding: they must
            # be exactly what the fold keeps.
            state = KeyState.from_stored(self.value, self.lease, self.tombstones, RULES)
            step(state, entry, RULES)
            assert state.value(RULES) == new
        self.receive(entry)
        return entry

    def receive(self, entry: Entry) -> None:
        ident = (entry.origin, entry.seq)
        if ident in self.known:
            return
        self.clock = max(self.clock, entry.hlc)
        newest = all(e.stamp < entry.stamp for e in self.known.values())
        self.known[ident] = entry
        if newest:
            state = KeyState.from_stored(self.value, self.lease, self.tombstones, RULES)
            step(state, entry, RULES)
        else:
            state = fold(self.known.values(), RULES)
        self.tombstones |= state.tombstones
        self.value, self.lease = state.value(RULES), state.lease
        assert self.value == self.fold(), f"{self.name} after {ident}"


def check_value(value: bytes | None) -> None:
    """A merged protobuf value is valid protobuf of the object, in the codec's own layout."""
    if _is_deployment(value):
        assert value is not None
        k8s_pb.parse(value, "Deployment")
        tree = k8sproto.decode(value)
        assert tree is not None


@SETTINGS
@given(st.data())
def test_sites_converge_to_the_fold_of_all_entries(data: st.DataObject) -> None:
    draw = data.draw
    sites = [Site(f"n{i}", draw(st.integers(-30, 30))) for i in range(draw(st.integers(2, 4)))]
    uids = itertools.count(1)
    written: list[Entry] = []
    now = 100
    for _ in range(draw(st.integers(1, 24))):
        now += draw(st.integers(0, 20))
        if draw(st.integers(0, 2)):
            site = draw(st.sampled_from(sites))
            new = next_value(draw, site.value, uids, rule_abiding=False)
            if new is None and site.value is None:
                continue
            written.append(site.write(new, now))
            note(f"{site.name} writes {written[-1].stamp} ops={written[-1].ops}")
        else:
            # Some of what one site has reaches another, in any order, some twice.
            src, dst = draw(st.sampled_from(sites)), draw(st.sampled_from(sites))
            if src.known:
                known = sorted(src.known.values(), key=lambda e: e.stamp)
                for entry in draw(st.lists(st.sampled_from(known), max_size=2 * len(known))):
                    dst.receive(entry)
        for site in sites:
            check_value(site.value)
    # Everything everywhere, each site in its own order, with duplicates.
    want = fold(written, RULES).value(RULES)
    for site in sites:
        for entry in draw(st.permutations(written + written[: len(written) // 2])):
            site.receive(entry)
        assert site.value == want
    check_value(want)
    # A deleted incarnation is not alive.
    deleted = {e.base_uid for e in written if e.deleted}
    assert identity(fold(written, RULES).doc, RULES) not in deleted


@SETTINGS
@given(st.data())
def test_a_single_writers_chain_keeps_every_write_as_written(data: st.DataObject) -> None:
    draw = data.draw
    site = Site("w", 0)
    uids = itertools.count(1)
    for i in range(draw(st.integers(1, 12))):
        new = next_value(draw, site.value, uids, rule_abiding=True)
        if new is None and site.value is None:
            continue
        site.write(new, 100 + i)
        assert site.value == new
    assert site.fold() == site.value

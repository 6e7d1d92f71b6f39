"""Random malformed entries and random operation lists from a peer with a valid token, fed to
real `shim serve` processes: the link stays up, no key is wedged (an honest write to every
key afterwards applies) and the honest nodes converge byte for byte."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from shim.pb import replication_pb2 as pb
from shim.replication.signing import Signer
from tests.support import ShimServer, k8s_pb
from tests.support.lying_peer import LyingPeer, hlc_now
from tests.support.replication import get, node_args, put, wait_converged, wait_for

Factory = Callable[..., ShimServer]
KEYS = [b"/registry/pods/default/a", b"/registry/configmaps/default/b",
        b"/registry/leases/default/c", b"/plain/d", b"/registry/deployments/default/e"]
MARKER = b"/marker"
NAMES = ["set", "del", "fww", "add", "sadd", "srem", "kset", "kdel", "order", "del-empty", "x"]
FIELDS = ["metadata", "spec", "status", "uid", "name", "generation", "finalizers", "labels",
          "conditions", "ownerReferences", "replicas", "data", "type", "creationTimestamp"]
UIDS = ["", "u1", "u2"]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3)),
    max_leaves=8,
)
path = st.one_of(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4),
                 st.lists(json_leaf, max_size=3), json_leaf)
operation = st.one_of(
    st.builds(lambda name, p, args: [name, p, *args], st.sampled_from(NAMES), path,
              st.lists(json_value, max_size=3)),
    json_value,
)


def document(uid: str, spec: Any) -> bytes:
    meta = {"name": "a", "namespace": "default", "generation": 1}
    if uid:
        meta["uid"] = uid
    return json.dumps({"metadata": meta, "spec": spec}).encode()


# Kubernetes objects as kube-apiserver stores them (protobuf), and bytes that only look so.
protobuf = st.one_of(
    st.builds(lambda uid, n: k8s_pb.stored(k8s_pb.deployment(uid=uid or "u1", replicas=n)),
              st.sampled_from(UIDS), st.integers(0, 9)),
    st.builds(lambda tail: b"k8s\x00" + tail, st.binary(max_size=24)),
)
value = st.one_of(st.builds(document, st.sampled_from(UIDS), json_value), protobuf,
                  st.binary(max_size=16), st.builds(lambda v: json.dumps(v).encode(), json_value))
# Stamps now (None), in the past, held for good, or beyond what a table holds; never just
# ahead, which would be released and win over the honest writes by the rules.
stamp = st.one_of(st.none(), st.integers(1, hlc_now() >> 1),
                  st.integers(2**62, 2**63 - 1), st.integers(2**63, 2**64 - 1))


@st.composite
def raw_entry(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "key": draw(st.sampled_from(KEYS)), "value": draw(value), "hlc": draw(stamp),
        "deleted": draw(st.booleans()), "uid": draw(st.sampled_from(UIDS)),
        "base_uid": draw(st.sampled_from(UIDS)),
        "kind": draw(st.sampled_from(["", "", "", "auth", "junk"])),
        # The next sequence number, or one no table holds (a seq far ahead is another case:
        # a forged origin, issue 17 case 6).
        "seq": draw(st.one_of(st.none(), st.none(), st.just(0), st.integers(2**63, 2**64 - 1))),
    }
    if draw(st.booleans()):
        fields["ops"] = draw(st.lists(operation, max_size=4))
    return fields


@dataclass
class Marker:
    """A second origin on the same link, whose entries mark how far the node has read: the
    lying origin may stall its own sequence for good (an entry it signed with a stamp beyond
    2^63-1 has no place in it), which stops no key, no link and no other origin."""

    signer: Signer = field(default_factory=Signer)
    seq: int = 0

    def next(self, peer: LyingPeer, value: bytes) -> pb.Entry:
        self.seq += 1
        return peer.entry(MARKER, value, origin=self.signer.origin, seq=self.seq,
                          signer=self.signer)


@pytest.fixture
def cluster(
    shim_factory: Factory,
) -> Iterator[tuple[ShimServer, ShimServer, LyingPeer, Marker]]:
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    with LyingPeer(n1.endpoint) as peer:
        yield n1, n2, peer, Marker()


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=st.lists(st.lists(raw_entry(), min_size=1, max_size=6), min_size=1, max_size=3))
def test_no_entry_stops_a_link_or_wedges_a_key(
    cluster: tuple[ShimServer, ShimServer, LyingPeer, Marker],
    batches: list[list[dict[str, Any]]],
) -> None:
    n1, n2, peer, markers = cluster
    for batch in batches:
        entries: list[pb.Entry] = []
        for fields in batch:
            fields = dict(fields)
            key, data = fields.pop("key"), fields.pop("value")
            ops = fields.pop("ops", None)
            entries.append(peer.entry(key, data, ops=ops, **fields))
        note(f"batch: {entries}")
        peer.send(*entries)
    # The batches are applied in order: once the marker is there, all of them were handled.
    marker = markers.next(peer, str(peer.seq).encode())
    peer.send(marker)
    wait_for(lambda: get(n1.endpoint, MARKER), lambda v: v == marker.value, "the marker")
    assert peer.status() is None, f"the node ended the link: {peer.status()}"
    # An honest write to every key applies, and both nodes hold exactly it.
    honest = {key: document(f"honest-{peer.seq}", {"n": peer.seq}) for key in KEYS}
    for key, data in honest.items():
        put(n1.endpoint, key, data)
    snapshot = wait_converged([n1, n2], expect=lambda s: all(
        s.get(key, (b"",))[0] == data for key, data in honest.items()))
    assert snapshot[MARKER][0] == marker.value

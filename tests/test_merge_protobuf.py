"""Kubernetes objects stored as protobuf (kube-apiserver's default) merge field by field.

The values are written by Google's protobuf runtime from message classes declared in
tests/support/k8s_pb.py (field numbers of k8s.io/api), or byte by byte from the schema, never by
shim's codec; merged results are compared with what that runtime writes for the expected
object, so "re-encoded as Go writes it" is checked against an encoder shim does not share.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.pb.kv_pb2 import KeyValue
from shim.replication import k8sproto
from shim.replication.entry import Entry
from shim.replication.k8sproto import EncodeError, ProtoObject
from shim.replication.merge import KeyState, MissingBase, fold, step
from shim.replication.ops import SetField, SinceEntry
from shim.replication.policy import Policy
from shim.replication.resolve import MergeRule, Replica, _over_its_base
from shim.replication.values import decode, identity
from shim.replication.write_ops import describe_write
from tests.support import k8s_pb, merging
from tests.support.k8s_pb import condition, edited

POLICY = Policy.load()
KEY = b"/registry/deployments/default/web"
RULES = POLICY.rules_for(KEY)
POD_KEY = b"/registry/pods/default/web-1"
POD_RULES = POLICY.rules_for(POD_KEY)
CM_KEY = b"/registry/configmaps/default/settings"
CM_RULES = POLICY.rules_for(CM_KEY)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(origin: str, seq: int, hlc: int, base: bytes | None, new: bytes | None,
          key: bytes = KEY) -> Entry:
    return merging.write(origin, seq, hlc, base, new, POLICY.rules_for(key), key)


def resolve(entries: list[Entry], key: bytes = KEY) -> bytes | None:
    """The value the entries fold to in every arrival order, also as resolve.Replica keeps a
    key (stepping stored bytes, re-folding late entries)."""
    rules = POLICY.rules_for(key)
    value = merging.resolve(entries, rules)
    assert merging.as_resolve_keeps_it(entries, rules) == value
    assert merging.as_resolve_keeps_it(entries[::-1], rules) == value
    return value


def stored(obj: Any) -> bytes:
    return k8s_pb.stored(obj)


def concurrent(base: Any, *edits: Any, key: bytes = KEY) -> bytes | None:
    """``base`` created at a, then each edit of it made at its own site concurrently (each
    over ``base``), later edits with later stamps."""
    entries = [write("a", 1, 10, None, stored(base), key)]
    for i, change in enumerate(edits):
        entries.append(write(f"s{i}", 1, 20 + i, stored(base), stored(edited(base, change)), key))
    return resolve(entries, key)


# -- the codec ---------------------------------------------------------------------------------


def test_a_pod_decodes_into_the_tree_json_merges_and_encodes_back_byte_for_byte() -> None:
    pod = k8s_pb.pod()
    value = stored(pod)
    tree = k8sproto.decode(value)
    assert isinstance(tree, ProtoObject)
    assert (tree["apiVersion"], tree["kind"]) == ("v1", "Pod")
    meta = tree["metadata"]
    assert meta["name"] == "web-7d4b9c8f6-x2x9z"
    assert meta["uid"] == "6c1f0b54-3f51-4bd8-9b0e-2f4c1a7d9e10"
    assert meta["generation"] == 0
    assert meta["creationTimestamp"] == {"seconds": 1_700_000_000, "nanos": 0}
    assert meta["labels"] == {"app": "web", "pod-template-hash": "7d4b9c8f6", "tier": "front"}
    assert meta["ownerReferences"] == [{
        "kind": "ReplicaSet", "name": "web-7d4b9c8f6",
        "uid": "0b6f3c2e-8d1a-4e57-a1c9-55d2f0e6b7a3", "apiVersion": "apps/v1",
        "controller": True, "blockOwnerDeletion": True,
    }]
    assert meta["managedFields"] == [
        b64(m.SerializeToString(deterministic=True)) for m in pod.metadata.managedFields
    ]
    assert tree["spec"]["nodeName"] == "node-1"
    assert [c["type"] for c in tree["status"]["conditions"]] == [
        "Initialized", "Ready", "ContainersReady", "PodScheduled"]
    # A field the schema does not name stays under its number: all its bytes, tags included.
    containers = k8s_pb.new("PodSpec", containers=pod.spec.containers)
    assert tree["spec"]["#2"] == b64(containers.SerializeToString())
    assert tree["status"]["#1"] == b64(k8s_pb.new("PodStatus", phase="Running").SerializeToString())
    assert k8sproto.encode(tree) == value
    # The tree is JSON data (operations carry parts of it between nodes).
    assert k8sproto.encode(ProtoObject(json.loads(json.dumps(tree)))) == value


def ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (tags and lengths below 128 here)."""
    assert tag < 128 and len(payload) < 128
    return bytes([tag, len(payload)]) + payload


# A ConfigMap written byte by byte from the schema: runtime.Unknown {1 typeMeta {1 apiVersion,
# 2 kind}, 2 raw, 3 contentEncoding, 4 contentType}; ConfigMap {1 metadata {1 name, 5 uid,
# 11 labels}, 2 data, 3 binaryData, 4 immutable}; map entries {1 key, 2 value}.
HAND_WRITTEN = b"k8s\x00" + ld(0x0A, ld(0x0A, b"v1") + ld(0x12, b"ConfigMap")) + ld(
    0x12,
    ld(0x0A, ld(0x0A, b"settings") + ld(0x2A, b"cm-1") + ld(0x5A, ld(0x0A, b"k") + ld(0x12, b"v")))
    + ld(0x12, ld(0x0A, b"a") + ld(0x12, b"1"))
    + ld(0x12, ld(0x0A, b"b") + ld(0x12, "ü".encode()))
    + ld(0x1A, ld(0x0A, b"bin") + ld(0x12, b"\x00\xff"))
    + b"\x20\x01",
) + b"\x1a\x00\x22\x00"


def test_a_hand_written_vector_decodes_as_the_schema_says() -> None:
    by_runtime = k8s_pb.parse(HAND_WRITTEN, "ConfigMap")  # the vector is what we think it is
    assert by_runtime.metadata.name == "settings" and by_runtime.binaryData["bin"] == b"\x00\xff"
    assert k8sproto.decode(HAND_WRITTEN) == {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "uid": "cm-1", "labels": {"k": "v"}},
        "data": {"a": "1", "b": "ü"},
        "binaryData": {"bin": b64(b"\x00\xff")},
        "immutable": True,
    }
    assert k8sproto.encode(k8sproto.decode(HAND_WRITTEN)) == HAND_WRITTEN  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "obj",
    [
        k8s_pb.deployment(),
        k8s_pb.deployment(replicas=-1),  # a negative int32: ten bytes, as Go writes it
        k8s_pb.config_map(data={"z": "1", "é": "2", "a": "3", "Z": "4", "~": "5", "😀": "6"},
                          binary={"b": b"", "a": bytes(range(256))}),
        edited(k8s_pb.pod(), lambda p: p.metadata.labels.update({"ünï": "cödé ✓", "b": ""})),
        edited(k8s_pb.pod(), lambda p: p.metadata.ClearField("creationTimestamp")),
    ],
    ids=["deployment", "negative-int32", "map-order", "unicode", "no-timestamp"],
)
def test_objects_round_trip_byte_for_byte(obj: Any) -> None:
    value = stored(obj)
    tree = k8sproto.decode(value)
    assert tree is not None
    assert k8sproto.encode(tree) == value
    assert decode(value, POLICY.rules_for(KEY)) == tree


def test_map_entries_are_sorted_as_go_sorts_strings() -> None:
    """Go sorts map keys with sort.Strings: bytewise, so a key sorts before the keys it is a
    prefix of. (The Python runtime orders those the other way, so this vector is by hand.)"""
    entries = [("", "e"), ("a", "1"), ("app", "2"), ("b", "3"), ("é", "4")]
    tree = k8sproto.decode(HAND_WRITTEN)
    assert tree is not None
    tree["data"] = dict(reversed(entries))
    data = b"".join(ld(0x12, ld(0x0A, k.encode()) + ld(0x12, v.encode())) for k, v in entries)
    assert data in k8sproto.encode(tree)


def envelope(raw: bytes, encoding: str = "", content_type: str = "") -> bytes:
    unknown = k8s_pb.new("Unknown", typeMeta=k8s_pb.new("TypeMeta", apiVersion="v1", kind="Pod"),
                         raw=raw, contentEncoding=encoding, contentType=content_type)
    return b"k8s\x00" + unknown.SerializeToString()


GOOD = stored(k8s_pb.pod())
GOOD_RAW = k8s_pb.pod().SerializeToString(deterministic=True)
NOT_DECODED = {
    "encrypted at rest": b"k8s:enc:aescbc:v1:key1:" + bytes(range(200)),
    "truncated": GOOD[:-7],
    "truncated raw": envelope(GOOD_RAW[:-3]),
    "gzip content encoding": envelope(GOOD_RAW, encoding="gzip"),
    "json content type": envelope(b"{}", content_type="application/json"),
    "no raw": b"k8s\x00" + ld(0x0A, ld(0x0A, b"v1") + ld(0x12, b"Pod")),
    "extra typeMeta field": b"k8s\x00" + ld(0x0A, ld(0x0A, b"v1") + ld(0x12, b"Pod")
                                           + ld(0x1A, b"x")) + ld(0x12, b""),
    "unknown envelope field": GOOD + ld(0x2A, b"x"),
    "garbage": b"k8s\x00\xff\xff\xff\xff",
    "overlong varint": b"k8s\x00\x0a" + b"\xff" * 11,
    "invalid utf-8 name": envelope(ld(0x0A, ld(0x0A, b"\xff\xfe"))),
    "wire type mismatch": envelope(ld(0x0A, b"\x08\x01")),  # metadata.name as a varint
    "a group": envelope(ld(0x0A, b"\x0b\x0c")),  # wire types 3/4: never written by Go
    "field number 0": envelope(ld(0x0A, b"\x02\x00")),
    "field number 2**29": envelope(ld(0x0A, b"\x80\x80\x80\x80\x10\x00")),
    "metadata twice": envelope(ld(0x0A, b"") + ld(0x0A, b"")),
    "a map key twice": envelope(ld(0x0A, ld(0x5A, ld(0x0A, b"k")) + ld(0x5A, ld(0x0A, b"k")))),
    "a bool of 2": envelope(ld(0x0A, ld(0x6A, b"\x30\x02"))),  # ownerReferences[0].controller
    "an int32 out of range": stored(k8s_pb.deployment()).replace(
        b"\x08\x03", b"\x08\xff\xff\xff\xff\x0f", 1),  # spec.replicas = 2**32 - 1
}


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field of any length."""
    size, head = len(payload), bytearray([tag])
    while size >= 0x80:
        head.append(size & 0x7F | 0x80)
        size >>= 7
    return bytes(head) + bytes([size]) + payload


@pytest.mark.parametrize("size", [0, 100, 1000, 20000])
def test_the_envelope_reads_the_same_in_go_s_layout_and_any_other(size: int) -> None:
    """kube-apiserver's layout is read by a shortcut (``k8sproto._envelope``); every other
    order of the same fields is read the same by the general loop."""
    raw = field(0x0A, field(0x0A, b"n" * size))  # metadata.name
    type_meta = field(0x0A, ld(0x0A, b"v1") + ld(0x12, b"Pod"))
    layouts = [
        type_meta + field(0x12, raw) + b"\x1a\x00\x22\x00",  # Go's
        field(0x12, raw) + type_meta + b"\x1a\x00\x22\x00",
        type_meta + field(0x12, raw) + b"\x22\x00\x1a\x00",
        type_meta + field(0x12, raw),
        type_meta + field(0x12, raw) + b"\x1a\x00\x22\x00\x1a\x00",
    ]
    for layout in layouts:
        value = k8sproto.PREFIX + layout
        for _ in range(2):  # the type not yet seen, then seen
            api_version, kind, start, end = k8sproto.envelope(value)
            assert (api_version, kind, value[start:end]) == ("v1", "Pod", raw)
    with pytest.raises(k8sproto.DecodeError):
        k8sproto.envelope(k8sproto.PREFIX + type_meta + field(0x12, raw) + b"\x1a\x01x\x22\x00")


@pytest.mark.parametrize("value", NOT_DECODED.values(), ids=NOT_DECODED.keys())
def test_values_the_codec_does_not_read_stay_opaque_and_resolve_whole(value: bytes) -> None:
    assert k8sproto.decode(value) is None
    assert decode(value, RULES) == value
    base = stored(k8s_pb.deployment())
    later = stored(k8s_pb.deployment(replicas=7))
    entries = [write("a", 1, 10, None, base), write("b", 1, 20, base, value)]
    assert entries[1].ops is None  # written whole
    assert resolve(entries) == value
    # A write over the opaque value is whole too, and the later one wins.
    entries.append(write("c", 1, 30, value, later))
    assert entries[2].ops is None
    assert resolve(entries) == later


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda t: t["spec"].update(replicas="3"), "replicas must be an int32"),
        (lambda t: t["spec"].update(replicas=1.5), "replicas must be an int32"),
        (lambda t: t["spec"].update(replicas=2**31), "replicas must be an int32"),
        (lambda t: t["spec"].update(replicas=True), "replicas must be an int32"),
        (lambda t: t["metadata"]["labels"].update(a=1), "labels['a'] must be a string"),
        (lambda t: t["metadata"].update(finalizers="f"), "finalizers must be a list"),
        (lambda t: t["metadata"].update(uid=None), "uid must be a string"),
        (lambda t: t["metadata"].update(creationTimestamp="T"), "creationTimestamp must be an"),
        (lambda t: t.update(nonsense=1), "Deployment has no field 'nonsense'"),
        (lambda t: t["metadata"].update({"#5": b64(b"*\x01u")}), "ObjectMeta has no field '#5'"),
        (lambda t: t["spec"].update({"#7": b64(b"\x40\x01")}), "#7 holds field 8"),
        (lambda t: t["spec"].update({"#7": "not base64!"}), "#7 is not base64"),
        (lambda t: t["spec"].update({"#7": b64(b"\x38")}), "#7 is not protobuf"),
        (lambda t: t["spec"].update({"#07": b64(b"\x38\x01")}), "DeploymentSpec has no field"),
        (lambda t: t.update(kind=7), "apiVersion and kind must be strings"),
    ],
)
def test_a_tree_its_schema_cannot_hold_is_refused(change: Any, reason: str) -> None:
    tree = k8sproto.decode(stored(k8s_pb.deployment()))
    assert tree is not None
    change(tree)
    with pytest.raises(EncodeError) as refused:
        k8sproto.encode(tree)
    assert str(refused.value).startswith(reason), str(refused.value)


def test_operations_the_schema_cannot_hold_change_nothing() -> None:
    """Operations are JSON: a peer's operation can put a value where protobuf has no room for
    it. The merge refuses that entry (the object stays as it was) rather than storing bytes
    that are not the object, or failing."""
    base = stored(k8s_pb.deployment())
    state = KeyState.from_stored(base, 0, (), RULES)
    bad = Entry("b", 1, 20, KEY, False, base, 0, [SetField(("spec", "replicas"), "three")],
                "uid-1", "uid-1")
    assert step(state, bad, RULES) is False
    assert state.value(RULES) == base


# -- the merge rules on protobuf objects --------------------------------------------------------


def test_a_deployment_scaled_at_one_site_labelled_and_conditioned_at_another() -> None:
    base = k8s_pb.deployment()

    def scale(d: Any) -> None:
        d.spec.replicas = 5
        d.metadata.generation += 1

    def label_and_condition(d: Any) -> None:
        d.metadata.labels["team"] = "edge"
        d.status.conditions.append(condition("Available", "True"))

    merged = concurrent(base, scale, label_and_condition)
    # Byte for byte what the protobuf runtime writes for the object with all three edits.
    assert merged == stored(edited(edited(base, scale), label_and_condition))


def test_labels_and_annotations_merge_key_by_key() -> None:
    base = k8s_pb.deployment()

    def a(d: Any) -> None:
        d.metadata.labels["a"] = "1"
        d.metadata.labels["shared"] = "from-a"
        del d.metadata.labels["tier"]
        d.metadata.annotations["x"] = "a"

    def b(d: Any) -> None:
        d.metadata.labels["b"] = "2"
        d.metadata.labels["shared"] = "from-b"
        d.metadata.annotations["y"] = "b"

    merged = k8s_pb.parse(concurrent(base, a, b) or b"", "Deployment")
    assert dict(merged.metadata.labels) == {"app": "web", "a": "1", "b": "2", "shared": "from-b"}
    assert dict(merged.metadata.annotations) == {"note": "a", "x": "a", "y": "b"}


def test_removing_the_last_label_keeps_one_added_concurrently() -> None:
    base = edited(k8s_pb.deployment(), lambda d: d.metadata.ClearField("labels"))
    merged = concurrent(
        edited(base, lambda d: d.metadata.labels.update({"a": "1"})),
        lambda d: d.metadata.ClearField("labels"),
        lambda d: d.metadata.labels.update({"b": "2"}),
    )
    assert dict(k8s_pb.parse(merged or b"", "Deployment").metadata.labels) == {"b": "2"}


def test_finalizers_are_a_set_and_none_is_added_once_deletion_started() -> None:
    base = edited(k8s_pb.deployment(), lambda d: d.metadata.finalizers.extend(["f/a", "f/b"]))

    def swap(d: Any) -> None:
        d.metadata.finalizers.remove("f/b")
        d.metadata.finalizers.append("f/c")

    merged = concurrent(base, swap, lambda d: d.metadata.finalizers.append("f/d"))
    assert list(k8s_pb.parse(merged or b"", "Deployment").metadata.finalizers) == [
        "f/a", "f/c", "f/d"]

    def delete(d: Any) -> None:
        d.metadata.deletionTimestamp.seconds = 1_700_000_500
        d.metadata.deletionTimestamp.nanos = 0
        d.metadata.deletionGracePeriodSeconds = 0

    merged = concurrent(base, delete, lambda d: d.metadata.finalizers.append("f/late"))
    after = k8s_pb.parse(merged or b"", "Deployment")
    assert list(after.metadata.finalizers) == ["f/a", "f/b"]
    assert after.metadata.deletionTimestamp.seconds == 1_700_000_500


def test_owner_references_merge_by_uid_and_conditions_by_type() -> None:
    def owner(uid: str, controller: bool = False) -> Any:
        return k8s_pb.new("OwnerReference", kind="ReplicaSet", name=uid, uid=uid,
                          apiVersion="apps/v1", controller=controller, blockOwnerDeletion=True)

    base = edited(k8s_pb.deployment(), lambda d: d.metadata.ownerReferences.extend(
        [owner("o1"), owner("o2")]))

    def a(d: Any) -> None:
        del d.metadata.ownerReferences[0]
        d.status.conditions[0].status = "False"

    def b(d: Any) -> None:
        d.metadata.ownerReferences[1].controller = True
        d.metadata.ownerReferences.append(owner("o3"))
        d.status.conditions.append(condition("Available", "True"))

    merged = k8s_pb.parse(concurrent(base, a, b) or b"", "Deployment")
    assert [(o.uid, o.controller) for o in merged.metadata.ownerReferences] == [
        ("o2", True), ("o3", False)]
    assert [(c.type, c.status) for c in merged.status.conditions] == [
        ("Progressing", "False"), ("Available", "True")]


def test_generation_is_a_counter_and_write_once_fields_keep_the_first_write() -> None:
    base = k8s_pb.deployment()

    def bump(replicas: int) -> Any:
        def change(d: Any) -> None:
            d.spec.replicas = replicas
            d.metadata.generation += 1
        return change

    def rewrite_identity(d: Any) -> None:  # breaks the rules: these never change
        d.metadata.name = "other"
        d.metadata.creationTimestamp.seconds = 1
        d.spec.paused = True

    merged = k8s_pb.parse(concurrent(base, bump(4), bump(6), rewrite_identity) or b"",
                          "Deployment")
    assert merged.metadata.generation == 3  # two concurrent bumps from 1
    assert merged.spec.replicas == 6  # last writer wins
    assert merged.metadata.name == "web"
    assert merged.metadata.creationTimestamp.seconds == 1_700_000_000
    assert merged.spec.paused is True  # a field the schema does not name merges on its own


def test_resource_version_is_node_local_and_managed_fields_are_atomic() -> None:
    base = k8s_pb.deployment()
    entry = write("a", 2, 20, stored(base), stored(edited(
        base, lambda d: setattr(d.metadata, "resourceVersion", "12345"))))
    assert entry.ops == []  # nothing to replicate

    def manage(manager: str) -> Any:
        def change(d: Any) -> None:
            d.metadata.managedFields[0].manager = manager
            d.metadata.managedFields.add(manager=manager + "-2", operation="Apply")
        return change

    merged = k8s_pb.parse(concurrent(base, manage("a"), manage("b")) or b"", "Deployment")
    assert [m.manager for m in merged.metadata.managedFields] == ["b", "b-2"]


def test_unknown_fields_survive_and_resolve_per_field_number() -> None:
    """spec.paused (7), spec.minReadySeconds (5), spec.template (3) and status.replicas (2) are
    not in shim's schema: each is one value, merged apart from the others."""
    base = k8s_pb.deployment()

    def a(d: Any) -> None:
        d.spec.paused = True
        d.spec.template.spec.containers[0].image = "nginx:2"
        d.status.readyReplicas = 3

    def b(d: Any) -> None:
        d.spec.minReadySeconds = 10
        d.spec.template.metadata.labels["x"] = "y"  # same field number as a's image
        d.status.replicas = 4

    merged = k8s_pb.parse(concurrent(base, a, b) or b"", "Deployment")
    assert merged.spec.paused is True and merged.spec.minReadySeconds == 10
    assert (merged.status.readyReplicas, merged.status.replicas) == (3, 4)
    # spec.template is one value: b's write is later and wins whole.
    assert merged.spec.template.spec.containers[0].image == "nginx:1"
    assert dict(merged.spec.template.metadata.labels) == {"app": "web", "x": "y"}


def test_config_map_data_merges_key_by_key() -> None:
    base = k8s_pb.config_map(data={"a": "1", "b": "2"}, binary={"x": b"\x00"})

    def a(c: Any) -> None:
        c.data["a"] = "10"
        c.binaryData["y"] = b"\x01"

    def b(c: Any) -> None:
        del c.data["b"]
        c.data["c"] = "3"

    merged = k8s_pb.parse(concurrent(base, a, b, key=CM_KEY) or b"", "ConfigMap")
    assert dict(merged.data) == {"a": "10", "c": "3"}
    assert dict(merged.binaryData) == {"x": b"\x00", "y": b"\x01"}


def test_a_pods_binding_is_first_write_wins_and_its_conditions_merge_by_type() -> None:
    base = edited(k8s_pb.pod(), lambda p: p.spec.ClearField("nodeName"))

    def bind(node: str) -> Any:
        return lambda p: setattr(p.spec, "nodeName", node)

    def ready(p: Any) -> None:
        p.status.conditions[1].status = "False"

    merged = k8s_pb.parse(concurrent(base, bind("node-a"), ready, bind("node-b"), key=POD_KEY)
                          or b"", "Pod")
    assert merged.spec.nodeName == "node-a"
    assert [c.status for c in merged.status.conditions] == ["True", "False", "True", "True"]


# -- bytes --------------------------------------------------------------------------------------


def test_an_object_no_merge_touched_keeps_the_writers_own_bytes() -> None:
    """A writer's bytes that are valid but not Go's layout (fields out of order) are stored as
    written while nothing merges them; a merge stores the canonical layout instead."""
    base = k8s_pb.deployment()
    raw = {f.name: k8s_pb.new("Deployment", **{f.name: getattr(base, f.name)})
           .SerializeToString(deterministic=True) for f in base.DESCRIPTOR.fields}
    shuffled_raw = raw["status"] + raw["spec"] + raw["metadata"]
    shuffled = b"k8s\x00" + k8s_pb.new(
        "Unknown", typeMeta=k8s_pb.new("TypeMeta", apiVersion="apps/v1", kind="Deployment"),
        raw=shuffled_raw, contentEncoding="", contentType="").SerializeToString()
    assert shuffled != stored(base) and k8s_pb.parse(shuffled, "Deployment") == base
    create = write("a", 1, 10, None, stored(base))
    mine = write("a", 2, 20, stored(base), shuffled)
    assert resolve([create, mine]) == shuffled
    scaled = edited(base, lambda d: setattr(d.spec, "replicas", 9))
    theirs = write("b", 1, 30, stored(base), stored(scaled))
    assert resolve([create, mine, theirs]) == stored(scaled)


def test_merges_leave_every_decoded_version_as_it_decoded() -> None:
    """Versions decoded once are shared (``values.decode`` keeps them for the next step of
    the key), so no merge may change one in place: after concurrent edits of every kind fold
    in both orders, each version still decodes to what a fresh decode gives."""
    base = edited(k8s_pb.deployment(), lambda d: d.metadata.labels.update({"app": "web"}))

    def a(d: Any) -> None:
        d.spec.replicas = 7
        d.metadata.labels["tier"] = "front"
        d.status.conditions[0].status = "False"

    def b(d: Any) -> None:
        d.metadata.labels.pop("app")
        d.metadata.finalizers.append("example.com/keep")
        d.status.conditions.append(condition("Available", "True"))

    versions = [stored(base), stored(edited(base, a)), stored(edited(base, b))]
    shared = [decode(v, RULES) for v in versions]
    assert concurrent(base, a, b) is not None
    for value, before in zip(versions, shared, strict=True):
        fresh = k8sproto.decode(value, RULES.local_paths)
        assert decode(value, RULES) is before, "the decoded version is kept for the next step"
        assert before == fresh


def test_a_write_in_another_form_replaces_the_object_whole() -> None:
    base = k8s_pb.deployment()
    as_json = json.dumps({"apiVersion": "apps/v1", "kind": "Deployment",
                          "metadata": {"name": "web", "uid": "uid-1", "labels": {"j": "1"}},
                          "spec": {"replicas": 8}}).encode()
    create = write("a", 1, 10, None, stored(base))
    to_json = write("b", 1, 20, stored(base), as_json)
    assert to_json.ops is None and to_json.uid == "uid-1"
    labelled = write("c", 1, 30, stored(base), stored(edited(
        base, lambda d: d.metadata.labels.update({"p": "1"}))))
    assert labelled.ops is not None
    # The protobuf edit, later, cannot apply to the JSON object: it counts whole.
    assert resolve([create, to_json, labelled]) == labelled.value
    back = write("d", 1, 40, as_json, stored(base))
    assert back.ops is None
    assert resolve([create, to_json, back]) == stored(base)


def test_an_empty_uid_is_no_identity() -> None:
    """Go writes metadata.uid even when it is empty: that is no incarnation to tombstone."""
    base = edited(k8s_pb.deployment(), lambda d: setattr(d.metadata, "uid", ""))
    create = write("a", 1, 10, None, stored(base))
    delete = write("b", 1, 20, stored(base), None)
    assert (create.uid, delete.base_uid) == (None, None)
    again = write("c", 1, 30, None, stored(base))
    assert resolve([create, delete, again]) == stored(base)


def test_leases_and_events_stay_whole_values() -> None:
    for key in (b"/registry/leases/kube-system/l", b"/registry/events/default/e"):
        rules = POLICY.rules_for(key)
        value = stored(k8s_pb.deployment())
        assert decode(value, rules) == value
        assert describe_write(value, stored(k8s_pb.deployment(replicas=4)), rules)[0] is None


# -- any bytes ----------------------------------------------------------------------------------

VALID = [stored(k8s_pb.pod()), stored(k8s_pb.deployment()), HAND_WRITTEN]


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255), st.sampled_from(
        ["flip", "insert", "delete", "truncate"])), min_size=1, max_size=4),
)
def test_damaged_values_decode_to_a_tree_or_stay_opaque_never_an_error(
    value: bytes, damage: list[tuple[int, int, str]]
) -> None:
    """Whatever a writer stored under k8s\\0, the codec reads an object or declines; what it
    reads, it writes in one canonical layout that reads back as the same object."""
    data = bytearray(value)
    for position, byte, how in damage:
        at = len(PREFIX_BYTES) + position % max(1, len(data) - len(PREFIX_BYTES))
        if how == "flip":
            data[min(at, len(data) - 1)] ^= byte or 1
        elif how == "insert":
            data.insert(at, byte)
        elif how == "delete" and at < len(data):
            del data[at]
        else:
            del data[at:]
    tree = k8sproto.decode(bytes(data))
    as_merged = k8sproto.decode(bytes(data), RULES.local_paths)
    assert decode(bytes(data), RULES) == (bytes(data) if as_merged is None else as_merged)
    if tree is None:
        return
    canonical = k8sproto.encode(tree)
    assert k8sproto.decode(canonical) == tree
    assert k8sproto.encode(k8sproto.decode(canonical)) == canonical  # type: ignore[arg-type]


PREFIX_BYTES = k8sproto.PREFIX


# -- operations by reference (``SinceEntry``) ---------------------------------------------------


def resolve_by_reference(entries: list[Entry], key: bytes = KEY) -> bytes | None:
    """``resolve`` for entries some of which make their operations by reference: the fold of
    every arrival order, and resolve.Replica's way for every order a link can deliver (each
    origin's entries in sequence)."""
    rules = POLICY.rules_for(key)
    value = merging.resolve(entries, rules)
    for order in itertools.permutations(entries):
        origins = {e.origin for e in order}
        seqs = [[e.seq for e in order if e.origin == origin] for origin in origins]
        if all(s == sorted(s) for s in seqs):
            assert merging.as_resolve_keeps_it(list(order), rules) == value
    return value


def scale(d: Any) -> None:
    d.spec.replicas = 5
    d.metadata.generation += 1


def label(d: Any) -> None:
    d.metadata.labels["team"] = "edge"


def test_an_edit_by_reference_over_the_value_it_names_is_stored_as_written() -> None:
    """Bytes that are valid but not Go's layout are the writer's too: nothing re-encodes them."""
    base = k8s_pb.deployment()
    create = write("a", 1, 10, None, stored(base))
    status_only = edited(base, lambda d: d.status.conditions.append(condition("Ready", "True")))
    raw = k8s_pb.parse(stored(status_only), "Deployment")
    unordered = b"k8s\x00" + k8s_pb.new(
        "Unknown", typeMeta=k8s_pb.new("TypeMeta", apiVersion="apps/v1", kind="Deployment"),
        raw=(k8s_pb.new("Deployment", status=raw.status).SerializeToString()
             + k8s_pb.new("Deployment", metadata=raw.metadata, spec=raw.spec)
             .SerializeToString()),
        contentEncoding="", contentType="").SerializeToString()
    assert unordered != stored(status_only)
    mine = merging.write_since("a", 2, 20, create, unordered, RULES)
    assert resolve_by_reference([create, mine]) == unordered
    again = merging.write_since("a", 3, 30, mine, stored(edited(status_only, scale)), RULES)
    assert resolve_by_reference([create, mine, again]) == stored(edited(status_only, scale))


def test_an_edit_by_reference_merges_field_by_field_with_an_edit_stamped_before_it() -> None:
    """Site b labels the Deployment while site a, not having seen it yet, scales it over its
    own stored create: where b's label is folded first, a's operations are worked out from
    the value a names, and both edits stand, byte for byte as Go would write the object."""
    base = k8s_pb.deployment()
    create = write("a", 1, 10, None, stored(base))
    labelled = write("b", 1, 20, stored(base), stored(edited(base, label)))
    scaled = merging.write_since("a", 2, 30, create, stored(edited(base, scale)), RULES)
    assert resolve_by_reference([create, labelled, scaled]) == stored(
        edited(edited(base, label), scale))
    # Stamped after a's edit, b's label is an edit over the create all the same.
    later = write("b", 1, 40, stored(base), stored(edited(base, label)))
    assert resolve_by_reference([create, scaled, later]) == stored(
        edited(edited(base, scale), label))


def test_an_edit_by_reference_applies_to_its_incarnation_only() -> None:
    base = k8s_pb.deployment()
    create = write("a", 1, 10, None, stored(base))
    deleted = write("b", 1, 20, stored(base), None)
    scaled = merging.write_since("a", 2, 30, create, stored(edited(base, scale)), RULES)
    assert resolve_by_reference([create, deleted, scaled]) is None  # the delete wins
    other = k8s_pb.deployment(uid="uid-2")
    recreated = write("b", 2, 25, None, stored(other))
    assert resolve_by_reference([create, deleted, recreated, scaled]) == stored(other)


def test_an_edit_by_reference_whose_value_is_missing_is_set_apart() -> None:
    """A fold without the entry an edit names (it never arrives ahead of it from a link)
    leaves the edit out and says why, as for any entry it cannot apply."""
    base = k8s_pb.deployment()
    create = write("a", 2, 10, None, stored(base))
    orphan = Entry("a", 3, 30, KEY, False, stored(edited(base, scale)), 0, [SinceEntry(1)],
                   "uid-1", "uid-1")
    failed: list[tuple[Entry, str]] = []
    state = fold([create, orphan], RULES, failed)
    assert state.value(RULES) == stored(base)
    assert [(e.seq, "is not among the key's entries" in why) for e, why in failed] == [(3, True)]
    with pytest.raises(MissingBase):
        step(fold([create], RULES), orphan, RULES)


def test_an_edit_by_reference_over_the_value_it_names_stands_whole() -> None:
    """Over the value its writer wrote, an edit is what the writer wrote, as on etcd, first-
    write fields included: a second graceful deletion shortens deletionTimestamp. Worked out
    as operations (another edit came between), those fields keep their first value."""
    base = k8s_pb.deployment()
    create = write("a", 1, 10, None, stored(base))

    def deleting(seconds: int) -> Any:
        def change(d: Any) -> None:
            d.metadata.deletionTimestamp.seconds = seconds
            d.metadata.deletionTimestamp.nanos = 0
        return change

    first = edited(base, deleting(1_700_000_500))
    sooner = edited(base, deleting(1_700_000_200))
    deleting_entry = merging.write_since("a", 2, 20, create, stored(first), RULES)
    shortened = merging.write_since("a", 3, 30, deleting_entry, stored(sooner), RULES)
    assert resolve_by_reference([create, deleting_entry, shortened]) == stored(sooner)
    labelled = write("b", 1, 25, stored(base), stored(edited(base, label)))
    merged = k8s_pb.parse(
        resolve_by_reference([create, deleting_entry, labelled, shortened]) or b"", "Deployment")
    assert merged.metadata.deletionTimestamp.seconds == 1_700_000_500
    assert merged.metadata.labels["team"] == "edge"


def test_an_edit_by_reference_over_the_value_it_names_resolves_as_the_step_does() -> None:
    """A served replica whose key holds the value an edit names takes it without building the
    key's state (``resolve._over_its_base``): exactly what the fold's step gives, whatever the
    leases, whether the edit changes anything, whether its incarnation ended here (a
    tombstone) and whether it names another incarnation than the stored one."""
    base = stored(k8s_pb.deployment())
    scaled = stored(edited(k8s_pb.deployment(), scale))
    create = write("a", 1, 10, None, base)
    for value, lease, old_lease, tombstones, uid in itertools.product(
        (scaled, base), (0, 7), (0, 7), (set(), {"uid-1"}), ("uid-1", "uid-2")
    ):
        entry = merging.write_since("a", 2, 20, create, value, RULES).copy_with(
            lease=lease, uid=uid, base_uid=uid)
        old = KeyValue(key=KEY, value=base, lease=old_lease, mod_revision=5)
        fast = _over_its_base(entry, old, tombstones, RULES)
        state = KeyState.from_stored(base, old_lease, tombstones, RULES)
        before = identity(state.doc, RULES)
        applied = step(state, entry, RULES, base)
        folded = Replica._resolution(state, old, before, RULES,
                                     MergeRule.NONE if applied else MergeRule.LOST)
        assert (fast.value, fast.lease, fast.changed, fast.new_incarnation) == (
            folded.value, folded.lease, folded.changed, folded.new_incarnation
        ), (value == scaled, lease, old_lease, tombstones, uid)

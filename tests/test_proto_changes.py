"""Recording a protobuf write by comparing bytes gives exactly what decoding both versions gives.

``write_ops.describe_write`` compares two protobuf versions of an object on their bytes when the
old one is known to decode (``shim.replication.proto_changes``), and decodes both whole
otherwise. The two ways must agree on every write: the same operations in the same order (as
they travel, so true, 1 and 1.0 differ), the same incarnations, the same refusals. Writes are
edits of Pods, Deployments and ConfigMaps as Kubernetes makes them (written by Google's
protobuf runtime, tests/support/k8s_pb.py) and byte-level variants no well-behaved writer
makes: fields the schema does not know, a field split around another, a field given twice,
map entries out of order, truncated and corrupted bytes, another type or form.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from shim.replication import k8sproto, proto_changes
from shim.replication.entry import Entry
from shim.replication.merge import resolve_from_value
from shim.replication.ops import DeleteField, Op, SetField, SetFromValue, to_wire
from shim.replication.policy import Policy
from shim.replication.values import decode
from shim.replication.write_ops import describe_write
from tests.support import k8s_pb

POLICY = Policy.load()
RULES = {
    "Pod": POLICY.rules_for(b"/registry/pods/default/web-1"),
    "Deployment": POLICY.rules_for(b"/registry/deployments/default/web"),
    "ConfigMap": POLICY.rules_for(b"/registry/configmaps/default/settings"),
}
SETTINGS = settings(
    max_examples=150, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def as_sent(
    described: tuple[list[Op] | None, str | None, str | None], new: bytes, rules: Any
) -> str:
    """The operations as they travel, each field taken from the written value (``setv``)
    followed by what a replica reads there: read along its path, which must be what decoding
    the value whole gives."""
    ops, base_uid, uid = described
    wire: list[Any] | None = None
    if ops is not None:
        entry = Entry("o", 1, 1, b"k", False, new, 0, ops, base_uid, uid)
        read = resolve_from_value(entry, rules)
        assert read == _read_whole(ops, new, rules)
        wire = [to_wire(op) for op in ops]
        if read != ops:
            wire.append(["read"] + [to_wire(op) for op in read or []])
    return json.dumps([wire, base_uid, uid])


def _read_whole(ops: list[Op], new: bytes, rules: Any) -> list[Op] | None:
    """``resolve_from_value`` by decoding the written value whole."""
    doc = decode(new, rules)
    if not isinstance(doc, dict):
        return ops if not any(isinstance(op, SetFromValue) for op in ops) else None
    out: list[Op] = []
    for op in ops:
        if not isinstance(op, SetFromValue):
            out.append(op)
            continue
        node: Any = doc
        for name in op.path:
            node = node.get(name, _ABSENT) if isinstance(node, dict) else _ABSENT
        out.append(DeleteField(op.path) if node is _ABSENT else SetField(op.path, node))
    return out


_ABSENT = object()


def full(old: bytes, new: bytes, rules: Any) -> str:
    """describe_write decoding both versions whole."""
    proto_changes.forget()
    return as_sent(describe_write(old, new, rules), new, rules)


def quick(old: bytes, new: bytes, rules: Any) -> str:
    """describe_write with ``old`` known to decode when it does (what the last write of the
    key left)."""
    proto_changes.forget()
    if k8sproto.decode(old) is not None:
        proto_changes.remember(old)
    return as_sent(describe_write(old, new, rules), new, rules)


# -- objects and edits --------------------------------------------------------------------------


def base_object(draw: Any, kind: str) -> Any:
    if kind == "Pod":
        return k8s_pb.pod(uid=draw(st.sampled_from(["u1", "u2"])))
    if kind == "Deployment":
        return k8s_pb.deployment(draw(st.sampled_from(["u1", "u2"])), draw(st.integers(0, 3)))
    return k8s_pb.config_map(
        draw(st.sampled_from(["u1", "u2"])), {"a": "1", "b": "2"}, {"bin": b"\x00\x01"}
    )


def edit(draw: Any, obj: Any) -> Any:
    """One to four edits as controllers, kubelets and users make them."""
    d = k8s_pb.edited(obj, lambda _: None)
    meta = d.metadata
    for _ in range(draw(st.integers(1, 4))):
        choice = draw(st.integers(0, 11))
        if choice == 0:
            meta.labels[draw(st.sampled_from(["app", "tier", "x"]))] = draw(st.sampled_from("12"))
        elif choice == 1 and meta.labels:
            del meta.labels[draw(st.sampled_from(sorted(meta.labels)))]
        elif choice == 2 and draw(st.booleans()):
            meta.annotations.clear()
        elif choice == 2:
            meta.annotations["n"] = "v"
        elif choice == 3:
            name = draw(st.sampled_from(["f/a", "f/b"]))
            if name in meta.finalizers:
                meta.finalizers.remove(name)
            else:
                meta.finalizers.append(name)
        elif choice == 4:
            meta.generation += draw(st.integers(-1, 2))
        elif choice == 5:
            meta.resourceVersion = draw(st.sampled_from(["", "17"]))  # node-local
        elif choice == 6:
            meta.uid = draw(st.sampled_from(["u1", "u2", ""]))
        elif choice == 7 and meta.managedFields:
            meta.managedFields[-1].time.seconds += draw(st.integers(1, 3))
        elif choice == 8:
            meta.creationTimestamp.seconds = draw(st.integers(0, 2))  # write-once
        elif choice == 9:
            meta.deletionTimestamp.seconds = draw(st.integers(1, 2))
        elif choice == 10:
            meta.ClearField(draw(st.sampled_from(["labels", "ownerReferences", "finalizers"])))
        else:
            _edit_own_fields(draw, d)
    return d


def _edit_own_fields(draw: Any, d: Any) -> None:
    kind = d.DESCRIPTOR.name
    if kind == "ConfigMap":
        key = draw(st.sampled_from(["a", "b", "c"]))
        if draw(st.booleans()):
            d.data[key] = draw(st.sampled_from(["1", "2"]))
        else:
            d.data.pop(key, None)
        if draw(st.booleans()):
            d.binaryData["bin"] = draw(st.sampled_from([b"\x00", b"\x00\x01"]))
        return
    status = d.status
    choice = draw(st.integers(0, 4))
    if choice == 0 and status.conditions:
        c = status.conditions[draw(st.integers(0, len(status.conditions) - 1))]
        c.status = "False" if c.status == "True" else "True"
        c.lastTransitionTime.seconds += 1
    elif choice == 1 and status.conditions:
        del status.conditions[draw(st.integers(0, len(status.conditions) - 1))]
    elif choice == 2 and len(status.conditions) > 1:
        first = type(status.conditions[0])()
        first.CopyFrom(status.conditions[0])
        del status.conditions[0]
        status.conditions.append(first)  # the same conditions in another order
    elif choice == 3 and kind == "Deployment":
        d.spec.replicas = draw(st.integers(0, 5))
        d.spec.paused = draw(st.booleans())  # a field the schema does not know
    elif choice == 3:
        d.spec.nodeName = draw(st.sampled_from(["node-1", "node-2", ""]))  # write-once
    else:
        d.ClearField(draw(st.sampled_from(["spec", "status"])))


# -- bytes no well-behaved writer makes ---------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _fields(raw: bytes) -> list[tuple[int, bytes]]:
    """(number, whole occurrence) of each length-delimited or varint field of ``raw``."""
    out = []
    pos = 0
    while pos < len(raw):
        start = pos
        key, pos = _read_varint(raw, pos)
        if key & 7 == 2:
            size, pos = _read_varint(raw, pos)
            pos += size
        else:
            _, pos = _read_varint(raw, pos)
        out.append((key >> 3, raw[start:pos]))
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def rewrap(value: bytes, raw: bytes) -> bytes:
    """``value`` with its object bytes replaced by ``raw``."""
    env = k8s_pb.CLASSES["Unknown"].FromString(value[len(k8s_pb.PREFIX):])
    env.raw = raw
    return k8s_pb.PREFIX + env.SerializeToString(deterministic=True)


def raw_of(value: bytes) -> bytes:
    return bytes(k8s_pb.CLASSES["Unknown"].FromString(value[len(k8s_pb.PREFIX):]).raw)


def mangle(draw: Any, value: bytes) -> bytes:
    """``value`` changed at the byte level, inside the object or inside its metadata."""
    raw = raw_of(value)
    top = _fields(raw)
    meta_at = next((i for i, (n, _) in enumerate(top) if n == 1), None)
    choice = draw(st.integers(0, 9))
    if choice == 0:  # an unknown field, at the top or in the metadata
        extra = _field(draw(st.sampled_from([20, 4000])), draw(st.sampled_from([b"", b"x"])))
        if meta_at is None or draw(st.booleans()):
            raw = raw + extra
        else:
            raw = _in_meta(raw, top, meta_at, extra)
    elif choice == 1 and meta_at is not None:  # a metadata field given twice
        inner = _fields(_payload(top[meta_at][1]))
        twice = draw(st.sampled_from(inner))[1]
        raw = _in_meta(raw, top, meta_at, twice)
    elif choice == 2 and len(top) > 1:  # the object's fields out of order, or one twice
        if draw(st.booleans()):
            raw = b"".join(chunk for _, chunk in reversed(top))
        else:
            raw = raw + draw(st.sampled_from(top))[1]
    elif choice == 3 and meta_at is not None:  # map entries and repeated fields reordered
        inner = _fields(_payload(top[meta_at][1]))
        meta = b"".join(chunk for _, chunk in reversed(inner))
        raw = b"".join(_field(1, meta) if i == meta_at else chunk
                       for i, (_, chunk) in enumerate(top))
    elif choice == 4 and raw:  # corrupted or truncated
        at = draw(st.integers(0, len(raw) - 1))
        if draw(st.booleans()):
            flipped = raw[at] ^ draw(st.sampled_from([0x01, 0x80, 0xFF]))
            raw = raw[:at] + bytes([flipped]) + raw[at + 1:]
        else:
            raw = raw[:at]
    elif choice == 5:  # a string that is not UTF-8, where the schema reads strings
        raw = _in_meta(raw, top, meta_at, _field(1, b"\xff\xfe")) if meta_at is not None else raw
    elif choice == 6:  # another type, the same bytes
        env = k8s_pb.CLASSES["Unknown"].FromString(value[len(k8s_pb.PREFIX):])
        env.typeMeta.kind = "Pod" if env.typeMeta.kind != "Pod" else "Deployment"
        env.typeMeta.apiVersion = "v1" if env.typeMeta.kind == "Pod" else "apps/v1"
        return k8s_pb.PREFIX + env.SerializeToString(deterministic=True)
    elif choice == 7:  # another form
        return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"uid": "u1"}}).encode()
    elif choice == 9 and top:  # a field of the object dropped (the metadata, the spec, ...)
        gone = draw(st.integers(0, len(top) - 1))
        raw = b"".join(chunk for i, (_, chunk) in enumerate(top) if i != gone)
    elif choice == 8:  # a content type: not plain protobuf
        env = k8s_pb.CLASSES["Unknown"].FromString(value[len(k8s_pb.PREFIX):])
        env.contentType = "application/vnd.kubernetes.protobuf"
        return k8s_pb.PREFIX + env.SerializeToString(deterministic=True)
    return rewrap(value, raw)


def _payload(chunk: bytes) -> bytes:
    _, pos = _read_varint(chunk, 0)
    _, pos = _read_varint(chunk, pos)
    return chunk[pos:]


def _in_meta(raw: bytes, top: list[tuple[int, bytes]], at: int, extra: bytes) -> bytes:
    meta = _payload(top[at][1]) + extra
    return b"".join(_field(1, meta) if i == at else chunk for i, (_, chunk) in enumerate(top))


@st.composite
def versions(draw: Any) -> tuple[str, list[bytes]]:
    """A kind and a few versions of one object, each written over the one before."""
    kind = draw(st.sampled_from(["Pod", "Deployment", "ConfigMap"]))
    obj = base_object(draw, kind)
    values = [k8s_pb.stored(obj)]
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 3)) == 0:
            values.append(mangle(draw, k8s_pb.stored(obj)))
        else:
            obj = edit(draw, obj)
            values.append(k8s_pb.stored(obj))
    return kind, values


# -- the properties -----------------------------------------------------------------------------


@SETTINGS
@given(versions())
def test_comparing_bytes_records_what_decoding_both_records(case: tuple[str, list[bytes]]) -> None:
    kind, values = case
    rules = RULES[kind]
    for old, new in itertools.pairwise(values):
        note(f"old {old!r}\nnew {new!r}")
        assert quick(old, new, rules) == full(old, new, rules)


@SETTINGS
@given(versions())
def test_a_run_of_writes_compares_each_against_the_last(case: tuple[str, list[bytes]]) -> None:
    """As a node records one writer's updates: the first is decoded, every later one whose
    base decoded is compared on bytes, and each records what decoding would."""
    kind, values = case
    rules = RULES[kind]
    expected = [full(old, new, rules) for old, new in itertools.pairwise(values)]
    proto_changes.forget()
    describe_write(None, values[0], rules)  # the create: decoded whole, remembered
    seen = []
    for old, new in itertools.pairwise(values):
        base_known = proto_changes.compare(old, old, rules) is not None
        seen.append(as_sent(describe_write(old, new, rules), new, rules))
        if base_known and k8sproto.decode(new) is not None and k8sproto.object_type(
                new) == k8sproto.object_type(old):
            # A base known to decode and a new version of its type that decodes: compared
            # on bytes, and the new version is known to decode from then on.
            assert proto_changes.compare(new, new, rules) is not None
    assert seen == expected


def test_an_unchanged_spec_is_never_decoded() -> None:
    """A kubelet's status update reads the metadata and status that changed, not the spec."""
    rules = RULES["Pod"]
    pod = k8s_pb.pod()
    updated = k8s_pb.edited(pod, lambda p: setattr(p.status.conditions[1], "status", "False"))
    old, new = k8s_pb.stored(pod), k8s_pb.stored(updated)
    proto_changes.forget()
    proto_changes.remember(old)
    changes = proto_changes.compare(old, new, rules)
    assert changes is not None
    assert [(c.parent, c.name) for c in changes.changes] == [(("status",), "conditions")]
    assert changes.base_uid == changes.uid == pod.metadata.uid
    assert quick(old, new, rules) == full(old, new, rules)


def test_a_base_not_known_to_decode_is_decoded() -> None:
    rules = RULES["Pod"]
    old = k8s_pb.stored(k8s_pb.pod())
    proto_changes.forget()
    assert proto_changes.compare(old, old, rules) is None
    describe_write(None, old, rules)
    assert proto_changes.compare(old, old, rules) is not None
    proto_changes.forget()


def test_a_node_local_field_inside_a_new_object_reads_as_its_zero() -> None:
    """An object whose metadata only the new version has: the metadata is one value, with
    resourceVersion (node-local) as kube-apiserver stores it, empty."""
    rules = RULES["Pod"]
    bare = k8s_pb.edited(k8s_pb.pod(uid=""), lambda p: p.ClearField("metadata"))
    named = k8s_pb.edited(bare, lambda p: (
        setattr(p.metadata, "name", "web"), setattr(p.metadata, "resourceVersion", "17")))
    old, new = k8s_pb.stored(bare), k8s_pb.stored(named)
    expected = [[["setv", ["metadata"]],
                 ["read", ["set", ["metadata"], {"name": "web", "resourceVersion": ""}]]],
                None, None]
    assert json.loads(full(old, new, rules)) == expected
    assert json.loads(quick(old, new, rules)) == expected

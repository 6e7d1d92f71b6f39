"""A field replaced whole is read from the entry's own value (``setv``), not restated.

A kubelet's status update of a Pod replaces its atomic ``metadata.managedFields`` (~1.3 KB);
protocol 5 restated that list in the entry's operations. Protocol 6 records
``["setv", path]``: every replica reads the field from the value the entry carries anyway.
The merge must give the same bytes either way, and entries stored or sent in the older form
(``["set", path, value]``) keep working.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from shim.replication import ops as field_ops
from shim.replication import proto_changes
from shim.replication.admission import IngestLimits, admit
from shim.replication.entry import Entry
from shim.replication.merge import KeyState, resolve_from_value, step
from shim.replication.ops import DeleteField, SetField, SetFromValue
from shim.replication.policy import Policy
from shim.replication.quarantine import Refusal
from shim.replication.wire import to_wire
from tests.support import k8s_pb
from tests.support.merging import resolve, write

POLICY = Policy.load()
KEY = b"/registry/pods/default/web-1"
RULES = POLICY.rules_for(KEY)
LIMITS = IngestLimits(1536 * 1024)


def kubelet_update(pod: object, seconds: int) -> object:
    def edit(p: object) -> None:
        p.status.conditions[1].status = "False"  # type: ignore[attr-defined]
        p.metadata.managedFields[1].time.seconds += seconds  # type: ignore[attr-defined]
    return k8s_pb.edited(pod, edit)


def as_protocol_5(entry: Entry) -> Entry:
    """The same entry as a protocol 5 node recorded it: every field restated."""
    ops = resolve_from_value(entry, RULES)
    assert ops is not None
    return dataclasses.replace(entry, ops=ops, ops_json=None)


def test_an_atomic_list_travels_as_a_reference_to_the_value() -> None:
    pod = k8s_pb.pod()
    old, new = k8s_pb.stored(pod), k8s_pb.stored(kubelet_update(pod, 5))
    proto_changes.forget()
    entry = write("a", 2, 20, old, new, RULES, KEY)
    assert entry.ops is not None
    assert SetFromValue(("metadata", "managedFields")) in entry.ops
    text = entry.ops_text()
    assert text is not None and len(text) < 400  # the list is not in it
    assert field_ops.loads(text) == entry.ops
    # What a replica reads is the list in the new version.
    read = resolve_from_value(entry, RULES)
    assert read is not None
    managed = [op for op in read if op.path == ("metadata", "managedFields")]
    assert isinstance(managed[0], SetField)
    assert len(managed[0].value) == len(pod.metadata.managedFields)  # type: ignore[attr-defined]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_both_forms_of_an_entry_merge_to_the_same_bytes(encoding: str) -> None:
    """Concurrent writers (a kubelet, a label at another site) in every arrival order: the
    entries with references and the same entries restated in protocol 5's form (as a
    database from before holds them) fold to the same bytes."""
    pod = k8s_pb.pod()
    labelled = k8s_pb.edited(pod, lambda p: p.metadata.labels.__setitem__("tier", "web"))
    encode = k8s_pb.stored if encoding == "protobuf" else _json
    create = write("a", 1, 10, None, encode(pod), RULES, KEY)
    kubelet = write("a", 2, 20, encode(pod), encode(kubelet_update(pod, 5)), RULES, KEY)
    label = write("b", 1, 21, encode(pod), encode(labelled), RULES, KEY)
    kubelet_again = write("a", 3, 30, encode(kubelet_update(pod, 5)),
                          encode(kubelet_update(pod, 9)), RULES, KEY)
    new_form = [create, kubelet, label, kubelet_again]
    assert any(isinstance(op, SetFromValue) for e in new_form for op in e.ops or [])
    old_form = [create, *(as_protocol_5(e) for e in new_form[1:])]
    merged = resolve(new_form, RULES)
    assert merged == resolve(old_form, RULES)
    assert merged == resolve(new_form[:2] + old_form[2:], RULES)


def _json(obj: object) -> bytes:
    from google.protobuf import json_format
    doc = {"apiVersion": "v1", "kind": "Pod",
           **json_format.MessageToDict(obj, preserving_proto_field_name=True)}  # type: ignore[arg-type]
    return json.dumps(doc, separators=(",", ":")).encode()


def test_a_field_the_value_lacks_is_deleted() -> None:
    pod = k8s_pb.edited(k8s_pb.pod(), lambda p: p.metadata.ClearField("ownerReferences"))
    value = k8s_pb.stored(pod)
    entry = Entry("a", 2, 20, KEY, False, value, 0,
                  [SetFromValue(("metadata", "ownerReferences")), SetFromValue(("spec", "x"))],
                  "u", "u")
    assert resolve_from_value(entry, RULES) == [
        DeleteField(("metadata", "ownerReferences")), DeleteField(("spec", "x"))]


def test_a_path_through_a_map_is_read_from_the_whole_value() -> None:
    doc = {"metadata": {"uid": "u", "annotations": {"a": "1"}}, "spec": {"m": {"k": [1]}}}
    entry = Entry("a", 2, 20, b"/plain/x", False, json.dumps(doc).encode(), 0,
                  [SetFromValue(("spec", "m", "k"))], "u", "u")
    assert resolve_from_value(entry, POLICY.rules_for(b"/plain/x")) == [
        SetField(("spec", "m", "k"), [1])]


def test_a_reference_into_a_value_that_is_no_object_changes_nothing() -> None:
    """Only a broken or hostile peer sends one: the entry changes nothing, on every node."""
    stored = json.dumps({"metadata": {"uid": "u"}, "spec": {"a": [1]}}).encode()
    state = KeyState.from_stored(stored, 0, set(), RULES)
    entry = Entry("a", 2, 20, KEY, False, b"{not json", 0, [SetFromValue(("spec", "a"))],
                  "u", "u")
    assert resolve_from_value(entry, RULES) is None
    assert not step(state, entry, RULES)
    assert state.value(RULES) == stored


def _message(ops: list[list[object]]) -> object:
    entry = Entry("peer-a", 7, 1 << 20, KEY, False, b"{}", 0, [SetField(("a",), 1)], "u", "u")
    message = to_wire(entry)
    message.ops = json.dumps(ops, separators=(",", ":")).encode()
    return message


@pytest.mark.parametrize(
    ("ops", "reason"),
    [
        ([["setv", ["metadata", "uid"]]], "metadata.uid (identity) cannot be changed"),
        ([["setv", ["metadata", "managedFields", "x"]]], "is inside metadata.managedFields"),
        ([["setv", ["spec"], 1]], "operation 0 (setv): 2 arguments, wants 1"),
        ([["setv", []]], "operation 0 (setv): the path must be a list"),
    ],
)
def test_a_peer_is_held_to_the_policy_for_references_too(
    ops: list[list[object]], reason: str
) -> None:
    refused = admit(_message(ops), POLICY, LIMITS)  # type: ignore[arg-type]
    assert isinstance(refused, Refusal)
    assert reason in refused.reason, refused.reason


def test_a_reference_to_a_field_the_policy_replaces_whole_is_admitted() -> None:
    ops = [["setv", ["metadata", "managedFields"]], ["setv", ["status"]]]
    admitted = admit(_message(ops), POLICY, LIMITS)  # type: ignore[arg-type]
    assert isinstance(admitted, Entry), admitted
    assert admitted.ops == [SetFromValue(("metadata", "managedFields")),
                            SetFromValue(("status",))]

"""Merge operations as typed values: the wire form they travel in (unchanged since protocol 1),
and the one parser that lets them in, refusing a malformed operation with its reason."""

from __future__ import annotations

import dataclasses
import json

import pytest

from shim.pb import replication_pb2 as pb
from shim.replication import ops as field_ops
from shim.replication.admission import IngestLimits, admit
from shim.replication.entry import Entry
from shim.replication.ops import (
    AddDelta,
    BadOps,
    DeleteField,
    DropIfEmpty,
    FirstWrite,
    KeyedDelete,
    KeyedSet,
    Op,
    Reorder,
    SetAdd,
    SetField,
    SetRemove,
    SinceEntry,
)
from shim.replication.policy import Policy
from shim.replication.quarantine import Refusal
from shim.replication.wire import to_wire
from shim.replication.write_ops import describe_write

EVERY_OP: list[Op] = [
    SetField(("spec", "replicas"), 3),
    DeleteField(("spec", "paused"),),
    FirstWrite(("metadata", "creationTimestamp"), "2024-01-01T00:00:00Z"),
    AddDelta(("metadata", "generation"), 1),
    SetAdd(("metadata", "finalizers"), "f/a"),
    SetRemove(("metadata", "finalizers"), "f/b"),
    KeyedSet(("status", "conditions"), "type", {"type": "Ready", "status": "True"}),
    KeyedDelete(("metadata", "ownerReferences"), "uid", "o1"),
    Reorder(("status", "conditions"), "type", ["Ready", "Available"]),
    Reorder(("metadata", "finalizers"), None, ["f/a", "f/c"]),
    DropIfEmpty(("metadata", "labels"),),
]

# The wire form, as protocol 1 wrote it: nodes and stored entries read it as before.
WIRE = [
    ["set", ["spec", "replicas"], 3],
    ["del", ["spec", "paused"]],
    ["fww", ["metadata", "creationTimestamp"], "2024-01-01T00:00:00Z"],
    ["add", ["metadata", "generation"], 1],
    ["sadd", ["metadata", "finalizers"], "f/a"],
    ["srem", ["metadata", "finalizers"], "f/b"],
    ["kset", ["status", "conditions"], "type", {"type": "Ready", "status": "True"}],
    ["kdel", ["metadata", "ownerReferences"], "uid", "o1"],
    ["order", ["status", "conditions"], "type", ["Ready", "Available"]],
    ["order", ["metadata", "finalizers"], None, ["f/a", "f/c"]],
    ["del-empty", ["metadata", "labels"]],
]


def test_values_as_deep_as_the_bound_are_taken() -> None:
    deep = json.loads("[" * 200 + "]" * 200)
    assert field_ops.parse_ops([["set", ["a"], deep]]) == [SetField(("a",), deep)]


def test_every_operation_has_the_protocol_1_wire_form_and_parses_back() -> None:
    assert [field_ops.to_wire(op) for op in EVERY_OP] == WIRE
    assert json.loads(field_ops.dumps(EVERY_OP)) == WIRE
    assert field_ops.parse_ops(WIRE) == EVERY_OP
    assert field_ops.loads(json.dumps(WIRE)) == EVERY_OP


def test_a_write_diffs_into_typed_operations() -> None:
    rules = Policy.load().rules_for(b"/registry/deployments/default/web")
    base = {"metadata": {"uid": "u", "generation": 1, "labels": {"a": "1"}},
            "spec": {"replicas": 1}}
    new = {"metadata": {"uid": "u", "generation": 2, "labels": {"b": "2"}},
           "spec": {"replicas": 2}}
    ops, base_uid, uid = describe_write(json.dumps(base).encode(), json.dumps(new).encode(), rules)
    assert (base_uid, uid) == ("u", "u")
    assert ops == [
        AddDelta(("metadata", "generation"), 1),
        SetField(("metadata", "labels", "b"), "2"),
        DeleteField(("metadata", "labels", "a")),
        SetField(("spec", "replicas"), 2),
    ]


def test_operations_by_reference_name_an_entry_by_its_sequence_number() -> None:
    """Protocol 7: no path, the seq of the origin's entry the write was made over."""
    assert field_ops.to_wire(SinceEntry(7)) == ["since", 7]
    assert field_ops.loads('[["since", 18446744073709551615]]') == [SinceEntry(2**64 - 1)]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"set": 1}, "operations must be a list"),
        ([["since"]], "operation 0 (since): 0 arguments, wants 1"),
        ([["since", "3"]], "operation 0 (since): the entry must be a sequence number"),
        ([["since", True]], "operation 0 (since): the entry must be a sequence number"),
        ([["since", 0]], "operation 0 (since): the entry must be a sequence number"),
        ([["since", 2**64]], "operation 0 (since): the entry must be a sequence number"),
        ([["frobnicate", ["a"], 1]], "operation 0: unknown operation 'frobnicate'"),
        ([[]], "operation 0: not a list starting with an operation name"),
        ([{"op": "set"}], "operation 0: not a list starting with an operation name"),
        ([[7, ["a"]]], "operation 0: not a list starting with an operation name"),
        ([["del", ["a"]], ["set", ["a"]]], "operation 1 (set): 1 arguments, wants 2"),
        ([["del", ["a"], 1]], "operation 0 (del): 2 arguments, wants 1"),
        ([["set", [], 1]], "operation 0 (set): the path must be a list of 1 to 64"),
        ([["set", "spec.replicas", 1]], "operation 0 (set): the path must be a list"),
        ([["set", ["spec", 3], 1]], "operation 0 (set): the path must be a list"),
        ([["set", ["spec", ""], 1]], "operation 0 (set): the path must be a list"),
        ([["set", ["a"] * 65, 1]], "operation 0 (set): the path must be a list of 1 to 64"),
        ([["add", ["g"], "1"]], "operation 0 (add): the delta must be a finite number"),
        ([["add", ["g"], True]], "operation 0 (add): the delta must be a finite number"),
        ([["kset", ["c"], "type", ["Ready"]]], "operation 0 (kset): the element must be an"),
        ([["kset", ["c"], "type", {"status": "x"}]], "operation 0 (kset): the element must be"),
        ([["kset", ["c"], "type", {"type": {"x": 1}}]], "operation 0 (kset): the element must"),
        ([["kset", ["c"], "", {"": 1}]], "operation 0 (kset): the key field must be a non-empty"),
        ([["kdel", ["c"], 5, "Ready"]], "operation 0 (kdel): the key field must be a non-empty"),
        ([["kdel", ["c"], "type", ["Ready"]]], "operation 0 (kdel): the identity must be a"),
        ([["order", ["c"], 5, []]], "operation 0 (order): the key field must be a non-empty"),
        ([["order", ["c"], None, "ab"]], "operation 0 (order): the order must be a list"),
        ([["set", ["a"], json.loads("[" * 201 + "]" * 201)]],
         "an operation's value nests deeper than 200 levels"),
    ],
)
def test_malformed_operations_are_refused_with_the_reason(raw: object, reason: str) -> None:
    with pytest.raises(BadOps) as refused:
        field_ops.parse_ops(raw)
    assert str(refused.value).startswith(reason), str(refused.value)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_operations_read_from_text_are_held_to_the_same_depth(as_bytes: bool) -> None:
    """``loads`` walks the operations for their depth only when their text has brackets
    enough to nest too deep: the deep ones are still refused, brackets in strings are not."""
    deep = json.dumps([["set", ["a"], json.loads("[" * 201 + "]" * 201)]])
    shallow = json.dumps([["set", ["a"], "[{" * 300]])
    limit = json.dumps([["set", ["a"], json.loads("[" * 200 + "]" * 200)]])
    encode = (lambda t: t.encode()) if as_bytes else (lambda t: t)
    with pytest.raises(BadOps, match="nests deeper than 200 levels"):
        field_ops.loads(encode(deep))
    assert field_ops.loads(encode(shallow)) == [SetField(("a",), "[{" * 300)]
    assert len(field_ops.loads(encode(limit))) == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"[[\"set\", [\"a\"], 1]", "operations are not JSON"),
        (b"[[\"add\", [\"g\"], NaN]]", "operations are not JSON: NaN is not a JSON number"),
        (b"[[\"set\", [\"a\"], Infinity]]", "operations are not JSON: Infinity is not"),
        (b"[" * 100_000 + b"]" * 100_000, "operations are not JSON"),
        (b"\xff\xfe", "operations are not JSON"),
    ],
)
def test_operations_that_are_not_json_are_refused(text: bytes, reason: str) -> None:
    with pytest.raises(BadOps) as refused:
        field_ops.loads(text)
    assert str(refused.value).startswith(reason), str(refused.value)


def entry_message(ops: bytes) -> pb.Entry:
    entry = Entry("peer-a", 7, 1 << 20, b"/registry/pods/default/p", False, b"{}", 0,
                  [SetField(("a",), 1)], "u", "u")
    message = to_wire(entry)
    message.ops = ops
    return message


LIMITS = IngestLimits(1536 * 1024)


def test_an_entry_from_a_peer_travels_with_its_typed_operations() -> None:
    message = entry_message(field_ops.dumps(EVERY_OP).encode())
    admitted = admit(message, Policy.load(), LIMITS)
    assert isinstance(admitted, Entry), admitted
    assert admitted.ops == EVERY_OP


def test_an_entry_with_malformed_operations_is_refused_naming_entry_and_reason() -> None:
    refused = admit(entry_message(b'[["set", ["a"]]]'), Policy.load(), LIMITS)
    assert isinstance(refused, Refusal)
    assert (refused.origin, refused.seq) == ("peer-a", 7)
    assert refused.reason == "operation 0 (set): 1 arguments, wants 2"
    refused = admit(entry_message(b"not json"), Policy.load(), LIMITS)
    assert isinstance(refused, Refusal)
    assert refused.reason.startswith("operations are not JSON")


def test_an_entry_copied_with_changes_is_what_dataclasses_replace_gives() -> None:
    """``Entry.copy_with`` (the hot paths' copy) sets exactly the fields named, keeps every
    other one, leaves the original as it was, and refuses a name that is not a field."""
    original = Entry("o", 3, 7, b"/k", False, b"v", 5, EVERY_OP[:2], "u0", "u1", digest=b"d",
                     message=b"m", ops_json="[]")
    names = [f.name for f in dataclasses.fields(Entry)]
    for name in names:
        changed = {name: "x" if isinstance(getattr(original, name), str) else None}
        copy, expected = original.copy_with(**changed), dataclasses.replace(original, **changed)
        # Field by field: equality leaves out the fields marked compare=False.
        assert [getattr(copy, n) for n in names] == [getattr(expected, n) for n in names]
    assert original.copy_with() == original and original.copy_with() is not original
    assert original.key == b"/k" and original.ops_json == "[]"
    with pytest.raises(KeyError):
        original.copy_with(no_such_field=1)

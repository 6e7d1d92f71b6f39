"""The merge rules, example by example, on the pure functions of shim.replication.merge (no
database): how concurrent writes to one Kubernetes object resolve under the default policy."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from shim.pb.kv_pb2 import KeyValue
from shim.replication.entry import Entry
from shim.replication.merge import KeyState, fold, resolve_from_value, step
from shim.replication.ops import SetField
from shim.replication.policy import KeyRules, Policy
from shim.replication.resolve import MergeRule, Replica, _opaque_over_opaque
from shim.replication.values import decode, identity
from tests.support import merging

POLICY = Policy.load()
KEY = b"/registry/deployments/default/web"
RULES = POLICY.rules_for(KEY)


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def write(
    origin: str,
    seq: int,
    hlc: int,
    base: bytes | None,
    new: bytes | None,
    rules: KeyRules = RULES,
    key: bytes = KEY,
    lease: int = 0,
) -> Entry:
    """The entry a writer at ``origin`` makes for writing ``new`` (None: a delete) over the
    value ``base`` it saw."""
    return merging.write(origin, seq, hlc, base, new, rules, key, lease)


def resolve(entries: list[Entry], rules: KeyRules = RULES) -> bytes | None:
    """The value ``entries`` fold to, checked to be the same for every arrival order."""
    return merging.resolve(entries, rules)


def doc_of(value: bytes | None) -> Any:
    assert value is not None
    return json.loads(value)


def deployment(uid: str = "uid-1", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "uid": uid,
            "generation": 1,
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"note": "a"},
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "nginx:1"}]}},
        },
        "status": {"observedGeneration": 1},
    }
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value
    return doc


def edited(doc: dict[str, Any], edit: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(doc))
    edit(copy)
    return copy


# -- concurrent field edits ---------------------------------------------------------------------


def test_concurrent_edits_of_different_fields_both_survive() -> None:
    base = deployment()
    create = write("a", 1, 10, None, enc(base))
    edit_a = write("a", 2, 20, enc(base), enc(edited(base, lambda d: d["spec"]["template"][
        "spec"]["containers"][0].update(image="nginx:2"))))
    edit_b = write("b", 1, 21, enc(base), enc(edited(
        base, lambda d: d["status"].update(availableReplicas=3))))
    result = doc_of(resolve([create, edit_a, edit_b]))
    assert result["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2"
    assert result["status"]["availableReplicas"] == 3
    assert result["spec"]["replicas"] == 3


def test_labels_and_annotations_merge_key_by_key() -> None:
    base = deployment()
    create = write("a", 1, 10, None, enc(base))

    def edit_a(d: dict[str, Any]) -> None:
        d["metadata"]["labels"]["a"] = "1"
        d["metadata"]["labels"]["shared"] = "from-a"
        del d["metadata"]["labels"]["tier"]
        d["metadata"]["annotations"]["x"] = "a"

    def edit_b(d: dict[str, Any]) -> None:
        d["metadata"]["labels"]["b"] = "2"
        d["metadata"]["labels"]["shared"] = "from-b"
        d["metadata"]["annotations"]["y"] = "b"

    a = write("a", 2, 20, enc(base), enc(edited(base, edit_a)))
    b = write("b", 1, 20, enc(base), enc(edited(base, edit_b)))  # same hlc: origin decides
    result = doc_of(resolve([create, a, b]))
    assert result["metadata"]["labels"] == {"app": "web", "a": "1", "b": "2", "shared": "from-b"}
    assert result["metadata"]["annotations"] == {"note": "a", "x": "a", "y": "b"}
    # The higher hlc wins, whatever the origin.
    a_later = write("a", 2, 30, enc(base), enc(edited(base, edit_a)))
    assert doc_of(resolve([create, a_later, b]))["metadata"]["labels"]["shared"] == "from-a"


# -- deletes and incarnations -------------------------------------------------------------------


def test_delete_wins_over_a_concurrent_update_of_its_incarnation() -> None:
    base = deployment()
    create = write("a", 1, 10, None, enc(base))
    update = write("b", 1, 30, enc(base), enc(deployment(spec__replicas=5)))
    delete = write("a", 2, 20, enc(base), None)  # earlier than the update: still wins
    assert resolve([create, update, delete]) is None
    later = write("b", 2, 40, enc(deployment(spec__replicas=5)),
                  enc(deployment(spec__replicas=6)))
    assert resolve([create, update, delete, later]) is None
    state = fold([create, update, delete, later], RULES)
    assert "uid-1" in state.tombstones


def test_incremental_patch_of_a_deleted_uid_is_ignored() -> None:
    base = deployment()
    create = write("a", 1, 10, None, enc(base))
    delete = write("a", 2, 20, enc(base), None)
    patch = write("b", 1, 30, enc(base), enc(deployment(spec__replicas=9)))
    state = fold([create, delete], RULES)
    assert not step(state, patch, RULES)
    assert state.value(RULES) is None


def test_concurrent_creates_of_two_incarnations_the_earlier_wins() -> None:
    first = write("a", 1, 10, None, enc(deployment(uid="uid-a")))
    second = write("b", 1, 11, None, enc(deployment(uid="uid-b", spec__replicas=7)))
    assert doc_of(resolve([first, second]))["metadata"]["uid"] == "uid-a"
    # Node b had its own incarnation; the earlier one arrives late and replaces it.
    at_b = fold([second], RULES)
    assert doc_of(at_b.value(RULES))["metadata"]["uid"] == "uid-b"
    at_b = fold([second, first], RULES)  # re-fold: ``first`` sorts before ``second``
    assert doc_of(at_b.value(RULES))["metadata"]["uid"] == "uid-a"
    assert at_b.value(RULES) == enc(deployment(uid="uid-a"))
    # Later updates of the losing incarnation change nothing.
    update_b = write("b", 2, 12, enc(deployment(uid="uid-b", spec__replicas=7)),
                     enc(deployment(uid="uid-b", spec__replicas=8)))
    assert doc_of(resolve([first, second, update_b]))["spec"]["replicas"] == 3


def test_recreate_after_delete_is_a_new_incarnation() -> None:
    old = deployment(uid="uid-1")
    new = deployment(uid="uid-2", spec__replicas=1)
    entries = [
        write("a", 1, 10, None, enc(old)),
        write("a", 2, 20, enc(old), None),
        write("a", 3, 30, None, enc(new)),
        # A late patch of the old incarnation from another node.
        write("b", 1, 40, enc(old), enc(deployment(uid="uid-1", spec__replicas=9))),
    ]
    assert resolve(entries) == enc(new)


def test_a_deleted_uid_is_never_written_back_even_whole() -> None:
    old = deployment(uid="uid-1")
    entries = [
        write("a", 1, 10, None, enc(old)),
        write("a", 2, 20, enc(old), None),
        # Someone puts the very same object (same uid) back as a new value: still deleted.
        write("b", 1, 30, None, enc(deployment(uid="uid-1", spec__replicas=4))),
    ]
    assert resolve(entries) is None


def test_the_first_labels_added_concurrently_both_stay() -> None:
    base = edited(deployment(), lambda d: d["metadata"].pop("labels"))
    with_a = edited(base, lambda d: d["metadata"].update(labels={"a": "1"}))
    with_b = edited(base, lambda d: d["metadata"].update(labels={"b": "2"}))
    entries = [write("x", 1, 10, None, enc(base)), write("a", 1, 20, enc(base), enc(with_a)),
               write("b", 1, 30, enc(base), enc(with_b))]
    assert doc_of(resolve(entries))["metadata"]["labels"] == {"a": "1", "b": "2"}
    # Removing the last label keeps one added concurrently, and an emptied map goes away.
    drop_a = write("a", 2, 40, enc(with_a), enc(base))
    assert doc_of(resolve([*entries, drop_a]))["metadata"]["labels"] == {"b": "2"}
    drop_b = write("b", 2, 50, enc(with_b), enc(base))
    assert "labels" not in doc_of(resolve([*entries, drop_a, drop_b]))["metadata"]


# -- lists --------------------------------------------------------------------------------------


def test_finalizers_are_a_set() -> None:
    base = deployment(metadata__finalizers=["f/a", "f/b"])
    create = write("a", 1, 10, None, enc(base))
    a = write("a", 2, 20, enc(base), enc(deployment(metadata__finalizers=["f/a", "f/c"])))
    b = write("b", 1, 21, enc(base), enc(deployment(metadata__finalizers=["f/a", "f/b", "f/d"])))
    result = doc_of(resolve([create, a, b]))
    assert sorted(result["metadata"]["finalizers"]) == ["f/a", "f/c", "f/d"]


def test_first_finalizers_added_concurrently_both_stay() -> None:
    # Kubernetes omits an empty finalizers list: the first finalizer creates the field.
    base = deployment()
    create = write("a", 1, 10, None, enc(base))
    a = write("a", 2, 20, enc(base), enc(deployment(metadata__finalizers=["f/a"])))
    b = write("b", 1, 21, enc(base), enc(deployment(metadata__finalizers=["f/b"])))
    result = doc_of(resolve([create, a, b]))
    assert sorted(result["metadata"]["finalizers"]) == ["f/a", "f/b"]


def test_removing_the_last_finalizer_keeps_a_concurrent_addition() -> None:
    base = deployment(metadata__finalizers=["f/a"])
    create = write("a", 1, 10, None, enc(base))
    add = write("b", 1, 20, enc(base), enc(deployment(metadata__finalizers=["f/a", "f/b"])))
    remove = write("a", 2, 21, enc(base), enc(deployment()))  # the field goes away
    result = doc_of(resolve([create, add, remove]))
    assert result["metadata"]["finalizers"] == ["f/b"]
    # Unconflicted, the removal leaves no empty list behind: the writer's bytes are kept.
    assert resolve([create, remove]) == enc(deployment())


def test_no_finalizer_is_added_once_deletion_started() -> None:
    base = deployment(metadata__finalizers=["f/a"])
    create = write("a", 1, 10, None, enc(base))
    deleting = deployment(metadata__finalizers=["f/a"],
                          metadata__deletionTimestamp="2024-01-02T00:00:00Z")
    mark = write("a", 2, 20, enc(base), enc(deleting))
    add = write("b", 1, 21, enc(base), enc(deployment(metadata__finalizers=["f/a", "f/b"])))
    result = doc_of(resolve([create, mark, add]))
    assert result["metadata"]["finalizers"] == ["f/a"]
    assert result["metadata"]["deletionTimestamp"] == "2024-01-02T00:00:00Z"
    # Removals still apply.
    remove = write("b", 2, 30, enc(base), enc(deployment()))
    result = doc_of(resolve([create, mark, add, remove]))
    assert result["metadata"].get("finalizers", []) == []
    assert result["metadata"]["deletionTimestamp"] == "2024-01-02T00:00:00Z"


def test_no_first_finalizer_is_added_once_deletion_started() -> None:
    base = deployment()
    create = write("a", 1, 10, None, enc(base))
    mark = write("a", 2, 20, enc(base),
                 enc(deployment(metadata__deletionTimestamp="2024-01-02T00:00:00Z")))
    add = write("b", 1, 21, enc(base), enc(deployment(metadata__finalizers=["f/b"])))
    result = doc_of(resolve([create, mark, add]))
    assert result["metadata"].get("finalizers", []) == []


def test_conditions_merge_by_type() -> None:
    ready = {"type": "Ready", "status": "False"}
    base = deployment(status__conditions=[ready])
    create = write("a", 1, 10, None, enc(base))
    a = write("a", 2, 20, enc(base), enc(deployment(
        status__conditions=[{"type": "Ready", "status": "True"}])))
    b = write("b", 1, 21, enc(base), enc(deployment(
        status__conditions=[ready, {"type": "Progressing", "status": "True"}])))
    result = doc_of(resolve([create, a, b]))
    assert result["status"]["conditions"] == [
        {"type": "Ready", "status": "True"}, {"type": "Progressing", "status": "True"},
    ]
    # Removal of one type keeps a concurrent change of another.
    c = write("c", 1, 22, enc(base), enc(deployment(status__conditions=[])))
    result = doc_of(resolve([create, b, c]))
    assert result["status"]["conditions"] == [{"type": "Progressing", "status": "True"}]


def test_first_conditions_added_concurrently_both_stay() -> None:
    base = deployment()
    create = write("a", 1, 10, None, enc(base))
    a = write("a", 2, 20, enc(base), enc(deployment(
        status__conditions=[{"type": "Available", "status": "True"}])))
    b = write("b", 1, 21, enc(base), enc(deployment(
        status__conditions=[{"type": "Progressing", "status": "True"}])))
    result = doc_of(resolve([create, a, b]))
    assert sorted(c["type"] for c in result["status"]["conditions"]) == [
        "Available", "Progressing",
    ]


def test_owner_references_merge_by_uid() -> None:
    ref1 = {"apiVersion": "v1", "kind": "X", "name": "one", "uid": "o1"}
    ref2 = {"apiVersion": "v1", "kind": "X", "name": "two", "uid": "o2"}
    ref3 = {"apiVersion": "v1", "kind": "X", "name": "three", "uid": "o3"}
    base = deployment(metadata__ownerReferences=[ref1, ref2])
    create = write("a", 1, 10, None, enc(base))
    a = write("a", 2, 20, enc(base), enc(deployment(metadata__ownerReferences=[ref2])))
    b = write("b", 1, 21, enc(base), enc(deployment(
        metadata__ownerReferences=[ref1, {**ref2, "controller": True}, ref3])))
    result = doc_of(resolve([create, a, b]))
    assert result["metadata"]["ownerReferences"] == [{**ref2, "controller": True}, ref3]


def test_list_order_of_a_single_writer_is_kept() -> None:
    c1, c2, c3 = ({"type": t, "status": "True"} for t in ("A", "B", "C"))
    v1 = deployment(status__conditions=[c1, c2], metadata__finalizers=["x", "y"])
    v2 = deployment(status__conditions=[c3, c2, c1], metadata__finalizers=["z", "y", "x"])
    chain = [write("a", 1, 10, None, enc(v1)), write("a", 2, 20, enc(v1), enc(v2))]
    assert resolve(chain) == enc(v2)


# -- counters, write-once fields, lww -----------------------------------------------------------


def test_concurrent_spec_edits_bump_generation_twice() -> None:
    base = deployment()
    create = write("a", 1, 10, None, enc(base))
    a = write("a", 2, 20, enc(base), enc(deployment(spec__replicas=4, metadata__generation=2)))
    b = write("b", 1, 21, enc(base), enc(deployment(
        spec__paused=True, metadata__generation=2)))
    result = doc_of(resolve([create, a, b]))
    assert result["metadata"]["generation"] == 3
    assert result["spec"]["replicas"] == 4 and result["spec"]["paused"] is True


def test_first_write_wins_for_node_name_and_creation_timestamp() -> None:
    key = b"/registry/pods/default/p"
    rules = POLICY.rules_for(key)
    pod = {"metadata": {"name": "p", "uid": "u", "creationTimestamp": "T1"}, "spec": {}}
    create = write("a", 1, 10, None, enc(pod), rules, key)
    bind_a = {**pod, "spec": {"nodeName": "node-a"}}
    bind_b = {"metadata": {**pod["metadata"], "creationTimestamp": "T2"},
              "spec": {"nodeName": "node-b"}}
    a = write("a", 2, 20, enc(pod), enc(bind_a), rules, key)
    b = write("b", 1, 21, enc(pod), enc(bind_b), rules, key)
    result = doc_of(resolve([create, a, b], rules))
    assert result["spec"]["nodeName"] == "node-a"
    assert result["metadata"]["creationTimestamp"] == "T1"
    # Even a write that saw node-a cannot move the pod.
    c = write("c", 1, 30, enc(bind_a), enc({**pod, "spec": {"nodeName": "node-c"}}), rules, key)
    assert doc_of(resolve([create, a, b, c], rules))["spec"]["nodeName"] == "node-a"


def test_replicas_are_last_writer_wins_by_default() -> None:
    base = deployment()
    create = write("a", 1, 10, None, enc(base))
    a = write("a", 2, 20, enc(base), enc(deployment(spec__replicas=4)))
    b = write("b", 1, 21, enc(base), enc(deployment(spec__replicas=4)))
    assert doc_of(resolve([create, a, b]))["spec"]["replicas"] == 4
    c = write("c", 1, 19, enc(base), enc(deployment(spec__replicas=10)))
    assert doc_of(resolve([create, a, b, c]))["spec"]["replicas"] == 4


def test_replicas_as_a_counter_with_a_custom_policy() -> None:
    document = json.loads(json.dumps(POLICY.document))
    document["kinds"].append({
        "prefix": "/registry/deployments/",
        "fields": {"spec.replicas": {"policy": "counter"}},
    })
    rules = Policy(document).rules_for(KEY)
    assert rules.rule(("metadata", "uid")) is not None  # inherited from /registry/
    base = deployment()
    create = write("a", 1, 10, None, enc(base), rules)
    a = write("a", 2, 20, enc(base), enc(deployment(spec__replicas=4)), rules)
    b = write("b", 1, 21, enc(base), enc(deployment(spec__replicas=4)), rules)
    assert doc_of(resolve([create, a, b], rules))["spec"]["replicas"] == 5


# -- whole values ---------------------------------------------------------------------------------


def test_opaque_values_are_last_writer_wins() -> None:
    base = b"k8s\x00\x0a\x0bprotobuf-ish\x01\x02"
    a_value = b"k8s\x00\x0a\x0bprotobuf-ish\x01\x03"
    b_value = b"k8s\x00\x0a\x0bprotobuf-ish\x02\x02"
    create = write("a", 1, 10, None, base)
    a = write("a", 2, 20, base, a_value)
    b = write("b", 1, 21, base, b_value)
    assert a.ops is None and b.ops is None
    assert resolve([create, a, b]) == b_value
    assert resolve([create, a]) == a_value
    # Opaque over JSON and JSON over opaque: whole values too.
    json_value = enc(deployment())
    c = write("c", 1, 30, b_value, json_value)
    assert c.ops is None
    assert resolve([create, a, b, c]) == json_value
    d = write("c", 2, 40, json_value, b"\x00not json")
    assert resolve([create, a, b, c, d]) == b"\x00not json"


def test_leases_are_whole_values_even_when_json() -> None:
    key = b"/registry/leases/kube-system/kube-scheduler"
    rules = POLICY.rules_for(key)
    assert rules.merge == "whole"
    base = {"metadata": {"name": "kube-scheduler", "uid": "l"},
            "spec": {"holderIdentity": "a", "renewTime": "T0"}}
    a_doc = {"metadata": base["metadata"], "spec": {"holderIdentity": "a", "renewTime": "T1"}}
    b_doc = {"metadata": base["metadata"], "spec": {"holderIdentity": "b", "acquireTime": "T1"}}
    create = write("a", 1, 10, None, enc(base), rules, key)
    a = write("a", 2, 21, enc(base), enc(a_doc), rules, key)
    b = write("b", 1, 20, enc(base), enc(b_doc), rules, key)
    assert a.ops is None
    assert resolve([create, a, b], rules) == enc(a_doc)  # not a mix of both


def test_resource_version_is_not_replicated() -> None:
    base = deployment(metadata__resourceVersion="100")
    create = write("a", 1, 10, None, enc(base))
    bumped = write("a", 2, 20, enc(base), enc(deployment(metadata__resourceVersion="200")))
    assert bumped.ops == []
    assert "resourceVersion" not in decode(enc(base), RULES)["metadata"]  # type: ignore[index]
    other = write("b", 1, 21, enc(base), enc(deployment(
        metadata__resourceVersion="150", spec__replicas=4)))
    assert all("resourceVersion" not in op.path for op in other.ops or [])
    result = doc_of(resolve([create, bumped, other]))
    assert result["spec"]["replicas"] == 4


def test_local_keys_are_not_replicated() -> None:
    assert not POLICY.replicates(b"compact_rev_key")
    assert not POLICY.replicates(b"health")
    assert not POLICY.replicates(b"/registry/masterleases/10.0.0.1")
    assert POLICY.replicates(b"/registry/masterleases")  # not under the prefix
    assert POLICY.replicates(b"compact_rev_key2")
    assert POLICY.replicates(KEY)
    assert POLICY.replicates(b"/registry/leases/kube-system/x")


# -- bytes kept -----------------------------------------------------------------------------------


def test_an_unconflicted_write_keeps_the_writers_bytes() -> None:
    first = b'{ "metadata": {"uid": "u", "name": "web"},\n  "spec": {"replicas": 1} }'
    second = b'{"spec":  {"replicas": 2},  "metadata": {"name": "web", "uid": "u"}}\n'
    create = write("a", 1, 10, None, first)
    update = write("a", 2, 20, first, second)
    assert update.ops is not None
    assert resolve([create]) == first
    assert resolve([create, update]) == second
    # The same after the stored value is loaded and stepped incrementally.
    state = KeyState.from_stored(first, 0, set(), RULES)
    assert step(state, update, RULES)
    assert state.value(RULES) == second


def test_a_merged_result_is_canonical_json() -> None:
    first = b'{ "metadata": {"uid": "u", "name": "web"},\n  "spec": {"replicas": 1} }'
    a_new = (
        b'{"metadata": {"uid": "u", "name": "web", "labels": {"a": "1"}}, "spec": {"replicas": 1}}'
    )
    b_new = b'{"metadata": {"uid": "u", "name": "web"}, "spec": {"replicas": 2}}'
    entries = [write("a", 1, 10, None, first), write("a", 2, 20, first, a_new),
               write("b", 1, 21, first, b_new)]
    value = resolve(entries)
    assert value == (
        b'{"metadata":{"labels":{"a":"1"},"name":"web","uid":"u"},"spec":{"replicas":2}}'
    )


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"12", b"{not json", b""])
def test_values_that_are_not_json_objects_are_opaque(value: bytes) -> None:
    assert decode(value, RULES) == value
    entry = write("a", 1, 10, None, value)
    assert entry.ops is None and entry.uid is None
    assert fold([entry], RULES).value(RULES) == value


def test_a_reformatted_write_keeps_its_bytes() -> None:
    key = b"/plain/config"
    rules = POLICY.rules_for(key)
    first, second = b'{"a": 1, "b": [1, 2]}', b'{"b":[1,2],"a":1}'
    entries = [write("a", 1, 10, None, first, rules, key),
               write("a", 2, 20, first, second, rules, key)]
    assert entries[1].ops == []
    assert resolve(entries, rules) == second
    # Only a node-local field changed: the writer's bytes too.
    v1 = enc(deployment(metadata__resourceVersion="1"))
    v2 = enc(deployment(metadata__resourceVersion="2"))
    assert resolve([write("a", 1, 10, None, v1), write("a", 2, 20, v1, v2)]) == v2


def test_number_types_are_changes() -> None:
    key = b"/plain/config"
    rules = POLICY.rules_for(key)
    for first, second in [(b'{"a": 1}', b'{"a": 1.0}'), (b'{"a": 1}', b'{"a": true}'),
                          (b'{"a": [0]}', b'{"a": [false]}')]:
        entry = write("a", 2, 20, first, second, rules, key)
        # A list is read from the written value, as every replica reads it.
        assert resolve_from_value(entry, rules) == [SetField(("a",), json.loads(second)["a"])]
        assert resolve([write("a", 1, 10, None, first, rules, key), entry], rules) == second


def test_a_local_field_in_a_new_parent_object_stays_out() -> None:
    first = b'{"kind": "Thing"}'
    second = b'{"kind": "Thing", "metadata": {"resourceVersion": "5", "labels": {"a": "1"}}}'
    entries = [write("a", 1, 10, None, first), write("a", 2, 20, first, second)]
    state = fold(entries, RULES)
    assert state.doc == {"kind": "Thing", "metadata": {"labels": {"a": "1"}}}
    assert state.value(RULES) == second  # the writer's bytes, as for any unconflicted write


def test_fold_counts_an_entry_given_twice_once() -> None:
    base = deployment()
    create = write("a", 1, 10, None, enc(base))
    bump = write("a", 2, 20, enc(base), enc(deployment(metadata__generation=2)))
    assert fold([create, bump, bump], RULES).value(RULES) == enc(deployment(metadata__generation=2))


def _as_resolve_keeps_it(arrivals: list[Entry], rules: KeyRules = RULES) -> bytes | None:
    return merging.as_resolve_keeps_it(arrivals, rules)


def test_a_late_delete_leaves_no_stale_tombstone() -> None:
    """a creates uid-1; b deletes it; c, which never saw it, creates uid-2 later and updates
    it. A node that gets c's create before b's delete first sees uid-2 lose to uid-1; once
    the delete arrives uid-2 is the object, and its update must apply there too."""
    one, two = deployment(uid="uid-1"), deployment(uid="uid-2")
    two_b = deployment(uid="uid-2", spec__replicas=5)
    create_one = write("a", 1, 10, None, enc(one))
    delete_one = write("b", 1, 20, enc(one), None)
    create_two = write("c", 1, 30, None, enc(two))
    update_two = write("c", 2, 40, enc(two), enc(two_b))
    assert resolve([create_one, delete_one, create_two, update_two]) == enc(two_b)
    arrivals = [create_one, create_two, delete_one, update_two]
    assert _as_resolve_keeps_it(arrivals) == enc(two_b)


def test_a_deleted_uid_does_not_come_back_over_an_opaque_value() -> None:
    obj = deployment(uid="uid-1")
    entries = [
        write("a", 1, 10, None, enc(obj)),
        write("c", 1, 20, enc(obj), b"k8s\x00opaque-1"),  # replaced by an opaque value
        write("a", 2, 30, enc(obj), None),  # a, which never saw it, deletes uid-1
        write("d", 1, 50, None, b"k8s\x00opaque-2"),
        # b saw only uid-1 and updates it.
        write("b", 1, 60, enc(obj), enc(deployment(uid="uid-1", spec__replicas=9))),
    ]
    assert resolve(entries) == b"k8s\x00opaque-2"
    for order in itertools.permutations(entries):
        assert _as_resolve_keeps_it(list(order)) == b"k8s\x00opaque-2"


def test_the_write_that_starts_deletion_may_add_a_finalizer() -> None:
    """Foreground deletion: the apiserver sets deletionTimestamp and adds the
    foregroundDeletion finalizer in one update. Kubernetes' JSON puts deletionTimestamp before
    finalizers; the finalizer must stay, whatever the field order."""
    base = {"metadata": {"name": "web", "uid": "u", "finalizers": ["f/a"]}, "spec": {}}
    deleting = {"metadata": {"name": "web", "uid": "u", "deletionTimestamp": "D",
                             "finalizers": ["f/a", "foregroundDeletion"]}, "spec": {}}
    for new in (enc(deleting), json.dumps(deleting, sort_keys=True).encode()):
        entries = [write("a", 1, 10, None, enc(base)), write("a", 2, 20, enc(base), new)]
        assert resolve(entries) == new
    # Without any finalizer before: the first one is added with the deletion too.
    bare = {"metadata": {"name": "web", "uid": "u"}, "spec": {}}
    new = enc({"metadata": {"name": "web", "uid": "u", "deletionTimestamp": "D",
                            "finalizers": ["foregroundDeletion"]}, "spec": {}})
    assert resolve([write("a", 1, 10, None, enc(bare)), write("a", 2, 20, enc(bare), new)]) == new


# What the newest entry of a key makes of it when neither it nor the stored value can be an
# object: resolved without the key's state (``resolve._opaque_over_opaque``), which must be
# exactly what the fold's step gives, for every policy a key can fall under.
_VALUES = [None, b"", b"plain", b"{not json", b'{"a": 1}', b"[1, 2]", b"k8s\x00junk",
           b" {\"a\": 2}"]


@pytest.mark.parametrize("key", [b"/plain", b"/registry/pods/default/a",
                                 b"/registry/leases/default/a"])
def test_an_opaque_write_over_an_opaque_value_resolves_as_the_fold_does(key: bytes) -> None:
    rules = Policy.load().rules_for(key)
    taken = 0
    for old_value, new_value, old_lease, new_lease in itertools.product(
        _VALUES, _VALUES[1:], (0, 7), (0, 7)
    ):
        assert new_value is not None
        old = None if old_value is None else KeyValue(key=key, value=old_value, lease=old_lease)
        entry = Entry("o", 1, 10, key, False, new_value, new_lease, None, None, None)
        fast = _opaque_over_opaque(entry, old, rules)
        if fast is None:
            continue  # the fold decides: nothing to compare
        taken += 1
        state = KeyState.from_stored(old_value, old_lease if old is not None else 0, (), rules)
        before = identity(state.doc, rules)
        assert step(state, entry, rules)
        folded = Replica._resolution(state, old, before, rules, MergeRule.NONE)
        assert (fast.value, fast.lease, fast.changed, fast.new_incarnation) == (
            folded.value, folded.lease, folded.changed, folded.new_incarnation
        ), (old_value, new_value, old_lease, new_lease)
    # At least every value that cannot be an object under any policy (b"", b"plain",
    # b"[1, 2]") over another such value or over nothing, with each pair of leases.
    assert taken >= 3 * 4 * 4, taken

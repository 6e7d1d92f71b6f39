"""Values that Kubernetes clients write, drawn by hypothesis: objects of several kinds, edits
of the kind controllers and users make, deletes and opaque (protobuf-like) values. Shared by
the merge property tests (pure functions) and the replica convergence tests (real stores)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

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

"""The merge of auth objects (users, roles) is a join: whatever order replicas meet versions
in, and however often, they end with the same object. Deterministic property tests: each
example is a history of writes on three nodes with versions exchanged at random points."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from shim.auth.objects import (
    RoleObject,
    UserObject,
    role_from_row,
    role_row,
    user_from_row,
    user_row,
)

NODES = ("a", "b", "c")
ROLES = ("r1", "r2", "r3")
KEYS = (b"/a", b"/b", b"/c")

# One step: (node, operation, argument). "sync" copies another node's version and merges it.
user_steps = st.lists(st.tuples(
    st.sampled_from(NODES),
    st.sampled_from(("create", "delete", "password", "grant", "revoke", "sync")),
    st.integers(0, 2),
), max_size=25)


def run_user_history(steps: list[tuple[str, str, int]]) -> dict[str, UserObject]:
    clock = itertools.count(1)
    start = UserObject("u", (0, "a"), None, "", False, "e0", (0, "a"))
    held = {node: start for node in NODES}
    for node, op, arg in steps:
        at = (next(clock), node)
        user = held[node]
        if op == "create":
            user = UserObject("u", at, None, f"h{at[0]}", False, f"e{at[0]}", at)
        elif op == "delete":
            user = replace(user, deleted=at)
        elif op == "password":
            user = replace(user, password=f"h{at[0]}", epoch=f"e{at[0]}", password_set=at)
        elif op in ("grant", "revoke"):
            user = user.with_grant(ROLES[arg], op == "grant", at)
        else:
            user = user.merge(held[NODES[arg]])
        held[node] = user
    return held


@settings(derandomize=True, max_examples=200, deadline=None)
@given(user_steps)
def test_user_versions_merge_to_one_whatever_the_order(steps: list[tuple[str, str, int]]) -> None:
    versions = list(run_user_history(steps).values())
    results = set()
    for order in itertools.permutations(versions):
        merged = order[0]
        for other in order[1:]:
            merged = merged.merge(other)
        results.add(merged.state() + merged.password)
        assert merged.merge(merged) == merged  # idempotent
        assert merged.merge(order[0]) == merged  # merging a part in again changes nothing
    assert len(results) == 1
    # What the tables keep is what merges: a row read back is the same object.
    one = versions[0]
    assert user_from_row(user_row(one)) == one


role_steps = st.lists(st.tuples(
    st.sampled_from(NODES),
    st.sampled_from(("create", "delete", "grant", "revoke", "sync")),
    st.integers(0, 2),
    st.sampled_from((0, 1, 2)),
), max_size=25)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(role_steps)
def test_role_versions_merge_to_one_whatever_the_order(
    steps: list[tuple[str, str, int, int]]
) -> None:
    clock = itertools.count(1)
    start = RoleObject("r", (0, "a"), None)
    held = {node: start for node in NODES}
    for node, op, arg, kind in steps:
        at = (next(clock), node)
        role = held[node]
        if op == "create":
            role = RoleObject("r", at, None)
        elif op == "delete":
            role = replace(role, deleted=at)
        elif op in ("grant", "revoke"):
            role = role.with_grant(KEYS[arg], b"", kind if op == "grant" else None, at)
        else:
            role = role.merge(held[NODES[arg]])
        held[node] = role
    versions = list(held.values())
    results = set()
    for order in itertools.permutations(versions):
        merged = order[0]
        for other in order[1:]:
            merged = merged.merge(other)
        results.add((merged.state(), tuple(p.SerializeToString() for p in merged.permissions)))
        assert merged.merge(merged) == merged
    assert len(results) == 1
    assert role_from_row(role_row(versions[0])) == versions[0]


def test_concurrent_grants_both_stay_and_a_deletion_stays() -> None:
    base = UserObject("alice", (1, "a"), None, "h", False, "e", (1, "a"))
    on_a = base.with_grant("r1", True, (5, "a"))
    on_b = base.with_grant("r2", True, (6, "b"))
    assert on_a.merge(on_b).roles == on_b.merge(on_a).roles == ("r1", "r2")
    deleted = replace(base, deleted=(4, "a"))
    late_grant = base.with_grant("r3", True, (9, "b"))  # made without seeing the deletion
    assert not deleted.merge(late_grant).live
    again = UserObject("alice", (10, "a"), None, "h2", False, "e2", (10, "a"))
    assert again.merge(deleted.merge(late_grant)) == again  # a new incarnation, no old roles


def test_permissions_keep_etcds_order() -> None:
    role = RoleObject("r", (1, "a"), None)
    for i, (key, end) in enumerate([(b"/b", b""), (b"/a", b"/c"), (b"/a", b""), (b"/c", b"")]):
        role = role.with_grant(key, end, 0, (10 + i, "a"))
    assert [(p.key, p.range_end) for p in role.permissions] == [
        (b"/a", b"/c"), (b"/a", b""), (b"/b", b""), (b"/c", b""),
    ]
    # Changing a permission's type keeps its place; granting it again after a revocation
    # puts it after the equal keys, as etcd appends it.
    role = role.with_grant(b"/a", b"/c", 1, (20, "a"))
    assert [(p.key, p.range_end, p.permType) for p in role.permissions][:2] == [
        (b"/a", b"/c", 1), (b"/a", b"", 0),
    ]
    role = role.with_grant(b"/a", b"/c", None, (21, "a")).with_grant(b"/a", b"/c", 2, (22, "a"))
    assert [(p.key, p.range_end) for p in role.permissions][:2] == [(b"/a", b""), (b"/a", b"/c")]

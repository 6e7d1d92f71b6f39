"""Auth on replicated nodes: users, roles, permissions and the enabled flag travel over links
as objects of their own, and concurrent edits on both sides of a partition merge (the later
creation of an object wins; deletions stay; a user's roles and a role's permissions merge as
sets). Each node keeps its own token key: a token is good on the node that issued it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from shim.pb import auth_pb2
from shim.pb import rpc_pb2 as pb
from tests.support import Client, ShimServer
from tests.support.auth import ALICE, ROOT, configure, md, outcome, token_of
from tests.support.replication import node_args, shim_command, wait_for

Factory = Callable[..., ShimServer]
WRITE = auth_pb2.Permission.WRITE


def roles_of(endpoint: str, user: str, token: str | None = None) -> Any:
    with Client(endpoint) as client:
        return outcome(lambda: list(client.auth.UserGet(
            pb.AuthUserGetRequest(name=user), metadata=md(token), timeout=10).roles))


def permissions_of(endpoint: str, role: str) -> Any:
    with Client(endpoint) as client:
        return outcome(lambda: [
            (p.permType, p.key, p.range_end)
            for p in client.auth.RoleGet(pb.AuthRoleGetRequest(role=role), timeout=10).perm
        ])


def test_auth_replicates_and_tokens_stay_with_their_node(shim_factory: Factory) -> None:
    a = shim_factory(extra_args=node_args("a"))
    b = shim_factory(extra_args=node_args("b", joins=[a], admit=False))
    with Client(a.endpoint) as on_a, Client(b.endpoint) as on_b:
        configure(on_a)  # users, roles, keys, then auth on: all on a

        def alice_reads_on_b() -> Any:
            try:
                token = token_of(on_b, ALICE)
            except grpc.RpcError as exc:
                return (exc.code(), exc.details())
            return outcome(lambda: on_b.kv.Range(pb.RangeRequest(key=b"/p/x"),
                                                 metadata=md(token), timeout=10))

        got = wait_for(alice_reads_on_b, lambda r: r[0] == "ok", "alice's login on b")
        assert got[1] == [(b"/p/x", b"v/p/x")]
        alice_b = token_of(on_b, ALICE)
        assert outcome(lambda: on_b.kv.Range(pb.RangeRequest(key=b"/q"), metadata=md(alice_b))
                       ) == (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
        # b enforces auth too, and a token from a is not b's (each node signs its own).
        assert outcome(lambda: on_b.kv.Range(pb.RangeRequest(key=b"/p/x"))) == (
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
        assert outcome(lambda: on_b.kv.Range(pb.RangeRequest(key=b"/p/x"),
                                             metadata=md(token_of(on_a, ALICE)))) == (
            grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
        # A change on b reaches a.
        on_b.auth.RoleRevokePermission(pb.AuthRoleRevokePermissionRequest(
            role="reader", key=b"/p/", range_end=b"/p0"), metadata=md(token_of(on_b, ROOT)))
        alice_a = token_of(on_a, ALICE)
        wait_for(lambda: outcome(lambda: on_a.kv.Range(pb.RangeRequest(key=b"/p/x"),
                                                       metadata=md(alice_a))),
                 lambda r: r[0] == grpc.StatusCode.PERMISSION_DENIED, "the revocation on a")
    # The entries carry no password hash that people can read.
    database = b.datastore_endpoint
    entries = json.loads(shim_command(
        "sql", "--datastore-endpoint", database, "--json",
        "SELECT key, kind, value FROM replication_log WHERE kind = 'auth' ORDER BY ingest",
    ).stdout)
    assert {e["key"] for e in entries} >= {"user/root", "user/alice", "role/reader",
                                          "setting/enabled"}
    secrets = json.loads(shim_command(
        "sql", "--datastore-endpoint", database, "--json",
        "SELECT secret FROM repl_entry WHERE kind = 'auth'",
    ).stdout)
    assert {row["secret"] for row in secrets} == {None}
    assert "$2a$" not in json.dumps(entries)


def test_concurrent_auth_edits_on_both_sides_merge(shim_factory: Factory) -> None:
    a = shim_factory(extra_args=node_args("a"))
    b = shim_factory(extra_args=node_args("b", joins=[a], admit=False))
    with Client(a.endpoint) as on_a:
        for role in ("r1", "r2", "r3"):
            on_a.auth.RoleAdd(pb.AuthRoleAddRequest(name=role), timeout=10)
        for user in ("alice", "bob"):
            on_a.auth.UserAdd(pb.AuthUserAddRequest(name=user, password="pw"), timeout=10)
        on_a.auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(
            name="r3", perm=auth_pb2.Permission(key=b"/old")), timeout=10)
    wait_for(lambda: permissions_of(b.endpoint, "r3"), lambda r: r[0] == "ok" and r[1],
             "the roles on b")
    wait_for(lambda: roles_of(b.endpoint, "bob"), lambda r: r[0] == "ok", "bob on b")

    # A partition: b runs alone; both sides edit the same users and role.
    b.stop()
    joined = list(b.extra_args)
    b.extra_args = node_args("b", admit=False)
    b.start()
    with Client(a.endpoint) as on_a, Client(b.endpoint) as on_b:
        on_a.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="r1"))
        on_b.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="r2"))
        on_a.auth.UserDelete(pb.AuthUserDeleteRequest(name="bob"))
        on_b.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="bob", role="r1"))
        on_a.auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(
            name="r3", perm=auth_pb2.Permission(key=b"/from-a")))
        on_b.auth.RoleRevokePermission(pb.AuthRoleRevokePermissionRequest(
            role="r3", key=b"/old"))
        on_b.auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(
            name="r3", perm=auth_pb2.Permission(key=b"/from-b", permType=WRITE)))
        # carol is created on both sides: two incarnations, the later one wins whole.
        on_a.auth.UserAdd(pb.AuthUserAddRequest(name="carol", password="pw"))
        on_a.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="carol", role="r1"))
        on_b.auth.UserAdd(pb.AuthUserAddRequest(name="carol", password="pw"))
        on_b.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="carol", role="r2"))

    # The partition heals.
    b.stop()
    b.extra_args = joined
    b.start()
    for node in (a, b):
        wait_for(lambda n=node: roles_of(n.endpoint, "alice"),  # type: ignore[misc]
                 lambda r: r == ("ok", ["r1", "r2"]), f"alice's roles merged on {node.name}")
        wait_for(lambda n=node: roles_of(n.endpoint, "bob"),  # type: ignore[misc]
                 lambda r: r[0] == grpc.StatusCode.FAILED_PRECONDITION,
                 f"bob deleted on {node.name}")
        wait_for(lambda n=node: permissions_of(n.endpoint, "r3"),  # type: ignore[misc]
                 lambda r: r == ("ok", [(0, b"/from-a", b""), (1, b"/from-b", b"")]),
                 f"r3's permissions merged on {node.name}")
        wait_for(lambda n=node: roles_of(n.endpoint, "carol"),  # type: ignore[misc]
                 lambda r: r == ("ok", ["r2"]), f"the later carol on {node.name}")

    # bob, added again later, is a new user without the roles of the old one.
    with Client(a.endpoint) as on_a:
        on_a.auth.UserAdd(pb.AuthUserAddRequest(name="bob", password="pw2"))
    wait_for(lambda: roles_of(b.endpoint, "bob"), lambda r: r == ("ok", []), "bob again on b")
    with Client(b.endpoint) as on_b:
        on_b.auth.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"))
        on_b.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
        on_b.auth.AuthEnable(pb.AuthEnableRequest())
        root_b = md(token_of(on_b, ROOT))
        status_b = on_b.auth.AuthStatus(pb.AuthStatusRequest(), metadata=root_b)
    # Enabled on b, enabled on a; each node counts its own auth revision.
    with Client(a.endpoint) as on_a:
        wait_for(lambda: outcome(lambda: token_of(on_a, "bob:pw2")), lambda r: r[0] == "ok",
                 "auth enabled on a")
        status_a = on_a.auth.AuthStatus(pb.AuthStatusRequest(),
                                        metadata=md(token_of(on_a, ROOT)))
    assert status_a.enabled and status_b.enabled

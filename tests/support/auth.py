"""etcd's Auth as the auth tests set it up: users, a role with grants, tokens, outcomes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from shim.pb import auth_pb2
from shim.pb import rpc_pb2 as pb

from .client import Client

ROOT = "root:rootpw"
ALICE = "alice:alicepw"
READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """("ok", what the answer says) or (status code, details)."""
    try:
        resp = call()
    except grpc.RpcError as exc:
        return (exc.code(), exc.details())
    if isinstance(resp, pb.RangeResponse):
        return ("ok", [(kv.key, kv.value) for kv in resp.kvs], resp.count)
    if isinstance(resp, pb.TxnResponse):
        return ("ok", resp.succeeded)
    if isinstance(resp, pb.DeleteRangeResponse):
        return ("ok", resp.deleted)
    if isinstance(resp, list | int):  # what a test's own call picked out of an answer
        return ("ok", resp)
    return ("ok",)


def token_of(client: Client, user: str) -> str:
    name, _, password = user.partition(":")
    return client.auth.Authenticate(pb.AuthenticateRequest(name=name, password=password),
                                    timeout=10).token


def md(token: str | None) -> list[tuple[str, str]] | None:
    return [("token", token)] if token is not None else None


def configure(client: Client) -> None:
    """root, a role "reader" with a key, a prefix, a range and a from-key grant, the users
    alice (reader) and bob (no password), some keys; then auth on."""
    a = client.auth
    a.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=10)
    a.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=10)
    a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    a.RoleAdd(pb.AuthRoleAddRequest(name="reader"), timeout=10)
    for perm in (
        auth_pb2.Permission(permType=READ, key=b"/k"),
        auth_pb2.Permission(permType=READWRITE, key=b"/p/", range_end=b"/p0"),
        auth_pb2.Permission(permType=WRITE, key=b"/a", range_end=b"/c"),
        auth_pb2.Permission(permType=READ, key=b"/z", range_end=b"\x00"),
    ):
        a.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="reader", perm=perm),
                              timeout=10)
    a.UserAdd(pb.AuthUserAddRequest(name="alice", password="alicepw"), timeout=10)
    a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="reader"), timeout=10)
    a.UserAdd(pb.AuthUserAddRequest(name="bob", options=auth_pb2.UserAddOptions(
        no_password=True)), timeout=10)
    for key in (b"/a", b"/b", b"/k", b"/p/x", b"/q", b"/z", b"/zz"):
        client.kv.Put(pb.PutRequest(key=key, value=b"v" + key), timeout=10)
    a.AuthEnable(pb.AuthEnableRequest(), timeout=10)

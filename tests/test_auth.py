"""etcd's Auth the way its users meet it, shim and a real etcd 3.5 side by side: etcdctl's
`auth`, `user` and `role` commands with `--user`, tokens over gRPC, and the permission checks
of every service, error cases included.

The reference binary is etcd 3.5.1. shim answers as the newest etcd 3.5 release (3.5.21, the
version it reports) where 3.5 patch releases changed auth behaviour; those few places are
tested on shim alone (test_what_later_3_5_releases_changed), each with the etcd change named.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from shim.pb import auth_pb2
from shim.pb import rpc_pb2 as pb
from tests.support import Client, EtcdServer, ServerProcess, ShimServer, etcdctl
from tests.support.auth import (
    ALICE,
    ROOT,
    configure,
    md,
    outcome,
    token_of,
)

# --- helpers ------------------------------------------------------------------------------


def run_ctl(server: ServerProcess, user: str | None, command: str, stdin: str | None = None
            ) -> tuple[int, str, str]:
    """etcdctl's exit status, output and error output, with what differs between two servers
    by nature (addresses, random lease ids, the client's own JSON log lines) replaced."""
    args = ["--command-timeout=10s", *(["--user", user] if user else []), *command.split()]
    result = etcdctl(server.endpoint, *args, input=stdin, check=False)  # type: ignore[attr-defined]

    def clean(text: str) -> str:
        lines = [line for line in str(text).splitlines() if not line.startswith('{"level"')]
        text = "\n".join(lines).replace(server.endpoint, "ENDPOINT")  # type: ignore[attr-defined]
        return re.sub(r"lease [0-9a-f]+ granted", "lease ID granted", text)

    return result.returncode, clean(result.stdout), clean(result.stderr)


@dataclass
class Side:
    """One server of the pair, with a client and the tokens of the configured users."""

    server: ServerProcess
    client: Client
    tokens: dict[str, str]

    def token(self, user: str) -> str:
        if user not in self.tokens:
            self.tokens[user] = token_of(self.client, user)
        return self.tokens[user]





@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Side, Side]]:
    """A real etcd and a shim, configured alike by ``configure``."""
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as etcd, \
            ShimServer(tmp_path_factory.mktemp("shim")) as shim:
        sides = []
        for server in (etcd, shim):
            client = Client(server.endpoint)
            configure(client)
            sides.append(Side(server, client, {}))
        try:
            yield sides[0], sides[1]
        finally:
            for side in sides:
                side.client.close()


def both(pair: tuple[Side, Side], call: Callable[[Side], Any]) -> tuple[Any, Any]:
    etcd, shim = pair
    return outcome(lambda: call(etcd)), outcome(lambda: call(shim))


def assert_same(
    pair: tuple[Side, Side], cases: list[tuple[str, Callable[[Side], Any]]]
) -> list[tuple[Any, ...]]:
    """Run each case on etcd, then on shim; the outcomes must be equal. Returns shim's."""
    differences, outcomes = [], []
    for name, call in cases:
        expected, got = both(pair, call)
        outcomes.append(got)
        if expected != got:
            differences.append(f"{name}: etcd {expected} / shim {got}")
    assert not differences, "\n".join(differences)
    return outcomes


# --- etcdctl ---------------------------------------------------------------------------------

# (user, command, standard input): a session an operator might type, mistakes included.
SESSION: list[tuple[str | None, str, str | None]] = [
    (None, "auth status", None),
    (None, "auth enable", None),  # no root user yet
    (None, "user add root --new-user-password=rootpw", None),
    (None, "auth enable", None),  # etcdctl adds the root role, grants it, enables
    (None, "auth status", None),  # now a user is needed
    (None, "put /a 1", None),
    (ROOT, "put /a 1", None),
    (ROOT, "auth status", None),
    ("root:wrong", "get /a", None),
    ("nobody:x", "get /a", None),
    (ROOT, "role add reader", None),
    (ROOT, "role add reader", None),
    (ROOT, "role grant-permission reader read /k", None),
    (ROOT, "role grant-permission reader readwrite /p/ --prefix", None),
    (ROOT, "role grant-permission reader write /a /c", None),
    (ROOT, "role grant-permission reader read /z --from-key", None),
    (ROOT, "role grant-permission reader write /k", None),
    (ROOT, "role revoke-permission reader /nope", None),
    (ROOT, "role revoke-permission reader /k", None),
    (ROOT, "role get reader", None),
    (ROOT, "role list", None),
    (ROOT, "user add alice --new-user-password=alicepw", None),
    (ROOT, "user add alice --new-user-password=alicepw", None),
    (ROOT, "user grant-role alice reader", None),
    (ROOT, "user grant-role alice reader", None),
    (ROOT, "user grant-role alice nope", None),
    (ROOT, "user grant-role nobody reader", None),
    (ROOT, "user revoke-role alice nope", None),
    (ROOT, "user get alice", None),
    (ROOT, "user get nobody", None),
    (ROOT, "user list", None),
    (ROOT, "role get nope", None),
    (ROOT, "user delete nobody", None),
    (ROOT, "role delete nope", None),
    (ROOT, "user delete root", None),
    (ROOT, "role delete root", None),
    (ROOT, "user revoke-role root root", None),
    (ALICE, "put /p/x 1", None),
    (ALICE, "get /p/ --prefix", None),
    (ALICE, "get /a", None),
    (ALICE, "put /b 2", None),
    (ALICE, "put /d 2", None),
    (ALICE, "del /a /c", None),
    (ALICE, "get /z --from-key", None),
    (ALICE, "get / --prefix", None),
    (ALICE, "user get alice", None),
    (ALICE, "user get root", None),
    (ALICE, "user list", None),
    (ALICE, "role get reader", None),
    (ALICE, "role get root", None),
    (ALICE, "auth status", None),
    (ALICE, "auth disable", None),
    (ALICE, "user add mallory --new-user-password=x", None),
    (ALICE, "compaction 2", None),  # etcd asks no permission to compact
    (ALICE, "lease grant 100", None),
    (ALICE, "alarm list", None),
    (ALICE, "endpoint hashkv", None),  # refused as UNKNOWN "auth: permission denied"
    (ROOT, "user add bob --no-password", None),
    (ROOT, "user get bob", None),
    ("bob:x", "get /a", None),
    (ROOT, "user passwd alice --interactive=false", "newpw\n"),
    (ALICE, "get /p/x", None),
    ("alice:newpw", "get /p/x", None),
    (ROOT, "role delete reader", None),
    (ROOT, "user get alice", None),
    ("alice:newpw", "get /p/x", None),
    (ROOT, "user delete alice", None),
    ("alice:newpw", "get /p/x", None),
    (ROOT, "auth disable", None),
    (None, "get /a", None),
    (None, "user list", None),
    (None, "auth status", None),
]


def run_session(server: ServerProcess, out: list[tuple[int, str, str]]) -> None:
    for user, command, stdin in SESSION:
        out.append(run_ctl(server, user, command, stdin))


def test_etcdctl_session_answers_as_etcd(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer]
) -> None:
    servers = [etcd_factory(), shim_factory()]
    results: list[list[tuple[int, str, str]]] = [[], []]
    threads = [threading.Thread(target=run_session, args=(s, r))
               for s, r in zip(servers, results, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    differences = [
        f"{user} {command}:\n  etcd {expected}\n  shim {got}"
        for (user, command, _), expected, got in zip(SESSION, *results, strict=True)
        if expected != got
    ]
    assert not differences, "\n".join(differences)
    # The session saw what it should, not just the same thing twice.
    by_command = dict(zip((c for _, c, _ in SESSION), results[1], strict=False))
    assert by_command["role get reader"][1] == (
        "Role reader\nKV Read:\n\t[/p/, /p0) (prefix /p/)\n\t[/z, <open ended>\n"
        "KV Write:\n\t[/a, /c)\n\t[/p/, /p0) (prefix /p/)"
    )
    assert results[1][4] == (1, "", "Error: etcdserver: user name is empty")
    assert results[1][-1] == (0, "Authentication Status: false\nAuthRevision: 18", "")


# --- tokens, errors and permissions over gRPC ----------------------------------------------


def test_errors_answer_as_etcd(pair: tuple[Side, Side]) -> None:
    def root(s: Side) -> list[tuple[str, str]] | None:
        return md(s.token(ROOT))

    garbage = md("garbage")
    cases: list[tuple[str, Callable[[Side], Any]]] = [
        ("no-password user", lambda s: token_of(s.client, "bob:x")),
        ("no-password user, empty password", lambda s: token_of(s.client, "bob:")),
        ("wrong password", lambda s: token_of(s.client, "alice:nope")),
        ("unknown user", lambda s: token_of(s.client, "nobody:x")),
        ("empty user", lambda s: token_of(s.client, ":")),
        ("put without token", lambda s: s.client.kv.Put(pb.PutRequest(key=b"/p/1"))),
        ("range without token", lambda s: s.client.kv.Range(pb.RangeRequest(key=b"/p/1"))),
        ("put, bad token", lambda s: s.client.kv.Put(pb.PutRequest(key=b"/p/1"),
                                                     metadata=garbage)),
        ("empty key, bad token", lambda s: s.client.kv.Put(pb.PutRequest(), metadata=garbage)),
        ("compact, bad token", lambda s: s.client.kv.Compact(
            pb.CompactionRequest(revision=1), metadata=garbage)),
        ("lease grant, bad token", lambda s: s.client.lease.LeaseGrant(
            pb.LeaseGrantRequest(TTL=10), metadata=garbage)),
        ("leases, bad token", lambda s: s.client.lease.LeaseLeases(
            pb.LeaseLeasesRequest(), metadata=garbage)),
        ("authenticate, bad token", lambda s: s.client.auth.Authenticate(
            pb.AuthenticateRequest(name="nobody"), metadata=garbage)),
        ("status, bad token", lambda s: s.client.maintenance.Status(
            pb.StatusRequest(), metadata=garbage)),
        ("hashkv, bad token", lambda s: s.client.maintenance.HashKV(
            pb.HashKVRequest(), metadata=garbage)),
        ("hashkv without token", lambda s: s.client.maintenance.HashKV(pb.HashKVRequest())),
        ("hashkv as alice", lambda s: s.client.maintenance.HashKV(
            pb.HashKVRequest(), metadata=md(s.token(ALICE)))),
        ("member add without token", lambda s: s.client.cluster.MemberAdd(
            pb.MemberAddRequest(peerURLs=["http://127.0.0.1:1"]))),
        ("member add, bad token", lambda s: s.client.cluster.MemberAdd(
            pb.MemberAddRequest(peerURLs=["http://127.0.0.1:1"]), metadata=garbage)),
        ("member add as alice", lambda s: s.client.cluster.MemberAdd(
            pb.MemberAddRequest(peerURLs=["http://127.0.0.1:1"]), metadata=md(s.token(ALICE)))),
        ("member list without token", lambda s: len(s.client.cluster.MemberList(
            pb.MemberListRequest()).members)),
        ("role list without token", lambda s: s.client.auth.RoleList(pb.AuthRoleListRequest())),
        ("user add as alice", lambda s: s.client.auth.UserAdd(
            pb.AuthUserAddRequest(name="eve", password="x"), metadata=md(s.token(ALICE)))),
        ("user add, bad token", lambda s: s.client.auth.UserAdd(
            pb.AuthUserAddRequest(name="eve", password="x"), metadata=garbage)),
        ("user add, empty name", lambda s: s.client.auth.UserAdd(
            pb.AuthUserAddRequest(name=""), metadata=root(s))),
        ("user add, exists", lambda s: s.client.auth.UserAdd(
            pb.AuthUserAddRequest(name="alice", password="x"), metadata=root(s))),
        ("user add, too large", lambda s: s.client.auth.UserAdd(
            pb.AuthUserAddRequest(name="x" * 1_600_000, password="x"), metadata=root(s))),
        ("role add, empty name", lambda s: s.client.auth.RoleAdd(
            pb.AuthRoleAddRequest(name=""), metadata=root(s))),
        ("grant, no permission", lambda s: s.client.auth.RoleGrantPermission(
            pb.AuthRoleGrantPermissionRequest(name="reader"), metadata=root(s))),
        ("grant, unknown role", lambda s: s.client.auth.RoleGrantPermission(
            pb.AuthRoleGrantPermissionRequest(name="nope", perm=auth_pb2.Permission(key=b"x")),
            metadata=root(s))),
        ("user get, empty name", lambda s: s.client.auth.UserGet(
            pb.AuthUserGetRequest(name=""), metadata=root(s))),
        ("role get, empty name", lambda s: s.client.auth.RoleGet(
            pb.AuthRoleGetRequest(role=""), metadata=root(s))),
        ("user delete, empty name", lambda s: s.client.auth.UserDelete(
            pb.AuthUserDeleteRequest(name=""), metadata=root(s))),
        ("role get as holder", lambda s: [p.key for p in s.client.auth.RoleGet(
            pb.AuthRoleGetRequest(role="reader"), metadata=md(s.token(ALICE))).perm]),
        ("user get self", lambda s: list(s.client.auth.UserGet(
            pb.AuthUserGetRequest(name="alice"), metadata=md(s.token(ALICE))).roles)),
        ("auth status as alice", lambda s: s.client.auth.AuthStatus(
            pb.AuthStatusRequest(), metadata=md(s.token(ALICE)))),
        ("enable again", lambda s: s.client.auth.AuthEnable(
            pb.AuthEnableRequest(), metadata=root(s))),
        ("disable as alice", lambda s: s.client.auth.AuthDisable(
            pb.AuthDisableRequest(), metadata=md(s.token(ALICE)))),
    ]
    assert_same(pair, cases)


# Requests on alice's behalf, around the edges of reader's grants: the key /k (read), the
# prefix /p/ (read and write), the range [/a, /c) (write) and every key from /z (read).
BOUNDARY_REQUESTS: list[tuple[str, Any]] = [
    ("get /k", pb.RangeRequest(key=b"/k")),
    ("get /k0", pb.RangeRequest(key=b"/k0")),
    ("get [/k, /k\\0)", pb.RangeRequest(key=b"/k", range_end=b"/k\x00")),
    ("get [/k, /l)", pb.RangeRequest(key=b"/k", range_end=b"/l")),
    ("get /p/x", pb.RangeRequest(key=b"/p/x")),
    ("get prefix /p/", pb.RangeRequest(key=b"/p/", range_end=b"/p0")),
    ("get prefix /p", pb.RangeRequest(key=b"/p", range_end=b"/q")),
    ("get [/p/a, /p/z)", pb.RangeRequest(key=b"/p/a", range_end=b"/p/z")),
    ("get [/p/, /p1)", pb.RangeRequest(key=b"/p/", range_end=b"/p1")),
    ("get /a (write only)", pb.RangeRequest(key=b"/a")),
    ("get /z", pb.RangeRequest(key=b"/z")),
    ("get from /z", pb.RangeRequest(key=b"/z", range_end=b"\x00")),
    ("get from /zz", pb.RangeRequest(key=b"/zz", range_end=b"\x00")),
    ("get from /y", pb.RangeRequest(key=b"/y", range_end=b"\x00")),
    ("get [/z, /zzz)", pb.RangeRequest(key=b"/z", range_end=b"/zzz")),
    ("get everything", pb.RangeRequest(key=b"\x00", range_end=b"\x00")),
    ("get /q", pb.RangeRequest(key=b"/q")),
    ("count prefix /p/", pb.RangeRequest(key=b"/p/", range_end=b"/p0", count_only=True)),
    ("put /p/new", pb.PutRequest(key=b"/p/new", value=b"1")),
    ("put /p/new prev_kv", pb.PutRequest(key=b"/p/new", value=b"2", prev_kv=True)),
    ("put /b", pb.PutRequest(key=b"/b", value=b"1")),
    ("put /b prev_kv (not readable)", pb.PutRequest(key=b"/b", value=b"1", prev_kv=True)),
    ("put /c (range end)", pb.PutRequest(key=b"/c", value=b"1")),
    ("put /k (read only)", pb.PutRequest(key=b"/k", value=b"1")),
    ("put /z (read only)", pb.PutRequest(key=b"/z", value=b"1")),
    ("delete /b", pb.DeleteRangeRequest(key=b"/b")),
    ("delete [/a, /c)", pb.DeleteRangeRequest(key=b"/a", range_end=b"/c")),
    ("delete [/a, /c) prev_kv", pb.DeleteRangeRequest(key=b"/a", range_end=b"/c", prev_kv=True)),
    ("delete [/a, /d)", pb.DeleteRangeRequest(key=b"/a", range_end=b"/d")),
    ("delete prefix /p/ prev_kv", pb.DeleteRangeRequest(key=b"/p/new", range_end=b"/p/new\x00",
                                                        prev_kv=True)),
    ("delete from /z", pb.DeleteRangeRequest(key=b"/z", range_end=b"\x00")),
    ("txn compare readable, put writable", pb.TxnRequest(
        compare=[pb.Compare(key=b"/p/x", target=pb.Compare.VERSION, version=0)],
        failure=[pb.RequestOp(request_put=pb.PutRequest(key=b"/b", value=b"t"))])),
    ("txn compare on an unreadable key", pb.TxnRequest(
        compare=[pb.Compare(key=b"/q", target=pb.Compare.VERSION, version=0)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/p/y", value=b"t"))])),
    ("txn compare on an unreadable range", pb.TxnRequest(
        compare=[pb.Compare(key=b"/p/", range_end=b"/q", target=pb.Compare.VERSION,
                            version=0)])),
    ("txn unread branch with an unreadable get", pb.TxnRequest(
        success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"/p/x"))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"/q"))])),
    ("txn delete with prev_kv", pb.TxnRequest(success=[pb.RequestOp(
        request_delete_range=pb.DeleteRangeRequest(key=b"/b", prev_kv=True))])),
    ("txn nested put (not looked into, as etcd)", pb.TxnRequest(success=[pb.RequestOp(
        request_txn=pb.TxnRequest(success=[pb.RequestOp(
            request_put=pb.PutRequest(key=b"/q/nested", value=b"1"))]))])),
]


def _request(s: Side, request: Any, token: str | None) -> Any:
    method = {
        pb.RangeRequest: s.client.kv.Range, pb.PutRequest: s.client.kv.Put,
        pb.DeleteRangeRequest: s.client.kv.DeleteRange, pb.TxnRequest: s.client.kv.Txn,
    }[type(request)]
    return method(request, metadata=md(token), timeout=10)


# What alice may do of BOUNDARY_REQUESTS, in order (etcd agrees: checked first).
ALLOWED = [
    True, False, True, False, True, True, False, True, False, False, True, True, True, False,
    True, False, False, True, True, True, True, False, False, False, False, True, True, False,
    False, True, False, True, False, False, False, False, True,
]


def test_key_range_and_prefix_grants_allow_what_etcd_allows(pair: tuple[Side, Side]) -> None:
    outcomes = assert_same(pair, [
        (name, lambda s, r=request: _request(s, r, s.token(ALICE)))  # type: ignore[misc]
        for name, request in BOUNDARY_REQUESTS
    ])
    assert [o[0] == "ok" for o in outcomes] == ALLOWED
    assert {o for o in outcomes if o[0] != "ok"} == {
        (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    }
    # root may do anything; nobody (no token) nothing
    assert_same(pair, [
        (f"root: {name}", lambda s, r=request: _request(s, r, s.token(ROOT)))  # type: ignore[misc]
        for name, request in BOUNDARY_REQUESTS[:6]
    ] + [
        (f"nobody: {name}", lambda s, r=request: _request(s, r, None))  # type: ignore[misc]
        for name, request in BOUNDARY_REQUESTS[:6]
    ])


def test_tokens_live_and_die_as_etcd_simple_tokens(pair: tuple[Side, Side]) -> None:
    """A token stays good across unrelated auth changes, and dies with its user's deletion
    or password change (etcd's simple tokens)."""
    steps: list[tuple[str, Callable[[Side], Any]]] = []

    def as_root(call: Callable[[Side, Any], Any]) -> Callable[[Side], Any]:
        return lambda s: call(s, md(s.token(ROOT)))

    def read_as(user: str) -> Callable[[Side], Any]:
        return lambda s: s.client.kv.Range(pb.RangeRequest(key=b"/p/x"),
                                           metadata=md(s.tokens[user]))

    def login(user: str, password: str) -> Callable[[Side], Any]:
        def run(s: Side) -> None:
            s.tokens[user] = token_of(s.client, f"{user}:{password}")
        return run

    steps += [
        ("add dave", as_root(lambda s, m: s.client.auth.UserAdd(
            pb.AuthUserAddRequest(name="dave", password="d1"), metadata=m))),
        ("grant dave", as_root(lambda s, m: s.client.auth.UserGrantRole(
            pb.AuthUserGrantRoleRequest(user="dave", role="reader"), metadata=m))),
        ("dave logs in", login("dave", "d1")),
        ("dave reads", read_as("dave")),
        ("unrelated role added", as_root(lambda s, m: s.client.auth.RoleAdd(
            pb.AuthRoleAddRequest(name="unrelated"), metadata=m))),
        ("dave's token still works", read_as("dave")),
        ("dave's password changes", as_root(lambda s, m: s.client.auth.UserChangePassword(
            pb.AuthUserChangePasswordRequest(name="dave", password="d2"), metadata=m))),
        ("the old token is dead", read_as("dave")),
        ("old password refused", login("dave", "d1")),
        ("dave logs in again", login("dave", "d2")),
        ("dave reads again", read_as("dave")),
        ("dave is deleted", as_root(lambda s, m: s.client.auth.UserDelete(
            pb.AuthUserDeleteRequest(name="dave"), metadata=m))),
        ("a deleted user's token", read_as("dave")),
        ("its lease grant", lambda s: s.client.lease.LeaseGrant(
            pb.LeaseGrantRequest(TTL=10), metadata=md(s.tokens["dave"]))),
        ("dave is added again", as_root(lambda s, m: s.client.auth.UserAdd(
            pb.AuthUserAddRequest(name="dave", password="d2"), metadata=m))),
        ("the old token stays dead", read_as("dave")),
        ("dave logs in once more", login("dave", "d2")),
        ("dave has no role now", read_as("dave")),
    ]
    assert_same(pair, steps)
    _, shim = pair
    assert outcome(lambda: read_as("dave")(shim))[0] == grpc.StatusCode.PERMISSION_DENIED


def test_lease_revoke_needs_write_permission_on_every_attached_key(
    pair: tuple[Side, Side]
) -> None:
    leases: dict[int, dict[str, int]] = {}

    def grant(name: str) -> Callable[[Side], Any]:
        def run(s: Side) -> None:
            leases.setdefault(id(s), {})[name] = s.client.lease.LeaseGrant(
                pb.LeaseGrantRequest(TTL=300), metadata=md(s.token(ROOT))).ID
        return run

    def put(user: str, key: bytes, lease: str) -> Callable[[Side], Any]:
        return lambda s: s.client.kv.Put(
            pb.PutRequest(key=key, value=b"l", lease=leases[id(s)][lease]),
            metadata=md(s.token(user)))

    def revoke(user: str | None, lease: str) -> Callable[[Side], Any]:
        return lambda s: s.client.lease.LeaseRevoke(
            pb.LeaseRevokeRequest(ID=leases[id(s)][lease]),
            metadata=md(s.token(user) if user else None))

    assert_same(pair, [
        ("grant a", grant("a")), ("grant b", grant("b")), ("grant c", grant("c")),
        ("root puts /q on a", put(ROOT, b"/q/leased", "a")),
        ("alice attaches /p/l to a (it carries /q)", put(ALICE, b"/p/l", "a")),
        ("alice revokes a", revoke(ALICE, "a")),
        ("nobody revokes a", revoke(None, "a")),
        ("alice puts /p/m on b", put(ALICE, b"/p/m", "b")),
        ("nobody revokes b", revoke(None, "b")),
        ("alice revokes b", revoke(ALICE, "b")),
        ("/p/m is gone", lambda s: s.client.kv.Range(pb.RangeRequest(key=b"/p/m"),
                                                      metadata=md(s.token(ALICE)))),
        ("nobody revokes the empty lease c", revoke(None, "c")),
        ("an unknown lease", lambda s: s.client.lease.LeaseRevoke(
            pb.LeaseRevokeRequest(ID=1234), metadata=md(s.token(ALICE)))),
        ("root revokes a", revoke(ROOT, "a")),
    ])


def watch_answers(client: Client, token: str | None, creates: list[pb.WatchCreateRequest]
                  ) -> list[pb.WatchResponse]:
    """The first response to each create request, sent one after the other on one stream."""
    done = threading.Event()

    def requests() -> Iterator[pb.WatchRequest]:
        for create in creates:
            yield pb.WatchRequest(create_request=create)
        done.wait(15)

    stream = client.watch.Watch(requests(), metadata=md(token), timeout=15)
    answers = []
    try:
        for resp in stream:
            answers.append(resp)
            if len(answers) == len(creates):
                break
    finally:
        done.set()
        stream.cancel()
    return answers


def test_watch_ranges_are_checked_when_created(pair: tuple[Side, Side]) -> None:
    creates = [
        pb.WatchCreateRequest(key=b"/p/x", watch_id=5),
        pb.WatchCreateRequest(key=b"/q", watch_id=7),  # not readable
        pb.WatchCreateRequest(key=b"/p/", range_end=b"/p0"),
        pb.WatchCreateRequest(key=b"/p/", range_end=b"/q"),  # beyond the prefix
        pb.WatchCreateRequest(key=b"/z", range_end=b"\x00"),
        pb.WatchCreateRequest(key=b"", range_end=b"\x00"),  # checked as the key "\0" alone
    ]
    seen = []
    for side in pair:
        answers = watch_answers(side.client, side.token(ALICE), creates)
        seen.append([(a.created, a.canceled, a.cancel_reason) for a in answers])
        if isinstance(side.server, ShimServer):
            # etcd 3.5.1 answers a refusal with the requested id; 3.5.13+ with -1.
            assert [a.watch_id for a in answers if a.canceled] == [-1, -1, -1]
    assert seen[0] == seen[1]
    assert [canceled for _, canceled, _ in seen[1]] == [False, True, False, True, False, True]
    denied = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    assert seen[1][1][2] == denied


# --- behaviour of later etcd 3.5 releases (tested on shim alone) ---------------------------


def test_what_later_3_5_releases_changed(pair: tuple[Side, Side]) -> None:
    _, shim = pair
    client = shim.client
    alice = md(shim.token(ALICE))
    # LeaseTimeToLive with keys checks that every key is readable (etcd 3.5.9, CVE-2023-32082).
    lease = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=300), metadata=md(shim.token(ROOT)))
    client.kv.Put(pb.PutRequest(key=b"/q/ttl", lease=lease.ID), metadata=md(shim.token(ROOT)))
    ask = pb.LeaseTimeToLiveRequest(ID=lease.ID, keys=True)
    assert outcome(lambda: client.lease.LeaseTimeToLive(ask, metadata=alice)) == (
        grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    assert outcome(lambda: client.lease.LeaseTimeToLive(ask)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
    assert outcome(lambda: client.lease.LeaseTimeToLive(
        pb.LeaseTimeToLiveRequest(ID=lease.ID), metadata=alice)) == ("ok",)
    root_view = client.lease.LeaseTimeToLive(ask, metadata=md(shim.token(ROOT)))
    assert list(root_view.keys) == [b"/q/ttl"]
    # A permission must name a key, and a range that is not empty (etcd 3.5.5).
    for perm in (auth_pb2.Permission(key=b""), auth_pb2.Permission(key=b"b", range_end=b"a")):
        assert outcome(lambda p=perm: client.auth.RoleGrantPermission(  # type: ignore[misc]
            pb.AuthRoleGrantPermissionRequest(name="reader", perm=p),
            metadata=md(shim.token(ROOT)))) == (
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: invalid auth management")
    # A refused watcher says why (etcd 3.5.13): no token, or a bad one.
    [nobody] = watch_answers(client, None, [pb.WatchCreateRequest(key=b"/p/x")])
    assert (nobody.watch_id, nobody.created, nobody.canceled, nobody.cancel_reason) == (
        -1, True, True, "rpc error: code = InvalidArgument desc = etcdserver: user name is empty")
    [forged] = watch_answers(client, "forged", [pb.WatchCreateRequest(key=b"/p/x")])
    assert forged.cancel_reason == (
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token")
    # A password bcrypt cannot take is refused (etcd 3.5.1's bcrypt cut it to 72 bytes).
    root = md(shim.token(ROOT))
    long_add = pb.AuthUserAddRequest(name="long", password="p" * 73)
    assert outcome(lambda: client.auth.UserAdd(long_add, metadata=root)) == (
        grpc.StatusCode.UNKNOWN, "bcrypt: password length exceeds 72 bytes")
    assert outcome(lambda: client.auth.UserAdd(
        pb.AuthUserAddRequest(name="long", password="é" * 36), metadata=root)) == ("ok",)
    assert token_of(client, "long:" + "é" * 36)
    client.auth.UserDelete(pb.AuthUserDeleteRequest(name="long"), metadata=root)


def test_a_range_end_sent_empty_is_checked_as_the_range_it_reads(
    pair: tuple[Side, Side],
) -> None:
    """A Range whose range_end is sent present but empty reads every key from its key on
    (tests/test_edges.py). etcd 3.5.1 checks such a request as its key alone, so alice, who
    may read "/k" only, reads every key after it; shim checks the range it reads, and refuses.
    A range alice may read all of ("/z" and on) is read alike."""
    def raw_range(side: Side, key: bytes) -> list[bytes]:
        data = pb.RangeRequest(key=key).SerializeToString() + b"\x12\x00"
        call = side.client.channel.unary_unary("/etcdserverpb.KV/Range")
        reply = call(data, metadata=md(side.token(ALICE)), timeout=10)
        return [kv.key for kv in pb.RangeResponse.FromString(reply).kvs]

    etcd, shim = pair
    leaked = outcome(lambda: raw_range(etcd, b"/k"))  # etcd's answer, for the record
    assert leaked[0] == "ok" and leaked[1][0] == b"/k" and len(leaked[1]) > 1
    assert outcome(lambda: raw_range(shim, b"/k")) == (
        grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    assert outcome(lambda: raw_range(etcd, b"/z")) == outcome(lambda: raw_range(shim, b"/z"))
    assert outcome(lambda: raw_range(shim, b"/z"))[0] == "ok"


def test_tokens_are_ignored_while_auth_is_disabled(shim: ShimServer) -> None:
    """etcd 3.5.9+ looks at no token while auth is off (3.5.1 refused stale ones); enabling
    auth again makes every earlier token worthless."""
    with Client(shim.endpoint) as client:
        configure(client)
        root = md(token_of(client, ROOT))
        client.auth.AuthDisable(pb.AuthDisableRequest(), metadata=root)
        assert outcome(lambda: client.kv.Put(pb.PutRequest(key=b"/x", value=b"1"),
                                             metadata=root)) == ("ok",)
        assert outcome(lambda: client.kv.Put(pb.PutRequest(key=b"/x", value=b"1"),
                                             metadata=md("forged"))) == ("ok",)
        assert outcome(lambda: token_of(client, ROOT)) == (
            grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
        client.auth.AuthEnable(pb.AuthEnableRequest())
        assert outcome(lambda: client.kv.Put(pb.PutRequest(key=b"/x", value=b"1"),
                                             metadata=root)) == (
            grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
        fresh = md(token_of(client, ROOT))
        status = client.auth.AuthStatus(pb.AuthStatusRequest(), metadata=fresh)
        assert status.enabled
        # enabling does not move the revision (as etcd); disabling did
        assert status.authRevision == 13


def test_enable_needs_root_with_the_root_role(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer]
) -> None:
    results = []
    for server in (etcd_factory(), shim_factory()):
        with Client(server.endpoint) as client:
            a = client.auth
            steps: list[Callable[[], Any]] = [
                lambda a=a: a.AuthEnable(pb.AuthEnableRequest()),  # type: ignore[misc]
                lambda a=a: a.UserAdd(pb.AuthUserAddRequest(name="root", password="r")),  # type: ignore[misc]
                lambda a=a: a.AuthEnable(pb.AuthEnableRequest()),  # type: ignore[misc]
                lambda a=a: a.UserGrantRole(  # type: ignore[misc]
                    pb.AuthUserGrantRoleRequest(user="root", role="root")),
                lambda a=a: a.AuthEnable(pb.AuthEnableRequest()),  # type: ignore[misc]
                lambda a=a: a.UserDelete(pb.AuthUserDeleteRequest(name="root")),  # type: ignore[misc]
                lambda a=a: a.AuthStatus(pb.AuthStatusRequest()),  # type: ignore[misc]
            ]
            results.append([outcome(step) for step in steps])
    assert results[0] == results[1]
    assert results[1][:3] == [
        (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not exist"),
        ("ok",),
        (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not have root role"),
    ]


# --- the write path refuses a caller whose auth revision is old ---------------------------


def test_a_write_checked_at_an_older_auth_revision_is_refused(tmp_path: Path) -> None:
    """etcd refuses a request whose auth revision moved between the token check and the
    apply ("revision of auth store is old"; its clients then take a new token and retry).
    In-process, on a real SQLite file: the caller was established before a role change."""
    from shim.auth.apply import Authorized
    from shim.auth.errors import AuthOldRevision
    from shim.auth.state import Caller
    from shim.backend.sqlite import SqliteBackend
    from shim.mvcc.store import Store

    async def main() -> None:
        backend = SqliteBackend(tmp_path / "state.db")
        backend.open()
        store = Store(backend)
        await store.start()
        try:
            anyone = Caller()
            for request in (
                pb.AuthUserAddRequest(name="root", hashedPassword="x"),
                pb.AuthUserGrantRoleRequest(user="root", role="root"),
                pb.AuthEnableRequest(),
            ):
                await store.write(Authorized(request, anyone))
            revision = await store.read_auth(lambda state, _view: state.revision)
            root = Caller("root", revision)
            put = pb.PutRequest(key=b"k", value=b"v")
            assert (await store.put(put, root)).header.revision == 2
            await store.write(Authorized(pb.AuthRoleAddRequest(name="other"), root))
            with pytest.raises(AuthOldRevision):
                await store.put(put, root)
            with pytest.raises(AuthOldRevision):
                await store.range(pb.RangeRequest(key=b"k"), root)
            assert (await store.put(put, Caller("root", revision + 1))).header.revision == 3
        finally:
            await store.close()
            backend.close()

    asyncio.run(main())


def test_a_password_hashed_by_the_client_is_refused_plainly(pair: tuple[Side, Side]) -> None:
    """etcd 3.5 stores a bcrypt hash a client sends in hashedPassword (only when it sends no
    password); shim hashes only what it is sent, and says so."""
    _, shim = pair
    change = pb.AuthUserChangePasswordRequest(name="bob", hashedPassword="JDJhJDEwJA==")
    assert outcome(lambda: shim.client.auth.UserChangePassword(
        change, metadata=md(shim.token(ROOT)))) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "shim: a password hashed by the client (hashedPassword) is not supported; "
        "send the password itself",
    )
    # Beside a password it is ignored, as etcd ignores it (the server hashes the password).
    add = pb.AuthUserAddRequest(name="erin", password="pw", hashedPassword="JDJhJDEwJA==")
    assert outcome(lambda: shim.client.auth.UserAdd(add, metadata=md(shim.token(ROOT)))) == (
        "ok",)
    assert token_of(shim.client, "erin:pw")


def test_lock_and_election_act_as_their_caller(pair: tuple[Side, Side]) -> None:
    """etcd runs Lock and Election through a client inside the server that carries the
    caller's token: the lock's keys need the caller's permissions."""
    results = [
        [run_ctl(side.server, user, command) for user, command in (
            (ALICE, "lock /p/lock echo held"),
            (ALICE, "lock /q/lock echo held"),
            (None, "lock /p/lock echo held"),
            ("alice:wrong", "lock /p/lock echo held"),
        )]
        for side in pair
    ]
    assert results[0] == results[1]
    assert [r[1] for r in results[1]][:1] == ["held"]
    assert results[1][1][2] == "Error: etcdserver: permission denied"
    from shim.pb import v3election_pb2, v3election_pb2_grpc

    def leader(s: Side, name: bytes, token: str | None) -> Any:
        stub = v3election_pb2_grpc.ElectionStub(s.client.channel)
        return stub.Leader(v3election_pb2.LeaderRequest(name=name), metadata=md(token),
                           timeout=10)

    outcomes = assert_same(pair, [
        ("leader, nobody campaigns", lambda s: leader(s, b"/p/e", s.token(ALICE))),
        ("leader of an unreadable election", lambda s: leader(s, b"/q/e", s.token(ALICE))),
        ("leader without a token", lambda s: leader(s, b"/p/e", None)),
        ("leader with a bad token", lambda s: leader(s, b"/p/e", "forged")),
    ])
    assert outcomes[1] == (grpc.StatusCode.UNKNOWN, "etcdserver: permission denied")

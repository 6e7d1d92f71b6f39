"""Auth where shim differs from one etcd process: across a restart, across the serving
processes of `--processes 2`, across two servers sharing one PostgreSQL database, with TLS
client certificates (`--client-cert-auth`: the certificate's common name is the user), with
a Python client (aetcd), and in what `shim sql`, `shim status` and the log show.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from shim.pb import rpc_pb2 as pb
from tests.support import REPO_ROOT, Client, EtcdServer, ShimServer, etcdctl
from tests.support.auth import ALICE, ROOT, configure, md, outcome, token_of
from tests.support.certs import CertificateAuthority
from tests.support.cli import run_shim
from tests.support.postgres import PostgresServer
from tests.support.process import child_env
from tests.support.procfs import children, client_connections
from tests.support.tls_shim import TlsShim
from tests.support.waits import wait_until

DENIED = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
BAD_TOKEN = (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")


def read(client: Client, key: bytes, token: str | None) -> tuple[Any, ...]:
    return outcome(lambda: client.kv.Range(pb.RangeRequest(key=key), metadata=md(token),
                                           timeout=10))


def test_auth_survives_a_restart(shim: ShimServer) -> None:
    with Client(shim.endpoint) as client:
        configure(client)
        token = token_of(client, ALICE)
        before = client.auth.AuthStatus(pb.AuthStatusRequest(),
                                        metadata=md(token_of(client, ROOT)))
    shim.restart(kill=True)  # kill -9: every acknowledged auth change is durable
    with Client(shim.endpoint) as client:
        root = md(token_of(client, ROOT))
        after = client.auth.AuthStatus(pb.AuthStatusRequest(), metadata=root)
        assert (after.enabled, after.authRevision) == (before.enabled, before.authRevision)
        assert read(client, b"/p/x", token_of(client, ALICE))[0] == "ok"
        assert read(client, b"/q", token_of(client, ALICE)) == DENIED
        assert read(client, b"/p/x", None) == (
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
        # Tokens are signed with a key kept in the database: one issued before the restart
        # is still good within its TTL (etcd forgets its simple tokens when it restarts).
        assert read(client, b"/p/x", token)[0] == "ok"
        roles = client.auth.RoleGet(pb.AuthRoleGetRequest(role="reader"), metadata=root)
        assert [(p.permType, p.key, p.range_end) for p in roles.perm] == [
            (1, b"/a", b"/c"), (0, b"/k", b""), (2, b"/p/", b"/p0"), (0, b"/z", b"\x00"),
        ]
    # etcdctl, as an operator would after the restart
    got = etcdctl(shim.endpoint, "--user", ALICE, "get", "/p/x", "--print-value-only")
    assert got.stdout.strip() == "v/p/x"


def clients_on_each_process(server: ShimServer, count: int = 16) -> list[Client]:
    """One client connected to each serving process, found by opening connections until
    every process holds one (16 connections on 2 processes all land on one once in 32,768
    runs)."""
    assert server.pid is not None
    serving = children(server.pid)
    chosen: dict[int, Client] = {}
    spare: list[Client] = []
    for _ in range(count):
        client = Client(server.endpoint)
        before = {pid: client_connections(pid, server.port) for pid in serving}
        client.maintenance.Status(pb.StatusRequest(), timeout=10)  # connects
        grown = [pid for pid in serving if client_connections(pid, server.port) > before[pid]]
        if len(grown) == 1 and grown[0] not in chosen:
            chosen[grown[0]] = client
        else:
            spare.append(client)
        if len(chosen) == len(serving):
            break
    for client in spare:
        client.close()
    assert len(chosen) == len(serving), "the connections all went to one serving process"
    return list(chosen.values())


def test_every_serving_process_sees_auth_changes_and_accepts_each_others_tokens(
    tmp_path: Path,
) -> None:
    with ShimServer(tmp_path / "shim", extra_args=["--processes", "2"]) as server:
        wait_until(lambda: "from 2 processes" in server.log_tail(20), 20,
                   "every serving process")
        first, second = clients_on_each_process(server)
        try:
            configure(first)
            # A token issued by one process works in the other.
            token = token_of(first, ALICE)
            assert read(second, b"/p/x", token)[0] == "ok"
            root = md(token_of(second, ROOT))
            # A change made through one process binds the other at once.
            second.auth.RoleRevokePermission(pb.AuthRoleRevokePermissionRequest(
                role="reader", key=b"/p/", range_end=b"/p0"), metadata=root)
            assert read(first, b"/p/x", token) == DENIED
            assert outcome(lambda: first.kv.Put(pb.PutRequest(key=b"/p/x"), metadata=md(token))
                           ) == DENIED
            first.auth.UserDelete(pb.AuthUserDeleteRequest(name="alice"), metadata=root)
            assert read(second, b"/p/x", token) == BAD_TOKEN
            users = second.auth.UserList(pb.AuthUserListRequest(), metadata=root).users
            assert list(users) == ["bob", "root"]
        finally:
            first.close()
            second.close()


def test_servers_sharing_a_postgresql_database_share_auth(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    endpoint = postgres.url(postgres.new_database_name("auth"))
    with ShimServer(tmp_path / "a", datastore_endpoint=endpoint) as a, \
            ShimServer(tmp_path / "b", datastore_endpoint=endpoint) as b, \
            Client(a.endpoint) as on_a, Client(b.endpoint) as on_b:
        configure(on_a)
        token = token_of(on_a, ALICE)
        assert read(on_b, b"/p/x", token)[0] == "ok"
        assert read(on_b, b"/q", token) == DENIED
        root = md(token_of(on_b, ROOT))
        on_b.auth.UserRevokeRole(pb.AuthUserRevokeRoleRequest(name="alice", role="reader"),
                                 metadata=root)
        assert read(on_a, b"/p/x", token) == DENIED
        status = on_a.auth.AuthStatus(pb.AuthStatusRequest(), metadata=root)
        assert (status.enabled, status.authRevision) == (True, 13)


def test_the_client_certificate_names_the_user(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    with TlsShim(tmp_path / "tls", ca, []) as node:
        root_files, alice_files = ca.issue("root"), ca.issue("alice")
        with Client(node.endpoint, channel=node.channel(root_files)) as client:
            configure(client)
        # No token: each certificate's common name is the user.
        assert node.etcdctl("put", "/any", "1", client=root_files).stdout.strip() == "OK"
        assert node.etcdctl("get", "/p/x", "--print-value-only",
                            client=alice_files).stdout.strip() == "v/p/x"
        refused = node.etcdctl("get", "/q", client=alice_files, check=False)
        assert refused.returncode != 0
        assert "etcdserver: permission denied" in refused.stderr
        # A certificate whose name is no user may do nothing.
        stranger = node.etcdctl("get", "/p/x", check=False)
        assert "etcdserver: permission denied" in stranger.stderr
        # A token still wins over the certificate, as in etcd.
        as_root = node.etcdctl("--user", ROOT, "get", "/q", "--print-value-only",
                               client=alice_files)
        assert as_root.stdout.strip() == "v/q"
        assert node.etcdctl("user", "get", "alice", client=alice_files).stdout.startswith(
            "User: alice")


AETCD_PROGRAM = r'''
import asyncio
import json
import sys

import aetcd


def failure(error):
    details = getattr(error, "details", None)
    cause = error.__cause__ if error.__cause__ is not None else error
    code = getattr(cause, "code", None)
    return [type(error).__name__, code().name if code else None,
            details() if callable(details) else str(error)]


async def main(host, port):
    out = {}
    try:
        async with aetcd.Client(host=host, port=port, username="alice", password="nope",
                                timeout=10) as client:
            await client.get(b"/p/x")
        out["wrong password"] = "connected"
    except Exception as error:
        out["wrong password"] = failure(error)
    async with aetcd.Client(host=host, port=port, username="alice", password="alicepw",
                            timeout=10) as client:
        await client.put(b"/p/py", b"1")
        out["get"] = (await client.get(b"/p/py")).value.decode()
        out["prefix"] = [kv.key.decode() for kv in await client.get_prefix(b"/p/")]
        for name, call in (("put /q", client.put(b"/q", b"1")),
                           ("get /q", client.get(b"/q")),
                           ("delete /z", client.delete(b"/z"))):
            try:
                await call
                out[name] = "allowed"
            except Exception as error:
                out[name] = failure(error)
        watch = await client.watch_prefix(b"/p/")
        await client.put(b"/p/watched", b"2")
        async for event in watch:
            out["watch"] = [event.kind, event.kv.key.decode(), event.kv.value.decode()]
            break
        await watch.cancel()
        lease = await client.lease(60)
        await client.put(b"/p/leased", b"3", lease=lease)
        await lease.revoke()
        out["after revoke"] = await client.get(b"/p/leased") is None
    async with aetcd.Client(host=host, port=port, timeout=10) as client:
        try:
            await client.get(b"/p/x")
            out["no user"] = "allowed"
        except Exception as error:
            out["no user"] = failure(error)
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''


def run_aetcd(endpoint: str) -> dict[str, Any]:
    host, port = endpoint.rsplit(":", 1)
    result = subprocess.run([sys.executable, "-c", AETCD_PROGRAM, host, port],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"aetcd program failed:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_aetcd_with_a_user_and_password(etcd: EtcdServer, shim: ShimServer) -> None:
    """aetcd authenticates once and sends its token with every call; against shim it gets
    what it gets against etcd, refusals included. (python-etcd3, the other common client,
    does not import with protobuf >= 4 at all.)"""
    outputs = []
    for server in (etcd, shim):
        with Client(server.endpoint) as client:
            configure(client)
        outputs.append(run_aetcd(server.endpoint))
    assert outputs[0] == outputs[1]
    out = outputs[1]
    assert out["wrong password"][2] == (
        "etcdserver: authentication failed, invalid user ID or password")
    assert out["get"] == "1"
    assert out["prefix"] == ["/p/py", "/p/x"]
    assert out["put /q"][1:] == ["PERMISSION_DENIED", "etcdserver: permission denied"]
    assert out["watch"] == ["PUT", "/p/watched", "2"]
    assert out["after revoke"] is True
    assert out["no user"][2] == "etcdserver: user name is empty"


def test_secrets_stay_out_of_shim_sql_shim_status_and_the_log(shim: ShimServer) -> None:
    with Client(shim.endpoint) as client:
        configure(client)
        token_of(client, ALICE)
        with pytest.raises(grpc.RpcError):
            token_of(client, "alice:not-the-password")
    database = f"sqlite://{shim.workdir / 'state.db'}"

    def sql(query: str) -> subprocess.CompletedProcess[str]:
        return run_shim("sql", "--datastore-endpoint", database, "--json", query)

    users = json.loads(sql("SELECT * FROM auth_user ORDER BY name").stdout)
    assert [(u["name"], u["password"], u["roles"]) for u in users] == [
        ("alice", None, '["reader"]'), ("bob", None, "[]"), ("root", None, '["root"]'),
    ]
    settings = json.loads(sql("SELECT name, value FROM auth_setting ORDER BY name").stdout)
    assert settings == [{"name": "enabled", "value": None}, {"name": "token_key", "value": None}]
    people = json.loads(sql("SELECT * FROM auth_users ORDER BY name").stdout)
    assert [p["name"] for p in people] == ["alice", "bob", "root"]
    # The file's raw pages are refused (where SQLite is built with them at all).
    raw = sql("SELECT data FROM sqlite_dbpage")
    assert raw.returncode != 0 and raw.stderr.startswith("shim: ") and not raw.stdout
    status = run_shim("status", "--datastore-endpoint", database)
    assert "auth       enabled, revision 12, 3 users, 2 roles" in status.stdout
    every_output = "".join(
        r.stdout + r.stderr for r in (sql("SELECT * FROM auth_user"), status)
    ) + shim.log_tail(10_000)
    for secret in ("alicepw", "rootpw", "not-the-password", "$2a$10$", "scrypt$"):
        assert secret not in every_output


def test_auth_token_flags(tmp_path: Path) -> None:
    refused = run_shim("serve", "--datastore-endpoint", f"sqlite://{tmp_path}/s.db",
                       "--auth-token", "jwt,pub-key=a.pem,sign-method=RS256")
    assert refused.returncode == 2
    assert refused.stderr.startswith("shim: --auth-token jwt is not implemented")
    assert "Traceback" not in refused.stderr
    unknown = run_shim("serve", "--datastore-endpoint", f"sqlite://{tmp_path}/s.db",
                       "--auth-token", "magic")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        2, "shim: --auth-token 'magic': use simple (jwt is not implemented)")
    # --auth-token-ttl: a token not used for that long is refused, and a new one works.
    with ShimServer(tmp_path / "ttl", extra_args=["--auth-token-ttl", "2"]) as shim, \
            Client(shim.endpoint) as client:
        configure(client)
        token = token_of(client, ALICE)
        assert read(client, b"/p/x", token)[0] == "ok"
        last_use = time.monotonic()
        # What is tested is time passing: the token's TTL, counted from its last use.
        time.sleep(2.5)
        assert time.monotonic() - last_use >= 2
        assert read(client, b"/p/x", token) == BAD_TOKEN
        assert read(client, b"/p/x", token_of(client, ALICE))[0] == "ok"



def readme_auth_commands() -> list[tuple[str, str | None]]:
    """The commands of the README's Authentication section, each with what its comment says
    it prints ("-> OUTPUT": its last line; "Error: ...": it fails with that message)."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Authentication\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.strip().splitlines():
        command, _, comment = line.partition("    #")
        commands.append((command.strip(), comment.strip() or None))
    return commands


def test_readme_authentication_commands(tmp_path: Path) -> None:
    """The README's commands, as a user types them, from the directory the server runs in
    (its data in ./shim-data/state.db, the default); only the port differs."""
    workdir = tmp_path / "readme"
    workdir.mkdir()
    datastore = f"sqlite://{workdir / 'shim-data' / 'state.db'}"
    with ShimServer(workdir, datastore_endpoint=datastore) as shim:
        bin_dir = Path(sys.executable).parent
        for command, expected in readme_auth_commands():
            argv = shlex.split(command.replace("127.0.0.1:2379", shim.endpoint))
            argv[0] = str(bin_dir / argv[0])  # etcdctl and shim from this environment
            result = subprocess.run(argv, capture_output=True, text=True, cwd=workdir,
                                    timeout=60, env=child_env({"ETCDCTL_API": "3"}))
            if expected is not None and expected.startswith("Error: "):
                assert result.returncode != 0, command
                assert expected in result.stderr, (command, result.stderr)
                continue
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            if expected is not None and expected.startswith("-> "):
                assert result.stdout.strip().splitlines()[-1] == expected[3:], (
                    command, result.stdout)
            if argv[1:3] == ["sql", "SELECT * FROM auth_users"]:
                assert "alice" in result.stdout and '["app"]' in result.stdout
                assert "$2a$" not in result.stdout

"""The Maintenance and Cluster services: HashKV, snapshots, defragmentation, alarms and the
backend quota, MoveLeader, Downgrade, MemberList, as etcdctl and gRPC clients see them, side
by side with a real etcd where the answers are comparable."""

from __future__ import annotations

import hashlib
import json
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import grpc
import pytest

from shim.backend.bolt import BoltReader, BoltWriter
from shim.pb import rpc_pb2 as pb
from tests.support import (
    OUTSIDE_CHECKOUT,
    Client,
    EtcdServer,
    ShimServer,
    etcdctl,
    find_etcd_binary,
    free_port,
    free_ports,
    sqlite_endpoint,
)
from tests.support.postgres import PostgresServer, postgres_endpoint
from tests.support.process import child_env
from tests.support.waits import wait_until

NO_SPACE = "etcdserver: mvcc: database space exceeded"
WAIT = 10.0


def shim_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shim", *args], capture_output=True, text=True,
        env=child_env({}), cwd=OUTSIDE_CHECKOUT, timeout=60,
    )


def history(client: Client) -> None:
    """Puts, an overwrite, deletes (one, and a range), a Txn writing three keys."""
    kv = client.kv
    for i in range(5):
        kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v%d" % i))
    kv.Put(pb.PutRequest(key=b"k1", value=b""))
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"k2"))
    kv.Txn(pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"t1", value=b"a")),
        pb.RequestOp(request_put=pb.PutRequest(key=b"t2", value=b"b")),
        pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"k3")),
    ]))
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"k", range_end=b"l"))
    kv.Put(pb.PutRequest(key=b"k0", value=b"again"))


def hashes(client: Client, revisions: range) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for revision in revisions:
        try:
            resp = client.maintenance.HashKV(pb.HashKVRequest(revision=revision), timeout=WAIT)
            out.append((resp.hash, resp.compact_revision, resp.header.revision))
        except grpc.RpcError as exc:
            out.append((exc.code().name, exc.details()))
    return out


def hashkv_of(endpoint: str) -> int:
    out = etcdctl(endpoint, "endpoint", "hashkv", "-w", "json").stdout
    return int(json.loads(out)[0]["HashKV"]["hash"])


def test_hashkv_is_etcds_checksum(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer]
) -> None:
    """The same history gives the same HashKV as etcd at every revision, before and after
    compactions (and the same errors for compacted and future revisions)."""
    servers = (etcd_factory(), shim_factory())
    results = []
    for server in servers:
        with Client(server.endpoint) as client:
            steps = [hashes(client, range(-1, 3))]
            history(client)
            steps.append(hashes(client, range(-1, 13)))
            client.kv.Compact(pb.CompactionRequest(revision=5))
            steps.append(hashes(client, range(-1, 13)))
            client.kv.Compact(pb.CompactionRequest(revision=11))
            steps.append(hashes(client, range(0, 13)))
            results.append(steps)
        results[-1].append(hashkv_of(server.endpoint))  # etcdctl endpoint hashkv
    assert results[1] == results[0]
    assert results[1][1][0][0] == results[1][0][0][0]  # a negative revision hashes nothing


def test_hashkv_on_postgres_is_etcds_checksum(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer],
    postgres: PostgresServer,
) -> None:
    servers = (etcd_factory(), shim_factory(datastore_endpoint=postgres_endpoint()))
    results = []
    for server in servers:
        with Client(server.endpoint) as client:
            history(client)
            client.kv.Compact(pb.CompactionRequest(revision=6))
            results.append(hashes(client, range(0, 13)))
    assert results[1] == results[0]


def test_snapshot_save_status_and_restore(
    shim_factory: Callable[..., ShimServer], tmp_path: Path
) -> None:
    source = shim_factory()
    with Client(source.endpoint) as client:
        history(client)
        member = client.maintenance.Status(pb.StatusRequest()).header.member_id
    expected_hash = hashkv_of(source.endpoint)
    snapshot = tmp_path / "backup.db"
    saved = etcdctl(source.endpoint, "snapshot", "save", str(snapshot))
    assert f"Snapshot saved at {snapshot}" in saved.stdout
    data = snapshot.read_bytes()
    assert len(data) % 512 == 32  # what etcdctl checks: a database, then its SHA-256
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    assert data[16:20] == (0xED0CDAED).to_bytes(4, "little")  # bbolt's magic, as etcd's

    # etcd's own tools read it as one of etcd's (keys: the log's 13 stored versions, the
    # consistent index, and the pieces of shim's database); shim's too.
    etcd_status = json.loads(etcdctl(
        source.endpoint, "snapshot", "status", str(snapshot), "-w", "json").stdout)
    assert etcd_status["revision"] == 11
    assert etcd_status["totalSize"] == len(data) - 32
    status = shim_cli("snapshot", "status", str(snapshot), "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["revision"], info["total_keys"], info["checksum"]) == (11, 3, "sha256 ok")

    # Restored: the same data and history, a new member (node) id unless asked otherwise.
    for keep, suffix in ((False, "new"), (True, "kept")):
        target = tmp_path / suffix / "state.db"
        args = ["snapshot", "restore", str(snapshot), "--datastore-endpoint",
                sqlite_endpoint(target)]
        restored = shim_cli(*args, *(["--keep-identity"] if keep else []))
        assert restored.returncode == 0, restored.stderr
        assert "revision: 11" in restored.stdout
        again = shim_cli(*args)
        assert again.returncode == 2
        assert again.stderr == f"shim: {target} already exists; restore into a new path " \
            "(move the old database away first)\n"
        node = shim_factory(datastore_endpoint=sqlite_endpoint(target))
        assert hashkv_of(node.endpoint) == expected_hash
        assert etcdctl(node.endpoint, "get", "k0", "--print-value-only").stdout == "again\n"
        with Client(node.endpoint) as client:
            restored_member = client.maintenance.Status(pb.StatusRequest()).header.member_id
        assert (restored_member == member) == keep


def moving_history(endpoint: str) -> tuple[list[int], pb.RangeResponse, int]:
    """``history``, leased keys (one lease's ID negative, which LeaseGrant accepts), a
    compaction: (the leases' IDs in order, every key, HashKV) to find again on the other side
    of a move."""
    with Client(endpoint) as client:
        history(client)
        lease = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=300)).ID
        negative = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=300, ID=-5)).ID
        client.kv.Put(pb.PutRequest(key=b"leased", value=b"x", lease=lease))
        client.kv.Put(pb.PutRequest(key=b"negative", value=b"y", lease=negative))
        client.kv.Compact(pb.CompactionRequest(revision=6))
        everything = client.kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
    return sorted([lease, negative]), everything, hashkv_of(endpoint)


def test_a_shim_snapshot_restores_into_etcd(
    shim_factory: Callable[..., ShimServer], tmp_path: Path
) -> None:
    """A way off shim: etcdutl restores a shim snapshot into a real etcd, which then serves
    the same keys, leases and history (the same HashKV, compaction included)."""
    source = shim_factory()
    leases, expected, expected_hash = moving_history(source.endpoint)
    snapshot = tmp_path / "backup.db"
    etcdctl(source.endpoint, "snapshot", "save", str(snapshot))

    etcd = etcd_restored_from(snapshot, tmp_path / "etcd")
    with etcd.spawn().wait_ready(), Client(etcd.endpoint) as client:
        served = client.kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
        assert served.kvs == expected.kvs and served.header.revision == expected.header.revision
        assert hashkv_of(etcd.endpoint) == expected_hash
        served_leases = client.lease.LeaseLeases(pb.LeaseLeasesRequest()).leases
        # etcd keeps a negative-ID lease in its file but does not load it back: it is gone
        # after etcd restarts on its own data directory too.
        assert sorted(granted.ID for granted in served_leases) == [ID for ID in leases if ID > 0]
        with pytest.raises(grpc.RpcError) as compacted:
            client.kv.Range(pb.RangeRequest(key=b"k0", revision=5))
        assert compacted.value.details() == "etcdserver: mvcc: required revision has been compacted"


def etcd_layout(snapshot: Path, member_id: int) -> dict[bytes, dict[bytes, bytes]]:
    """A snapshot's cluster and meta buckets, with the values that name no one member or
    revision: what etcd 3.6 reads to find a 3.5 file's schema (confState, term)."""
    with snapshot.open("rb") as source:
        reader = BoltReader(source)
        layout = {name: dict(reader.bucket(name)) for name in (b"cluster", b"meta")}
    meta = layout[b"meta"]
    meta[b"confState"] = meta[b"confState"].replace(str(member_id).encode(), b"ID")
    for key in (b"consistent_index", b"term"):
        meta[key] = b"%d" % len(meta[key])  # 8-byte integers: their values differ
    return layout


def test_a_shim_snapshot_has_the_buckets_etcd_3_6_reads_to_find_its_schema(
    shim_factory: Callable[..., ShimServer], etcd_factory: Callable[..., EtcdServer],
    tmp_path: Path,
) -> None:
    """Without a confState and a term in its meta bucket, etcd 3.6 fails to find the schema of
    a 3.5 file restored from a snapshot ("missing confstate information", etcd#20495): shim's
    snapshot carries both as etcd 3.5's does, and the cluster version, as `etcdctl member
    list` and the snapshot show the member."""
    layouts = []
    for server in (etcd_factory(), shim_factory()):
        etcdctl(server.endpoint, "put", "k", "v")
        snapshot = tmp_path / f"{server.name}.db"
        etcdctl(server.endpoint, "snapshot", "save", str(snapshot))
        member = etcdctl(server.endpoint, "member", "list", "-w", "json").stdout
        layouts.append(etcd_layout(snapshot, json.loads(member)["members"][0]["ID"]))
    assert layouts[1] == layouts[0]


def etcd_restored_from(snapshot: Path, data: Path) -> EtcdServer:
    """A real etcd (not started) whose data directory `etcdutl snapshot restore` made."""
    client_port, peer_port = free_ports(2)
    etcd = EtcdServer(data, client_port=client_port, peer_port=peer_port)
    peer = f"http://127.0.0.1:{peer_port}"
    restored = subprocess.run(
        [find_etcd_binary("etcdutl"), "snapshot", "restore", str(snapshot),
         f"--data-dir={etcd.data_dir}", f"--name={etcd.member}",
         f"--initial-cluster={etcd.member}={peer}", f"--initial-advertise-peer-urls={peer}"],
        capture_output=True, text=True, timeout=60, cwd=OUTSIDE_CHECKOUT,
    )
    assert restored.returncode == 0, restored.stderr
    return etcd


AUTH_SETUP = [
    ("user", "add", "root", "--new-user-password=rootpw"),
    ("user", "grant-role", "root", "root"),
    ("user", "add", "alice", "--new-user-password=alicepw"),
    ("role", "add", "reader"),
    ("role", "grant-permission", "reader", "read", "/p/", "--prefix"),
    ("role", "grant-permission", "reader", "readwrite", "/w"),
    ("user", "grant-role", "alice", "reader"),
    ("user", "add", "carol", "--no-password"),
    ("put", "/p/x", "1"),
    ("auth", "enable"),
]


def auth_as_seen(endpoint: str) -> list[str]:
    """What etcdctl shows of the auth store and its rules, by root and by alice."""
    def ctl(*args: str) -> str:
        done = etcdctl(endpoint, *args, check=False)
        # The client's retry warnings name times and addresses: the error line is the answer.
        errors = [line for line in str(done.stderr).splitlines() if not line.startswith("{")]
        return f"{done.returncode} {done.stdout}{errors}"
    root, alice = "--user=root:rootpw", "--user=alice:alicepw"
    return [
        ctl(root, "auth", "status"), ctl(root, "user", "list"), ctl(root, "role", "list"),
        ctl(root, "user", "get", "alice"), ctl(root, "user", "get", "carol"),
        ctl(root, "role", "get", "reader"), ctl(alice, "get", "/p/x", "--print-value-only"),
        ctl(alice, "put", "/p/x", "2"), ctl(alice, "put", "/w", "3"),
        ctl("get", "/p/x"), ctl("--user=alice:wrong", "get", "/p/x"),
    ]


def test_auth_crosses_to_etcd_in_a_snapshot(
    shim_factory: Callable[..., ShimServer], etcd_factory: Callable[..., EtcdServer],
    tmp_path: Path,
) -> None:
    """etcd restores a shim snapshot with its auth store: auth on, the same users (their
    passwords too: shim makes etcd's bcrypt hashes), roles and rules, as etcd itself shows
    them after the same commands."""
    shim, reference = shim_factory(), etcd_factory()
    for server in (shim, reference):
        for command in AUTH_SETUP:
            etcdctl(server.endpoint, *command)
    expected = auth_as_seen(reference.endpoint)
    assert expected[0].startswith("0 Authentication Status: true")
    assert "permission denied" in expected[7] and expected[8].startswith("0 OK")
    assert auth_as_seen(shim.endpoint) == expected
    snapshot = tmp_path / "with-auth.db"
    etcdctl(shim.endpoint, "--user=root:rootpw", "snapshot", "save", str(snapshot))
    etcd = etcd_restored_from(snapshot, tmp_path / "etcd")
    with etcd.spawn().wait_ready():
        assert auth_as_seen(etcd.endpoint) == expected


def test_an_etcd_snapshot_restores_into_shim(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer],
    tmp_path: Path,
) -> None:
    """The way onto shim: `shim snapshot restore` of a snapshot a real etcd made gives a node
    with the same keys, leases and history (the same HashKV, compaction included)."""
    etcd = etcd_factory()
    leases, expected, expected_hash = moving_history(etcd.endpoint)
    snapshot = tmp_path / "etcd.db"
    etcdctl(etcd.endpoint, "snapshot", "save", str(snapshot))

    status = shim_cli("snapshot", "status", str(snapshot), "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["revision"], info["compact_revision"], info["total_keys"], info["node_id"]) == (
        expected.header.revision, 6, len(expected.kvs), "")
    target = tmp_path / "shim" / "state.db"
    restored = shim_cli("snapshot", "restore", str(snapshot), "--datastore-endpoint",
                        sqlite_endpoint(target))
    assert restored.returncode == 0, restored.stderr
    assert sorted(path.name for path in target.parent.iterdir()) == ["state.db"]
    node = shim_factory(datastore_endpoint=sqlite_endpoint(target))
    with Client(node.endpoint) as client:
        served = client.kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
        assert served.kvs == expected.kvs and served.header.revision == expected.header.revision
        served_leases = client.lease.LeaseLeases(pb.LeaseLeasesRequest()).leases
        assert sorted(granted.ID for granted in served_leases) == leases
        with pytest.raises(grpc.RpcError) as compacted:
            client.kv.Range(pb.RangeRequest(key=b"k0", revision=5))
        assert compacted.value.details() == "etcdserver: mvcc: required revision has been compacted"
    assert hashkv_of(node.endpoint) == expected_hash



def test_auth_crosses_from_etcd_in_a_snapshot(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer],
    tmp_path: Path,
) -> None:
    """`shim snapshot restore` of an etcd snapshot with auth enabled brings its auth store:
    the users log in with their etcd passwords (etcd's bcrypt hashes), and every rule and
    answer is etcd's."""
    etcd = etcd_factory()
    for command in AUTH_SETUP:
        etcdctl(etcd.endpoint, *command)
    expected = auth_as_seen(etcd.endpoint)
    snapshot = tmp_path / "etcd-auth.db"
    etcdctl(etcd.endpoint, "--user=root:rootpw", "snapshot", "save", str(snapshot))
    status = shim_cli("snapshot", "status", str(snapshot), "--json")
    assert status.returncode == 0, status.stderr
    target = tmp_path / "shim" / "state.db"
    restored = shim_cli("snapshot", "restore", str(snapshot), "--datastore-endpoint",
                        sqlite_endpoint(target))
    assert restored.returncode == 0, restored.stderr
    node = shim_factory(datastore_endpoint=sqlite_endpoint(target))
    assert auth_as_seen(node.endpoint) == expected


TWIN_GRANTS = [
    *AUTH_SETUP[:2],  # root
    ("user", "add", "u", "--new-user-password=upw"),
    ("role", "add", "r"),
    ("role", "grant-permission", "r", "readwrite", "a", "b"),
    ("role", "grant-permission", "r", "readwrite", "a", "c"),
    ("role", "grant-permission", "r", "read", "a", "c"),  # etcd: a second [a, c) entry
    ("user", "grant-role", "u", "r"),
    ("auth", "enable"),
]


def test_a_range_etcd_lists_twice_comes_in_allowing_what_etcd_allowed(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer],
    tmp_path: Path,
) -> None:
    """etcd 3.5 appends a grant on a range instead of replacing it when another range starting
    at the same key is listed first (etcd#21845), and then allows what either entry allows:
    after "readwrite [a, c)" and "read [a, c)", writes to b1 still pass. shim replaces the
    grant (what the request asks; the open fix upstream does the same), and brings etcd's twin
    entries in from a snapshot as one that allows both, so nobody loses a right in the move."""
    etcd, shim = etcd_factory(), shim_factory()
    for server in (etcd, shim):
        for command in TWIN_GRANTS:
            etcdctl(server.endpoint, *command)
    listed = etcdctl(etcd.endpoint, "--user=root:rootpw", "role", "get", "r").stdout
    assert listed.count("[a, c)") == 3, listed  # read twice, write once
    assert etcdctl(etcd.endpoint, "--user=u:upw", "put", "b1", "x").stdout.strip() == "OK"
    refused = etcdctl(shim.endpoint, "--user=u:upw", "put", "b1", "x", check=False)
    assert "permission denied" in refused.stderr  # the last grant on [a, c) is read

    snapshot = tmp_path / "twins.db"
    etcdctl(etcd.endpoint, "--user=root:rootpw", "snapshot", "save", str(snapshot))
    target = tmp_path / "restored" / "state.db"
    restored = shim_cli("snapshot", "restore", str(snapshot), "--datastore-endpoint",
                        sqlite_endpoint(target))
    assert restored.returncode == 0, restored.stderr
    node = shim_factory(datastore_endpoint=sqlite_endpoint(target))
    assert etcdctl(node.endpoint, "--user=u:upw", "put", "b2", "y").stdout.strip() == "OK"
    assert etcdctl(node.endpoint, "--user=u:upw", "get", "b1", "--print-value-only"
                   ).stdout.strip() == "x"
    listed = etcdctl(node.endpoint, "--user=root:rootpw", "role", "get", "r").stdout
    assert listed.count("[a, c)") == 2, listed  # one entry, read and write


def test_a_snapshot_without_room_for_its_copy_fails_once_and_plainly(
    shim_factory: Callable[..., ShimServer], tmp_path: Path
) -> None:
    """A snapshot is made as a file beside the database first. Without room for it (here a
    file size limit on the server process, as a nearly full disk would do), the client gets
    UNKNOWN and the reason in one line, as from etcd's snapshot errors, which etcdctl does
    not retry (with UNAVAILABLE it retried for ever, logging an error each time); the
    server goes on serving, and snapshots work again once there is room."""
    server = shim_factory()
    with Client(server.endpoint) as client:
        for i in range(200):
            client.kv.Put(pb.PutRequest(key=b"k%03d" % i, value=b"x" * 1024), timeout=10)
    assert server.pid is not None and server.database is not None
    size = server.database.stat().st_size
    for limit, reason in ((size // 2, "disk I/O error"), (size + size // 2, "File too large")):
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        failed = etcdctl(server.endpoint, "snapshot", "save", str(tmp_path / "s.db"),
                         check=False)
        assert failed.returncode != 0
        assert f"shim: snapshot failed: {reason}" in str(failed.stderr), failed.stderr
        assert not (tmp_path / "s.db").exists()
        assert server.log_tail().count("snapshot failed") == (1 if limit < size else 2)
    resource.prlimit(server.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    with Client(server.endpoint) as client:
        client.kv.Put(pb.PutRequest(key=b"after", value=b"1"), timeout=10)
    etcdctl(server.endpoint, "snapshot", "save", str(tmp_path / "s.db"))
    assert not list(server.database.parent.glob(".shim-snapshot-*"))


def test_snapshot_bad_input(shim: ShimServer, tmp_path: Path) -> None:
    snapshot = tmp_path / "s.db"
    etcdctl(shim.endpoint, "snapshot", "save", str(snapshot))
    data = snapshot.read_bytes()
    target = sqlite_endpoint(tmp_path / "out" / "state.db")

    def restore(content: bytes, *extra: str) -> str:
        path = tmp_path / "input.db"
        path.write_bytes(content)
        result = shim_cli("snapshot", "restore", str(path), "--datastore-endpoint", target, *extra)
        assert result.returncode == 2 and not (tmp_path / "out" / "state.db").exists()
        assert result.stdout == ""
        return result.stderr.replace(str(path), "FILE")

    damaged = bytearray(data)
    damaged[5000] ^= 0xFF
    assert restore(bytes(damaged)) == "shim: FILE: the SHA-256 checksum does not match " \
        "(the file is damaged or incomplete)\n"
    assert "does not end with a SHA-256 trailer" in restore(data[:-10])
    assert restore(b"\0" * 512 + hashlib.sha256(b"\0" * 512).digest()) == (
        "shim: FILE is not a snapshot (neither etcd's bbolt nor a SQLite database)\n"
    )
    assert restore(data[:4096], "--skip-hash-check").startswith("shim: FILE: page ")
    # bbolt that is not etcd's layout: a key bucket item that is no etcd revision.
    foreign = tmp_path / "foreign.db"
    with open(foreign, "wb") as out:
        bolt = BoltWriter(out)
        bolt.bucket(b"key", [(b"a", b"b")])
        bolt.close()
    assert restore(foreign.read_bytes(), "--skip-hash-check").startswith("shim: FILE: ")
    missing = shim_cli("snapshot", "status", str(tmp_path / "nope.db"))
    assert (missing.returncode, missing.stderr) == (
        2, f"shim: cannot read {tmp_path / 'nope.db'}: No such file or directory\n")
    into_postgres = shim_cli("snapshot", "restore", str(snapshot), "--datastore-endpoint",
                             "postgres://u:secret@127.0.0.1:1/db")
    assert into_postgres.returncode == 2
    assert "use pg_dump / pg_restore" in into_postgres.stderr and "secret" not in (
        into_postgres.stderr)


def test_postgres_snapshot_alarm_and_defrag(
    shim_factory: Callable[..., ShimServer], postgres: PostgresServer, tmp_path: Path
) -> None:
    server = shim_factory(datastore_endpoint=postgres_endpoint())
    result = etcdctl(server.endpoint, "snapshot", "save", str(tmp_path / "s.db"), check=False)
    assert result.returncode != 0
    assert "Snapshot of a PostgreSQL datastore is not implemented; back the database up " \
        "with pg_dump" in result.stderr
    with Client(server.endpoint) as client:
        member = client.maintenance.Status(pb.StatusRequest()).header.member_id
        client.maintenance.Alarm(pb.AlarmRequest(
            action=pb.AlarmRequest.ACTIVATE, memberID=member, alarm=pb.NOSPACE))
        with pytest.raises(grpc.RpcError) as refused:
            client.kv.Put(pb.PutRequest(key=b"a", value=b"b"))
        assert refused.value.details() == NO_SPACE
    listed = etcdctl(server.endpoint, "alarm", "list").stdout
    assert listed == f"memberID:{member} alarm:NOSPACE \n"
    etcdctl(server.endpoint, "alarm", "disarm")
    assert "Finished defragmenting" in etcdctl(server.endpoint, "defrag").stdout
    etcdctl(server.endpoint, "put", "a", "b")


def status_of(endpoint: str) -> dict[str, object]:
    out = etcdctl(endpoint, "endpoint", "status", "-w", "json").stdout
    return json.loads(out)[0]["Status"]  # type: ignore[no-any-return]


def test_defrag_gives_space_back(shim: ShimServer) -> None:
    with Client(shim.endpoint) as client:
        for i in range(40):
            client.kv.Put(pb.PutRequest(key=b"d/%d" % i, value=b"x" * 50_000))
        revision = client.kv.DeleteRange(
            pb.DeleteRangeRequest(key=b"d/", range_end=b"d0")).header.revision
        client.kv.Compact(pb.CompactionRequest(revision=revision))
    before = status_of(shim.endpoint)
    out = etcdctl(shim.endpoint, "defrag")
    assert out.stdout == f"Finished defragmenting etcd member[{shim.endpoint}]\n"
    after = status_of(shim.endpoint)
    assert int(after["dbSize"]) < int(before["dbSize"])  # type: ignore[call-overload]
    assert after["dbSize"] == after["dbSizeInUse"]  # no free pages left


@pytest.mark.parametrize("datastore", ["sqlite", "sqlite-processes"], indirect=True)
def test_defrag_shrinks_the_database_under_reads(
    shim_factory: Callable[..., ShimServer],
) -> None:
    """Read connections map the database file (PRAGMA mmap_size): defragmenting cuts the
    file to a fraction under connections that mapped all of it, while reads go on through
    every connection (and every serving process); none fails, and the server lives on."""
    shim = shim_factory()
    clients = [Client(shim.endpoint) for _ in range(6)]
    try:
        for i in range(300):
            clients[0].kv.Put(pb.PutRequest(key=b"big/%04d" % i, value=b"x" * 100_000))
        for i in range(20):
            clients[0].kv.Put(pb.PutRequest(key=b"keep/%02d" % i, value=b"v%d" % i))
        keep = pb.RangeRequest(key=b"keep/", range_end=b"keep0")
        for client in clients:  # each connection's reader maps all of the 30 MB file
            for start in range(0, 300, 30):
                page = client.kv.Range(pb.RangeRequest(
                    key=b"big/%04d" % start, range_end=b"big0", limit=30), timeout=30)
                assert len(page.kvs) == 30
        revision = clients[0].kv.DeleteRange(
            pb.DeleteRangeRequest(key=b"big/", range_end=b"big0")).header.revision
        clients[0].kv.Compact(pb.CompactionRequest(revision=revision))
        assert shim.database is not None
        before = shim.database.stat().st_size
        defragmented = threading.Event()
        failures: list[BaseException] = []
        reads = [0] * len(clients)

        def read(index: int) -> None:
            client = clients[index]
            # Reads before, during and after the defragmentation; at least 5 after it.
            done_after = None
            while done_after is None or reads[index] < done_after + 5:
                try:
                    got = client.kv.Range(keep, timeout=30)
                    assert [kv.value for kv in got.kvs] == [b"v%d" % i for i in range(20)]
                except BaseException as exc:  # reported below
                    failures.append(exc)
                    return
                reads[index] += 1
                if done_after is None and defragmented.is_set():
                    done_after = reads[index]

        readers = [threading.Thread(target=read, args=(i,)) for i in range(len(clients))]
        for thread in readers:
            thread.start()
        clients[0].maintenance.Defragment(pb.DefragmentRequest(), timeout=60)
        defragmented.set()
        for thread in readers:
            thread.join(60)
        assert not failures, failures
        assert shim.database.stat().st_size < before / 10
        assert shim.running
    finally:
        for client in clients:
            client.close()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.1)


def etcdctl_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("datastore", ["sqlite", "sqlite-processes"], indirect=True)
def test_quota_raises_nospace_until_disarmed(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer]
) -> None:
    """A tiny quota: writes fill it, NOSPACE is raised and listed, puts and lease grants are
    refused while reads and deletes work; the alarm survives a restart (shim) and, after
    compaction, defragmentation and `alarm disarm`, writes work again: as in etcd."""
    quota = ["--quota-backend-bytes", str(2 * 1024 * 1024)]
    etcd = etcd_factory(extra_args=quota)
    # Deleted values stay in replication entries for --replication-retention (they are what
    # peers are sent): here they may go at once, so compaction can free their space.
    shim = shim_factory(extra_args=[
        *quota, "--replication-retention", "0", "--maintenance-interval", "0.2",
    ])
    value = "v" * 100_000
    for server in (etcd, shim):
        for i in range(200):
            result = etcdctl(server.endpoint, "put", f"q/{i % 10}", value, check=False)
            if result.returncode != 0:
                break
        else:
            raise AssertionError(f"{server.name}: the quota was never reached")
        assert etcdctl_error(result) == f"Error: {NO_SPACE}"
    for server in (etcd, shim):
        member = status_of(server.endpoint)["header"]["member_id"]  # type: ignore[index]
        listed = etcdctl(server.endpoint, "alarm", "list").stdout
        assert listed == f"memberID:{member} alarm:NOSPACE \n"
        assert status_of(server.endpoint)["errors"] == [f"memberID:{member} alarm:NOSPACE "]
        assert etcdctl_error(etcdctl(server.endpoint, "put", "x", "y", check=False)) == (
            f"Error: {NO_SPACE}")
        assert etcdctl_error(etcdctl(server.endpoint, "lease", "grant", "10", check=False)) == (
            f"Error: failed to grant lease ({NO_SPACE})")
        assert etcdctl(server.endpoint, "get", "q/1", "--print-value-only").stdout == (
            value + "\n")
        etcdctl(server.endpoint, "del", "q/", "--prefix")
    shim.restart()
    assert etcdctl(shim.endpoint, "alarm", "list").stdout.endswith("alarm:NOSPACE \n")
    for server in (etcd, shim):
        revision = status_of(server.endpoint)["header"]["revision"]  # type: ignore[index]
        etcdctl(server.endpoint, "compact", str(revision))
        if server is shim:  # until retention has pruned the entries holding deleted values
            wait_for(lambda: int(status_of(shim.endpoint)["dbSizeInUse"]) < 1024 * 1024)
        etcdctl(server.endpoint, "defrag")
        assert etcdctl(server.endpoint, "alarm", "disarm").stdout.startswith("memberID:")
        assert etcdctl(server.endpoint, "alarm", "list").stdout == ""
        assert etcdctl(server.endpoint, "put", "x", "y").stdout == "OK\n"


def test_alarms_as_etcd(etcd_factory: Callable[..., EtcdServer], shim: ShimServer) -> None:
    """Alarm requests of every kind, including for other member ids, CORRUPT refusing writes
    (not reads), and what a Txn may still do under NOSPACE: the same answers as etcd."""
    etcd = etcd_factory()
    requests: list[tuple[str, Callable[[Client], object]]] = [
        ("activate NONE", lambda c: c.maintenance.Alarm(pb.AlarmRequest(action=1, memberID=5))),
        ("deactivate absent", lambda c: c.maintenance.Alarm(
            pb.AlarmRequest(action=2, memberID=5, alarm=pb.NOSPACE))),
        ("activate", lambda c: c.maintenance.Alarm(
            pb.AlarmRequest(action=1, memberID=5, alarm=pb.NOSPACE))),
        ("get all", lambda c: c.maintenance.Alarm(pb.AlarmRequest(action=0))),
        ("get corrupt", lambda c: c.maintenance.Alarm(pb.AlarmRequest(alarm=pb.CORRUPT))),
        ("put", lambda c: c.kv.Put(pb.PutRequest(key=b"a", value=b"b"))),
        ("delete", lambda c: c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"a"))),
        ("txn: nested put", lambda c: c.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(
            request_txn=pb.TxnRequest(success=[pb.RequestOp(
                request_put=pb.PutRequest(key=b"n"))]))]))),
        ("txn: put in failure branch", lambda c: c.kv.Txn(pb.TxnRequest(failure=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"a"))]))),
        ("lease grant", lambda c: c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30))),
        ("compact", lambda c: c.kv.Compact(pb.CompactionRequest(revision=2))),
        ("deactivate", lambda c: c.maintenance.Alarm(
            pb.AlarmRequest(action=2, memberID=5, alarm=pb.NOSPACE))),
        ("activate corrupt", lambda c: c.maintenance.Alarm(
            pb.AlarmRequest(action=1, memberID=7, alarm=pb.CORRUPT))),
        ("put when corrupt", lambda c: c.kv.Put(pb.PutRequest(key=b"a", value=b"b"))),
        ("read when corrupt", lambda c: c.kv.Range(pb.RangeRequest(key=b"n"))),
        ("deactivate corrupt", lambda c: c.maintenance.Alarm(
            pb.AlarmRequest(action=2, memberID=7, alarm=pb.CORRUPT))),
        ("put after", lambda c: c.kv.Put(pb.PutRequest(key=b"a", value=b"b"))),
    ]
    answers = []
    for server in (etcd, shim):
        with Client(server.endpoint) as client:
            seen = []
            for name, call in requests:
                try:
                    resp = call(client)
                    text = re.sub(r"(cluster_id|member_id|raft_term): \d+\n", "", str(resp))
                    seen.append((name, "OK", text))
                except grpc.RpcError as exc:
                    seen.append((name, exc.code().name, exc.details()))
            answers.append(seen)
    assert answers[1] == answers[0]


def test_move_leader_and_downgrade_as_a_single_etcd_member(
    etcd_factory: Callable[..., EtcdServer], shim: ShimServer
) -> None:
    etcd = etcd_factory()
    answers = []
    for server in (etcd, shim):
        with Client(server.endpoint) as client:
            me = client.maintenance.Status(pb.StatusRequest()).header.member_id
            calls: list[tuple[str, object]] = [
                ("MoveLeader", pb.MoveLeaderRequest(targetID=me)),
                ("MoveLeader", pb.MoveLeaderRequest(targetID=42)),
                ("MoveLeader", pb.MoveLeaderRequest()),
            ]
            for version in ("3.4", "3.4.1", "3.4.0-rc.1", "3.3", "3.5", "4.4", "", "x.y"):
                calls.append(("Downgrade", pb.DowngradeRequest(
                    action=pb.DowngradeRequest.VALIDATE, version=version)))
            calls += [
                ("Downgrade", pb.DowngradeRequest(action=pb.DowngradeRequest.CANCEL)),
                ("Downgrade", pb.DowngradeRequest(
                    action=pb.DowngradeRequest.ENABLE, version="3.3")),
                ("Downgrade", pb.DowngradeRequest(action=7, version="3.4")),  # type: ignore[arg-type]
            ]
            seen = []
            for method, request in calls:
                try:
                    text = str(getattr(client.maintenance, method)(request, timeout=WAIT))
                    seen.append(("OK", re.sub(
                        r"(cluster_id|member_id|raft_term|revision): \d+\n", "", text)))
                except grpc.RpcError as exc:
                    seen.append((exc.code().name, exc.details()))
            answers.append(seen)
    assert answers[1] == answers[0]
    # etcd 3.5.1 never answers ENABLE of a valid target on one member; shim says why it
    # cannot downgrade.
    with Client(shim.endpoint) as client, pytest.raises(grpc.RpcError) as refused:
        client.maintenance.Downgrade(
            pb.DowngradeRequest(action=pb.DowngradeRequest.ENABLE, version="3.4"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "a downgrade cannot be enabled" in refused.value.details()


def test_member_list_gives_the_urls_each_node_advertises(
    shim_factory: Callable[..., ShimServer],
) -> None:
    """--advertise-client-urls, as etcd's: what MemberList lists for the node, and what a
    linked node lists for it (told in the link's Hello), whichever side dialed."""
    token = "t0ken"
    hub_urls = ["http://hub.example:2379", "https://10.0.0.9:2379"]
    hub = shim_factory(extra_args=[
        "--name", "hub", "--bootstrap-token", token,
        "--advertise-client-urls", ",".join(hub_urls) + "/",  # a trailing slash is dropped
    ])
    leaf = shim_factory(extra_args=[
        "--name", "leaf", "--join", f"http://{hub.endpoint}", "--token", token,
        "--advertise-client-urls", "http://leaf.example:2379",
    ])

    def urls(server: ShimServer) -> dict[str, tuple[list[str], list[str]]]:
        out = json.loads(etcdctl(server.endpoint, "member", "list", "-w", "json").stdout)
        return {m["name"]: (m.get("peerURLs", []), m.get("clientURLs", []))
                for m in out["members"]}

    for server in (hub, leaf):
        wait_for(lambda s=server: len(urls(s)) == 2)
        assert urls(server) == {
            "hub": (hub_urls, hub_urls),
            "leaf": (["http://leaf.example:2379"], ["http://leaf.example:2379"]),
        }


def test_member_list_shows_linked_replicas(shim_factory: Callable[..., ShimServer]) -> None:
    token = "t0ken"
    parent = shim_factory(extra_args=["--name", "parent", "--bootstrap-token", token])
    alone = json.loads(etcdctl(parent.endpoint, "member", "list", "-w", "json").stdout)
    assert [(m["name"], m["peerURLs"], m["clientURLs"]) for m in alone["members"]] == [
        ("parent", [f"http://{parent.endpoint}"], [f"http://{parent.endpoint}"])]
    child = shim_factory(extra_args=[
        "--name", "child", "--join", f"http://{parent.endpoint}", "--token", token,
    ])
    def members(server: ShimServer) -> list[tuple[int, str, list[str], list[str]]]:
        out = etcdctl(server.endpoint, "member", "list", "-w", "json").stdout
        return sorted(
            (int(m["ID"]), m["name"], m.get("peerURLs", []), m.get("clientURLs", []))
            for m in json.loads(out)["members"]
        )

    for server in (child, parent):  # the link comes up in the background
        wait_for(lambda s=server: len(members(s)) == 2)
    ids = {}
    for server in (parent, child):
        with Client(server.endpoint) as client:
            ids[server] = client.maintenance.Status(pb.StatusRequest()).header.member_id
    # Each knows the other's client URL, which is also its peer URL (links ride the client
    # port): the child dialed it, the parent was told it in the child's Hello. IDs are each
    # node's own member id.
    child_url, parent_url = f"http://{child.endpoint}", f"http://{parent.endpoint}"
    expected = {
        child: sorted([
            (ids[child], "child", [child_url], [child_url]),
            (ids[parent], "parent", [parent_url], [parent_url]),
        ]),
        parent: sorted([
            (ids[parent], "parent", [parent_url], [parent_url]),
            (ids[child], "child", [child_url], [child_url]),
        ]),
    }
    for server in (child, parent):
        assert members(server) == expected[server]
    table = etcdctl(child.endpoint, "member", "list").stdout
    assert f", started, parent, {parent_url}, {parent_url}, false" in table
    refused = etcdctl(child.endpoint, "member", "add", "x", "--peer-urls",
                      f"http://127.0.0.1:{free_port()}", check=False)
    assert refused.returncode != 0
    assert "shim serve --join URL" in etcdctl_error(refused)


def damage_root_page(db: Path, name: str) -> None:
    """Overwrite the first page of table or index ``name`` of a stopped server's database
    with garbage."""
    conn = apsw.Connection(str(db))
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(bytes([0xEE]) * page_size)


def test_damage_found_by_a_write_raises_corrupt(tmp_path: Path) -> None:
    """A damaged index met by a write raises CORRUPT: later writes are refused with etcd's
    error, reads still work, and the alarm is kept across a restart."""
    server = ShimServer(tmp_path / "shim")
    db = tmp_path / "shim" / "state.db"
    with server:
        for i in range(20):
            etcdctl(server.endpoint, "put", f"k{i}", "v")
    damage_root_page(db, "log_key_revision")  # the index's only page
    with server:
        failed = etcdctl(server.endpoint, "put", "new", "v", check=False)
        assert failed.returncode != 0
        member = status_of(server.endpoint)["header"]["member_id"]  # type: ignore[index]
        assert etcdctl(server.endpoint, "alarm", "list").stdout == (
            f"memberID:{member} alarm:CORRUPT \n")
        refused = etcdctl(server.endpoint, "put", "new", "v", check=False)
        assert etcdctl_error(refused) == "Error: etcdserver: corrupt cluster"
        assert etcdctl(server.endpoint, "get", "k3", "--print-value-only").stdout == "v\n"
        assert "alarm CORRUPT raised" in server.log_tail(20)
    with server:
        assert etcdctl(server.endpoint, "alarm", "list").stdout == (
            f"memberID:{member} alarm:CORRUPT \n")


def test_damage_found_by_a_read_raises_corrupt(tmp_path: Path) -> None:
    """Damage met by a read raises CORRUPT as well (it was only answered, unlogged, and the
    node went on taking writes into a damaged file): the read is refused, the operator is
    told once, and writes are refused with etcd's error."""
    server = ShimServer(tmp_path / "shim")
    db = tmp_path / "shim" / "state.db"
    with server:
        for i in range(20):
            etcdctl(server.endpoint, "put", f"k{i}", "v")
    damage_root_page(db, "current")  # the current values' only page
    with server, Client(server.endpoint) as client:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as refused:
                client.kv.Range(pb.RangeRequest(key=b"k", range_end=b"l"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "malformed" in str(refused.value.details())
        member = status_of(server.endpoint)["header"]["member_id"]  # type: ignore[index]
        wait_until(lambda: etcdctl(server.endpoint, "alarm", "list").stdout == (
            f"memberID:{member} alarm:CORRUPT \n"), 10, "the CORRUPT alarm")
        refused_put = etcdctl(server.endpoint, "put", "new", "v", check=False)
        assert etcdctl_error(refused_put) == "Error: etcdserver: corrupt cluster"
        assert server.log_tail(40).count("the database is damaged") == 1


def test_an_expired_lease_the_storage_refuses_is_retried_quietly(tmp_path: Path) -> None:
    """While writes are refused (here the CORRUPT alarm; a full disk does the same), an
    expired lease cannot be revoked: that is said once, not with a traceback at every try
    (twice a second, which filled the disk further), and the lease goes once writes pass."""
    server = ShimServer(tmp_path / "shim", extra_args=["--log-level", "debug"])
    with server, Client(server.endpoint) as client:
        lease = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2), timeout=10).ID
        client.kv.Put(pb.PutRequest(key=b"leased", value=b"v", lease=lease), timeout=10)
        member = client.maintenance.Status(pb.StatusRequest(), timeout=10).header.member_id
        corrupt = {"memberID": member, "alarm": pb.CORRUPT}
        client.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, **corrupt),
                                 timeout=10)
        # Retries, every 0.5 s (each one logged a traceback before).
        wait_until(lambda: server.log_tail(200).count("refused again") >= 3, 20, "3 retries")
        client.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, **corrupt),
                                 timeout=10)
        wait_until(lambda: not client.kv.Range(pb.RangeRequest(key=b"leased"), timeout=10).kvs,
                   20, "the lease to be revoked")
        log = server.log_tail(400)
        assert log.count("failed, retrying") == 1 and "Traceback" not in log, log
        assert "expired leases are revoked again" in log


def test_unknown_alarm_action(shim: ShimServer) -> None:
    # etcd 3.5.1 crashes on this request (a nil dereference); shim answers as etcd's own
    # "unknown method" and goes on serving.
    with Client(shim.endpoint) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.maintenance.Alarm(pb.AlarmRequest(action=7, memberID=1, alarm=1))  # type: ignore[arg-type]
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.UNKNOWN, "etcdserver: unknown method")
        assert not client.maintenance.Alarm(pb.AlarmRequest()).alarms

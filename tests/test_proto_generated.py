"""The committed shim/pb modules must match the .proto sources and etcd 3.5's wire format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PB_DIR = REPO_ROOT / "src" / "shim" / "pb"
GENERATOR = REPO_ROOT / "proto" / "generate.py"
REGEN_HINT = "regenerate with: python proto/generate.py"


def _files(directory: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix in {".py", ".pyi"}
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    # grpcio-tools is a test dependency: without it this check must fail, not pass silently.
    out = tmp_path / "pb"
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    fresh = _files(out)
    committed = _files(PB_DIR)

    problems = []
    for name in sorted(fresh.keys() - committed.keys()):
        problems.append(f"src/shim/pb/{name} is missing")
    for name in sorted(committed.keys() - fresh.keys()):
        problems.append(f"src/shim/pb/{name} is not produced by the generator (stale extra file)")
    for name in sorted(fresh.keys() & committed.keys()):
        if fresh[name] != committed[name]:
            problems.append(f"src/shim/pb/{name} is stale")
    assert not problems, "\n".join([*problems, REGEN_HINT])


def _number(message, field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


def test_etcd_wire_facts() -> None:
    from shim.pb import kv_pb2, rpc_pb2

    # Numbers checked against etcd v3.5 api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto.
    rr = rpc_pb2.RangeRequest
    assert _number(rr, "key") == 1
    assert _number(rr, "range_end") == 2
    assert _number(rr, "limit") == 3
    assert _number(rr, "revision") == 4
    assert _number(rr, "sort_order") == 5
    assert _number(rr, "sort_target") == 6
    assert _number(rr, "keys_only") == 8
    assert _number(rr, "count_only") == 9
    assert _number(rr, "min_create_revision") == 12
    assert _number(rr, "max_create_revision") == 13
    assert rr.SortTarget.Value("MOD") == 3
    assert rr.SortOrder.Value("DESCEND") == 2

    assert _number(rpc_pb2.Compare, "lease") == 8
    assert _number(rpc_pb2.Compare, "range_end") == 64
    oneof = rpc_pb2.Compare.DESCRIPTOR.oneofs_by_name["target_union"]
    assert [f.name for f in oneof.fields] == [
        "version",
        "create_revision",
        "mod_revision",
        "value",
        "lease",
    ]
    assert rpc_pb2.Compare.CompareResult.Value("NOT_EQUAL") == 3
    assert rpc_pb2.Compare.CompareTarget.Value("LEASE") == 4

    assert _number(rpc_pb2.WatchResponse, "fragment") == 7
    assert _number(rpc_pb2.WatchResponse, "events") == 11
    assert _number(rpc_pb2.WatchCreateRequest, "watch_id") == 7
    assert _number(rpc_pb2.WatchCreateRequest, "fragment") == 8
    assert rpc_pb2.WatchCreateRequest.FilterType.Value("NODELETE") == 1
    union = rpc_pb2.WatchRequest.DESCRIPTOR.oneofs_by_name["request_union"]
    assert [f.name for f in union.fields] == [
        "create_request",
        "cancel_request",
        "progress_request",
    ]

    assert _number(rpc_pb2.LeaseTimeToLiveResponse, "grantedTTL") == 4
    assert _number(rpc_pb2.StatusResponse, "raftAppliedIndex") == 7
    assert _number(rpc_pb2.StatusResponse, "dbSizeInUse") == 9
    assert _number(rpc_pb2.StatusResponse, "isLearner") == 10
    assert rpc_pb2.AlarmType.Value("NOSPACE") == 1

    assert [(f.name, f.number) for f in kv_pb2.KeyValue.DESCRIPTOR.fields] == [
        ("key", 1),
        ("create_revision", 2),
        ("mod_revision", 3),
        ("version", 4),
        ("value", 5),
        ("lease", 6),
    ]
    assert kv_pb2.Event.EventType.Value("DELETE") == 1
    assert kv_pb2.KeyValue.DESCRIPTOR.full_name == "mvccpb.KeyValue"


def test_service_names_and_methods() -> None:
    from shim.pb import rpc_pb2, rpc_pb2_grpc

    services = rpc_pb2.DESCRIPTOR.services_by_name
    assert {name: s.full_name for name, s in services.items()} == {
        "KV": "etcdserverpb.KV",
        "Watch": "etcdserverpb.Watch",
        "Lease": "etcdserverpb.Lease",
        "Cluster": "etcdserverpb.Cluster",
        "Maintenance": "etcdserverpb.Maintenance",
        "Auth": "etcdserverpb.Auth",
    }
    assert set(services["Auth"].methods_by_name) == {
        "AuthEnable", "AuthDisable", "AuthStatus", "Authenticate",
        "UserAdd", "UserGet", "UserList", "UserDelete", "UserChangePassword",
        "UserGrantRole", "UserRevokeRole",
        "RoleAdd", "RoleGet", "RoleList", "RoleDelete",
        "RoleGrantPermission", "RoleRevokePermission",
    }
    watch = services["Watch"].methods_by_name["Watch"]
    assert watch.client_streaming and watch.server_streaming
    keepalive = services["Lease"].methods_by_name["LeaseKeepAlive"]
    assert keepalive.client_streaming and keepalive.server_streaming
    snapshot = services["Maintenance"].methods_by_name["Snapshot"]
    assert snapshot.server_streaming and not snapshot.client_streaming
    assert set(services["Maintenance"].methods_by_name) == {
        "Alarm",
        "Status",
        "Defragment",
        "Hash",
        "HashKV",
        "Snapshot",
        "MoveLeader",
        "Downgrade",
    }
    for name in services:
        assert hasattr(rpc_pb2_grpc, f"{name}Stub")
        assert hasattr(rpc_pb2_grpc, f"add_{name}Servicer_to_server")


def test_lock_and_election_wire_facts() -> None:
    from shim.pb import v3election_pb2, v3lock_pb2

    # Checked against etcd v3.5 server/etcdserver/api/v3lock/v3lockpb/v3lock.proto and
    # v3election/v3electionpb/v3election.proto.
    def fields(message: Any) -> list[tuple[str, int]]:
        return [(f.name, f.number) for f in message.DESCRIPTOR.fields]

    assert fields(v3lock_pb2.LockRequest) == [("name", 1), ("lease", 2)]
    assert fields(v3lock_pb2.LockResponse) == [("header", 1), ("key", 2)]
    assert fields(v3lock_pb2.UnlockRequest) == [("key", 1)]
    assert fields(v3election_pb2.CampaignRequest) == [("name", 1), ("lease", 2), ("value", 3)]
    assert fields(v3election_pb2.CampaignResponse) == [("header", 1), ("leader", 2)]
    assert fields(v3election_pb2.LeaderKey) == [("name", 1), ("key", 2), ("rev", 3), ("lease", 4)]
    assert fields(v3election_pb2.LeaderResponse) == [("header", 1), ("kv", 2)]
    assert fields(v3election_pb2.ProclaimRequest) == [("leader", 1), ("value", 2)]
    assert fields(v3election_pb2.ResignRequest) == [("leader", 1)]
    lock = v3lock_pb2.DESCRIPTOR.services_by_name["Lock"]
    assert lock.full_name == "v3lockpb.Lock"
    assert set(lock.methods_by_name) == {"Lock", "Unlock"}
    election = v3election_pb2.DESCRIPTOR.services_by_name["Election"]
    assert election.full_name == "v3electionpb.Election"
    assert set(election.methods_by_name) == {"Campaign", "Proclaim", "Leader", "Observe", "Resign"}
    assert election.methods_by_name["Observe"].server_streaming


def test_auth_wire_facts() -> None:
    from shim.pb import auth_pb2, rpc_pb2

    # Numbers checked against etcd v3.5 api/authpb/auth.proto and api/etcdserverpb/rpc.proto.
    assert [(f.name, f.number) for f in auth_pb2.Permission.DESCRIPTOR.fields] == [
        ("permType", 1), ("key", 2), ("range_end", 3),
    ]
    assert auth_pb2.Permission.Type.Value("READWRITE") == 2
    assert auth_pb2.Permission.DESCRIPTOR.full_name == "authpb.Permission"
    assert _number(auth_pb2.UserAddOptions, "no_password") == 1
    add = rpc_pb2.AuthUserAddRequest
    assert [_number(add, f) for f in ("name", "password", "options", "hashedPassword")] == [
        1, 2, 3, 4,
    ]
    assert _number(rpc_pb2.AuthUserChangePasswordRequest, "hashedPassword") == 3
    assert _number(rpc_pb2.AuthStatusResponse, "authRevision") == 3
    assert _number(rpc_pb2.AuthenticateResponse, "token") == 2
    assert _number(rpc_pb2.AuthRoleGrantPermissionRequest, "perm") == 2
    assert _number(rpc_pb2.AuthRoleRevokePermissionRequest, "range_end") == 3
    assert _number(rpc_pb2.AuthUserGrantRoleRequest, "role") == 2

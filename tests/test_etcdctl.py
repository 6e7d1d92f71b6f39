"""The real etcdctl 3.5 against shim, compared with the same commands against a real etcd.

Both servers are fresh for this module and receive exactly the same commands in the same
order, so their revisions stay equal and outputs can be compared byte for byte once the
identity of the answering server (cluster_id, member_id, raft_term, leader) is normalised.
Each test uses its own key prefix, so tests do not depend on each other's keys.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import EtcdServer, ShimServer, etcdctl

IDENTITY_FIELDS = frozenset({"cluster_id", "member_id", "raft_term", "leader", "raftTerm", "ID"})
# -w fields prints the header as lines like `"MemberID" : 5107074860015118766`.
IDENTITY_FIELD_LINE = re.compile(r'^"(ClusterID|MemberID|RaftTerm|Leader)" : \d+$', re.MULTILINE)
COMPACTED = "Error: etcdserver: mvcc: required revision has been compacted"


def normalise_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "<id>" if k in IDENTITY_FIELDS else normalise_json(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalise_json(v) for v in value]
    return value


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """etcdctl's own error message (its client logs retry warnings as JSON lines before it)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: Any  # text, or parsed-and-normalised JSON with -w json
    error: str


@dataclass
class Pair:
    etcd: EtcdServer
    shim: ShimServer

    def run(self, server: EtcdServer | ShimServer, *args: str, input: str | None = None) -> Any:
        result = etcdctl(server.endpoint, *args, input=input, check=False)
        stdout: Any = result.stdout
        if "json" in args and result.returncode == 0:
            stdout = normalise_json(json.loads(result.stdout))
        elif "fields" in args:
            stdout = IDENTITY_FIELD_LINE.sub(r'"\1" : <id>', stdout)
        return result, Outcome(result.returncode, stdout, error_line(result))

    def same(self, *args: str, input: str | None = None) -> Outcome:
        """Run on etcd, then on shim; the outcomes must be identical. Returns shim's."""
        etcd_raw, on_etcd = self.run(self.etcd, *args, input=input)
        shim_raw, on_shim = self.run(self.shim, *args, input=input)
        def show(raw: subprocess.CompletedProcess[str]) -> str:
            return f"rc={raw.returncode} stdout={raw.stdout!r} stderr={raw.stderr!r}"

        assert on_shim == on_etcd, (
            f"etcdctl {' '.join(args)} differs\netcd: {show(etcd_raw)}\nshim: {show(shim_raw)}"
        )
        return on_shim

    def ok(self, *args: str, input: str | None = None) -> Any:
        outcome = self.same(*args, input=input)
        assert outcome.returncode == 0, outcome
        return outcome.stdout

    def put(self, key: str, value: str) -> int:
        """Put on both; the revision it was written at (equal on both by construction)."""
        out = self.ok("put", key, value, "-w", "json")
        return int(out["header"]["revision"])


@pytest.fixture(scope="module")
def pair(etcd: EtcdServer, shim_module: ShimServer) -> Pair:
    return Pair(etcd, shim_module)


def kvs_of(out: dict[str, Any]) -> list[tuple[str, str, int, int, int]]:
    def text(b64: str) -> str:
        return base64.b64decode(b64).decode()

    return [
        (
            text(kv["key"]),
            text(kv.get("value", "")),
            int(kv["create_revision"]),
            int(kv["mod_revision"]),
            int(kv["version"]),
        )
        for kv in out.get("kvs", [])
    ]


# --- put / get ---------------------------------------------------------------------------


def test_put_prints_ok(pair: Pair) -> None:
    assert pair.ok("put", "p0/k", "v") == "OK\n"
    assert pair.ok("put", "p0/k", "v2", "--prev-kv") == "OK\np0/k\nv\n"


def test_get_variants(pair: Pair) -> None:
    r1 = pair.put("g/a", "3")
    r2 = pair.put("g/b", "1")
    r3 = pair.put("g/c", "2")
    r4 = pair.put("g/a", "4")
    assert [r2, r3, r4] == [r1 + 1, r1 + 2, r1 + 3]

    assert pair.ok("get", "g/a") == "g/a\n4\n"
    assert pair.ok("get", "g/", "--prefix") == "g/a\n4\ng/b\n1\ng/c\n2\n"
    assert pair.ok("get", "g/", "--prefix", "--keys-only") == "g/a\n\ng/b\n\ng/c\n\n"
    assert pair.ok("get", "g/", "--prefix", "--print-value-only") == "4\n1\n2\n"
    assert pair.ok("get", "g/", "--prefix", "--limit", "2") == "g/a\n4\ng/b\n1\n"
    assert pair.ok("get", "g/a", "g/c") == "g/a\n4\ng/b\n1\n"  # [g/a, g/c)
    assert pair.ok("get", "g/b", "--from-key", "--keys-only").startswith("g/b\n\ng/c\n\n")
    assert pair.ok("get", "g/missing") == ""

    # Old revisions: g/a was 3 until r4.
    assert pair.ok("get", "g/a", "--rev", str(r1)) == "g/a\n3\n"
    assert pair.ok("get", "g/", "--prefix", "--rev", str(r2)) == "g/a\n3\ng/b\n1\n"
    assert pair.ok("get", "g/", "--prefix", "--rev", str(r1 - 1)) == ""

    # Sorting (etcdctl sends the sort; the server sorts).
    by_value = pair.ok("get", "g/", "--prefix", "--sort-by", "VALUE", "--order", "DESCEND")
    assert by_value == "g/a\n4\ng/c\n2\ng/b\n1\n"
    by_mod = pair.ok("get", "g/", "--prefix", "--sort-by", "MODIFY", "--order", "ASCEND")
    assert by_mod == "g/b\n1\ng/c\n2\ng/a\n4\n"
    pair.ok("get", "g/", "--prefix", "--sort-by", "CREATE", "--order", "DESCEND")
    pair.ok("get", "g/", "--prefix", "--sort-by", "VERSION", "--order", "DESCEND")
    pair.ok("get", "g/", "--prefix", "--sort-by", "KEY", "--order", "DESCEND", "--limit", "2")
    pair.ok("get", "g/", "--prefix", "-w", "fields", "--count-only")

    # -w json: revisions, versions and count.
    out = pair.ok("get", "g/", "--prefix", "-w", "json")
    assert out["header"]["revision"] == r4
    assert out["count"] == 3
    assert kvs_of(out) == [
        ("g/a", "4", r1, r4, 2),
        ("g/b", "1", r2, r2, 1),
        ("g/c", "2", r3, r3, 1),
    ]
    out = pair.ok("get", "g/", "--prefix", "--limit", "1", "-w", "json", "--rev", str(r3))
    assert out["more"] is True and out["count"] == 3
    assert kvs_of(out) == [("g/a", "3", r1, r1, 1)]


def test_get_errors(pair: Pair) -> None:
    rev = pair.put("ge/k", "v")
    future = pair.same("get", "ge/k", "--rev", str(rev + 1000))
    assert future.returncode != 0
    assert future.error == "Error: etcdserver: mvcc: required revision is a future revision"
    empty = pair.same("put", "", "v")
    assert empty.returncode != 0
    assert empty.error == "Error: etcdserver: key is not provided"


# --- del ---------------------------------------------------------------------------------


def test_del(pair: Pair) -> None:
    pair.put("d/a", "1")
    pair.put("d/b", "2")
    pair.put("d/c", "3")
    pair.put("d/c/x", "4")
    assert pair.ok("del", "d/a") == "1\n"
    assert pair.ok("del", "d/a") == "0\n"
    assert pair.ok("del", "d/b", "--prev-kv") == "1\nd/b\n2\n"
    out = pair.ok("del", "d/c", "--prefix", "--prev-kv", "-w", "json")
    assert out["deleted"] == 2
    assert [kv[:2] for kv in kvs_of({"kvs": out["prev_kvs"]})] == [("d/c", "3"), ("d/c/x", "4")]
    assert pair.ok("get", "d/", "--prefix") == ""
    pair.put("d/z", "z")
    assert pair.ok("del", "d/", "--prefix") == "1\n"
    assert pair.ok("del", "d/", "--prefix") == "0\n"


# --- txn ---------------------------------------------------------------------------------


def test_txn_success_branch(pair: Pair) -> None:
    pair.put("t/a", "1")
    pair.put("t/b", "2")
    script = 'value("t/a") = "1"\nversion("t/b") > "0"\n\nput t/a x\nget t/b\n\nput t/a y\n\n'
    assert pair.ok("txn", input=script) == "SUCCESS\n\nOK\n\nt/b\n2\n"
    assert pair.ok("get", "t/a", "--print-value-only") == "x\n"


def test_txn_failure_branch(pair: Pair) -> None:
    rev = pair.put("tf/a", "1")
    script = f'mod("tf/a") > "{rev}"\n\nput tf/a x\n\nput tf/a y\ndel tf/missing\nget tf/a\n\n'
    assert pair.ok("txn", input=script) == "FAILURE\n\nOK\n\n0\n\ntf/a\ny\n"


def test_txn_json_and_multi_op(pair: Pair) -> None:
    rev = pair.put("tj/a", "1")
    pair.put("tj/b", "2")
    script = (
        f'mod("tj/a") = "{rev}"\ncreate("tj/none") = "0"\nvalue("tj/b") != "9"\n\n'
        'get tj/ --prefix\nput tj/c "hello world"\ndel tj/b\n\n\n'
    )
    out = pair.ok("txn", "-w", "json", input=script)
    assert out["succeeded"] is True
    assert len(out["responses"]) == 3
    txn_rev = out["header"]["revision"]
    assert txn_rev == rev + 2
    assert pair.ok("get", "tj/c", "--print-value-only") == "hello world\n"
    # Everything the txn wrote carries its single revision.
    got = pair.ok("get", "tj/", "--prefix", "-w", "json")
    assert [(k, v, mod) for k, v, _, mod, _ in kvs_of(got)] == [
        ("tj/a", "1", rev),
        ("tj/c", "hello world", txn_rev),
    ]


def test_txn_empty_and_malformed(pair: Pair) -> None:
    assert pair.ok("txn", input="\n\n\n") == "SUCCESS\n"
    bad = pair.same("txn", input='bogus("tm/a") = "0"\n\n\n\n')
    assert bad.returncode != 0  # refused by etcdctl itself, before any request


# --- compaction --------------------------------------------------------------------------


def test_compaction(pair: Pair) -> None:
    r1 = pair.put("c/k", "1")
    r2 = pair.put("c/k", "2")
    r3 = pair.put("c/k", "3")
    assert pair.ok("get", "c/k", "--rev", str(r1)) == "c/k\n1\n"
    assert pair.ok("compaction", str(r2)) == f"compacted revision {r2}\n"
    old = pair.same("get", "c/k", "--rev", str(r1))
    assert old.returncode != 0 and old.error == COMPACTED
    assert pair.ok("get", "c/k", "--rev", str(r2)) == "c/k\n2\n"
    assert pair.ok("get", "c/k", "--rev", str(r3)) == "c/k\n3\n"
    again = pair.same("compaction", str(r1))
    assert again.returncode != 0 and again.error == COMPACTED
    assert pair.ok("compaction", "--physical", str(r3)) == f"compacted revision {r3}\n"
    old = pair.same("get", "c/k", "--rev", str(r2))
    assert old.error == COMPACTED
    assert pair.ok("get", "c/k") == "c/k\n3\n"


# --- cluster and maintenance ------------------------------------------------------------


def status(server: EtcdServer | ShimServer) -> dict[str, Any]:
    out = etcdctl(server.endpoint, "endpoint", "status", "-w", "json")
    statuses = json.loads(out.stdout)
    assert len(statuses) == 1
    assert statuses[0]["Endpoint"] == server.endpoint
    return statuses[0]["Status"]


def test_endpoint_status(pair: Pair) -> None:
    rev = pair.put("s/k", "v")
    st = status(pair.shim)
    assert st["version"].startswith("3.5"), st
    assert st["header"]["revision"] == rev
    assert st["leader"] == st["header"]["member_id"]
    assert st["raftTerm"] >= 1
    assert st["raftIndex"] >= 1 and st["raftAppliedIndex"] == st["raftIndex"]
    assert st["dbSize"] > 0 and 0 < st["dbSizeInUse"] <= st["dbSize"]
    assert not st.get("isLearner", False)
    # Same fields as etcd's answer (values differ: sizes, raft indexes, version).
    assert set(st) == set(status(pair.etcd)), (st, status(pair.etcd))
    assert status(pair.etcd)["header"]["revision"] == rev

    # The simple format: endpoint, hex member id, version, size, leader, learner, term, ...
    line = etcdctl(pair.shim.endpoint, "endpoint", "status").stdout.strip()
    fields = [f.strip() for f in line.split(",")]
    assert fields[0] == pair.shim.endpoint
    assert int(fields[1], 16) == st["header"]["member_id"]
    assert fields[2] == st["version"]
    assert fields[4:6] == ["true", "false"]
    etcd_line = etcdctl(pair.etcd.endpoint, "endpoint", "status").stdout.strip()
    assert len(fields) == len(etcd_line.split(","))


def test_endpoint_health(pair: Pair) -> None:
    for server in (pair.etcd, pair.shim):
        result = etcdctl(server.endpoint, "endpoint", "health")
        pattern = (
            rf"{re.escape(server.endpoint)} is healthy: "
            r"successfully committed proposal: took = \S+"
        )
        assert re.fullmatch(pattern, result.stdout.strip()), result.stdout
    on_shim = json.loads(etcdctl(pair.shim.endpoint, "endpoint", "health", "-w", "json").stdout)
    on_etcd = json.loads(etcdctl(pair.etcd.endpoint, "endpoint", "health", "-w", "json").stdout)
    assert [h["health"] for h in on_shim] == [True]
    assert [set(h) for h in on_shim] == [set(h) for h in on_etcd]
    # The standard gRPC health service, as etcd's grpc-go serves it.
    for name, answer in (("", "SERVING"), ("etcdserverpb.KV", "unknown service")):
        seen = []
        for server in (pair.etcd, pair.shim):
            with grpc.insecure_channel(server.endpoint) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                try:
                    status = check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(status.status))
                except grpc.RpcError as exc:
                    seen.append(f"{exc.code().name} {exc.details()}")
        assert seen[0] == seen[1], seen
        assert seen[1].endswith(answer), seen


def test_membership_changes_answer_as_etcd_for_ids_it_would_not_find(pair: Pair) -> None:
    # An id no member has: etcd's NOT_FOUND, word for word (clients branch on it).
    for args in (
        ("member", "remove", "1234"),
        ("member", "update", "1234", "--peer-urls=http://127.0.0.1:1"),
        ("member", "promote", "1234"),
    ):
        outcome = pair.same(*args)
        assert outcome.error == "Error: etcdserver: member not found", outcome
    # Promoting the answering member itself: it is a voting member, not a learner.
    for server in (pair.etcd, pair.shim):
        own = format(status(server)["header"]["member_id"], "x")
        result = etcdctl(server.endpoint, "member", "promote", own, check=False)
        assert result.returncode == 1
        assert error_line(result) == "Error: etcdserver: can only promote a learner member"


def test_member_list(pair: Pair) -> None:
    member_id = status(pair.shim)["header"]["member_id"]
    out = json.loads(etcdctl(pair.shim.endpoint, "member", "list", "-w", "json").stdout)
    assert out["header"]["member_id"] == member_id
    [member] = out["members"]
    assert member["ID"] == member_id
    assert member["clientURLs"] == [f"http://{pair.shim.endpoint}"]
    # Peers link to a shim node on its client port: that is its peer URL (etcd lists one for
    # every member).
    assert member["peerURLs"] == [f"http://{pair.shim.endpoint}"]
    assert member.get("name")

    line = etcdctl(pair.shim.endpoint, "member", "list").stdout.strip()
    fields = [f.strip() for f in line.split(",")]
    etcd_fields = etcdctl(pair.etcd.endpoint, "member", "list").stdout.strip().split(",")
    assert len(fields) == len(etcd_fields) == 6
    assert int(fields[0], 16) == member_id
    assert fields[1] == "started"
    assert fields[2] == member["name"]
    assert fields[3] == f"http://{pair.shim.endpoint}"
    assert fields[4] == f"http://{pair.shim.endpoint}"
    assert fields[5] == "false"  # not a learner

"""Links under load and abuse (issue 17): a backlog of Kubernetes-sized objects and entries as
large as a client can cause reach a peer that was down; numbers out of range and bytes that are
not the Link protocol are refused with one log line each (an entry out of range is refused
alone, the link goes on); `shim status` shows a failing link as such and lag counted when
asked. Real `shim serve` processes; a test client speaking the
Link protocol (tests/support/link_peer.py) plays the misbehaving peer.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shim.pb import replication_pb2 as repl_pb
from shim.pb import rpc_pb2 as pb
from tests.support import ShimServer
from tests.support.client import Client
from tests.support.lab_shim import LabNode, lab_converged
from tests.support.link_peer import LinkPeer, batch, entry
from tests.support.netns import NetLab
from tests.support.replication import (
    TOKEN,
    node_args,
    peer_named,
    put,
    shim_command,
    status,
    url,
    wait_converged,
    wait_for,
)

Factory = Callable[..., ShimServer]
KIB = 1024
MAX_REQUEST = 1536 * KIB  # etcd's (and shim's) default --max-request-bytes
U64_MAX = 2**64 - 1


def pod(i: int, size: int = 4500) -> bytes:
    """A Pod-like JSON object of about ``size`` bytes."""
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"pod-{i}", "namespace": "default", "uid": f"uid-pod-{i}",
                     "labels": {"app": "web", "n": str(i)}},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running", "message": ""},
    }
    obj["status"]["message"] = "x" * (size - len(json.dumps(obj)))
    return json.dumps(obj).encode()


def configmap(name: str, fill: str) -> bytes:
    """A ConfigMap as large as a client may write: its one data field fills the request."""
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
           "data": {"blob": ""}}
    obj["data"]["blob"] = fill * (MAX_REQUEST - 4 * KIB - len(json.dumps(obj)))
    return json.dumps(obj).encode()


def put_many(endpoint: str, items: list[tuple[bytes, bytes]], per_txn: int = 100) -> None:
    with Client(endpoint) as client:
        for i in range(0, len(items), per_txn):
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=v))
                   for k, v in items[i:i + per_txn]]
            assert client.kv.Txn(pb.TxnRequest(success=ops), timeout=30).succeeded


def test_a_backlog_of_kubernetes_sized_objects_and_maximal_entries_replicates(
    shim_factory: Factory,
) -> None:
    """Issue 17, case 1: written while the accepting node was down, 1,200 Pods of 4.5 KiB
    and edits of three ConfigMaps written at the client limit (each edit an entry of the
    whole value plus an operation as large: ~3 MiB) all reach it. Batches are cut by encoded
    size to what the receiver states it accepts; a batch cut by values alone would be 9 MiB
    here, over the 8 MiB the receiver takes, and be resent forever."""
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    put(n2.endpoint, b"/registry/ready", b"1")
    # Written at n1, so n2's edits are over another node's write: their operations are
    # worked out and sent (an edit of its own write would name it instead, a few bytes).
    maps = [f"/registry/configmaps/default/big-{i}".encode() for i in range(3)]
    for key in maps:
        put(n1.endpoint, key, configmap(key.decode()[-5:], "a"))
    wait_converged([n1, n2], prefix=b"/registry/", timeout=60, expect=lambda s: len(s) == 4)
    n1.stop()

    pods = [(f"/registry/pods/default/pod-{i:04d}".encode(), pod(i)) for i in range(1200)]
    put_many(n2.endpoint, pods)
    for key in maps:  # each edit: the new value, and an operation carrying the new field
        put(n2.endpoint, key, configmap(key.decode()[-5:], "b"))

    n1.start()
    final = wait_converged([n1, n2], prefix=b"/registry/", timeout=60,
                           expect=lambda s: len(s) == 1 + 1200 + 3
                           and all(s[key][0] == configmap(key.decode()[-5:], "b")
                                   for key in maps))
    assert all(final[key][0] == configmap(key.decode()[-5:], "b") for key in maps)
    assert "RESOURCE_EXHAUSTED" not in n2.log_path.read_text()
    # The cursor n1 keeps for n2 reaches n2's newest position.
    wait_for(lambda: peer_named(status(n1), "n2"),
             lambda p: p is not None and p["lag_entries"] == 0 and p["cursor"] == p["peer_high"],
             "n1's cursor in n2's log to reach its end", 30)
    ops = shim_command("sql", "--datastore-endpoint", n1.datastore_endpoint, "--json",
                       "SELECT length(ops) AS n FROM replication_log WHERE kind = 'fields'")
    assert ops.returncode == 0, ops.stderr
    assert sorted(row["n"] > MAX_REQUEST // 2 for row in json.loads(ops.stdout)) == [True] * 3


def refusals(server: ShimServer) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines()
            if "link from" in line and "refused:" in line]


def test_out_of_range_numbers_and_garbage_are_refused_with_one_line_each(
    shim_factory: Factory,
) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    cases: list[tuple[str, Callable[[LinkPeer], None], str]] = [
        ("start cursor", lambda p: p.handshake(cursor=U64_MAX),
         f"Start: cursor {U64_MAX} is out of range"),
        ("batch cursor", lambda p: (p.handshake(), p.send(batch(cursor=U64_MAX))),
         f"cursor {U64_MAX} is out of range"),
        ("garbage", lambda p: p.send_raw(b"\xff\xfe garbage \x00\x01"),
         "not a Link message"),
        ("another protocol", lambda p: p.send_raw(
            pb.RangeRequest(limit=5, revision=7).SerializeToString()),  # decodes, as nothing
         "a link starts with Hello"),
        ("wrong token", lambda p: p.send(p.hello(token="guess")), "bootstrap token rejected"),
    ]
    for done, (what, act, reason) in enumerate(cases, 1):
        with LinkPeer(n1.endpoint) as peer:
            act(peer)
            error = peer.error()
            assert reason in (error.details() or ""), (what, error)
            assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                    grpc.StatusCode.PERMISSION_DENIED), (what, error)
        wait_for(lambda: len(refusals(n1)), lambda n, done=done: n >= done,
                 f"a log line for {what}", 10)
    # Not even HTTP/2: gRPC drops the connection, the node goes on.
    with socket.create_connection(("127.0.0.1", n1.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
        sock.recv(1024)

    lines = refusals(n1)
    assert len(lines) == len(cases), "\n".join(lines)
    for line, (_what, _act, reason) in zip(lines, cases, strict=True):
        assert "link from ipv4:127.0.0.1:" in line and reason in line, line
    log = n1.log_path.read_text()
    assert "Traceback" not in log and "OverflowError" not in log and "ERROR" not in log, log

    # An entry whose numbers are out of range is refused on its own, with its reason sent
    # back; the link goes on (one bad entry never stops a link).
    with LinkPeer(n1.endpoint) as peer:
        peer.handshake()
        peer.send(batch(entry(peer.node_id, 1, b"/far", hlc=U64_MAX),
                        entry(peer.node_id, U64_MAX, b"/far"), cursor=2, high=2))
        reasons = [next_refusal(peer), next_refusal(peer)]
        assert "clock stamp must be between 1 and 2^63-1" in reasons[0].reason, reasons
        assert "sequence number must be between 1 and 2^63-1" in reasons[1].reason, reasons
        peer.send(batch(cursor=2, high=2))  # still up: a heartbeat is taken
    assert len(refusals(n1)) == len(cases)

    # The node still links with an honest peer and stored nothing from the refused ones.
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    put(n1.endpoint, b"/after", b"1")
    wait_converged([n1, n2], expect=lambda s: b"/after" in s)
    assert b"/far" not in wait_converged([n1, n2])


def next_refusal(peer: LinkPeer) -> repl_pb.Refused:
    """The next Refused notice the node sends (skipping its batches and heartbeats)."""
    while True:
        msg = peer.recv()
        if msg.WhichOneof("kind") == "refused":
            return msg.refused


def link_named(report: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((link for link in report.get("links", []) if link["link"] == key), None)


def peer_row(report: dict[str, Any], name: str) -> dict[str, Any]:
    peer = next((p for p in report["peers"] if p["name"] == name), None)
    assert peer is not None, report
    return peer


def test_status_shows_a_failing_link_and_lag_counted_when_asked(shim_factory: Factory) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    wrong = shim_factory(extra_args=node_args("wrong", joins=[n1], token="not-" + TOKEN))
    report = wait_for(lambda: status(wrong), lambda r: (link_named(r, url(n1)) or {}).get(
        "failures", 0) >= 1, "the refused link in wrong's status")
    link = link_named(report, url(n1))
    assert link is not None and link["state"] == "down" and link["role"] == "dial"
    assert "bootstrap token rejected" in link["last_error"] and link["since_s_ago"] >= 0
    text = shim_command("status", "--datastore-endpoint", wrong.datastore_endpoint)
    assert text.returncode == 0 and "bootstrap token rejected" in text.stdout, text
    assert "links      1 (0 up)" in text.stdout, text.stdout
    wrong.stop()

    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    for i in range(50):
        put(n1.endpoint, f"/lag/{i}".encode(), b"x")
    wait_converged([n1, n2], prefix=b"/lag/", expect=lambda s: len(s) == 50)
    # Caught up, as n1 sees it, within a few heartbeats (not a 10 s old row).
    wait_for(lambda: peer_row(status(n1), "n2"),
             lambda p: p["unacked_entries"] == 0 and p["lag_entries"] == 0,
             "n1's status to show n2 caught up", 5)
    up = link_named(status(n2), url(n1))
    assert up is not None and up["state"] == "up", up

    n2.kill()
    for i in range(30):
        put(n1.endpoint, f"/lag/more-{i}".encode(), b"x")
    # Counted when asked: the 30 entries n2 has not confirmed, whatever any row says.
    assert peer_row(status(n1), "n2")["unacked_entries"] == 30
    report = wait_for(lambda: status(n1), lambda r: (link_named(
        r, peer_row(r, "n2")["node_id"]) or {}).get("state") == "down",
        "n1's status to show n2's link down", 15)
    down = link_named(report, peer_row(report, "n2")["node_id"])
    assert down is not None and down["role"] == "admit" and down["last_error"], down


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab.for_test(2, prefix=f"shimlinks{os.getpid()}", subnet="10.214.8") as lab:
        yield lab


def test_a_peer_cut_off_by_the_network_is_dialed_again_about_four_times_a_second(
    lab: NetLab, tmp_path: Path
) -> None:
    """Once the link is lost to a partition, each dial waits for a connection a bounded time
    (0.25 s here, not TCP's connect timeout) and the next follows at once, so the link is
    back soon after the heal; it then carries what both sides wrote meanwhile."""
    h1 = LabNode(lab, 1, tmp_path / "h1", joins=[])
    h2 = LabNode(lab, 2, tmp_path / "h2", joins=[1])
    h1.wait_ready()
    h2.wait_ready()
    h1.put("/cut/a", "1")
    lab_converged([h1, h2], "/cut/", {"/cut/a": "1"}, 20, lab)

    lab.partition(1, 2)
    h1.put("/cut/b", "2")
    h2.put("/cut/c", "3")
    # The 1st failure (the lost link) and the 10th are logged: the 10th is an unconnected
    # dial, after eight more, each bounded (at 6 s or TCP's timeout each it would take 50 s+).
    log = h2.log_path.read_text
    wait_for(lambda: log().count("(no connection within "), lambda n: n >= 1,
             "h2 to log its 10th failed dial", 40)
    lab.heal()
    lab_converged([h1, h2], "/cut/", {"/cut/a": "1", "/cut/b": "2", "/cut/c": "3"}, 20, lab)

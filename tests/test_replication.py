"""Multi-writer replication end to end: real `shim serve` processes linked over real gRPC,
written to through the etcd API, looked at with `shim status` and `shim sql`.

Topologies (full mesh, tree, primary-backup), a crash in the middle of a stream, refused
links and bad flags, topology reload on SIGHUP, field-level merging of Kubernetes-shaped JSON
across a cut link, and a real network partition in network namespaces (NetLab), healed.
Every wait polls with a timeout; nothing sleeps for a fixed long time.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shim.pb import rpc_pb2 as pb
from shim.replication.link_stream import SILENCE_SECONDS
from tests.support import Client, ShimServer, free_port
from tests.support.lab_shim import LabNode, lab_converged
from tests.support.netns import NetLab
from tests.support.replication import (
    TOKEN,
    delete,
    get,
    hangup,
    log_count,
    node_args,
    peer_named,
    prefix_end,
    put,
    reload_topology,
    shim_command,
    snapshot,
    sql,
    status,
    stays,
    url,
    wait_converged,
    wait_for,
    write_topology,
)
from tests.support.shim_server import sqlite_endpoint
from tests.support.watch import WatchStream

Factory = Callable[..., ShimServer]
# How long something that must not replicate is watched for: longer than a heartbeat (1 s),
# far longer than replication takes on loopback (milliseconds).
NOT_REPLICATED_SECONDS = 1.5


def absent(endpoint: str, key: bytes) -> Callable[[], bytes | None]:
    return lambda: get(endpoint, key)


def log_has(server: ShimServer, text: str) -> Callable[[], bool]:
    return lambda: text in server.log_path.read_text(errors="replace")


def wait_log(server: ShimServer, text: str, timeout: float = 20.0) -> None:
    wait_for(log_has(server, text), bool, f"{text!r} in {server.log_path}", timeout)


# --- 1. full mesh -----------------------------------------------------------------------


def watch_events(stream: WatchStream) -> list[tuple[str, bytes]]:
    return [
        ("DELETE" if event.type == event.DELETE else "PUT", event.kv.key)
        for response in stream.responses
        for event in response.events
    ]


def test_full_mesh_converges_and_every_watcher_sees_each_change_once(
    shim_factory: Factory,
) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    n3 = shim_factory(extra_args=node_args("n3", joins=[n1, n2]))
    nodes = [n1, n2, n3]
    prefix = b"/mesh/"

    clients = [Client(node.endpoint) for node in nodes]
    streams = [WatchStream(client, f"n{i + 1}") for i, client in enumerate(clients)]
    try:
        for stream in streams:
            stream.create(key=prefix, range_end=prefix_end(prefix))
        wait_for(
            lambda: [len(s.responses) for s in streams], lambda n: all(n),
            "every watch to be created", 10,
        )
        lease = clients[0].lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=5).ID

        expected: dict[bytes, tuple[bytes, int]] = {}
        changes: list[tuple[str, bytes]] = []  # every change, in the order of each key
        for i, client in enumerate(clients, start=1):
            mine = prefix + f"n{i}/".encode()
            for j in range(8):
                key, value = mine + f"k{j}".encode(), f"v{i}.{j}".encode()
                client.kv.Put(pb.PutRequest(key=key, value=value), timeout=5)
                expected[key] = (value, 0)
                changes.append(("PUT", key))
            # put then delete: two changes, gone at the end
            client.kv.Put(pb.PutRequest(key=mine + b"gone", value=b"x"), timeout=5)
            client.kv.DeleteRange(pb.DeleteRangeRequest(key=mine + b"gone"), timeout=5)
            changes += [("PUT", mine + b"gone"), ("DELETE", mine + b"gone")]
            # a txn: two puts and a delete of a key put before, under one revision here
            client.kv.Put(pb.PutRequest(key=mine + b"tdel", value=b"x"), timeout=5)
            txn = client.kv.Txn(pb.TxnRequest(
                compare=[pb.Compare(
                    key=mine + b"t1", target=pb.Compare.VERSION,
                    result=pb.Compare.EQUAL, version=0,
                )],
                success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=mine + b"t1", value=b"one")),
                    pb.RequestOp(request_put=pb.PutRequest(key=mine + b"t2", value=b"two")),
                    pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=mine + b"tdel")),
                ],
            ), timeout=5)
            assert txn.succeeded
            expected[mine + b"t1"] = (b"one", 0)
            expected[mine + b"t2"] = (b"two", 0)
            changes += [("PUT", mine + b"tdel"), ("PUT", mine + b"t1"), ("PUT", mine + b"t2"),
                        ("DELETE", mine + b"tdel")]
        # a key with a lease: the lease id travels with the key
        leased = prefix + b"n1/leased"
        clients[0].kv.Put(pb.PutRequest(key=leased, value=b"l", lease=lease), timeout=5)
        expected[leased] = (b"l", lease)
        changes.append(("PUT", leased))

        final = wait_converged(nodes, prefix=prefix, expect=lambda s: s == expected)
        assert final == expected
        # The whole keyspace too (nothing outside the prefix differs either).
        wait_converged(nodes)

        def per_key(events: list[tuple[str, bytes]]) -> dict[bytes, list[str]]:
            grouped: dict[bytes, list[str]] = {}
            for kind, key in events:
                grouped.setdefault(key, []).append(kind)
            return grouped

        want = per_key(changes)
        wait_for(
            lambda: [len(watch_events(s)) for s in streams],
            lambda counts: all(c >= len(changes) for c in counts),
            f"{len(changes)} events on every watcher", 20,
        )
        # Nothing more arrives (no duplicate from another path of the mesh, no echo).
        stays(
            lambda: [len(watch_events(s)) for s in streams],
            lambda counts: all(c == len(changes) for c in counts),
            "a watcher saw more events than there were changes", NOT_REPLICATED_SECONDS,
        )
        for stream in streams:
            stream.check_open()
            got = per_key(watch_events(stream))
            wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
            assert not wrong, f"watcher on {stream.label}: key -> (seen, expected): {wrong}"
            revisions = [r.header.revision for r in stream.responses if r.events]
            assert revisions == sorted(set(revisions)), (
                f"watcher on {stream.label}: revisions not strictly increasing: {revisions}"
            )
    finally:
        for stream in streams:
            stream.close()
        for client in clients:
            client.close()


# --- 2. tree, 3. primary-backup -----------------------------------------------------------


def test_tree_of_three_levels_forwards_both_ways(shim_factory: Factory) -> None:
    root = shim_factory(extra_args=node_args("root"))
    middle = shim_factory(extra_args=node_args("middle", joins=[root]))
    leaf1 = shim_factory(extra_args=node_args("leaf1", joins=[middle], admit=False))
    leaf2 = shim_factory(extra_args=node_args("leaf2", joins=[middle], admit=False))
    nodes = [root, middle, leaf1, leaf2]

    put(leaf1.endpoint, b"/tree/from-leaf1", b"up and across")
    wait_converged(nodes, prefix=b"/tree/", expect=lambda s: b"/tree/from-leaf1" in s)
    put(root.endpoint, b"/tree/from-root", b"down")
    final = wait_converged(nodes, prefix=b"/tree/", expect=lambda s: b"/tree/from-root" in s)
    assert final == {
        b"/tree/from-leaf1": (b"up and across", 0),
        b"/tree/from-root": (b"down", 0),
    }
    # The leaves never linked with each other or the root: it all went through the middle.
    assert [p["name"] for p in status(leaf1)["peers"]] == ["middle"]
    assert sorted(p["name"] for p in status(middle)["peers"]) == ["leaf1", "leaf2", "root"]


def test_backup_with_join_mode_receive_only_pulls(shim_factory: Factory) -> None:
    primary = shim_factory(extra_args=node_args("primary"))
    backup = shim_factory(
        extra_args=node_args("backup", joins=[primary], admit=False,
                             extra=["--join-mode", "receive"])
    )
    for i in range(5):
        put(primary.endpoint, f"/pb/k{i}".encode(), f"v{i}".encode())
    wait_converged(
        [primary, backup], prefix=b"/pb/", expect=lambda s: len(s) == 5,
    )
    put(backup.endpoint, b"/pb/backup-only", b"local")
    delete(backup.endpoint, b"/pb/k0")
    # Watched for longer than a link may stay silent: the backup sends no entries, but its
    # heartbeats must keep the primary from dropping the link as silent.
    stays(
        lambda: snapshot(primary.endpoint, b"/pb/"),
        lambda s: b"/pb/backup-only" not in s and b"/pb/k0" in s,
        "the backup's own writes reached the primary", SILENCE_SECONDS + 1,
    )
    for node in (primary, backup):
        log = node.log_path.read_text()
        assert "went silent" not in log and "closed" not in log, node.log_tail(10)
    assert log_count(backup, "linked to") == 1, backup.log_tail(10)
    # ... and the link still works primary -> backup.
    put(primary.endpoint, b"/pb/after", b"1")
    wait_for(absent(backup.endpoint, b"/pb/after"), lambda v: v == b"1", "/pb/after on backup")


# --- 4. crash while streaming ---------------------------------------------------------------


def test_kill_9_while_a_peer_streams_writes_then_catch_up(shim_factory: Factory) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    put(n2.endpoint, b"/crash/from-n2-before", b"1")
    wait_for(absent(n1.endpoint, b"/crash/from-n2-before"), bool, "n2's write on n1")
    before = peer_named(status(n2), "n1")
    assert before is not None, status(n2)

    total = 300
    progress = {"done": 0}
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with Client(n1.endpoint) as client:
                for i in range(total):
                    client.kv.Put(
                        pb.PutRequest(key=f"/crash/k{i:03d}".encode(), value=b"x" * 200),
                        timeout=10,
                    )
                    progress["done"] = i + 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer, name="writer")
    thread.start()
    try:
        wait_for(lambda: progress["done"], lambda d: d >= 60, "60 puts on n1", 20)
        n2.kill()  # SIGKILL in the middle of the stream
        killed_at = progress["done"]
        n2.start()  # same data, same port
        put(n2.endpoint, b"/crash/from-n2-after", b"2")
    finally:
        thread.join(60)
    assert not errors, errors
    assert progress["done"] == total
    assert killed_at < total, "the writer had finished before the kill"

    final = wait_converged([n1, n2], prefix=b"/crash/")
    assert len(final) == total + 2

    def link_state() -> dict[str, Any] | None:
        return peer_named(status(n2), "n1")

    after = wait_for(
        link_state, lambda p: p is not None and p["lag_entries"] == 0 and p["cursor"] >= total,
        "n2's cursor in n1's log to reach the end (lag 0)",
    )
    assert after is not None
    assert after["cursor"] > before["cursor"]
    assert after["peer_high"] == after["cursor"]
    # Each of n1's entries changed a key on n2 once: redelivery after the crash is dropped.
    assert after["entries_applied"] == total, after


# --- 5. refusals and bad input ---------------------------------------------------------------


def test_refused_links_say_why_and_replicate_nothing(shim_factory: Factory) -> None:
    admits = shim_factory(extra_args=node_args("admits"))
    closed = shim_factory(extra_args=node_args("closed", admit=False))
    joiner = shim_factory(
        extra_args=node_args("joiner", joins=[admits, closed], admit=False, token="wrong")
    )
    wait_log(joiner, f"link to {url(admits)} down (PERMISSION_DENIED: bootstrap token rejected)")
    wait_log(joiner, "this node admits no links (start it with --bootstrap-token)")
    wait_log(admits, "refused: bootstrap token rejected")
    # Each refusal is heard on the first attempt, with its reason (a node that admits no links
    # used to end the stream before reading the Hello, which reached the dialer at times as
    # INTERNAL "Internal error from Core").
    for target, reason in ((admits, "bootstrap token rejected"), (closed, "admits no links")):
        first = next(line for line in joiner.log_path.read_text().splitlines()
                     if f"link to {url(target)} down" in line)
        assert reason in first, first
    for node, secret in ((admits, TOKEN), (joiner, "wrong")):
        logged = [  # shim's own lines, not the harness's "=== starting: argv" line
            line for line in node.log_path.read_text().splitlines()
            if not line.startswith("=== ")
        ]
        assert not [line for line in logged if secret in line], "a token was logged"

    put(joiner.endpoint, b"/refused/j", b"1")
    put(admits.endpoint, b"/refused/a", b"1")
    stays(
        lambda: [sorted(snapshot(n.endpoint, b"/refused/")) for n in (admits, closed, joiner)],
        lambda s: s == [[b"/refused/a"], [], [b"/refused/j"]],
        "a write crossed a refused link", NOT_REPLICATED_SECONDS,
    )
    for node in (admits, closed, joiner):
        assert status(node)["peers"] == [], f"{node.endpoint} recorded a peer"


def serve_fails(*args: str, tmp_path: Path) -> str:
    """Run `shim serve ARGS` expecting exit 2; the one `shim: ...` line it printed."""
    argv = ["serve", "--listen-address", f"127.0.0.1:{free_port()}", *args]
    if "--datastore-endpoint" not in args:
        argv += ["--datastore-endpoint", sqlite_endpoint(tmp_path / "bad.db")]
    result = shim_command(*argv)
    lines = [line for line in result.stderr.splitlines() if line.startswith("shim:")]
    assert result.returncode == 2 and len(lines) == 1, (
        f"shim {' '.join(argv)}: exit {result.returncode}\nstderr: {result.stderr}"
    )
    assert result.stderr.rstrip().endswith(lines[0]), result.stderr  # the error is last
    assert "Traceback" not in result.stderr
    return lines[0]


def test_bad_replication_flags_exit_2_with_one_line(tmp_path: Path) -> None:
    line = serve_fails("--join", "notaurl", tmp_path=tmp_path)
    assert "notaurl" in line and "host:port" in line, line
    missing = tmp_path / "no-such-topology.json"
    line = serve_fails("--topology", str(missing), tmp_path=tmp_path)
    assert str(missing) in line and "No such file" in line, line
    broken = tmp_path / "broken.json"
    broken.write_text('{"links": [{"url": "http://127.0.0.1:1", "mode": "sideways"}]}')
    line = serve_fails("--topology", str(broken), tmp_path=tmp_path)
    assert "mode" in line and "sideways" in line, line
    line = serve_fails("--replication-batch-delay", "2s", tmp_path=tmp_path)
    assert "--replication-batch-delay must be at most 1s" in line, line


@pytest.mark.parametrize("delay", ["0", "1s"])
def test_batch_delay_at_its_bounds_replicates_every_write(
    shim_factory: Factory, delay: str,
) -> None:
    """--replication-batch-delay at both ends of its range, 0 (every commit sent at once) and
    1s (the longest pace): a burst of writes and the ones after it reach the peer, all."""
    paced = ["--replication-batch-delay", delay]
    n1 = shim_factory(extra_args=node_args("n1", extra=paced))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1], extra=paced))
    prefix = b"/paced/"
    with Client(n1.endpoint) as client:
        for i in range(60):
            client.kv.Put(pb.PutRequest(key=prefix + b"%02d" % i, value=b"v"), timeout=5)
    put(n2.endpoint, prefix + b"back", b"v")
    wait_converged([n1, n2], prefix=prefix, expect=lambda snap: len(snap) == 61)


def test_replication_flags_refused_on_postgres(postgres: Any, tmp_path: Path) -> None:
    from tests.support.postgres import postgres_endpoint

    line = serve_fails(
        "--datastore-endpoint", postgres_endpoint(), "--bootstrap-token", "t", tmp_path=tmp_path,
    )
    assert "needs the SQLite datastore" in line, line


# --- 6. topology reload ---------------------------------------------------------------------


def test_topology_reload_adds_and_removes_links(shim_factory: Factory, tmp_path: Path) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    topology = tmp_path / "topology.json"
    write_topology(topology)
    n2 = shim_factory(extra_args=node_args("n2", admit=False, extra=["--topology", str(topology)]))
    link = {"url": url(n1), "token": TOKEN, "mode": "both"}

    put(n1.endpoint, b"/topo/before", b"1")
    stays(absent(n2.endpoint, b"/topo/before"), lambda v: v is None,
          "replicated without any link", 0.5)

    reload_topology(n2, topology, link)
    wait_for(absent(n2.endpoint, b"/topo/before"), lambda v: v == b"1", "/topo/before on n2")
    put(n2.endpoint, b"/topo/from-n2", b"2")
    wait_for(absent(n1.endpoint, b"/topo/from-n2"), lambda v: v == b"2", "/topo/from-n2 on n1")

    # A broken file on SIGHUP is reported and the links stay as they were.
    topology.write_text("{not json")
    hangup(n2)
    wait_log(n2, "topology not reloaded")
    put(n1.endpoint, b"/topo/still", b"3")
    wait_for(absent(n2.endpoint, b"/topo/still"), lambda v: v == b"3", "/topo/still on n2")

    reload_topology(n2, topology)  # no links
    wait_log(n2, f"link to {url(n1)} removed")
    put(n1.endpoint, b"/topo/after", b"4")
    put(n2.endpoint, b"/topo/after-n2", b"5")
    stays(
        lambda: (get(n2.endpoint, b"/topo/after"), get(n1.endpoint, b"/topo/after-n2")),
        lambda pair: pair == (None, None),
        "a write crossed a removed link", NOT_REPLICATED_SECONDS,
    )


# --- 7. Kubernetes objects edited on both sides of a cut link --------------------------------


def deployment(name: str, uid: str) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {
            "name": name, "namespace": "default", "uid": uid, "generation": 1,
            "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {"app": name},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
            },
        },
        "status": {"observedGeneration": 1},
    }


def edit(endpoint: str, key: bytes, change: Callable[[dict[str, Any]], None]) -> None:
    """Read-modify-write of a JSON object, as kube-apiserver does (compact JSON)."""
    raw = get(endpoint, key)
    assert raw is not None, f"{key!r} missing on {endpoint}"
    obj = json.loads(raw)
    change(obj)
    put(endpoint, key, json.dumps(obj, separators=(",", ":")).encode())


def test_deployment_edits_on_both_sides_merge_per_field(
    shim_factory: Factory, tmp_path: Path
) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    topology = tmp_path / "topology.json"
    link = {"url": url(n1), "token": TOKEN}
    write_topology(topology, link)
    n2 = shim_factory(extra_args=node_args("n2", admit=False, extra=["--topology", str(topology)]))
    web = b"/registry/deployments/default/web"
    doomed = b"/registry/deployments/default/doomed"
    put(n1.endpoint, web, json.dumps(deployment("web", "uid-web")).encode())
    put(n1.endpoint, doomed, json.dumps(deployment("doomed", "uid-doomed")).encode())
    wait_converged([n1, n2], prefix=b"/registry/", expect=lambda s: len(s) == 2)

    reload_topology(n2, topology)  # cut the link
    wait_log(n2, f"link to {url(n1)} removed")

    def scale(obj: dict[str, Any]) -> None:
        obj["spec"]["replicas"] = 3
        obj["metadata"]["generation"] += 1

    def relabel_and_upgrade(obj: dict[str, Any]) -> None:
        obj["metadata"]["labels"]["tier"] = "frontend"
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.27"
        obj["metadata"]["generation"] += 1

    edit(n1.endpoint, web, scale)
    edit(n2.endpoint, web, relabel_and_upgrade)
    assert delete(n1.endpoint, doomed) == 1
    edit(n2.endpoint, doomed, scale)  # concurrent update of the object deleted on n1
    stays(absent(n2.endpoint, doomed), lambda v: v is not None,
          "n1's delete crossed the cut link", 0.5)

    reload_topology(n2, topology, link)  # reconnect
    def both_edits(s: dict[bytes, tuple[bytes, int]]) -> bool:
        if doomed in s or web not in s:
            return False
        obj = json.loads(s[web][0])
        return obj["spec"]["replicas"] == 3 and "tier" in obj["metadata"]["labels"]

    final = wait_converged([n1, n2], prefix=b"/registry/", expect=both_edits)
    assert set(final) == {web}, "the concurrent delete must win over the update"
    merged = json.loads(final[web][0])
    assert merged["spec"]["replicas"] == 3
    assert merged["metadata"]["labels"] == {"app": "web", "tier": "frontend"}
    assert merged["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert merged["metadata"]["uid"] == "uid-web"
    # generation is a counter: two concurrent bumps 1 -> 2 add up to 3.
    assert merged["metadata"]["generation"] == 3
    # Identical bytes on both nodes (wait_converged compared them), read once more directly.
    assert get(n1.endpoint, web) == get(n2.endpoint, web)


# --- 8. a real partition in network namespaces -----------------------------------------------

@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab.for_test(3, prefix=f"shimrepl{os.getpid()}", subnet="10.214.7") as lab:
        yield lab


def test_partition_and_heal_in_network_namespaces(lab: NetLab, tmp_path: Path) -> None:
    h1 = LabNode(lab, 1, tmp_path / "h1", joins=[])
    h2 = LabNode(lab, 2, tmp_path / "h2", joins=[1])
    h3 = LabNode(lab, 3, tmp_path / "h3", joins=[1, 2])
    nodes = [h1, h2, h3]
    for node in nodes:
        node.wait_ready()
    h1.put("/part/start", "0")
    lab_converged(nodes, "/part/", {"/part/start": "0"}, 20, lab)

    lab.partition(1, 2)
    lab.partition(1, 3)
    expected = {"/part/start": "0"}
    for i in range(3):
        h1.put(f"/part/a{i}", f"h1-{i}")
        h2.put(f"/part/b{i}", f"h2-{i}")
        h3.put(f"/part/c{i}", f"h3-{i}")
        expected |= {f"/part/a{i}": f"h1-{i}", f"/part/b{i}": f"h2-{i}",
                     f"/part/c{i}": f"h3-{i}"}
    h1.put("/part/same", "h1-earlier")
    time.sleep(0.01)  # the hybrid clock is in ms: make the order of the two writes certain
    h3.put("/part/same", "h3-later")
    expected["/part/same"] = "h3-later"

    # The majority side converges among itself; h1 hears nothing from it.
    side_b = {k: v for k, v in expected.items() if not k.startswith("/part/a")}
    lab_converged([h2, h3], "/part/", side_b, 20, lab)
    side_a = {"/part/start": "0", "/part/same": "h1-earlier"}
    side_a |= {f"/part/a{i}": f"h1-{i}" for i in range(3)}
    assert h1.snapshot("/part/") == side_a, lab.faults()

    lab.heal()
    lab_converged(nodes, "/part/", expected, 60, lab)
    for node in nodes:
        assert node.proc.poll() is None, node.log_tail()


# --- 9. shim status and shim sql on a running node -----------------------------------------


def test_status_and_sql_on_running_nodes(shim_factory: Factory) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    put(n1.endpoint, b"/look/a", b"1")
    put(n2.endpoint, b"/look/b", b"2")
    wait_converged([n1, n2], prefix=b"/look/", expect=lambda s: len(s) == 2)
    id1, id2 = status(n1)["node_id"], status(n2)["node_id"]

    report = wait_for(
        lambda: status(n2), lambda r: (peer_named(r, "n1") or {}).get("lag_entries") == 0
        and (peer_named(r, "n1") or {}).get("entries_applied") == 1,
        "n2's status to show n1 caught up",
    )
    assert report["node_id"] == id2 and report["keys"] >= 2
    peer = peer_named(report, "n1")
    assert peer is not None
    assert peer["node_id"] == id1 and peer["role"] == "parent" and peer["address"] == url(n1)
    assert report["entries"]["local"] == 1 and report["entries"]["total"] == 2
    child = peer_named(status(n1), "n2")
    assert child is not None and child["role"] == "child" and child["node_id"] == id2

    # The plain-text form names the peer too.
    text = shim_command("status", "--datastore-endpoint", n2.datastore_endpoint)
    assert text.returncode == 0, text.stderr
    assert id2 in text.stdout and id1 in text.stdout and "peers      1" in text.stdout

    # Each node writes under an origin of its own (a new one at every start).
    rows = sql(n1, "SELECT origin_node, seq, key, event, received_from, outcome "
                   "FROM replication_log ORDER BY ingest")
    assert rows == [
        {"origin_node": id1, "seq": 1, "key": "/look/a", "event": "PUT",
         "received_from": "local", "outcome": "local"},
        {"origin_node": id2, "seq": 1, "key": "/look/b", "event": "PUT",
         "received_from": id2, "outcome": "applied"},
    ]
    origins = sql(n1, "SELECT DISTINCT origin FROM replication_log")
    assert len(origins) == 2 and {id1, id2}.isdisjoint(o["origin"] for o in origins)
    peers = sql(n1, "SELECT name, role, lag_entries FROM replication_peers")
    assert peers == [{"name": "n2", "role": "child", "lag_entries": 0}]
    kv = sql(n2, "SELECT key, value, version FROM kv WHERE key LIKE '/look/%' ORDER BY key")
    assert kv == [{"key": "/look/a", "value": "1", "version": 1},
                  {"key": "/look/b", "value": "2", "version": 1}]

    refused = shim_command("sql", "--datastore-endpoint", n1.datastore_endpoint,
                           "DELETE FROM repl_entry")
    assert refused.returncode == 1, refused
    assert refused.stderr.strip() == "shim: shim sql is read-only: only queries are allowed"
    assert len(sql(n1, "SELECT * FROM replication_log")) == 2  # nothing was deleted

"""How soon two nodes hold identical data after a partition heals, on loopback.

Two linked nodes share 20 JSON Pods; then node 2's link is dropped (its topology file emptied,
SIGHUP) and both sides write ``--writes`` each, as bench/run-edge's partition scenario does:
their own keys, every 10th write a key both sides write, every 5th an edit of a shared Pod
(this side's annotation, read-modify-write). Then the link comes back (SIGHUP) and the clock
runs until both nodes answer identical snapshots. Read the ratio between installs of one run
(``--shim-python``), not the absolute figure.

With ``--nodes 3`` a third node is linked to both (a full mesh: n2 dials n1, n3 dials n1
and n2); n3 is the one cut off, every node writes, and the figure also counts the entries each
node received twice after the heal (``shim_replication_entries_total{outcome="duplicate"}``):
in a mesh an entry should cross each link at most once.

    .venv/bin/python -m bench.heal_rate                        # this tree's installed shim
    .venv/bin/python -m bench.heal_rate --shim-python OTHER    # another install
    .venv/bin/python -m bench.heal_rate --profile DIR          # py-spy both nodes during the heal
    .venv/bin/python -m bench.heal_rate --nodes 3              # three nodes, duplicates counted
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support.metrics import scrape
from tests.support.net import free_port
from tests.support.replication import TOKEN, node_args, reload_topology, snapshot, url
from tests.support.shim_server import ShimServer

PODS = 20
POD_PREFIX = b"/registry/pods/heal/"
OWN_PREFIX = b"/heal/own/"
SHARED_PREFIX = b"/heal/shared/"


def pod(n: int) -> dict[str, object]:
    name = f"shared-{n:03d}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "heal", "uid": f"uid-{name}",
                     "labels": {"app": "heal"}, "annotations": {}},
        "spec": {"containers": [{"name": "c", "image": "registry.example/app:1.0",
                                 "args": ["--flag"] * 40}], "nodeName": "node-1"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def edit_pod(kv: rpc_pb2_grpc.KVStub, n: int, site: str, seq: int) -> None:
    key = POD_PREFIX + b"shared-%03d" % n
    got = kv.Range(rpc_pb2.RangeRequest(key=key))
    doc = json.loads(got.kvs[0].value) if got.kvs else pod(n)
    doc["metadata"]["annotations"][f"site-{site}"] = str(seq)
    kv.Put(rpc_pb2.PutRequest(key=key, value=json.dumps(doc).encode()))


def write_side(endpoint: str, site: str, writes: int) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for i in range(writes):
            if i % 5 == 0:
                edit_pod(kv, (i // 5) % PODS, site, i)
            elif i % 10 == 1:
                kv.Put(rpc_pb2.PutRequest(key=SHARED_PREFIX + b"%03d" % (i % 50),
                                          value=f"{site}-{i}".encode() * 16))
            else:
                kv.Put(rpc_pb2.PutRequest(key=OWN_PREFIX + f"{site}/{i:06d}".encode(),
                                          value=b"v" * 256))


def wait_identical(nodes: list[ShimServer], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        first, *others = (snapshot(node.endpoint) for node in nodes)
        if all(other == first for other in others):
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"not identical {timeout} s after the heal")


def duplicates(metrics: list[str]) -> list[int]:
    """Entries each node received that it held already, from its metrics."""
    counts = []
    for address in metrics:
        samples = scrape(address)
        counts.append(int(sum(value for name, value in samples.items()
                              if name.startswith("shim_replication_entries_total{")
                              and 'outcome="duplicate"' in name)))
    return counts


def measure(python: str, writes: int, profile: Path | None, count: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="heal-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        topology = root / "topology.json"
        shim_python = os.path.abspath(python)
        metrics = [f"127.0.0.1:{free_port()}" for _ in range(count)]

        def start(name: str, args: list[str], level: str) -> ShimServer:
            extra = [*node_args(name), *args, f"--log-level={level}",
                     "--metrics-address", metrics[len(nodes)]]
            return stack.enter_context(ShimServer(root / name, extra_args=extra,
                                                  python=shim_python, startup_timeout=60))

        nodes: list[ShimServer] = []
        nodes.append(start("n1", [], "warning"))
        # The node cut off is the last: it dials every other node through its topology file.
        links = [{"url": url(n1), "token": TOKEN} for n1 in nodes]
        if count == 3:
            nodes.append(start("n2", ["--join", url(nodes[0]), "--token", TOKEN], "warning"))
            links.append({"url": url(nodes[1]), "token": TOKEN})
        topology.write_text(json.dumps({"links": links}))
        cut = start(f"n{count}", ["--topology", str(topology)], "info")
        nodes.append(cut)
        with grpc.insecure_channel(nodes[0].endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            for n in range(PODS):
                edit_pod(kv, n, "n1", 0)
        wait_identical(nodes, 30)
        reload_topology(cut, topology)  # the cut
        for i, node in enumerate(nodes, 1):
            write_side(node.endpoint, f"n{i}", writes)
        before = duplicates(metrics)
        spies = _spy(profile, *nodes)
        reload_topology(cut, topology, *links)  # the heal
        seconds = wait_identical(nodes, 300)
        for spy in spies:
            spy.wait(60)
        twice = [after - b for after, b in zip(duplicates(metrics), before, strict=True)]
    result: dict[str, object] = {"writes_per_side": writes, "seconds": round(seconds, 2)}
    if count > 2:
        result["duplicates_per_node"] = twice
    return result


def _spy(profile: Path | None, *servers: ShimServer) -> list[subprocess.Popen[bytes]]:
    if profile is None:
        return []
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH")
    profile.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([spy, "record", "-p", str(s.pid), "-d", "8", "-r", "200", "-f",
                              "raw", "--nonblocking", "-o", str(profile / f"n{i}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, s in enumerate(servers, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shim-python", default=sys.executable,
                        help="the python whose installed shim serves (default: this one)")
    parser.add_argument("--writes", type=int, default=1500, help="writes on each side")
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles of the nodes here")
    parser.add_argument("--nodes", type=int, choices=(2, 3), default=2,
                        help="2 (default), or 3 in a full mesh")
    args = parser.parse_args()
    print(json.dumps(measure(args.shim_python, args.writes, args.profile, args.nodes)))


if __name__ == "__main__":
    main()

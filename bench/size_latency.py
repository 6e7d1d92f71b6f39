"""One client's put latency on node 1 as the cluster grows, on loopback, with every node's CPU.

For each cluster size, N nodes are started on loopback (``--sqlite-synchronous FULL``: every
acknowledged write fsynced), linked as a full mesh (each node joins every node before it) or a
star (every node joins node 1); one client then puts 256 B values on node 1, one at a time,
for ``--seconds``. Reported per size: the put's p50/p90/p99 and rate, the CPU each node used
per put (from /proc), and the machine's busy share during the window, so "the machine is busy
with the replicas' applies" can be told apart from "node 1 waits". ``--shim-python`` runs
other installs beside this one, interleaved per size (A/B in one run; read the ratios).

    .venv/bin/python -m bench.size_latency                              # 1,3,5,7 nodes, mesh
    .venv/bin/python -m bench.size_latency --hosts 1,7 --topology star
    .venv/bin/python -m bench.size_latency --shim-python /tmp/main/bin/python   # A/B
    .venv/bin/python -m bench.size_latency --hosts 7 --profile DIR      # py-spy node 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support import procfs
from tests.support.replication import node_args, wait_converged
from tests.support.shim_server import ShimServer

VALUE = b"v" * 256
KEYS = 100_000


def start_cluster(root: Path, n: int, topology: str, python: str) -> list[ShimServer]:
    nodes: list[ShimServer] = []
    try:
        for i in range(1, n + 1):
            joins = nodes if topology == "mesh" else nodes[:1]
            extra = ["--sqlite-synchronous", "FULL", "--log-level=warning"]
            node = ShimServer(root / f"n{i}", extra_args=node_args(f"n{i}", joins=joins,
                                                                   extra=extra),
                              python=python, startup_timeout=60)
            node.start()
            nodes.append(node)
        # Linked both ways: a key written on each node reaches every node.
        for i, node in enumerate(nodes, 1):
            put_once(node.endpoint, f"/warm/n{i}".encode())
        wait_converged(nodes, prefix=b"/warm/", timeout=120,
                       expect=lambda snap: len(snap) == n)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def put_once(endpoint: str, key: bytes) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        rpc_pb2_grpc.KVStub(channel).Put(rpc_pb2.PutRequest(key=key, value=b"x"))


def put_loop(endpoint: str, seconds: float) -> list[float]:
    """Closed loop, one put at a time: each put's latency in ms."""
    latencies: list[float] = []
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for i in range(50):  # warm the channel and the node's caches
            kv.Put(rpc_pb2.PutRequest(key=b"/load/warm%d" % i, value=VALUE))
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            key = b"/load/%08d" % (i * 7919 % KEYS)
            started = time.perf_counter()
            kv.Put(rpc_pb2.PutRequest(key=key, value=VALUE))
            latencies.append((time.perf_counter() - started) * 1000)
            i += 1
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def spy(profile: Path | None, node: ShimServer, seconds: float, name: str) -> \
        subprocess.Popen[bytes] | None:
    if profile is None or node.pid is None:
        return None
    # On PATH, or installed beside this Python (``pip install py-spy`` into the venv).
    tool = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [tool, "record", "-p", str(node.pid), "-d", f"{seconds:g}", "-r", "250", "-f", "raw",
         "--threads", "--gil", "--nonblocking", "-o", str(profile / f"{name}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(python: str, n: int, topology: str, seconds: float,
            profile: Path | None, label: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="size-latency-", dir=os.environ.get("TMPDIR")) as tmp:
        nodes = start_cluster(Path(tmp), n, topology, python)
        try:
            cpu_before = [node.cpu_seconds() for node in nodes]
            machine_before = procfs.MachineCpu.read()
            # node 1 (the writes' origin) and node 2 (a replica)
            spies = [spy(profile, node, seconds, f"{label}-n{n}-{topology}-node{i}")
                     for i, node in enumerate(nodes[:2], 1)]
            latencies = put_loop(nodes[0].endpoint, seconds)
            machine_after = procfs.MachineCpu.read()
            cpu = [node.cpu_seconds() - before
                   for node, before in zip(nodes, cpu_before, strict=True)]
            for py_spy in spies:
                if py_spy is not None:
                    py_spy.wait(60)
        finally:
            for node in nodes:
                node.stop()
    puts = len(latencies) + 50
    busy = machine_after.busy - machine_before.busy
    total = machine_after.total - machine_before.total
    return {
        "install": label, "nodes": n, "topology": topology, "puts": len(latencies),
        "rate": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p90_ms": round(percentile(latencies, 90), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "cpu_us_per_put": [round(c / puts * 1e6) for c in cpu],
        "machine_busy_pct": round(100 * busy / total, 1) if total else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="1,3,5,7", help="cluster sizes (default 1,3,5,7)")
    parser.add_argument("--topology", choices=("mesh", "star"), default="mesh")
    parser.add_argument("--seconds", type=float, default=6.0, help="put loop per cell")
    parser.add_argument("--shim-python", action="append", default=[],
                        help="another install's python, measured beside this one (repeatable)")
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles of node 1 here")
    args = parser.parse_args()
    installs = {"this": sys.executable}
    for i, python in enumerate(args.shim_python, 1):
        installs[f"other{i}"] = os.path.abspath(python)
    for n in [int(x) for x in args.hosts.split(",")]:
        for label, python in installs.items():
            row = measure(python, n, args.topology, args.seconds, args.profile, label)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""What applying a remote entry costs a replica, with batching: issue 13's target 6.

Three nodes on loopback (``--sqlite-synchronous FULL``), linked as a star (nodes 2 and 3 join
node 1) or a full mesh; etcd's benchmark tool puts 256 B values on node 1 only, with
``--clients`` clients, so nodes 2 and 3 do nothing but replicate: each batch a link brings
holds what node 1 committed meanwhile (the link's pace, ``shim.replication.pacing``). After
the load, a sentinel key written on node 1 last is awaited on the replicas (a link delivers
an origin's entries in order), so every entry is applied inside the window. Reported per
node: CPU (user + system, from /proc) per put, and for the replicas the share of each of
their threads (the writer that merges, the event loop, the thread that checks signatures).

    .venv/bin/python -m bench.replica_cost                       # 1 and 100 clients, star
    .venv/bin/python -m bench.replica_cost --clients 16 --topology mesh
    .venv/bin/python -m bench.replica_cost --shim-python /tmp/v/bin/python   # A/B, interleaved

Read ratios between installs measured in one run, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.etcd_tool import ensure_tool
from bench.size_latency import start_cluster
from shim.pb import rpc_pb2, rpc_pb2_grpc


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, by "name:tid" ("main" for the thread that runs
    the event loop; Python does not name the others for the system)."""
    found: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # it ended
        name = "main" if tid == str(pid) else stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[f"{name}:{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return found


def has_key(endpoint: str, key: bytes) -> bool:
    with grpc.insecure_channel(endpoint) as channel:
        reply = rpc_pb2_grpc.KVStub(channel).Range(
            rpc_pb2.RangeRequest(key=key, serializable=True, count_only=True))
    return reply.count > 0


def measure(python: str, label: str, tool: Path, topology: str, clients: list[int],
            puts: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="replica-cost-",
                                     dir=os.environ.get("TMPDIR")) as tmp:
        nodes = start_cluster(Path(tmp), 3, topology, python)
        replica_pids = [node.pid for node in nodes[1:] if node.pid is not None]
        try:
            for round_, count in enumerate(clients):
                before = [node.cpu_seconds() for node in nodes]
                threads_before = [thread_cpu(pid) for pid in replica_pids]
                started = time.perf_counter()
                subprocess.run(
                    [str(tool), "--endpoints", nodes[0].endpoint,
                     "--conns", str(max(1, count // 10)), "--clients", str(count),
                     "put", "--total", str(puts), "--key-size", "16", "--val-size", "256",
                     "--key-space-size", "100000"],
                    check=True, capture_output=True, text=True)
                load_seconds = time.perf_counter() - started
                sentinel = b"/bench-sentinel/%d" % round_
                with grpc.insecure_channel(nodes[0].endpoint) as channel:
                    rpc_pb2_grpc.KVStub(channel).Put(
                        rpc_pb2.PutRequest(key=sentinel, value=b"x"))
                deadline = time.monotonic() + 120
                while not all(has_key(node.endpoint, sentinel) for node in nodes[1:]):
                    if time.monotonic() > deadline:
                        raise SystemExit("the replicas did not catch up in 120 s")
                    time.sleep(0.02)
                cpu = [node.cpu_seconds() - b for node, b in zip(nodes, before, strict=True)]
                threads = []
                for pid, earlier in zip(replica_pids, threads_before, strict=True):
                    later = thread_cpu(pid)
                    used = {name: (later[name] - earlier.get(name, 0.0)) / puts * 1e6
                            for name in later}
                    threads.append({name: round(us) for name, us in sorted(
                        used.items(), key=lambda item: -item[1]) if us >= 1})
                rows.append({
                    "install": label, "topology": topology, "clients": count, "puts": puts,
                    "puts_per_s": round(puts / load_seconds),
                    "cpu_us_per_put": [round(c / puts * 1e6) for c in cpu],
                    "replica_threads_us": threads,
                })
        finally:
            for node in nodes:
                node.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,100", help="client counts (default 1,100)")
    parser.add_argument("--puts", type=int, default=8000, help="puts per client count")
    parser.add_argument("--topology", choices=("star", "mesh"), default="star")
    parser.add_argument("--rounds", type=int, default=1, help="alternate installs this often")
    parser.add_argument("--shim-python", action="append", default=[],
                        help="another install's python, measured beside this one (repeatable)")
    parser.add_argument("--etcd-tool", help="etcd's benchmark binary (default: build it)")
    args = parser.parse_args()
    tool = ensure_tool(args.etcd_tool)
    installs = {"this": sys.executable}
    for i, python in enumerate(args.shim_python, 1):
        installs[f"other{i}"] = os.path.abspath(python)
    clients = [int(x) for x in args.clients.split(",")]
    for round_ in range(args.rounds):
        order = list(installs.items())
        if round_ % 2:
            order.reverse()  # both orders: a drifting machine favours neither
        for label, python in order:
            for row in measure(python, label, tool, args.topology, clients, args.puts):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

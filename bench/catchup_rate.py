"""How fast a node that was away catches up, on loopback: entries per second over one link,
and the CPU each node spends per entry.

Node 1 takes ``--puts`` puts of 256 B values (one client, one put at a time); node 2 starts
with no link (an empty topology file) and, once it serves, is told to link to node 1 (the
file rewritten, SIGHUP). The clock and each node's CPU (from /proc) run from then until
node 2 holds every put. Compare installs in one run of the machine (same load, ``--order``
both ways) and read the ratios, not the absolute figures. ``--local-writes``: meanwhile one
client puts on node 2, one put at a time, and its latencies are reported (and, for
comparison, those of the same client just before the link): how long the merges of a
catch-up hold up the returning node's own writes.

    .venv/bin/python -m bench.catchup_rate                        # this tree's installed shim
    .venv/bin/python -m bench.catchup_rate --shim-python OTHER    # another install
    .venv/bin/python -m bench.catchup_rate --local-writes         # node 2's own writes meanwhile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench.model import summarize
from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support.replication import TOKEN, node_args, reload_topology, write_topology
from tests.support.shim_server import ShimServer

PREFIX = b"/catchup/"
VALUE = b"v" * 256


def _count(kv: rpc_pb2_grpc.KVStub) -> int:
    request = rpc_pb2.RangeRequest(key=PREFIX, range_end=PREFIX[:-1] + b"0", count_only=True)
    return kv.Range(request).count


class LocalWriter:
    """One client putting on a node, one put at a time, in a thread: each put's latency."""

    def __init__(self, kv: rpc_pb2_grpc.KVStub) -> None:
        self._kv = kv
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.errors = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self._kv.Put(rpc_pb2.PutRequest(key=b"/local/%06d" % n, value=VALUE), timeout=30)
            except grpc.RpcError:
                self.errors += 1  # reported: a put that failed is not a fast one
                continue
            self.latencies.append(time.perf_counter() - started)
            n += 1

    def __enter__(self) -> LocalWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def summary(self, name: str) -> dict[str, float | None]:
        ms = {**summarize(self.latencies), "max": max(self.latencies, default=0.0) * 1000}
        return {f"{name}_puts": len(self.latencies), f"{name}_errors": self.errors,
                **{f"{name}_{share}_ms": None if ms[share] is None else round(ms[share], 2)
                   for share in ("p50", "p99", "max")}}


def measure(
    python: str, puts: int, local_writes: bool = False
) -> dict[str, float | None]:
    with tempfile.TemporaryDirectory(prefix="catchup-") as tmp:
        root = Path(tmp)
        shim_python = os.path.abspath(python)
        topology = root / "n2-topology.json"
        write_topology(topology)
        with ShimServer(root / "n1", extra_args=[*node_args("n1"), "--log-level=warning"],
                        python=shim_python, startup_timeout=60) as n1:
            with grpc.insecure_channel(n1.endpoint) as channel:
                kv = rpc_pb2_grpc.KVStub(channel)
                for i in range(puts):
                    kv.Put(rpc_pb2.PutRequest(key=PREFIX + b"%06d" % i, value=VALUE))
            args = [*node_args("n2"), "--topology", str(topology), "--log-level=info"]
            with ShimServer(root / "n2", extra_args=args, python=shim_python,
                            startup_timeout=60) as n2, grpc.insecure_channel(n2.endpoint) as ch:
                kv2 = rpc_pb2_grpc.KVStub(ch)
                local: dict[str, float | None] = {}
                if local_writes:
                    with LocalWriter(kv2) as before:
                        time.sleep(2.0)  # the same client's figures without a catch-up
                    local.update(before.summary("local_alone"))
                writer = LocalWriter(kv2) if local_writes else None
                with writer or contextlib.nullcontext():
                    cpu1, cpu2 = n1.cpu_seconds(), n2.cpu_seconds()
                    started = time.monotonic()
                    reload_topology(n2, topology, {"url": n1.url, "token": TOKEN})
                    while _count(kv2) < puts:
                        time.sleep(0.05)
                    seconds = time.monotonic() - started
                    cpu1, cpu2 = n1.cpu_seconds() - cpu1, n2.cpu_seconds() - cpu2
                if writer is not None:
                    local.update(writer.summary("local_during"))
    return {
        "puts": puts, "seconds": round(seconds, 2), "entries_per_s": round(puts / seconds),
        "sender_cpu_us_per_entry": round(cpu1 / puts * 1e6),
        "receiver_cpu_us_per_entry": round(cpu2 / puts * 1e6),
        **local,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shim-python", default=sys.executable,
                        help="the python whose installed shim serves (default: this one)")
    parser.add_argument("--puts", type=int, default=5000)
    parser.add_argument("--local-writes", action="store_true",
                        help="one client writing on node 2 during the catch-up: its latencies")
    args = parser.parse_args()
    print(json.dumps(measure(args.shim_python, args.puts, args.local_writes)))


if __name__ == "__main__":
    main()

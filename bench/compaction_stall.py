"""Writes during a compaction, shim beside etcd: how long a Compact takes to answer, and how
long the writes issued meanwhile wait.

kube-apiserver compacts the history every 5 minutes; everything written since the last
compaction goes at once. Each server gets the same history (``--puts`` puts over ``--keys``
keys, 512 B values, 64 in flight), then one client puts in a closed loop while the main thread
sends Compact at the newest revision; the table gives the Compact's answer time and the
writer's put latencies before it (1 s) and from the Compact until 0.5 s after its answer.

    .venv/bin/python -m bench.compaction_stall                        # shim and etcd
    .venv/bin/python -m bench.compaction_stall --shim-python OTHER    # another install too
    .venv/bin/python -m bench.compaction_stall --puts 20000 --keys 2000 --physical
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support import EtcdServer, ServerProcess, ShimServer

VALUE = b"v" * 512


async def preload(endpoint: str, puts: int, keys: int) -> int:
    """``puts`` puts round robin over ``keys`` keys, 64 at a time; the newest revision."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)
        newest = 0
        queue = iter(range(puts))

        async def worker() -> None:
            nonlocal newest
            for i in queue:
                key = b"/registry/pods/default/pod-%06d" % (i % keys)
                resp = await stub.Put(rpc_pb2.PutRequest(key=key, value=VALUE))
                newest = max(newest, resp.header.revision)

        await asyncio.gather(*(worker() for _ in range(64)))
        return newest


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def measure(endpoint: str, puts: int, keys: int, physical: bool) -> dict[str, float]:
    revision = asyncio.run(preload(endpoint, puts, keys))
    samples: list[tuple[float, float]] = []  # (start, latency), both seconds
    stop = threading.Event()

    def steady_writer() -> None:
        with grpc.insecure_channel(endpoint) as channel:
            stub = rpc_pb2_grpc.KVStub(channel)
            while not stop.is_set():
                started = time.perf_counter()
                stub.Put(rpc_pb2.PutRequest(key=b"/registry/leases/kube-node-lease/n1",
                                            value=b"renew"))
                samples.append((started, time.perf_counter() - started))

    writer = threading.Thread(target=steady_writer)
    writer.start()
    try:
        time.sleep(1.0)
        with grpc.insecure_channel(endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            sent = time.perf_counter()
            kv.Compact(rpc_pb2.CompactionRequest(revision=revision, physical=physical),
                       timeout=600)
            answered = time.perf_counter()
        time.sleep(0.5)
    finally:
        stop.set()
        writer.join()
    before = [lat for start, lat in samples if sent - 1.0 <= start < sent]
    during = [lat for start, lat in samples if sent <= start < answered + 0.5]
    ms = 1000.0
    return {
        "compact_ms": (answered - sent) * ms,
        "before_p50_ms": percentile(before, 0.5) * ms,
        "before_max_ms": max(before, default=0.0) * ms,
        "during_p50_ms": percentile(during, 0.5) * ms,
        "during_p99_ms": percentile(during, 0.99) * ms,
        "during_max_ms": max(during, default=0.0) * ms,
        "during_puts": float(len(during)),
    }


@contextmanager
def server(target: str, workdir: Path) -> Iterator[ServerProcess]:
    proc: ServerProcess
    if target == "etcd":
        proc = EtcdServer(workdir, fsync=True, extra_args=["--quota-backend-bytes=8589934592"])
    else:
        python = target.split("=", 1)[1]
        proc = ShimServer(workdir, extra_args=["--log-level=warning"], startup_timeout=60,
                          python=os.path.abspath(python))
    with proc:
        yield proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shim-python", action="append", default=[],
                        help="a python whose installed shim to measure (repeatable; default: "
                             "this one)")
    parser.add_argument("--puts", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--physical", action="store_true",
                        help="Compact with physical=true (answered once the history is gone)")
    parser.add_argument("--no-etcd", action="store_true")
    args = parser.parse_args()
    targets = [f"shim={python}" for python in args.shim_python or [sys.executable]]
    if not args.no_etcd:
        targets.append("etcd")
    for target in targets:
        with tempfile.TemporaryDirectory(prefix="compaction-stall-") as tmp, \
                server(target, Path(tmp)) as proc:
            result = measure(proc.endpoint, args.puts, args.keys, args.physical)
        print(json.dumps({"target": target, "puts": args.puts, "keys": args.keys,
                          "physical": args.physical,
                          **{k: round(v, 2) for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
    main()

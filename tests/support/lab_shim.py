"""shim nodes inside the hosts of a network-namespace lab (tests/support/netns.py): each
serves on its host's address, its clients (etcdctl) run in the same namespace, so partitions
and delays between hosts apply to its links."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

from .etcd import find_etcd_binary
from .netns import NetLab
from .process import child_env, tail
from .replication import node_args
from .shim_server import OUTSIDE_CHECKOUT, sqlite_endpoint

LAB_PORT = 2379


class LabNode:
    """shim serving on lab.addr(i):2379 inside host i; its clients run in the namespace."""

    def __init__(self, lab: NetLab, i: int, workdir: Path, joins: list[int]) -> None:
        self.lab, self.i = lab, i
        self.endpoint = f"{lab.addr(i)}:{LAB_PORT}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "shim.log"
        argv = [
            sys.executable, "-m", "shim", "serve", "--listen-address", self.endpoint,
            "--datastore-endpoint", sqlite_endpoint(workdir / "state.db"),
            *node_args(f"h{i}", joins=[f"http://{lab.addr(j)}:{LAB_PORT}" for j in joins]),
        ]
        with self.log_path.open("ab") as log:
            self.proc = lab.popen(
                i, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=OUTSIDE_CHECKOUT, env=child_env({"PYTHONUNBUFFERED": "1"}),
            )

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.lab.command(self.i, [
            find_etcd_binary("etcdctl"), f"--endpoints={self.endpoint}",
            "--dial-timeout=2s", "--command-timeout=5s", *args,
        ])
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                env=child_env({"ETCDCTL_API": "3"}), check=False)
        if check:
            assert result.returncode == 0, (
                f"etcdctl {' '.join(args)} on h{self.i}: {result.stderr}\n{self.log_tail()}"
            )
        return result

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.etcdctl("get", "/ready", check=False).returncode != 0:
            assert self.proc.poll() is None, f"shim on h{self.i} exited\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"shim on h{self.i} not ready\n{self.log_tail()}"
            time.sleep(0.1)

    def put(self, key: str, value: str) -> None:
        self.etcdctl("put", key, value)

    def snapshot(self, prefix: str) -> dict[str, str]:
        out = json.loads(self.etcdctl("get", "--prefix", prefix, "-w", "json").stdout)
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in out.get("kvs", [])
        }

    def log_tail(self) -> str:
        return f"--- h{self.i} log {self.log_path} ---\n{tail(self.log_path, 30)}"



def lab_converged(
    nodes: list[LabNode], prefix: str, expected: dict[str, str], timeout: float, lab: NetLab
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = [node.snapshot(prefix) for node in nodes]
        if all(s == expected for s in seen):
            return
        if time.monotonic() > deadline:
            lines = [f"h{node.i}: {sorted(s.items())}" for node, s in zip(nodes, seen, strict=True)]
            raise AssertionError(
                f"no convergence within {timeout:.0f}s; expected {sorted(expected.items())}\n"
                + "\n".join(lines) + f"\nfaults: {lab.faults()}\n"
                + "\n".join(node.log_tail() for node in nodes)
            )
        time.sleep(0.1)

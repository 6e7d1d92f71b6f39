"""The edge lab: hosts as network namespaces (tests/support/netns.py) with a fixed delay on
each host's ingress, one etcd member and one shim node per host, and the client programs
(bench/edge/client.py) run inside the hosts, each talking to its own host's member or node.

With every host delayed by d, a round trip between any two hosts takes 2d: ``set_rtt(r)``
delays each host by r/2 and probes the round trip it got (TCP echoes) before anything is
measured. Every process is started in its own session and stopped by PID; ``close()`` stops
them all and deletes the namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.replication.nodes import NetnsShimNode, wait_linked
from bench.targets import START_SECONDS
from tests.support.etcd import EtcdServer
from tests.support.netns import NetLab
from tests.support.process import ServerProcess, stop_all
from tests.support.shim_server import REPO_ROOT

ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
SHIM_PORTS = {"mesh": 2479, "star": 2579}  # both may run at once
SYSTEMS = ("etcd", "shim")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class EdgeEtcd(EtcdServer):
    """An etcd member inside lab host ``host``: fsync on (etcd's default), data on disk, raft
    timing at etcd's defaults (heartbeat 100 ms, election 1 s: 10x the largest round trip
    measured). Ready when /health, asked from inside the lab, says true."""

    def __init__(self, lab: NetLab, host: int, workdir: Path, initial_cluster: str) -> None:
        super().__init__(
            workdir, ["--initial-cluster-token=edge"], START_SECONDS, fsync=True,
            member=f"h{host}", host=lab.addr(host), client_port=ETCD_CLIENT_PORT,
            peer_port=ETCD_PEER_PORT, initial_cluster=initial_cluster,
            launcher=lab.command(host, []),
        )
        self.lab = lab
        self.host_index = host

    def is_ready(self) -> bool:
        try:
            with self.lab.connect(self.host_index, (self.host, self.client_port), 1.0) as sock:
                sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
        except OSError:
            return False
        return b'"health":"true"' in reply


@dataclass
class Cluster:
    """One system's servers, by host (1-based)."""

    system: str  # "etcd" or "shim"
    topology: str  # "raft", "mesh" or "star"
    servers: dict[int, ServerProcess] = field(default_factory=dict)

    def endpoint(self, host: int) -> str:
        return self.servers[host].endpoint

    @property
    def label(self) -> str:
        return self.system if self.system == "etcd" else f"shim-{self.topology}"


class EdgeLab:
    def __init__(self, hosts: int, work_dir: Path, raw: Path) -> None:
        self.hosts = hosts
        self.net = NetLab(hosts, prefix=f"edge{os.getpid()}", subnet="10.217.0")
        self.work_dir = work_dir
        self.raw = raw
        self.rtt = 0.0
        self.clusters: list[Cluster] = []
        self._programs: list[subprocess.Popen[bytes]] = []

    # -- the network -----------------------------------------------------------------------

    def up(self) -> EdgeLab:
        self.net.up()
        return self

    def close(self) -> None:
        for program in self._programs:
            if program.poll() is None:
                program.kill()
                program.wait()
        for cluster in list(self.clusters):
            self.stop(cluster)
        self.net.down()

    def set_rtt(self, rtt_ms: float, pairs: Sequence[tuple[int, int]] = ((1, 2),),
                count: int = 20) -> dict[str, Any]:
        """Delay every host by rtt/2; the round trips then measured between ``pairs``."""
        for host in range(1, self.hosts + 1):
            self.net.delay(host, rtt_ms / 2)
        self.rtt = rtt_ms
        probes = {f"h{a}-h{b}": self.net.probe(a, b, count) for a, b in pairs}
        every = [x for rtts in probes.values() for x in rtts]
        got = {"target_ms": rtt_ms, "median_ms": statistics.median(every), "min_ms": min(every),
               "max_ms": max(every), "pairs": {k: statistics.median(v) for k, v in probes.items()}}
        say(f"RTT {rtt_ms:g} ms: probe median {got['median_ms']:.1f} ms "
            f"(min {got['min_ms']:.1f}, max {got['max_ms']:.1f}, {len(every)} echoes)")
        return got

    # -- clusters --------------------------------------------------------------------------

    def start_etcd(self, hosts: Sequence[int], tag: str) -> Cluster:
        initial = ",".join(f"h{h}=http://{self.net.addr(h)}:{ETCD_PEER_PORT}" for h in hosts)
        cluster = Cluster("etcd", "raft")
        self.clusters.append(cluster)
        for h in hosts:
            cluster.servers[h] = EdgeEtcd(self.net, h, self.work_dir / f"{tag}-etcd-h{h}",
                                          initial).spawn()
        for server in cluster.servers.values():
            server.wait_ready()
        return cluster

    def start_shim(self, hosts: Sequence[int], tag: str, topology: str = "mesh") -> Cluster:
        """mesh: each node joins every node started before it; star: all join the first."""
        cluster = Cluster("shim", topology)
        self.clusters.append(cluster)
        nodes: list[NetnsShimNode] = []
        for h in hosts:
            joins = [n.url for n in nodes] if topology == "mesh" else [n.url for n in nodes[:1]]
            node = NetnsShimNode(self.work_dir / f"{tag}-{topology}-h{h}", f"h{h}", self.net, h,
                                 joins=joins, port=SHIM_PORTS[topology])
            nodes.append(node.spawn())
            cluster.servers[h] = node
        for node in nodes:
            node.wait_ready()
        wait_linked(nodes, 120)
        return cluster

    def stop(self, cluster: Cluster) -> None:
        """Stop a cluster's servers; their logs are kept in raw/."""
        stop_all(cluster.servers.values())
        self.clusters.remove(cluster)
        for server in cluster.servers.values():
            if server.log_path.exists():
                shutil.copyfile(server.log_path, self.raw / f"server-{server.workdir.name}.log")

    # -- client programs -------------------------------------------------------------------

    def spawn(self, host: int, name: str, args: Sequence[str],
              module: str = "bench.edge.client") -> Program:
        """Start ``python -m MODULE ARGS --out raw/NAME.json`` inside ``host``."""
        out = self.raw / f"{name}.json"
        out.unlink(missing_ok=True)
        argv = [sys.executable, "-m", module, *args, "--out", str(out)]
        command = self.net.command(host, argv)
        (self.raw / f"{name}.cmd").write_text(" ".join(command) + "\n")
        with (self.raw / f"{name}.err").open("wb") as err:
            proc = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        self._programs.append(proc)
        return Program(name, proc, out, self.raw / f"{name}.err")

    def run(self, host: int, name: str, args: Sequence[str], timeout: float,
            module: str = "bench.edge.client") -> dict[str, Any]:
        return self.spawn(host, name, args, module).result(timeout)

    @staticmethod
    def start_at(lead: float = 2.5) -> str:
        """A shared start time (monotonic, the same clock in every namespace) for programs
        spawned now: Python and gRPC take a second or two to start on a busy box."""
        return f"{time.monotonic() + lead:.3f}"

    def pollers(self, cluster: Cluster, hosts: Sequence[int], name: str,
                prefix: str = "/") -> Pollers:
        """A revision poller on each of ``hosts``, read live (see ``Pollers``)."""
        programs = {h: self.spawn(h, f"{name}.poll-h{h}", [
            "poll", "--endpoint", cluster.endpoint(h), "--duration", "3600", "--interval",
            "0.02", "--prefix", prefix]) for h in hosts}
        return Pollers(programs)


@dataclass
class Program:
    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def wait_line(self, text: str, timeout: float = 60.0) -> None:
        """Until the program prints a line containing ``text`` (it says it is ready)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode(errors="replace")
            if text in line:
                return
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"{self.name} did not say {text!r}: {self.err.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return {"failure": f"{self.name}: still running after {timeout:.0f} s"}
        if not self.out.exists():
            err = self.err.read_text(errors="replace")[-1500:]
            return {"failure": f"{self.name}: exit {self.proc.returncode}, no result: {err}"}
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data


class Pollers:
    """Revision pollers (``client.py poll``) on several hosts, their samples read as they are
    printed: each host's latest (time, revision), and waits for conditions on them."""

    def __init__(self, programs: dict[int, Program]) -> None:
        self.programs = programs
        self.latest: dict[int, tuple[float, int]] = {}
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(h, p), daemon=True)
                         for h, p in programs.items()]
        for reader in self._readers:
            reader.start()

    def _read(self, host: int, program: Program) -> None:
        assert program.proc.stdout is not None
        for line in program.proc.stdout:
            at, revision, _count = line.split()
            if int(revision) >= 0:
                with self._changed:
                    self.latest[host] = (float(at), int(revision))
                    self._changed.notify_all()

    def wait(self, condition: Callable[[dict[int, int]], bool],
             timeout: float) -> float | None:
        """The sample time (monotonic) at which ``condition(revision by host)`` first held
        for samples taken after this call, or None at the timeout."""
        since = time.monotonic()
        deadline = since + timeout
        with self._changed:
            while True:
                fresh = {h: rev for h, (at, rev) in self.latest.items() if at >= since}
                if len(fresh) == len(self.programs) and condition(fresh):
                    return max(self.latest[h][0] for h in fresh)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def wait_started(self, timeout: float = 60.0) -> None:
        """Until every poller has taken a sample."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.latest) < len(self.programs):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"pollers not sampling after {timeout:.0f} s")
                self._changed.wait(left)

    def stop(self) -> None:
        for program in self.programs.values():
            program.stop()


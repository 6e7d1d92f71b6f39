"""The processes of the replication benchmarks: shim nodes (on loopback or inside a network
namespace), etcd cluster members, and a fleet that starts and always stops them all.

Nothing here changes shim: nodes are ``python -m shim serve`` with replication flags, read from
the outside through their logs (INFO lines with millisecond timestamps) and their SQLite files
(opened read-only, as ``shim status`` / ``shim sql`` do).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.targets import START_SECONDS
from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support import procfs
from tests.support.etcd import EtcdServer
from tests.support.net import free_ports
from tests.support.process import ServerProcess
from tests.support.shim_server import ShimServer, sqlite_endpoint

TOKEN = "bench-replication-token"  # a throwaway bootstrap token; every node in a run shares it


# ------------------------------------------------------------------ logs

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ([\w.]+): (.*)$")


@dataclass(frozen=True)
class LogLine:
    at: float  # wall clock, seconds since the epoch (the node's local time, as time.time())
    level: str
    logger: str
    message: str


def log_lines(path: Path) -> list[LogLine]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append(LogLine(at, m.group(2), m.group(3), m.group(4)))
    return out


def first(lines: Sequence[LogLine], text: str, after: float = 0.0) -> float | None:
    for line in lines:
        if line.at >= after and text in line.message:
            return line.at
    return None


# ------------------------------------------------------------------ shim nodes


class ShimNode(ShimServer):
    """``python -m shim serve`` with replication flags, INFO logs, ``--sqlite-synchronous
    FULL`` (every acknowledged write fsynced), its database on disk in ``workdir/data``.
    ``launcher`` runs it elsewhere (``ip netns exec HOST``)."""

    def __init__(
        self, workdir: Path, node_name: str, joins: Sequence[str] = (), admit: bool = True,
        host: str = "127.0.0.1", port: int | None = None, log_level: str = "info",
        launcher: Sequence[str] = (),
    ) -> None:
        args = ["--sqlite-synchronous", "FULL", f"--log-level={log_level}", f"--name={node_name}"]
        if admit:
            args.append(f"--bootstrap-token={TOKEN}")
        for url in joins:
            args += ["--join", url]
        if joins:
            args.append(f"--token={TOKEN}")
        super().__init__(
            workdir, datastore_endpoint=sqlite_endpoint(workdir / "data" / "state.db"),
            extra_args=args, startup_timeout=START_SECONDS, host=host, port=port or 0,
            launcher=launcher,
        )
        self.node_name = node_name
        self.joins = list(joins)

    @property
    def db_endpoint(self) -> str:
        return self.datastore_endpoint

    def lines(self) -> list[LogLine]:
        return log_lines(self.log_path)

    def serving_at(self) -> float | None:
        return first(self.lines(), "serving etcd v3 API")

    def linked_at(self, after: float = 0.0) -> list[float]:
        """When this node's dialed links came up ("linked to ..."), after ``after``."""
        return [ln.at for ln in self.lines() if ln.at >= after and
                ln.message.startswith("linked to ")]

    def linked_to_at(self, url: str, after: float = 0.0) -> list[float]:
        return [ln.at for ln in self.lines() if ln.at >= after and
                ln.message.startswith(f"linked to {url} ")]

    def closed_at(self, after: float = 0.0) -> list[float]:
        """When links of this node ended ("link with node ... closed")."""
        return [ln.at for ln in self.lines() if ln.at >= after and
                ln.message.startswith("link with node ") and ln.message.endswith(" closed")]

    def admitted_at(self, after: float = 0.0) -> list[float]:
        return [ln.at for ln in self.lines() if ln.at >= after and
                ln.message.startswith("admitted link from ")]

    def check_alive(self) -> None:
        if not self.running:
            raise RuntimeError(
                f"shim node {self.node_name} exited (code {self.returncode}):\n{self.log_tail()}"
            )


class NetnsShimNode(ShimNode):
    """A shim node inside host ``host_index`` of a NetLab, listening on that host's address.
    The bench process cannot reach it over the network: it is watched through its log and its
    database file (the file system is shared)."""

    def __init__(self, workdir: Path, node_name: str, lab: Any, host_index: int,
                 joins: Sequence[str] = (), admit: bool = True, port: int = 2379) -> None:
        super().__init__(workdir, node_name, joins, admit, host=lab.addr(host_index), port=port,
                         launcher=lab.command(host_index, []))
        self.lab = lab
        self.host_index = host_index

    def is_ready(self) -> bool:
        return self.serving_at() is not None


def wait_linked(nodes: Sequence[ShimNode], timeout: float = 60.0, after: float = 0.0) -> None:
    """Until every node's dialed links (one per --join) have come up since ``after``."""
    deadline = time.monotonic() + timeout
    for node in nodes:
        while len(node.linked_at(after)) < len(node.joins):
            node.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.node_name}: links not up after {timeout:.0f}s:\n"
                                   f"{node.log_tail()}")
            time.sleep(0.05)


# ------------------------------------------------------------------ etcd cluster


class EtcdMember(EtcdServer):
    """One member of a static etcd 3.5.1 cluster (default durability, data on disk)."""

    def __init__(self, workdir: Path, member: str, client_port: int, peer_port: int,
                 initial_cluster: str = "") -> None:
        super().__init__(
            workdir, ["--initial-cluster-token=bench-replication"], START_SECONDS, fsync=True,
            member=member, client_port=client_port, peer_port=peer_port,
            initial_cluster=initial_cluster,
        )


def etcd_cluster(work_dir: Path, size: int = 3) -> list[EtcdMember]:
    """Start ``size`` members together (a member only serves once a quorum is up)."""
    ports = free_ports(2 * size)
    members = [EtcdMember(work_dir / f"etcd-m{i}", f"m{i}", ports[2 * i - 2], ports[2 * i - 1])
               for i in range(1, size + 1)]
    cluster = ",".join(f"{m.member}={m.peer_url}" for m in members)
    for m in members:
        m.initial_cluster = cluster
        m.spawn()
    for m in members:
        m.wait_ready()
    return members


def etcd_leader(members: Sequence[EtcdMember]) -> str:
    """The name of the current leader ('?' if no member says)."""
    ids: dict[int, str] = {}
    leader = 0
    for m in members:
        with contextlib.suppress(grpc.RpcError), grpc.insecure_channel(m.endpoint) as channel:
            resp = rpc_pb2_grpc.MaintenanceStub(channel).Status(
                rpc_pb2.StatusRequest(), timeout=5
            )
            ids[resp.header.member_id] = m.member
            leader = resp.leader or leader
    return ids.get(leader, "?")


# ------------------------------------------------------------------ reading node databases


class NodeDb:
    """A node's SQLite file, opened read-only (WAL: never blocks the node's writer)."""

    def __init__(self, node: ShimNode) -> None:
        from shim.backend import (
            sqlite_inspect as inspect,  # shim's own read-only opener (`shim status`, `shim sql`)
        )

        self.node = node
        self._conn = inspect.open_read_only(node.db_endpoint)

    def close(self) -> None:
        self._conn.close()

    def origins(self) -> dict[str, int]:
        """Entries held per origin node: equal on all nodes = every node has every entry
        (an origin's entries are its seq 1..N)."""
        return {str(o): int(n) for o, n in self._conn.execute(
            "SELECT origin, COUNT(*) FROM repl_entry GROUP BY origin")}

    def entry_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM repl_entry").fetchone()[0])

    def kv_digest(self, prefix: bytes = b"") -> tuple[int, str]:
        """(live keys, sha256 over sorted key/value pairs) under ``prefix``."""
        digest = hashlib.sha256()
        count = 0
        end = prefix[:-1] + bytes([prefix[-1] + 1]) if prefix else b"\xff" * 8
        for key, value in self._conn.execute(
            "SELECT l.key, l.value FROM current c JOIN log l ON l.id = c.id "
            "WHERE c.key >= ? AND c.key < ? ORDER BY c.key", (prefix, end),
        ):
            k, v = bytes(key), bytes(value)
            digest.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
            count += 1
        return count, digest.hexdigest()

    def count_prefix(self, prefix: bytes) -> int:
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        return int(self._conn.execute(
            "SELECT COUNT(*) FROM current WHERE key >= ? AND key < ?", (prefix, end)
        ).fetchone()[0])

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._conn.execute(sql, tuple(args))]

    def status(self) -> dict[str, Any]:
        from shim.backend import sqlite_inspect as inspect

        return inspect.status(self._conn)


def wait_all_entries(dbs: Sequence[NodeDb], timeout: float, poll: float = 0.05) -> float | None:
    """Seconds until every node holds every entry (same entries per origin everywhere), or
    None at the timeout."""
    started = time.monotonic()
    while True:
        views = [db.origins() for db in dbs]
        if all(v == views[0] for v in views[1:]):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(poll)


# ------------------------------------------------------------------ CPU of a group of processes


def _pid_cpu(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / procfs.CLOCK_TICKS


class GroupCpu:
    """CPU used between start() and stop() by a group of servers, and by everything else on
    the machine apart from them and the client (the noise gauge of the main suite)."""

    def __init__(self, servers: Sequence[ServerProcess]) -> None:
        self.servers = list(servers)
        self.server_cpu = 0.0
        self.foreign_pct: float | None = None
        self.machine_busy_pct: float | None = None
        self.each_cpu: list[float] = []
        self._each0: list[float] = []
        self._self0 = 0.0
        self._s0 = 0.0
        self._m0 = procfs.MachineCpu(0.0, 0.0)

    def _each_cpu(self) -> list[float]:
        # One /proc/PID/stat read per server (shim and etcd run no child processes): walking
        # the whole process table per server would cost the bench itself a lot with 123 nodes.
        return [_pid_cpu(s.pid) if s.running and s.pid else 0.0 for s in self.servers]

    def start(self) -> GroupCpu:
        self._self0 = time.process_time()
        self._each0 = self._each_cpu()
        self._s0 = sum(self._each0)
        self._m0 = procfs.MachineCpu.read()
        return self

    def stop(self, client_cpu: float = 0.0) -> GroupCpu:
        """``client_cpu``: CPU of client processes; the bench process's own is added."""
        client_cpu += time.process_time() - self._self0
        each = self._each_cpu()
        self.each_cpu = [b - a for a, b in zip(self._each0, each, strict=True)]
        self.server_cpu = sum(each) - self._s0
        now = procfs.MachineCpu.read()
        busy, total = now.busy - self._m0.busy, now.total - self._m0.total
        if total > 0:
            self.machine_busy_pct = busy / total * 100
            self.foreign_pct = max(0.0, busy - self.server_cpu - client_cpu) / total * 100
        return self

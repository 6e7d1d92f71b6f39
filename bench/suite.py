"""Runs every workload against every target, in alternation, and collects Measurements."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import etcd_tool, kube_mix, loadgen, targets
from bench.model import Footprint, Measurement, summarize
from bench.workloads import (
    RANGE_KEY,
    RANGE_VALUE_SIZE,
    Sizes,
    ToolWorkload,
    footprint_load_args,
    tool_workloads,
)
from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support import procfs
from tests.support.process import ServerProcess as Server

LIST_PREFIX = b"/registry/benchlist/"
LIST_PAGE = 500


@dataclass
class Options:
    sizes: Sizes
    tool: Path
    out_dir: Path  # results folder; raw outputs go to out_dir / "raw"
    work_dir: Path  # data dirs of the servers (a real disk, not tmpfs)
    targets: tuple[str, ...]
    processes: int  # serving processes of shim (on SQLite) and of the bare server
    loadgen_processes: int
    loadgen_concurrency: int
    only: tuple[str, ...] = ()  # workload ids to run (empty: all)
    wait_quiet: float = 0.0  # before each run, wait up to this long for an idle machine
    footprint: bool = True
    server_cpus: frozenset[int] = frozenset()  # pin the servers to these CPUs (empty: no pin)


@dataclass
class Results:
    measurements: list[Measurement] = field(default_factory=list)
    footprints: list[Footprint] = field(default_factory=list)
    log_findings: dict[str, list[str]] = field(default_factory=dict)
    server_notes: dict[str, str] = field(default_factory=dict)  # target -> describe()


class CpuWindow:
    """Server, and whole-machine, CPU used between start() and stop()."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.server_cpu = 0.0
        self.machine = procfs.MachineCpu(0.0, 0.0)
        self.foreign_pct: float | None = None
        self._server0 = 0.0
        self._machine0 = procfs.MachineCpu(0.0, 0.0)

    def start(self) -> None:
        self._server0 = self.server.cpu_seconds()
        self._machine0 = procfs.MachineCpu.read()

    def stop(self, client_cpu: float) -> None:
        self.server_cpu = self.server.cpu_seconds() - self._server0
        now = procfs.MachineCpu.read()
        busy = now.busy - self._machine0.busy
        total = now.total - self._machine0.total
        if total > 0:
            self.foreign_pct = max(0.0, busy - self.server_cpu - client_cpu) / total * 100


_TIMESTAMP = re.compile(r"\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?\s*")
_SUSPECT = ("Traceback", "ERROR", "Error", "panic", "CRITICAL")


def log_findings(text: str, ignore_reconnects: bool = False, limit: int = 10) -> list[str]:
    """Error-looking log lines, timestamps removed, counted, each with the line after it.

    etcd's gRPC gateway logs "connection refused ... Reconnecting..." while it shuts down;
    ``ignore_reconnects`` leaves those out.
    """
    lines = text.splitlines()
    counts: dict[str, int] = {}
    context: dict[str, str] = {}
    for i, line in enumerate(lines):
        if not any(word in line for word in _SUSPECT):
            continue
        if ignore_reconnects and line.endswith("Reconnecting..."):
            continue
        key = _TIMESTAMP.sub("", line).strip()
        counts[key] = counts.get(key, 0) + 1
        if key not in context and i + 1 < len(lines):
            context[key] = _TIMESTAMP.sub("", lines[i + 1]).strip()[:200]
    out = []
    for key, count in list(counts.items())[:limit]:
        after = f"  (next line: {context[key]})" if context.get(key) else ""
        out.append(f"{count}x {key[:300]}{after}")
    return out


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Suite:
    def __init__(self, options: Options) -> None:
        self.opt = options
        self.raw = options.out_dir / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.results = Results()
        self._servers: dict[str, Server] = {}  # the suite's running servers, by target

    def _wanted(self, workload_id: str) -> bool:
        return not self.opt.only or any(workload_id.startswith(o) for o in self.opt.only)

    def _make(self, target: str, tag: str) -> Server:
        workdir = self.opt.work_dir / f"{target}-{tag}"
        if target == "etcd":
            return targets.etcd(workdir)
        if target == "shim":
            return targets.shim(workdir, self.opt.processes)
        if target == "shim-pg":
            from bench.pg_server import ShimPostgresServer  # needs asyncpg

            return ShimPostgresServer(workdir)
        return targets.BareServer(workdir, self.opt.processes)

    # ------------------------------------------------------------ the main suite

    def run(self) -> Results:
        servers = self._servers
        try:
            for target in self.opt.targets:
                _say(f"starting {target}")
                servers[target] = self._make(target, "suite").start()
                if self.opt.server_cpus:
                    targets.pin_process_tree(servers[target].pid, self.opt.server_cpus)
                note = servers[target].describe()
                if note:
                    self.results.server_notes[target] = note
            self._seed_range_key(servers)
            for workload in tool_workloads(self.opt.sizes):
                if self._wanted(workload.id):
                    self._tool_workload(workload, servers)
            if self._wanted("mix"):
                self._mix(servers)
            if self._wanted("list"):
                self._list(servers)
        finally:
            for target, server in servers.items():
                server.stop()
                self._keep_log(server, target, "suite")
                server.remove_data()
        if self.opt.footprint and self._wanted("footprint"):
            for target in self.opt.targets:
                self._footprint(target)
        return self.results

    def _keep_log(self, server: Server, target: str, tag: str) -> None:
        logs = {f"server-{target}-{tag}.log": server.log_path}
        logs.update({f"server-{target}-{tag}.{kind}.log": path
                     for kind, path in server.extra_logs().items()})
        for name, path in logs.items():
            if not path.exists():
                continue
            text = path.read_text(errors="replace")
            (self.raw / name).write_text(text)
            findings = log_findings(text, ignore_reconnects=target == "etcd")
            if findings:
                self.results.log_findings[f"{target} ({tag}), raw/{name}"] = findings

    def _seed_range_key(self, servers: dict[str, Server]) -> None:
        value = os.urandom(RANGE_VALUE_SIZE // 2).hex().encode()
        for server in servers.values():
            with grpc.insecure_channel(server.endpoint) as channel:
                rpc_pb2_grpc.KVStub(channel).Put(
                    rpc_pb2.PutRequest(key=RANGE_KEY.encode(), value=value), timeout=10
                )

    def _tool_workload(self, workload: ToolWorkload, servers: dict[str, Server]) -> None:
        for target, server in servers.items():
            if target not in workload.targets:
                continue
            if self._down(server, target, [row for row, _, _ in workload.rows]):
                continue
            procfs.wait_quiet(self.opt.wait_quiet)
            window = CpuWindow(server)
            window.start()
            run = etcd_tool.run_tool(
                self.opt.tool, server.endpoint, list(workload.args),
                self.raw / f"{workload.id}.{target}", self.opt.sizes.tool_timeout,
            )
            window.stop(run.client_cpu_s)
            for i, (row_id, _title, section_title) in enumerate(workload.rows):
                m = self._from_tool(row_id, target, run, section_title)
                m.foreign_cpu_pct = window.foreign_pct
                if i == 0:
                    m.server_cpu_s, m.client_cpu_s = window.server_cpu, run.client_cpu_s
                self._add(m)

    def _from_tool(
        self, row_id: str, target: str, run: etcd_tool.ToolRun, section_title: str
    ) -> Measurement:
        m = Measurement(row_id, target, seconds=run.seconds,
                        raw=[run.stdout_path.name, run.stderr_path.name])
        if run.returncode is None:
            m.failure = f"timed out after {run.seconds:.0f}s"
        elif run.returncode != 0:
            m.failure = f"benchmark exited {run.returncode}"
        sections = [s for s in run.sections if s.title.lower() == section_title.lower()]
        if not section_title:
            sections = run.sections[:1]
        if not sections:
            m.failure = m.failure or "no summary in the tool's output"
            for section in run.sections:
                m.errors.update(section.errors)
            return m
        section = sections[0]
        m.rate, m.count, m.errors = section.rps, section.count, dict(section.errors)
        if not row_id.endswith("_events"):  # event "latencies" there are not latencies
            m.p50, m.p90 = section.pct_ms(50), section.pct_ms(90)
            m.p99, m.p999 = section.pct_ms(99), section.pct_ms(99.9)
        return m

    def _down(self, server: Server, target: str, rows: list[str]) -> bool:
        """True (and failed rows recorded) if the server has died since it started."""
        if server.running:
            return False
        for row in rows:
            self._add(Measurement(row, target))
        return True

    def _add(self, m: Measurement) -> None:
        server = self._servers.get(m.target)
        if server is not None and not server.running:
            down = f"{m.target} is not running (exit code {server.returncode})"
            m.failure = f"{m.failure}; {down}" if m.failure else down
        self.results.measurements.append(m)
        if m.failure:
            status = f"FAILED: {m.failure}"
        else:
            p50 = "-" if m.p50 is None else f"{m.p50:.3f}"
            p99 = "-" if m.p99 is None else f"{m.p99:.3f}"
            status = f"{m.rate or 0:,.0f}/s p50 {p50} ms p99 {p99} ms"
        errors = f" errors={m.error_count}" if m.errors else ""
        _say(f"{m.workload:<22} {m.target:<7} {status}{errors}")

    # ------------------------------------------------------------ Python load generator

    def _loadgen(
        self, kind: str, name: str, server: Server, params: dict[str, Any], processes: int
    ) -> tuple[loadgen.LoadResult, CpuWindow]:
        procfs.wait_quiet(self.opt.wait_quiet)
        window = CpuWindow(server)
        result = loadgen.run_workers(
            kind, {"endpoint": server.endpoint, "seed": 7, **params}, processes,
            timeout=self.opt.sizes.tool_timeout + 120, on_start=window.start,
        )
        window.stop(result.client_cpu_s)
        dump = {
            "kind": kind, "params": {k: str(v) for k, v in params.items()},
            "processes": processes, "wall_s": result.wall_s, "client_cpu_s": result.client_cpu_s,
            "server_cpu_s": window.server_cpu, "foreign_cpu_pct": window.foreign_pct,
            "errors": result.errors, "failure": result.failure,
            "latencies_us": {op: [round(v * 1e6, 1) for v in values]
                             for op, values in result.latencies.items()},
        }
        (self.raw / f"{name}.json").write_text(json.dumps(dump))
        return result, window

    def _measure(
        self, row: str, target: str, result: loadgen.LoadResult, window: CpuWindow,
        ops: list[str], raw: str,
    ) -> Measurement:
        latencies = [v for op in ops for v in result.latencies.get(op, [])]
        m = Measurement(row, target, count=len(latencies), seconds=result.wall_s, raw=[raw])
        if result.wall_s > 0 and latencies:
            m.rate = len(latencies) / result.wall_s
        pcts = summarize(latencies)
        m.p50, m.p90, m.p99, m.p999 = pcts["p50"], pcts["p90"], pcts["p99"], pcts["p999"]
        m.errors = {k: v for k, v in result.errors.items() if k.startswith(tuple(ops))}
        m.failure = result.failure
        m.server_cpu_s, m.client_cpu_s = window.server_cpu, result.client_cpu_s
        m.foreign_cpu_pct = window.foreign_pct
        return m

    def _mix(self, servers: dict[str, Server]) -> None:
        params = {
            "duration": self.opt.sizes.mix_seconds, "concurrency": self.opt.loadgen_concurrency,
            "objects_per_worker": self.opt.sizes.mix_objects_per_worker,
        }
        for target, server in servers.items():
            if target == "bare":
                continue
            mix_rows = ["mix", *(f"mix_{op}" for op in kube_mix.MIX_WEIGHTS)]
            if self._down(server, target, mix_rows):
                continue
            name = f"mix.{target}"
            result, window = self._loadgen("mix", name, server, params, self.opt.loadgen_processes)
            all_ops = ["range", "txn_range", "txn_put", "watch"]
            self._add(self._measure("mix", target, result, window, all_ops, f"{name}.json"))
            for op in all_ops:
                m = self._measure(f"mix_{op}", target, result, window, [op], f"{name}.json")
                self._add(m)

    def _list(self, servers: dict[str, Server]) -> None:
        objects = self.opt.sizes.list_objects
        for target, server in servers.items():
            if self._down(server, target, ["list_load"]):
                continue
            name = f"list_load.{target}"
            params = {"prefix": LIST_PREFIX, "count": objects,
                      "concurrency": self.opt.loadgen_concurrency}
            result, window = self._loadgen("load", name, server, params,
                                           self.opt.loadgen_processes)
            self._add(self._measure("list_load", target, result, window, ["put"], f"{name}.json"))
        for page in (0, LIST_PAGE):
            row = "list_paged" if page else "list_full"
            for target, server in servers.items():
                if self._down(server, target, [row, "list_page"] if page else [row]):
                    continue
                name = f"{row}.{target}"
                params = {"prefix": LIST_PREFIX, "page": page, "expected": objects,
                          "iterations": self.opt.sizes.list_iterations,
                          "max_seconds": self.opt.sizes.list_max_seconds}
                result, window = self._loadgen("list", name, server, params, 1)
                self._add(self._measure(row, target, result, window, ["list"], f"{name}.json"))
                if page:
                    self._add(
                        self._measure("list_page", target, result, window, ["page"],
                                      f"{name}.json")
                    )

    # ------------------------------------------------------------ footprint

    def _footprint(self, target: str) -> None:
        keys = self.opt.sizes.footprint_keys
        server = self._make(target, "footprint")
        _say(f"footprint: fresh {target}, loading {keys:,} keys")
        try:
            server.start()
            time.sleep(1.0)
            rss_idle, disk_idle = server.rss_bytes(), server.disk_bytes()
            run = etcd_tool.run_tool(
                self.opt.tool, server.endpoint, footprint_load_args(keys),
                self.raw / f"footprint_load.{target}", self.opt.sizes.tool_timeout * 2,
            )
            time.sleep(2.0)  # let etcd's backend batch commit and shim's writer settle
            errors: dict[str, int] = {}
            for section in run.sections:
                errors.update(section.errors)
            if run.returncode != 0:
                errors[f"benchmark exit {run.returncode}"] = 1
            fp = Footprint(
                target=target, keys=keys, value_size=256, rss_idle=rss_idle,
                rss_loaded=server.rss_bytes(), disk_idle=disk_idle,
                disk_loaded=server.disk_bytes(), wal_loaded=server.wal_bytes(),
                load_seconds=run.seconds, load_errors=errors,
            )
            self.results.footprints.append(fp)
            disk = "-" if fp.disk_loaded is None else f"{fp.disk_loaded / 2**20:.1f} MiB"
            _say(f"footprint {target}: RSS {fp.rss_loaded / 2**20:.1f} MiB, disk {disk}")
        finally:
            server.stop()
            self._keep_log(server, target, "footprint")
            server.remove_data()

"""bench/run: etcd 3.5.1 vs shim (on SQLite and/or PostgreSQL) vs a bare grpc.aio KV server, one
command, one results folder."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench import etcd_tool, report
from bench.model import KNOWN_TARGETS, TARGETS
from bench.suite import Options, Results, Suite
from bench.targets import ETCD_VERSION, etcd_binary
from bench.workloads import FULL, QUICK
from tests.support import procfs
from tests.support.shim_server import REPO_ROOT

RESULTS_ROOT = REPO_ROOT / "bench" / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fewer requests per workload, 10k keys for the footprint (< 3 min)")
    parser.add_argument("--processes", type=int, default=1,
                        help="serving processes of shim (--processes N, SQLite) and of the "
                        "bare server (default 1)")
    parser.add_argument("--server-cpus", default="",
                        help="pin every server (each process and thread) to these CPUs, e.g. "
                        "0 or 0,1: how a figure scales with cores (default: not pinned)")
    parser.add_argument("--loadgen-processes", type=int, default=4,
                        help="processes of the Python load generator (default 4)")
    parser.add_argument("--loadgen-concurrency", type=int, default=16,
                        help="in-flight requests per load generator process (default 16)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated subset of etcd,shim,shim-pg,bare (shim-pg: "
                        "shim on a throwaway PostgreSQL cluster); default etcd,shim,bare")
    parser.add_argument("--shim-datastore", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres: the shim target runs on PostgreSQL, i.e. is replaced "
                        "by shim-pg (default sqlite)")
    parser.add_argument("--only", default="",
                        help="comma-separated workload id prefixes (put,range_l,mix,list,"
                        "footprint,...); default all")
    add_run_arguments(parser, "bench/results/<timestamp>")
    return parser.parse_args(argv)


def add_run_arguments(parser: argparse.ArgumentParser, results_default: str) -> None:
    """The options every bench command has: waiting for a quiet machine, where data and
    results go, and which etcd benchmark tool to use."""
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each measurement, wait up to SECONDS for a 2 s window "
                        "with >= 85%% idle CPU (default 0: do not wait)")
    parser.add_argument("--work-dir", default=None,
                        help="where the servers' data dirs go (default: the temp dir; "
                        "must not be tmpfs)")
    parser.add_argument("--etcd-tool", default=None,
                        help=f"etcd benchmark binary (default ${etcd_tool.TOOL_ENV} or "
                        "bench/.tools/benchmark, built on demand)")
    parser.add_argument("--results-dir", default=None,
                        help=f"results folder (default {results_default})")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src/shim"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + (" (src/shim has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def environment(work_dir: Path, command: str) -> dict[str, Any]:
    device, mount, fstype = procfs.filesystem_of(work_dir)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "machine": f"{os.cpu_count()} vCPU {_cpu_model()}, kernel {platform.release()}",
        "load_average_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "data_dir": f"{work_dir} on {device} ({fstype}, mounted at {mount})",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "etcd": f"{ETCD_VERSION} ({etcd_binary()})",
        "shim_commit": _git_rev(),
    }


def write_results(out_dir: Path, meta: dict[str, Any], data: dict[str, Any],
                  markdown: Callable[[], str]) -> None:
    """The end of a run of bench/run-replication or bench/run-edge: the load average now,
    ``data`` (meta included) as results.json, then ``markdown()`` as results.md, printed."""
    meta["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (out_dir / "results.json").write_text(json.dumps(data, indent=1, default=str))
    text = markdown()
    (out_dir / "results.md").write_text(text)
    print("\n" + text)
    print(f"written: {out_dir / 'results.md'}")


def parse_targets(args: argparse.Namespace) -> tuple[str, ...]:
    """--targets, with shim read as shim-pg under --shim-datastore postgres."""
    targets = [t for t in args.targets.split(",") if t]
    if args.shim_datastore == "postgres":
        targets = ["shim-pg" if t == "shim" else t for t in targets]
    unknown = set(targets) - set(KNOWN_TARGETS)
    if unknown or not targets:
        raise SystemExit(f"unknown targets {sorted(unknown)}; choose from {KNOWN_TARGETS}")
    return tuple(dict.fromkeys(targets))


def render(results_md: list[str]) -> str:
    return "\n".join(results_md).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    targets = parse_targets(args)
    sizes = QUICK if args.quick else FULL
    tool = etcd_tool.ensure_tool(args.etcd_tool)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.results_dir) if args.results_dir else RESULTS_ROOT / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="shim-bench-", dir=args.work_dir))
    if procfs.filesystem_of(work_dir)[2] in ("tmpfs", "ramfs"):
        raise SystemExit(f"{work_dir} is on tmpfs: give --work-dir on a real disk")
    command = "bench/run " + shlex.join(sys.argv[1:] if argv is None else argv)
    meta = environment(work_dir, command.strip())
    meta["mode"] = "quick" if args.quick else "full"
    meta["tool"] = str(tool)
    started = time.monotonic()
    print(f"results: {out_dir}\nservers' data: {work_dir}", flush=True)
    options = Options(
        sizes=sizes, tool=tool, out_dir=out_dir, work_dir=work_dir, targets=targets,
        processes=args.processes, loadgen_processes=args.loadgen_processes,
        loadgen_concurrency=args.loadgen_concurrency,
        only=tuple(o for o in args.only.split(",") if o), wait_quiet=args.wait_quiet,
        server_cpus=frozenset(int(c) for c in args.server_cpus.split(",") if c),
    )
    try:
        results = Suite(options).run()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    meta["duration_s"] = round(time.monotonic() - started, 1)
    meta["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["targets"] = list(targets)
    meta["servers"] = results.server_notes
    titles = report.row_titles(sizes)
    report.write_json(results, out_dir / "results.json", meta)
    charts = [name for name, draw in (("latency.png", report.latency_chart),
                                      ("throughput.png", report.throughput_chart))
              if draw(results, titles, targets, out_dir / name)]
    text = render(markdown(results, titles, targets, meta, args, charts))
    (out_dir / "results.md").write_text(text)
    print("\n" + text)
    print(f"written: {out_dir / 'results.md'}" + "".join(f", {c}" for c in charts))
    return 0


def target_lines(
    targets: tuple[str, ...], meta: dict[str, Any], args: argparse.Namespace
) -> list[str]:
    """One line per target in results.md: what it is and how durable."""
    lines = {
        "etcd": f"- etcd {meta['etcd']}: single member, default durability (fsync on every "
        "commit)",
        "shim": "- shim: SQLite, `--sqlite-synchronous FULL` (every acknowledged write "
        f"fsynced), {args.processes} serving process(es), commit {meta['shim_commit']}",
        "shim-pg": f"- shim-pg: {meta['servers'].get('shim-pg', 'shim on PostgreSQL')}; "
        "PostgreSQL's own durability defaults (every acknowledged commit fsynced); server CPU, "
        "memory (shim's RSS + PostgreSQL's Pss) and disk include PostgreSQL's processes and "
        f"data dir; commit {meta['shim_commit']}",
        "bare": f"- bare: bench/bare_server.py (KV Put/Range on a dict), {args.processes} "
        "process(es)",
    }
    return [lines[t] for t in targets]


def markdown(
    results: Results, titles: dict[str, str], targets: tuple[str, ...],
    meta: dict[str, Any], args: argparse.Namespace, charts: list[str],
) -> list[str]:
    md = [
        f"# shim benchmark ({meta['mode']} run)", "",
        f"- date: {meta['date']}; took {meta['duration_s']:.0f} s",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']}; load average at start {meta['load_average_start']}, "
        f"at end {meta['load_average_end']}",
        f"- servers' data: {meta['data_dir']}",
        *target_lines(targets, meta, args),
        f"- Python {meta['python']}, grpcio {meta['grpcio']}; load generator "
        f"{args.loadgen_processes} processes x {args.loadgen_concurrency} in flight; "
        f"etcd tool {meta['tool']}",
        "",
        "Latencies in ms. Ratios are a shim divided by etcd, bare or shim on SQLite: for "
        "req/s higher is better, for p99 lower is better.",
        "",
        report.results_table(results, titles, targets),
        "",
        "## Footprint",
        "",
        "Fresh server of each kind, then keys loaded with `benchmark put --sequential-keys` "
        "(16 B keys, 256 B values, 100 clients). RSS = VmRSS summed over the process tree; "
        "disk = allocated size of the data dir (WAL included). shim-pg: shim's RSS plus "
        "PostgreSQL's Pss, and PostgreSQL's whole data dir (WAL = pg_wal).",
        "",
        report.footprint_table(results.footprints),
        "",
        "## CPU",
        "",
        "Server CPU per request (µs, whole process tree), load-generator CPU in cores, and "
        "CPU used by every other process on the machine while the run lasted (noise).",
        "",
        report.cpu_table(results, titles, targets),
        "",
    ]
    if results.log_findings:
        md += ["## Server log lines that look like errors", ""]
        for server, lines in results.log_findings.items():
            md += [f"{server}: (count x line)", "", "```", *lines, "```", ""]
    md += [f"![{c}]({c})" for c in charts]
    return md


if __name__ == "__main__":
    raise SystemExit(main())

"""bench/run-replication: replication benchmarks of shim, against a real etcd 3.5.1 cluster
where there is one to compare with. One command, one results folder.

Scenarios (``--only`` takes their letters):
  A  3 etcd members vs 3 shim replicas: puts with 1, 16, 100 clients; single node vs 3, 1 client
  B  replication lag at a steady write rate (put ack on node 1 -> Watch event on the others)
  C  convergence after a partition (network namespaces, real packet drops)
  D  bytes on the wire per put (lab switch counters), 256 B values and ~2 KB JSON objects
  E  Gaia-like tree: 1 root, 2 middles, 2 x N leaves; join time and propagation
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import etcd_tool
from bench.main import add_run_arguments, environment, write_results
from bench.replication import cluster, gaia, netlab, report
from bench.replication.common import FULL, QUICK, Context, say
from tests.support import procfs
from tests.support.shim_server import REPO_ROOT

RESULTS_ROOT = REPO_ROOT / "bench" / "results"
SCENARIOS = "ABCDE"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run-replication", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer puts, shorter phases, a 10 s partition, 2 x 10 leaves "
                        "(< 4 min)")
    parser.add_argument("--only", default=SCENARIOS,
                        help="scenario letters to run, e.g. AB or C,D (default all)")
    parser.add_argument("--leaves", type=int, default=None,
                        help="E: leaves under each middle (default 60, --quick 10)")
    add_run_arguments(parser, "bench/results/replication-<timestamp>")
    return parser.parse_args(argv)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds: every finally stops its nodes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    wanted = [s for s in SCENARIOS if s in args.only.upper()]
    sizes = QUICK if args.quick else FULL
    if args.leaves:
        from dataclasses import replace

        sizes = replace(sizes, leaves_per_middle=args.leaves)
    signal.signal(signal.SIGTERM, _on_signal)
    tool = etcd_tool.ensure_tool(args.etcd_tool)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.results_dir) if args.results_dir else RESULTS_ROOT / f"replication-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="shim-bench-repl-", dir=args.work_dir))
    if procfs.filesystem_of(work_dir)[2] in ("tmpfs", "ramfs"):
        raise SystemExit(f"{work_dir} is on tmpfs: give --work-dir on a real disk")
    command = ("bench/run-replication " + shlex.join(argv)).strip()
    meta = environment(work_dir, command)
    meta["mode"] = "quick" if args.quick else "full"
    meta["tool"] = str(tool)
    meta["scenarios"] = wanted
    meta["sizes"] = sizes.__dict__
    ctx = Context(sizes=sizes, tool=tool, out_dir=out_dir, work_dir=work_dir,
                  wait_quiet=args.wait_quiet)
    print(f"results: {out_dir}\nnodes' data: {work_dir}", flush=True)
    started = time.monotonic()
    steps = [
        ("AB", lambda: cluster.run(ctx, "A" in wanted, "B" in wanted)),
        ("CD", lambda: netlab.run(ctx, "C" in wanted, "D" in wanted)),
        ("E", lambda: gaia.run(ctx)),
    ]
    failed = False
    try:
        for ids, step in steps:
            if not any(s in wanted for s in ids):
                continue
            t0 = time.monotonic()
            try:
                step()
            except Exception:
                failed = True
                text = traceback.format_exc()
                say(f"scenario {ids} FAILED:\n{text}")
                for s in ids:
                    if s in wanted:
                        ctx.results.setdefault(s, {})["failure"] = text
            except BaseException as exc:  # interrupted: say so in the report, then stop
                for s in ids:
                    if s in wanted:
                        ctx.results.setdefault(s, {})["failure"] = f"interrupted: {exc!r}"
                raise
            meta.setdefault("step_seconds", {})[ids] = round(time.monotonic() - t0, 1)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        meta["duration_s"] = round(time.monotonic() - started, 1)
        write_results(
            out_dir, meta,
            {"meta": meta, "results": ctx.results, "log_findings": ctx.log_findings},
            lambda: report.markdown(meta, ctx.results, sizes, ctx.log_findings),
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

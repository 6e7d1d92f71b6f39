"""bench/run-edge: etcd 3.5.1 and shim across sites with real round-trip times, partitions and
growing clusters (issue 14). One command, one results folder.

Scenarios (``--only`` takes their ids):
  1  latency vs distance: RTT 0/10/50/100 ms, 3 hosts, put and the Kubernetes mix
  2  cluster size: 1/3/5/7 hosts at RTT 0 and 10 ms; shim as a full mesh and as a star
  3  partition: host 3 cut off for 30 s while every host writes 50 puts/s
  4  a Kubernetes flow across sites: scale -> create Pod -> bind -> Running
  5  catch-up over a slow link: host 3 away 5 min at 100 puts/s, RTT 50 and 100 ms
  W  bytes on the wire per put: 256 B values, ~2 KB Pods edited in two fields
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.edge import report
from bench.edge.lab import Cluster, EdgeLab, say
from bench.edge.scenarios import (
    FULL,
    QUICK,
    SMOKE,
    Context,
    catch_up,
    cluster_size,
    kube_flow,
    latency_vs_rtt,
    partition,
    wire_bytes,
)
from bench.main import environment, write_results
from tests.support import procfs
from tests.support.netns import NetLab
from tests.support.shim_server import REPO_ROOT

RESULTS_ROOT = REPO_ROOT / "bench" / "results"
# The order they run in: W before the partitions (3, 5), after which etcd's members may take
# a while to trust each other again; 2 last, on clusters of its own.
SCENARIOS = ("1", "4", "W", "3", "5", "2")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run-edge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer RTTs, shorter cells, a 10 s partition, 30 s away (< 10 min)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest run of each scenario (one RTT, 1 s cells, a 2 s "
                        "partition): a check that the bench works, not a measurement")
    parser.add_argument("--only", default=",".join(sorted(SCENARIOS)),
                        help="scenario ids to run, e.g. 1,3 or W (default all)")
    parser.add_argument("--size-rtts", default=None, metavar="LIST",
                        help="scenario 2 only at these RTTs, e.g. 0 (default: the mode's)")
    parser.add_argument("--size-workloads", default=None, metavar="LIST",
                        help="scenario 2 only these workloads, e.g. put_c1 (default: the mode's)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each closed-loop measurement, wait up to SECONDS for an "
                        "idle machine (default 0: do not wait)")
    parser.add_argument("--work-dir", default=None,
                        help="where the servers' data dirs go (default: the temp dir; not tmpfs)")
    parser.add_argument("--results-dir", default=None,
                        help="results folder (default bench/results/edge-<timestamp>)")
    return parser.parse_args(argv)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds: the lab stops what it started


def three_host_steps(ctx: Context, etcd: Cluster, shim: Cluster) -> dict[str, Callable[[], Any]]:
    """The scenarios run on one 3-member etcd cluster and one 3-node shim mesh."""
    return {
        "1": lambda: latency_vs_rtt(ctx, etcd, shim),
        "4": lambda: kube_flow(ctx, etcd, shim),
        "3": lambda: {c.label: partition(ctx, c) for c in (etcd, shim)},
        "W": lambda: wire_bytes(ctx, etcd, shim),
        "5": lambda: catch_up(ctx, etcd, shim),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    wanted = [s for s in SCENARIOS if s in {x.strip().upper() for x in args.only.split(",")}]
    if not wanted:
        raise SystemExit(f"--only: choose from {','.join(sorted(SCENARIOS))}")
    for reason in (NetLab.available(), NetLab.delay_available()):
        if reason:
            raise SystemExit(f"bench/run-edge needs network namespaces with delays: {reason}")
    signal.signal(signal.SIGTERM, _on_signal)
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.size_rtts:
        sizes = dataclasses.replace(
            sizes, size_rtts=tuple(float(x) for x in args.size_rtts.split(",")))
    if args.size_workloads:
        sizes = dataclasses.replace(sizes, size_workloads=tuple(args.size_workloads.split(",")))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.results_dir) if args.results_dir else RESULTS_ROOT / f"edge-{stamp}"
    raw = out_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="shim-bench-edge-", dir=args.work_dir))
    if procfs.filesystem_of(work_dir)[2] in ("tmpfs", "ramfs"):
        raise SystemExit(f"{work_dir} is on tmpfs: give --work-dir on a real disk")
    meta = environment(work_dir, ("bench/run-edge " + shlex.join(argv)).strip())
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    meta.update(mode=mode, scenarios=wanted, sizes=sizes.__dict__)
    hosts = max(sizes.size_hosts) if "2" in wanted else 3
    lab = EdgeLab(hosts, work_dir, raw)
    ctx = Context(sizes=sizes, lab=lab, wait_quiet=args.wait_quiet)
    print(f"results: {out_dir}\nnodes' data: {work_dir}", flush=True)
    started = time.monotonic()
    failed = False
    try:
        lab.up()
        steps: dict[str, Callable[[], Any]] = {"2": lambda: cluster_size(ctx)}
        if set(wanted) - {"2"}:
            say("starting 3 etcd members and 3 shim nodes (full mesh), one of each per host")
            etcd = lab.start_etcd([1, 2, 3], "main")
            shim = lab.start_shim([1, 2, 3], "main", "mesh")
            steps.update(three_host_steps(ctx, etcd, shim))
        for sid in wanted:
            if sid == "2":  # a lab of its own sizes: the 3-host clusters make way
                for cluster in list(lab.clusters):
                    lab.stop(cluster)
            t0 = time.monotonic()
            try:
                ctx.results[sid] = steps[sid]()
            except Exception:
                failed = True
                text = traceback.format_exc()
                say(f"scenario {sid} FAILED:\n{text}")
                ctx.results[sid] = {"failure": text}
            meta.setdefault("step_seconds", {})[sid] = round(time.monotonic() - t0, 1)
    finally:
        lab.close()
        shutil.rmtree(work_dir, ignore_errors=True)
        meta["duration_s"] = round(time.monotonic() - started, 1)
        charts = report.charts(ctx.results, out_dir)
        write_results(out_dir, meta, {"meta": meta, "results": ctx.results},
                      lambda: report.markdown(meta, ctx.results, charts))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

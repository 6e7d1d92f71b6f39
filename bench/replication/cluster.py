"""Scenarios A and B on loopback: a 3-member etcd 3.5.1 cluster and a 3-node shim mesh.

A. etcd's benchmark tool puts (256 B values, the suite's key space) with 1, 16 and 100 clients
   spread over the three members / nodes; and single-node vs 3-member/3-replica latency with one
   client against one node.
B. Replication lag at a steady write rate: a writer on node 1, Watch streams on every node,
   time from the put's acknowledgement on node 1 to the event on each node.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench import etcd_tool, targets
from bench.replication import client
from bench.replication.common import Context, say, stats_ms
from bench.replication.nodes import (
    EtcdMember,
    GroupCpu,
    NodeDb,
    ShimNode,
    etcd_cluster,
    etcd_leader,
    wait_all_entries,
    wait_linked,
)
from bench.workloads import KEYS
from tests.support import procfs
from tests.support.process import ServerProcess, stop_all

# clients -> (conns, clients). The tool gives each connection one endpoint, round robin, so
# connections in multiples of 3 spread the clients evenly over the 3 nodes (1 client: node 1).
CONNS = {1: (1, 1), 16: (3, 16), 100: (9, 100)}


def start_mesh(work_dir: Path) -> list[ShimNode]:
    """node1 admits; node2 joins node1; node3 joins node1 and node2: a full mesh."""
    n1 = ShimNode(work_dir / "shim-n1", "n1")
    n1.start()
    n2 = ShimNode(work_dir / "shim-n2", "n2", joins=[n1.url])
    n2.start()
    n3 = ShimNode(work_dir / "shim-n3", "n3", joins=[n1.url, n2.url])
    n3.start()
    nodes = [n1, n2, n3]
    wait_linked(nodes, 60)
    return nodes


def _tool_run(ctx: Context, name: str, endpoints: list[str], clients: int, total: int,
              servers: list[ServerProcess]) -> dict[str, Any]:
    conns, n = CONNS[clients]
    args = [f"--conns={conns}", f"--clients={n}", "put", *KEYS, f"--total={total}"]
    waited = procfs.wait_quiet(ctx.wait_quiet)
    cpu = GroupCpu(servers).start()
    run = etcd_tool.run_tool(ctx.tool, ",".join(endpoints), args, ctx.raw / name,
                             ctx.sizes.tool_timeout)
    cpu.stop(run.client_cpu_s)
    out: dict[str, Any] = {
        "name": name, "endpoints": endpoints, "args": args, "seconds": run.seconds,
        "returncode": run.returncode, "server_cpu_s": cpu.server_cpu,
        "server_cpu_s_each": cpu.each_cpu,
        "client_cpu_s": run.client_cpu_s, "foreign_cpu_pct": cpu.foreign_pct,
        "raw": [run.stdout_path.name, run.stderr_path.name], "waited_quiet_s": waited,
    }
    if run.sections:
        s = run.sections[0]
        out.update(rate=s.rps, count=s.count, p50=s.pct_ms(50), p99=s.pct_ms(99),
                   errors=s.errors)
        if s.count:
            out["cpu_us_per_put"] = cpu.server_cpu / s.count * 1e6
    if run.returncode != 0:
        out["failure"] = ("timed out" if run.returncode is None
                          else f"benchmark exited {run.returncode}")
    rate = out.get("rate")
    p50, p99 = out.get("p50"), out.get("p99")
    say(f"{name:<24} {rate or 0:>8,.0f}/s  p50 {p50 or 0:.2f} ms  p99 {p99 or 0:.2f} ms"
        + (f"  FAILED: {out['failure']}" if out.get("failure") else ""))
    return out


def scenario_a(ctx: Context, members: list[EtcdMember], mesh: list[ShimNode]) -> dict[str, Any]:
    sizes = ctx.sizes
    result: dict[str, Any] = {"runs": {}, "etcd_leader": {}}
    etcd_eps = [m.endpoint for m in members]
    shim_eps = [n.endpoint for n in mesh]
    dbs = [NodeDb(n) for n in mesh]
    singles: list[ServerProcess] = []
    try:
        say("A: single-node references (fresh etcd, fresh shim)")
        single_etcd = targets.etcd(ctx.work_dir / "etcd-single").start()
        singles.append(single_etcd)
        single_shim = targets.shim(ctx.work_dir / "shim-single").start()
        singles.append(single_shim)
        runs = result["runs"]
        # One client: single etcd, single shim, then the 3-member/3-node versions (the one
        # client goes to member/node 1), back to back so machine-load drifts hit all four.
        runs["etcd1_c1"] = _tool_run(ctx, "put_c1.etcd-1node", [single_etcd.endpoint], 1,
                                     sizes.put_c1, [single_etcd])
        runs["shim1_c1"] = _tool_run(ctx, "put_c1.shim-1node", [single_shim.endpoint], 1,
                                     sizes.put_c1, [single_shim])
        stop_all(singles)
        for s in singles:
            _keep_log(ctx, s, s.workdir.name)
            s.remove_data()
        for clients, total in ((1, sizes.put_c1), (16, sizes.put_c16), (100, sizes.put_c100)):
            result["etcd_leader"][f"c{clients}"] = etcd_leader(members)
            runs[f"etcd3_c{clients}"] = _tool_run(
                ctx, f"put_c{clients}.etcd-3members", etcd_eps, clients, total, list(members))
            before = [db.entry_count() for db in dbs]
            run = _tool_run(ctx, f"put_c{clients}.shim-3nodes", shim_eps, clients, total,
                            list(mesh))
            ended = time.monotonic()
            drained = wait_all_entries(dbs, sizes.drain_timeout)
            run["drained_s"] = drained
            run["drain_timeout_s"] = sizes.drain_timeout
            if drained is not None:
                # CPU the mesh spent replicating after the tool ended is part of the cost
                run["drain_wall_s"] = time.monotonic() - ended
            after = [db.entry_count() for db in dbs]
            run["entries_added_per_node"] = [a - b for a, b in zip(after, before, strict=True)]
            run["peers"] = {n.node_name: db.status().get("peers", [])
                            for n, db in zip(mesh, dbs, strict=True)}
            say(f"  shim mesh: every node holds every entry {drained:.2f} s after the tool ended"
                if drained is not None else
                f"  shim mesh: NOT drained {sizes.drain_timeout:.0f} s after the tool ended")
            runs[f"shim3_c{clients}"] = run
            for node in mesh:
                node.check_alive()
    finally:
        stop_all(singles)
        for db in dbs:
            db.close()
    return result


# ------------------------------------------------------------------ B: lag


async def _lag(writer_ep: str, watch: dict[str, str], rate: float, seconds: float,
               prefix: bytes) -> dict[str, Any]:
    watchers = [client.Watcher(name, ep, prefix) for name, ep in watch.items()]
    await client.start_watchers(watchers)
    rng = random.Random(5)
    try:
        async with client.channel(writer_ep) as chan:
            stub = client.rpc_pb2_grpc.KVStub(chan)
            log = await client.paced_puts(
                stub, rate, seconds,
                lambda i: (prefix + b"%07d" % i, client.random_value(256, rng)),
            )
        acked = [(k, a) for k, a in zip(log.keys, log.acked, strict=True) if a is not None]
        deadline = time.perf_counter() + 15
        while time.perf_counter() < deadline and not all(
            k in w.seen for w in watchers for k, _ in acked
        ):
            await asyncio.sleep(0.05)
    finally:
        for w in watchers:
            await w.close()
    lat = sorted(log.latencies_ms())
    out: dict[str, Any] = {
        "writer": writer_ep, "rate": rate, "seconds": seconds, "planned": len(log.keys),
        "acked": log.ok, "errors": log.errors, "behind": log.behind,
        "achieved_rate": log.ok / (log.ended - log.started) if log.ended > log.started else None,
        "put_latency": stats_ms([v / 1000 for v in lat]),
        "nodes": {},
    }
    for w in watchers:
        lags = [w.seen[k] - a for k, a in acked if k in w.seen]
        missing = sum(1 for k, _ in acked if k not in w.seen)
        out["nodes"][w.name] = {
            "endpoint": w.endpoint, "events": len(lags), "missing": missing,
            "negative": sum(1 for v in lags if v < 0), "lag": stats_ms(lags),
            "error": w.error,
        }
    return out


def scenario_b(ctx: Context, members: list[EtcdMember], mesh: list[ShimNode]) -> dict[str, Any]:
    sizes = ctx.sizes
    result: dict[str, Any] = {}
    say(f"B: replication lag, {sizes.lag_rate:.0f} puts/s for {sizes.lag_seconds:.0f} s "
        "on node 1, watchers on every node")

    def measure(nodes: list[Any], names: dict[str, str], prefix: bytes) -> dict[str, Any]:
        procfs.wait_quiet(ctx.wait_quiet)
        cpu = GroupCpu(nodes).start()
        out = asyncio.run(_lag(nodes[0].endpoint, names, sizes.lag_rate, sizes.lag_seconds,
                               prefix))
        cpu.stop()
        out["server_cpu_s"] = cpu.server_cpu
        out["foreign_cpu_pct"] = cpu.foreign_pct
        return out

    dbs = [NodeDb(n) for n in mesh]
    try:
        result["shim"] = measure(mesh, {n.node_name: n.endpoint for n in mesh},
                                 b"/bench/lag/shim/")
        result["shim"]["drained_s"] = wait_all_entries(dbs, 30)
    finally:
        for db in dbs:
            db.close()
    result["etcd_leader"] = etcd_leader(members)
    result["etcd"] = measure(members, {m.member: m.endpoint for m in members},
                             b"/bench/lag/etcd/")
    for system in ("shim", "etcd"):
        for name, node in result[system]["nodes"].items():
            lag = node["lag"]
            say(f"  {system} {name}: p50 {lag['p50'] or 0:.2f} ms p99 {lag['p99'] or 0:.2f} ms "
                f"max {lag['max'] or 0:.2f} ms, missing {node['missing']}")
    return result


# ------------------------------------------------------------------ both, on one pair of clusters


def _keep_log(ctx: Context, server: ServerProcess, tag: str) -> None:
    if server.log_path.exists():
        shutil.copyfile(server.log_path, ctx.raw / f"server-{tag}.log")
        ctx.scan_logs(f"raw/server-{tag}.log", [server.log_path], etcd=tag.startswith("etcd"))


def run(ctx: Context, want_a: bool, want_b: bool) -> None:
    members: list[EtcdMember] = []
    mesh: list[ShimNode] = []
    work = ctx.work_dir / "clusters"
    try:
        say("starting a 3-member etcd cluster and a 3-node shim mesh (data on disk)")
        members = etcd_cluster(work)
        mesh = start_mesh(work)
        if want_a:
            ctx.results["A"] = scenario_a(ctx, members, mesh)
        if want_b:
            ctx.results["B"] = scenario_b(ctx, members, mesh)
    finally:
        stop_all([*members, *mesh])
        for s in [*members, *mesh]:
            _keep_log(ctx, s, s.workdir.name)
        shutil.rmtree(work, ignore_errors=True)

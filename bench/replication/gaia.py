"""Scenario E, modelled on the Gaia paper's scale experiment: a tree of shim processes on
loopback ports, 1 root, 2 middle nodes joined to the root, and N leaves joined to each middle
(every admitting node has --bootstrap-token; leaves admit nothing).

Measured:
- join: per leaf, from its dial to the link being up. A node dials its --join URLs as it
  starts serving, so the leaf's "serving etcd v3 API" log line marks the dial (the dial task is
  created just before it: the figure is short by at most the few ms gRPC takes to start) and
  its "linked to ..." line the link. Also process start (the bench's clock at spawn) to link up.
- propagation: Watch streams on every leaf and on the root, from the bench process. A write at
  the root until its event has arrived from every leaf; a leaf's write until the root has it
  (and until every other leaf has it: leaf -> middle -> root -> other middle -> leaves).
- idle cost of the whole tree (CPU, RSS) with the links up and nothing written.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tarfile
import time
from typing import Any

from bench.replication import client
from bench.replication.common import Context, say, stats_ms
from bench.replication.nodes import GroupCpu, ShimNode, wait_linked
from tests.support import procfs
from tests.support.process import stop_all


def _start_leaves(leaves: list[ShimNode], window: int, timeout: float = 120.0) -> None:
    """Keep ``window`` leaves starting at once: a new one is spawned as soon as one is linked
    (Python start-up is CPU-bound; more at once only makes each slower on 2 cores)."""
    pending = list(leaves)
    starting: list[ShimNode] = []
    deadline = time.monotonic() + timeout + len(leaves) * 2
    done = 0
    while pending or starting:
        while pending and len(starting) < window:
            starting.append(pending.pop(0).spawn())
        time.sleep(0.02)
        for leaf in list(starting):
            leaf.check_alive()
            if leaf.linked_at():
                starting.remove(leaf)
                done += 1
                if done % 20 == 0:
                    say(f"  {done}/{len(leaves)} leaves linked")
        if time.monotonic() > deadline:
            raise RuntimeError(f"leaves not linked in time: {[n.node_name for n in starting]}")


async def _propagation(ctx: Context, root: ShimNode, middles: list[ShimNode],
                       leaves: list[ShimNode], tag: str) -> dict[str, Any]:
    # Fresh keys each round: a replica applies a put that repeats the current value as
    # "unchanged", without an event (docs/REPLICATION.md).
    prefix = f"/bench/gaia/{tag}/".encode()
    writes = ctx.sizes.gaia_writes
    root_w = client.Watcher("root", root.endpoint, prefix)
    leaf_w = [client.Watcher(n.node_name, n.endpoint, prefix) for n in leaves]
    t0 = time.perf_counter()
    await client.start_watchers([root_w, *leaf_w])
    out: dict[str, Any] = {"watchers": 1 + len(leaf_w),
                           "watch_setup_s": time.perf_counter() - t0}
    rng = random.Random(9)
    root_all: list[float] = []  # per write: ack at root -> event from the last leaf
    root_each: list[float] = []  # per (write, leaf)
    leaf_root: list[float] = []  # per write: ack at a leaf -> event at the root
    leaf_all: list[float] = []  # per write: ack at a leaf -> event from every other leaf
    missing = 0
    try:
        async with client.channel(root.endpoint) as chan:
            stub = client.rpc_pb2_grpc.KVStub(chan)
            for i in range(writes):
                key = prefix + b"root/%03d" % i
                await stub.Put(client.rpc_pb2.PutRequest(
                    key=key, value=client.random_value(256, rng)), timeout=30)
                acked = time.perf_counter()
                if not await client.wait_seen(leaf_w, key, 10):
                    missing += sum(1 for w in leaf_w if key not in w.seen)
                seen = [w.seen[key] - acked for w in leaf_w if key in w.seen]
                root_each += seen
                if len(seen) == len(leaf_w):
                    root_all.append(max(seen))
                await asyncio.sleep(0.05)
        for i in range(writes):
            # leaves alternate between the middles: odd i writes under middle 2
            origin = leaves[(i * 13) % len(leaves)]
            key = prefix + f"leaf/{origin.node_name}/{i:03d}".encode()
            async with client.channel(origin.endpoint) as chan:
                stub = client.rpc_pb2_grpc.KVStub(chan)
                await stub.Put(client.rpc_pb2.PutRequest(
                    key=key, value=client.random_value(256, rng)), timeout=30)
                acked = time.perf_counter()
            others = [w for w in leaf_w if w.name != origin.node_name]
            await client.wait_seen([root_w, *others], key, 10)
            if key in root_w.seen:
                leaf_root.append(root_w.seen[key] - acked)
            else:
                missing += 1
            if all(key in w.seen for w in others):
                leaf_all.append(max(w.seen[key] for w in others) - acked)
            else:
                missing += sum(1 for w in others if key not in w.seen)
            await asyncio.sleep(0.05)
    finally:
        for w in [root_w, *leaf_w]:
            await w.close()
    out.update({
        "root_to_all_leaves": stats_ms(root_all),
        "root_to_each_leaf": stats_ms(root_each),
        "leaf_to_root": stats_ms(leaf_root),
        "leaf_to_all_leaves": stats_ms(leaf_all),
        "missing_events": missing,
        "watch_errors": sorted({w.error for w in [root_w, *leaf_w] if w.error}),
        "writes": writes,
    })
    return out


def run(ctx: Context) -> None:
    sizes = ctx.sizes
    per_middle = sizes.leaves_per_middle
    work = ctx.work_dir / "gaia"
    nodes: list[ShimNode] = []
    result: dict[str, Any] = {"leaves_per_middle": per_middle, "window": sizes.start_window}
    ctx.results["E"] = result
    try:
        say(f"E: tree of 1 root, 2 middles, {per_middle} leaves under each "
            f"({3 + 2 * per_middle} shim processes on loopback)")
        t_start = time.monotonic()
        root = ShimNode(work / "root", "root")
        nodes.append(root)
        root.start()
        middles = [ShimNode(work / f"mid{m}", f"mid{m}", joins=[root.url]) for m in (1, 2)]
        nodes += middles
        for m in middles:
            m.spawn()
        for m in middles:
            m.wait_ready()
        wait_linked(middles, 60)
        leaves = [ShimNode(work / f"leaf{m}-{i:02d}", f"leaf{m}-{i:02d}",
                           joins=[middles[m - 1].url], admit=False)
                  for i in range(1, per_middle + 1) for m in (1, 2)]
        nodes += leaves
        _start_leaves(leaves, sizes.start_window)
        result["startup_s"] = time.monotonic() - t_start
        say(f"  {len(nodes)} processes up and linked in {result['startup_s']:.1f} s")

        joins, starts, readies = [], [], []
        for leaf in leaves:
            serving, linked = leaf.serving_at(), leaf.linked_at()
            if serving is None or not linked:
                continue
            joins.append(linked[0] - serving)
            starts.append(linked[0] - leaf.spawned_at)
            readies.append(serving - leaf.spawned_at)
        result["join_dial_to_link"] = stats_ms(joins)
        result["join_start_to_link"] = stats_ms(starts)
        result["start_to_serving"] = stats_ms(readies)

        def drops(since: float, until: float = float("inf")) -> int:
            """Leaf links that ended in [since, until): each leaf has exactly one link."""
            return sum(1 for leaf in leaves for t in leaf.closed_at(since) if t < until)

        t_up = time.time()
        result["link_drops_startup"] = drops(0.0, t_up)

        # Idle cost: everything linked, nothing written.
        time.sleep(1.0)
        t0 = time.time()
        cpu = GroupCpu(nodes).start()
        idle_s = 5.0
        time.sleep(idle_s)
        cpu.stop()
        result["idle_link_drops"] = drops(t0, time.time())
        result["idle_cpu_cores"] = cpu.server_cpu / idle_s
        result["idle_foreign_pct"] = cpu.foreign_pct
        result["rss_mib_total"] = sum(procfs.rss_bytes(n.pid) for n in nodes) / 2**20
        result["rss_mib_leaf"] = procfs.rss_bytes(leaves[0].pid) / 2**20
        result["rss_mib_middle"] = procfs.rss_bytes(middles[0].pid) / 2**20
        say(f"  idle: {result['idle_cpu_cores']:.2f} cores for the whole tree, "
            f"RSS {result['rss_mib_total']:,.0f} MiB; leaf links dropped during the "
            f"{idle_s:.0f} s: {result['idle_link_drops']} (while starting: "
            f"{result['link_drops_startup']})")

        def round_(key: str) -> None:
            procfs.wait_quiet(ctx.wait_quiet)
            t0 = time.time()
            cpu = GroupCpu(nodes).start()
            result[key] = asyncio.run(_propagation(ctx, root, middles, leaves, key))
            cpu.stop()
            p = result[key]
            p["foreign_pct"] = cpu.foreign_pct
            p["link_drops"] = drops(t0, time.time())
            p["seconds"] = time.time() - t0
            say(f"  root write -> every leaf: p50 {p['root_to_all_leaves']['p50'] or 0:.0f} ms "
                f"p99 {p['root_to_all_leaves']['p99'] or 0:.0f} ms; leaf write -> root: p50 "
                f"{p['leaf_to_root']['p50'] or 0:.0f} ms p99 "
                f"{p['leaf_to_root']['p99'] or 0:.0f} ms; leaf links dropped meanwhile: "
                f"{p['link_drops']}")

        round_("propagation")
        # If leaf links were dropping, wait for a quiet spell and measure again.
        quiet, limit = 10.0, sizes.settle_max
        t_wait = time.monotonic()
        result["settled_after_s"] = None
        while time.monotonic() - t_wait < limit:
            last = max((t for leaf in leaves for t in leaf.closed_at()), default=0.0)
            if time.time() - last >= quiet:
                result["settled_after_s"] = time.monotonic() - t_wait
                break
            time.sleep(1.0)
        result["settle_quiet_s"], result["settle_limit_s"] = quiet, limit
        if result["settled_after_s"] is not None:
            say(f"  no leaf link dropped for {quiet:.0f} s (waited "
                f"{result['settled_after_s']:.0f} s): measuring again")
            round_("propagation_settled")
        else:
            say(f"  leaf links still dropping after {limit:.0f} s: no second round")
        for n in nodes:
            n.check_alive()
    finally:
        t_stop = time.monotonic()
        stop_all(nodes)
        result["stop_s"] = time.monotonic() - t_stop
        logs = [n.log_path for n in nodes if n.log_path.exists()]
        if logs:
            with tarfile.open(ctx.raw / "gaia-logs.tar.gz", "w:gz") as tar:
                for path in logs:
                    tar.add(path, arcname=f"{path.parent.name}.log")
            ctx.scan_logs("raw/gaia-logs.tar.gz: root and middles", logs[:3])
            ctx.scan_logs(f"raw/gaia-logs.tar.gz: {len(logs) - 3} leaves, together", logs[3:])
        shutil.rmtree(work, ignore_errors=True)

"""The scenarios of issue 14, each a function of (run context, lab) returning its results.

1. latency vs round-trip time       2. cluster size (and shim's topology)
3. a partition of one host           4. a Kubernetes flow across sites
5. catch-up over a slow link         W. bytes on the wire per put

Clients always talk to their own host's member or node (the edge model: each site's
apiserver uses its local store). Unless a scenario says otherwise, the clients are on host 1
and etcd's leader is on another host (etcd's MoveLeader puts it there): at the edge most
sites are not where the leader is, and a write from such a site pays a forwarding hop.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.edge.client import POD_PREFIX
from bench.edge.heal import HealWatch, node_id
from bench.edge.lab import Cluster, EdgeLab, Pollers, say
from bench.model import percentile
from bench.replication.netlab import WireCounters, delta, entry_sizes, link_bytes
from bench.replication.nodes import NetnsShimNode, NodeDb, wait_all_entries
from tests.support import procfs


@dataclass(frozen=True)
class Sizes:
    rtts: tuple[float, ...]  # 1 and 4
    cell_seconds: float  # one closed-loop measurement
    latency_workloads: tuple[str, ...]  # 1
    size_hosts: tuple[int, ...]  # 2
    size_rtts: tuple[float, ...]
    size_workloads: tuple[str, ...]
    partition_rtt: float  # 3
    partition_lead: float  # writes before the cut
    partition_seconds: float
    partition_rate: float  # puts/s on every host
    converge_timeout: float
    flow_rtts: tuple[float, ...]  # 4
    flow_iterations: int
    catchup_rtts: tuple[float, ...]  # 5
    catchup_seconds: float
    catchup_rate: float
    wire_rtt: float  # W
    wire_rate: float
    wire_seconds: float
    wire_pods: int


FULL = Sizes(
    rtts=(0, 10, 50, 100), cell_seconds=6.0,
    latency_workloads=("put_c1", "put_c16", "mix_c1", "mix_c16", "put_c16_all"),
    size_hosts=(1, 3, 5, 7), size_rtts=(0, 10), size_workloads=("put_c1", "put_c16", "get_c16"),
    partition_rtt=10, partition_lead=5, partition_seconds=30, partition_rate=50,
    converge_timeout=120,
    flow_rtts=(0, 10, 50, 100), flow_iterations=10,
    catchup_rtts=(50, 100), catchup_seconds=300, catchup_rate=100,
    wire_rtt=50, wire_rate=100, wire_seconds=10, wire_pods=100,
)
QUICK = Sizes(
    rtts=(0, 50), cell_seconds=2.5,
    latency_workloads=("put_c1", "put_c16", "mix_c16", "put_c16_all"),
    size_hosts=(1, 3, 5, 7), size_rtts=(10,), size_workloads=("put_c1", "put_c16"),
    partition_rtt=10, partition_lead=3, partition_seconds=10, partition_rate=50,
    converge_timeout=60,
    flow_rtts=(10, 50), flow_iterations=3,
    catchup_rtts=(100,), catchup_seconds=30, catchup_rate=100,
    wire_rtt=50, wire_rate=100, wire_seconds=5, wire_pods=50,
)
# The smallest run of every step of 1, 3 and 4: what tests/test_edge_bench.py runs.
SMOKE = Sizes(
    rtts=(20,), cell_seconds=1.0, latency_workloads=("put_c1",),
    size_hosts=(1, 3), size_rtts=(20,), size_workloads=("put_c1",),
    partition_rtt=20, partition_lead=1, partition_seconds=2, partition_rate=20,
    converge_timeout=30,
    flow_rtts=(20,), flow_iterations=1,
    catchup_rtts=(20,), catchup_seconds=2, catchup_rate=20,
    wire_rtt=20, wire_rate=20, wire_seconds=1, wire_pods=5,
)
# a workload id: <op>_c<clients>[_all]  (_all: the same on every host of the cluster at once)
OPS = ("put", "get", "mix")


@dataclass
class Context:
    sizes: Sizes
    lab: EdgeLab
    results: dict[str, Any] = field(default_factory=dict)
    wait_quiet: float = 0.0
    flow_replicas: dict[str, int] = field(default_factory=dict)  # cluster -> replicas so far


def parse_workload(workload: str) -> tuple[str, int, bool]:
    parts = workload.split("_")
    return parts[0], int(parts[1][1:]), parts[-1] == "all"


def latency_stats(latencies_ms: list[float], seconds: float) -> dict[str, Any]:
    values = sorted(latencies_ms)
    return {"count": len(values), "rate": len(values) / seconds if seconds else None,
            "p50": percentile(values, 50), "p99": percentile(values, 99)}


def measure(ctx: Context, cluster: Cluster, workload: str, hosts: list[int],
            tag: str) -> dict[str, Any]:
    """One closed-loop measurement: ``workload`` on host 1 (or on every host at once)."""
    op, clients, everywhere = parse_workload(workload)
    where = hosts if everywhere else hosts[:1]
    seconds = ctx.sizes.cell_seconds
    procfs.wait_quiet(ctx.wait_quiet)
    start_at = ctx.lab.start_at()
    machine0 = procfs.MachineCpu.read()
    programs = [ctx.lab.spawn(h, f"{tag}.{workload}.{cluster.label}.h{h}", [
        "load", "--endpoint", cluster.endpoint(h), "--op", op, "--clients", str(clients),
        "--duration", f"{seconds:g}", "--prefix", f"/edge/{tag}/{workload}/h{h}/",
        "--objects", "50", "--start-at", start_at, "--seed", str(h)]) for h in where]
    outs = [p.result(seconds + 120) for p in programs]
    machine1 = procfs.MachineCpu.read()
    failures = [o["failure"] for o in outs if "failure" in o]
    if failures:
        say(f"  {workload} {cluster.label}: FAILED {failures[0][:200]}")
        return {"failure": "; ".join(failures)}
    latencies = [v for o in outs for v in o["latencies_ms"]]
    wall = max(o["seconds"] for o in outs)
    result = latency_stats(latencies, wall)
    result["errors"] = sum(sum(o["errors"].values()) for o in outs)
    result["hosts"] = len(where)
    total = machine1.total - machine0.total
    result["machine_busy_pct"] = (machine1.busy - machine0.busy) / total * 100 if total else None
    say(f"  {workload:<12} {cluster.label:<10} {result['rate'] or 0:>8,.0f}/s  p50 "
        f"{result['p50'] or 0:7.2f} ms  p99 {result['p99'] or 0:7.2f} ms"
        + (f"  errors {result['errors']}" if result["errors"] else ""))
    return result


def etcd_leader(ctx: Context, cluster: Cluster, move_to: int | None, name: str) -> str:
    """etcd's leader host ("h2"), after moving leadership to ``move_to`` if given."""
    hosts = sorted(cluster.servers)
    args = ["leader", "--endpoints", ",".join(cluster.endpoint(h) for h in hosts)]
    if move_to is not None:
        args += ["--move-to", cluster.endpoint(move_to)]
    out = ctx.lab.run(hosts[0], name, args, 120)
    leader = str(out.get("leader", ""))
    host = next((h for h in hosts if cluster.endpoint(h) == leader), None)
    return f"h{host}" if host else f"? ({out.get('failure', leader)})"


# ------------------------------------------------------------------ 1. latency vs RTT


def latency_vs_rtt(ctx: Context, etcd: Cluster, shim: Cluster) -> dict[str, Any]:
    sizes = ctx.sizes
    hosts = sorted(etcd.servers)
    out: dict[str, Any] = {"hosts": len(hosts), "workloads": list(sizes.latency_workloads),
                           "seconds": sizes.cell_seconds, "rtts": {}}
    for rtt in sizes.rtts:
        say(f"1. latency at RTT {rtt:g} ms")
        probe = ctx.lab.set_rtt(rtt, pairs=[(1, 2), (2, 3), (1, 3)])
        leader = etcd_leader(ctx, etcd, 3, f"s1.rtt{rtt:g}.leader")
        cells: dict[str, Any] = {}
        for workload in sizes.latency_workloads:
            for cluster in (etcd, shim):
                cells[f"{workload}.{cluster.label}"] = measure(
                    ctx, cluster, workload, hosts, f"s1.rtt{rtt:g}")
        out["rtts"][f"{rtt:g}"] = {"probe": probe, "etcd_leader": leader, "cells": cells}
    return out


# ------------------------------------------------------------------ 2. cluster size


def cluster_size(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    lab = ctx.lab
    out: dict[str, Any] = {"workloads": list(sizes.size_workloads), "sizes": {}}
    for n in sizes.size_hosts:
        hosts = list(range(1, n + 1))
        say(f"2. cluster size {n}: etcd, shim mesh" + (", shim star" if n > 2 else ""))
        lab.set_rtt(0)
        clusters = [lab.start_etcd(hosts, f"s2n{n}"), lab.start_shim(hosts, f"s2n{n}", "mesh")]
        if n > 2:
            clusters.append(lab.start_shim(hosts, f"s2n{n}", "star"))
        try:
            per_rtt: dict[str, Any] = {}
            for rtt in sizes.size_rtts:
                probe = lab.set_rtt(rtt, pairs=[(1, max(n, 2))])
                leader = etcd_leader(ctx, clusters[0], 2 if n > 1 else None,
                                     f"s2.n{n}.rtt{rtt:g}.leader")
                cells = {f"{w}.{c.label}": measure(ctx, c, w, hosts, f"s2.n{n}.rtt{rtt:g}")
                         for w in sizes.size_workloads for c in clusters}
                per_rtt[f"{rtt:g}"] = {"probe": probe, "etcd_leader": leader, "cells": cells}
            out["sizes"][str(n)] = per_rtt
        finally:
            for cluster in clusters:
                lab.stop(cluster)
    return out


# ------------------------------------------------------------------ 3. partition


def _shim_dbs(cluster: Cluster) -> list[NodeDb]:
    return [NodeDb(node) for node in cluster.servers.values() if isinstance(node, NetnsShimNode)]


def partition(ctx: Context, cluster: Cluster) -> dict[str, Any]:
    """Host 3 cut off from hosts 1 and 2 for partition_seconds while every host writes at
    partition_rate (own keys; every 10th a key every host writes; every 5th an edit of a
    shared Pod, each site setting its own annotation). The writers stop at the heal."""
    sizes, lab = ctx.sizes, ctx.lab
    hosts = sorted(cluster.servers)
    label = cluster.label
    say(f"3. partition: {label}, host 3 cut off for {sizes.partition_seconds:g} s, "
        f"{sizes.partition_rate:g} puts/s on each of {len(hosts)} hosts")
    probe = lab.set_rtt(sizes.partition_rtt)
    leader = etcd_leader(ctx, cluster, 1, f"s3.{label}.leader") if cluster.system == "etcd" \
        else None
    prefix = f"/edge/part-{label}/"
    pods = 20
    created = lab.run(1, f"s3.{label}.pods", [
        "paced", "--endpoint", cluster.endpoint(1), "--site", "h1", "--rate", "1",
        "--duration", "0", "--prefix", prefix, "--pods", str(pods), "--create-pods"], 120)
    if "failure" in created:
        return {"failure": created["failure"]}
    dbs = _shim_dbs(cluster)
    pollers: Pollers | None = None
    if cluster.system == "shim":
        wait_all_entries(dbs, 60)
    duration = sizes.partition_lead + sizes.partition_seconds
    start_at = float(lab.start_at())
    writers = {h: lab.spawn(h, f"s3.{label}.writer-h{h}", [
        "paced", "--endpoint", cluster.endpoint(h), "--site", f"h{h}",
        "--rate", f"{sizes.partition_rate:g}", "--duration", f"{duration:g}",
        "--prefix", f"{prefix}h{h}/", "--shared-prefix", f"{prefix}shared/",
        "--shared-every", "10", "--pods", str(pods), "--pod-every", "5", "--timeout", "5",
        "--start-at", f"{start_at:.3f}", "--seed", str(h)]) for h in hosts}
    time.sleep(max(0.0, start_at + sizes.partition_lead - time.monotonic()))
    lab.net.isolate(3)
    cut = time.monotonic()
    if cluster.system == "etcd":  # each member's revision, to see when they agree again
        pollers = lab.pollers(cluster, hosts, f"s3.{label}")
        pollers.wait_started()
    time.sleep(max(0.0, cut + sizes.partition_seconds - time.monotonic()))
    lab.net.heal()
    healed, healed_wall = time.monotonic(), time.time()
    watch = _heal_watch(dbs, [prefix.encode(), POD_PREFIX], healed) if dbs else None
    say(f"  healed after {healed - cut:.1f} s")
    outs = {h: w.result(duration + 60) for h, w in writers.items()}
    failures = [o["failure"] for o in outs.values() if "failure" in o]
    result: dict[str, Any] = {"probe": probe, "etcd_leader": leader, "cut_s": healed - cut}
    if failures:
        result["failure"] = "; ".join(failures)
        if pollers:
            pollers.stop()
        if watch:
            watch.close()
        return result
    # Per side, the writes due while the cut lasted: accepted share and latency.
    sides = {"h1+h2 (majority)": [1, 2], "h3 (cut off)": [3]}
    result["sides"] = {}
    for side, members in sides.items():
        # (due, latency or None, error) of each write due while the cut lasted
        during = [(outs[h]["started"] + r[0], r[1], r[3]) for h in members
                  for r in outs[h]["records"] if cut <= outs[h]["started"] + r[0] < healed]
        acked = sorted(lat * 1000 for _, lat, _ in during if lat is not None)
        accepted = sum(1 for lat in acked if lat <= ACCEPTED_WITHIN_S * 1000)
        errors: dict[str, int] = {}
        for _, _, error in during:
            if error:
                errors[error] = errors.get(error, 0) + 1
        result["sides"][side] = {
            "writes": len(during), "accepted": accepted,
            "accepted_pct": 100 * accepted / len(during) if during else None,
            "acked_later": len(acked) - accepted, "acked": len(acked),
            "acked_before_heal": sum(1 for due, lat, _ in during
                                     if lat is not None and due + lat < healed),
            "p50": percentile(acked, 50), "p99": percentile(acked, 99), "errors": errors}
    result["timeline"] = _timeline(outs, cut, healed, start_at)
    # After the heal: until every node holds the same data.
    converged: float | None
    if cluster.system == "etcd":
        assert pollers is not None
        converged_at = pollers.wait(lambda revs: len(set(revs.values())) == 1,
                                    sizes.converge_timeout)
        pollers.stop()
        converged = None if converged_at is None else converged_at - healed
    else:
        assert watch is not None
        converged = watch.identical(_acked_own(outs), sizes.converge_timeout)
        result["heal_timeline"] = watch.timeline([f"h{db.node.host_index}" for db in dbs])
    result["identical_after_heal_s"] = converged
    node3 = cluster.servers[3]
    if isinstance(node3, NetnsShimNode):  # when host 3's links (it dials 1 and 2) came back
        result["links_up_s"] = sorted(t - healed_wall for t in node3.linked_at(healed_wall))
    else:
        result["etcd_leader_after"] = etcd_leader(ctx, cluster, None, f"s3.{label}.after")
    for db in dbs:
        db.close()
    result["merge"] = _merged_pods(ctx, cluster, label, outs, pods, cut, healed)
    say(f"  {label}: " + "; ".join(
        f"{side} accepted {s['accepted']}/{s['writes']}" for side, s in result["sides"].items())
        + f"; identical {converged if converged is None else round(converged, 2)} s after the "
        f"heal; Pods with both sides' edits kept: {result['merge'].get('both_kept')}"
        f"/{result['merge'].get('both_edited')}")
    return result


# A write is accepted during the cut when it is acknowledged within this long: a local write
# answers in milliseconds; one that waits for the partition to heal does not.
ACCEPTED_WITHIN_S = 1.0


def _timeline(outs: dict[int, dict[str, Any]], cut: float, healed: float,
              start_at: float) -> dict[str, Any]:
    """Writes acknowledged per second per host, by when they were acknowledged (a write that
    waited for the heal counts when it got through), from the writers' start."""
    acks = {h: [o["started"] + r[0] + r[1] - start_at for r in o["records"] if r[1] is not None]
            for h, o in outs.items()}
    seconds = int(max((max(a, default=0.0) for a in acks.values()), default=0.0)) + 1
    per_host = {}
    for h, times in acks.items():
        counts = [0] * seconds
        for at in times:
            counts[max(0, int(at))] += 1
        per_host[f"h{h}"] = counts
    return {"accepted_per_s": per_host, "cut_from_s": cut - start_at,
            "cut_until_s": healed - start_at}


def _acked_own(outs: dict[int, dict[str, Any]]) -> int:
    return sum(1 for o in outs.values() for r in o["records"] if r[1] is not None and r[2] == "own")


def _heal_watch(dbs: list[NodeDb], prefixes: list[bytes], healed: float) -> HealWatch:
    """Host 3 was cut off from the others: each node's entries from across the cut."""
    ids = {db.node.host_index: node_id(db) for db in dbs}
    across = [frozenset(n for h, n in ids.items() if (h == 3) != (db.node.host_index == 3))
              for db in dbs]
    return HealWatch(dbs, across, prefixes, healed)


def _merged_pods(ctx: Context, cluster: Cluster, label: str, outs: dict[int, dict[str, Any]],
                 pods: int, cut: float, healed: float) -> dict[str, Any]:
    """Whether each shared Pod ends with every site's last acknowledged edit (its annotation,
    or a later one of the same site), read on host 1 once the data is identical; and how
    many Pods both sides edited while the cut lasted (acknowledged on host 3 and on host 1
    or 2)."""
    last: dict[int, dict[str, int]] = {}  # pod -> site -> highest acknowledged edit
    in_cut: dict[int, set[str]] = {}  # pod -> sides with an acknowledged edit during the cut
    for h, o in outs.items():
        for r in o["records"]:
            if r[2] != "pod" or r[1] is None:
                continue
            site = last.setdefault(r[4], {})
            site[f"h{h}"] = max(site.get(f"h{h}", -1), r[5])
            if cut <= o["started"] + r[0] < healed:
                in_cut.setdefault(r[4], set()).add("cut off" if h == 3 else "majority")
    dump = ctx.lab.run(1, f"s3.{label}.dump", [
        "dump", "--endpoint", cluster.endpoint(1), "--prefix", POD_PREFIX.decode()], 120)
    if "failure" in dump:
        return {"failure": dump["failure"]}
    docs = {key: json.loads(value) for key, value in dump["kvs"]}
    kept = both = 0
    lost: list[str] = []
    for n, sites in last.items():
        doc = docs.get(f"{POD_PREFIX.decode()}shared-{n:03d}")
        notes = (doc or {}).get("metadata", {}).get("annotations", {})
        # A later edit than the last acknowledged one may be there: a write whose client
        # gave up (deadline) can still commit. An older one means an acknowledged edit lost.
        have = all(int(notes.get(f"edge/{site}", -1)) >= seq for site, seq in sites.items())
        if len(in_cut.get(n, ())) == 2:
            both += 1
            kept += have
        if not have:
            lost.append(f"shared-{n:03d}")
    return {"pods_edited": len(last), "both_edited": both, "both_kept": kept,
            "missing_an_edit": lost[:10], "pods": pods}


# ------------------------------------------------------------------ 4. the Kubernetes flow


def kube_flow(ctx: Context, etcd: Cluster, shim: Cluster) -> dict[str, Any]:
    """Deployment scaled at host 1; the ReplicaSet controller (host 2) creates the Pod; the
    scheduler (host 3) binds it; the kubelet (host 1) reports it Running; each acts on its own
    store's watch events. Time: the scale request until host 1's store shows Running."""
    sizes, lab = ctx.sizes, ctx.lab
    out: dict[str, Any] = {"iterations": sizes.flow_iterations, "rtts": {}}
    for rtt in sizes.flow_rtts:
        say(f"4. Kubernetes flow at RTT {rtt:g} ms")
        probe = lab.set_rtt(rtt, pairs=[(1, 2), (2, 3), (1, 3)])
        per: dict[str, Any] = {"probe": probe}
        for cluster in (etcd, shim):
            label = cluster.label
            tag = f"s4.rtt{rtt:g}.{label}"
            actors = [lab.spawn(h, f"{tag}.{role}", ["actor", "--endpoint",
                                                     cluster.endpoint(h), "--role", role])
                      for h, role in ((2, "rs"), (3, "scheduler"), (1, "kubelet"))]
            try:
                for actor in actors:
                    actor.wait_line("watching")
                base = ctx.flow_replicas.get(label, 0)
                got = lab.run(1, f"{tag}.flow", [
                    "flow", "--endpoint", cluster.endpoint(1), "--iterations",
                    str(sizes.flow_iterations), "--base", str(base)],
                    sizes.flow_iterations * 40 + 60)
                ctx.flow_replicas[label] = base + sizes.flow_iterations
            finally:
                for actor in actors:
                    actor.stop()
            if "failure" in got:
                per[label] = {"failure": got["failure"]}
                say(f"  {label}: FAILED {got['failure'][:200]}")
                continue
            times = sorted(s * 1000 for s in got["seconds"])
            per[label] = {"ms": times, "p50": statistics.median(times), "max": times[-1]}
            say(f"  {label:<10} scale -> Running: median {per[label]['p50']:.0f} ms "
                f"(max {times[-1]:.0f} ms, {len(times)} runs)")
        out["rtts"][f"{rtt:g}"] = per
    return out


# ------------------------------------------------------------------ 5. catch-up


def catch_up(ctx: Context, etcd: Cluster, shim: Cluster) -> dict[str, Any]:
    """Host 3 away for catchup_seconds while host 1 writes catchup_rate puts/s (both systems
    at once, each on its own cluster); then the link is back: how long host 3 takes to hold
    everything, and at how many entries per second."""
    sizes, lab = ctx.sizes, ctx.lab
    out: dict[str, Any] = {"away_s": sizes.catchup_seconds, "rate": sizes.catchup_rate,
                           "rtts": {}}
    for rtt in sizes.catchup_rtts:
        say(f"5. catch-up at RTT {rtt:g} ms: host 3 away for {sizes.catchup_seconds:g} s, "
            f"{sizes.catchup_rate:g} puts/s on host 1 (etcd and shim at once)")
        probe = lab.set_rtt(rtt, pairs=[(1, 3)])
        etcd_leader(ctx, etcd, 1, f"s5.rtt{rtt:g}.leader")
        dbs = _shim_dbs(shim)
        wait_all_entries(dbs, 60)
        lab.net.isolate(3)
        away = time.monotonic()
        start_at = lab.start_at()
        writers = {c.label: lab.spawn(1, f"s5.rtt{rtt:g}.{c.label}.writer", [
            "paced", "--endpoint", c.endpoint(1), "--site", "h1",
            "--rate", f"{sizes.catchup_rate:g}", "--duration", f"{sizes.catchup_seconds:g}",
            "--prefix", f"/edge/catchup-{rtt:g}/", "--timeout", "30", "--start-at", start_at])
            for c in (etcd, shim)}
        results = {label: w.result(sizes.catchup_seconds + 120) for label, w in writers.items()}
        pollers = lab.pollers(etcd, [1, 3], f"s5.rtt{rtt:g}")
        pollers.wait_started()
        before = [db.origins() for db in dbs]
        lab.net.heal()
        healed = time.monotonic()
        healed_wall = time.time()
        per: dict[str, Any] = {"probe": probe, "away_s": healed - away}
        # Both systems catch up at the same time; each is timed on its own.
        shim_done = etcd_done = None
        deadline = healed + sizes.converge_timeout + sizes.catchup_seconds
        while time.monotonic() < deadline and (shim_done is None or etcd_done is None):
            if shim_done is None:
                views = [db.origins() for db in dbs]
                if all(v == views[0] for v in views[1:]):
                    shim_done = time.monotonic() - healed
            if etcd_done is None:
                at = pollers.wait(lambda revs: len(set(revs.values())) == 1, 0.05)
                if at is not None:
                    etcd_done = at - healed
            time.sleep(0.02)
        pollers.stop()
        for label, done in (("etcd", etcd_done), (shim.label, shim_done)):
            written = results[label]
            acked = sum(1 for r in written.get("records", []) if r[1] is not None)
            per[label] = {"acked": acked, "caught_up_s": done,
                          "entries_per_s": acked / done if done else None,
                          "writer_failure": written.get("failure")}
        node3 = shim.servers[3]
        if isinstance(node3, NetnsShimNode):
            ups = [t - healed_wall for t in node3.linked_at(healed_wall)]
            per[shim.label]["links_up_s"] = sorted(ups)
            first = min(ups) if ups else None
            if first is not None and shim_done and shim_done > first:
                per[shim.label]["entries_per_s_from_link_up"] = \
                    per[shim.label]["acked"] / (shim_done - first)
        per[shim.label]["entries_behind_at_heal"] = (
            sum(before[0].values()) - sum(before[2].values()) if len(before) == 3 else None)
        for db in dbs:
            db.close()
        say(f"  etcd caught up {_s(etcd_done)} s after the heal; {shim.label} {_s(shim_done)} "
            f"s ({per[shim.label].get('entries_per_s') or 0:,.0f} entries/s)")
        out["rtts"][f"{rtt:g}"] = per
    return out


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ------------------------------------------------------------------ W. bytes on the wire


def wire_bytes(ctx: Context, etcd: Cluster, shim: Cluster) -> dict[str, Any]:
    """Bytes on every link per put, 256 B values and a ~2 KB Pod edited in two fields, written
    on host 1 at wire_rate; the window ends when every node holds every write."""
    sizes, lab = ctx.sizes, ctx.lab
    say(f"W. bytes on the wire at RTT {sizes.wire_rtt:g} ms")
    out: dict[str, Any] = {"probe": lab.set_rtt(sizes.wire_rtt)}
    counters = WireCounters(lab.net)
    for cluster in (etcd, shim):
        label = cluster.label
        if cluster.system == "etcd":
            out["etcd_leader"] = etcd_leader(ctx, cluster, 3, "w.leader")
        dbs = _shim_dbs(cluster)
        per: dict[str, Any] = {}
        c0 = counters.read()
        time.sleep(2.0)  # idle links: heartbeats and keepalives only
        idle = delta(c0, counters.read())
        per["idle_bytes_per_s"] = sum(link_bytes(idle, a, b) for a, b in LINKS) / idle["seconds"]
        for phase, args, prefix in (
            ("256B", ["--prefix", f"/edge/wire-{label}/", "--value-size", "256"],
             f"/edge/wire-{label}/"),
            ("pod", ["--prefix", "-", "--kube-objects", str(sizes.wire_pods),
                     "--kube-phase", "update", "--kube-namespace", f"wire-{label}"],
             f"/registry/pods/wire-{label}/"),
        ):
            if phase == "pod":  # the Pods exist first (not counted)
                lab.run(1, f"w.{label}.pods", [
                    "write", "--endpoint", cluster.endpoint(1), "--rate", "200",
                    "--duration", "1", "--prefix", "-", "--kube-objects", str(sizes.wire_pods),
                    "--kube-phase", "create", "--kube-namespace", f"wire-{label}"], 120,
                    module=REPLICATION_WRITER)
            settle(cluster, dbs, lab, f"w.{label}.{phase}.settle")
            c0 = counters.read()
            written = lab.run(1, f"w.{label}.{phase}", [
                "write", "--endpoint", cluster.endpoint(1),
                "--rate", f"{sizes.wire_rate:g}", "--duration", f"{sizes.wire_seconds:g}",
                *args], sizes.wire_seconds + 120, module=REPLICATION_WRITER)
            settle(cluster, dbs, lab, f"w.{label}.{phase}.drain")
            d = delta(c0, counters.read())
            puts = int(written.get("acked", 0))
            row: dict[str, Any] = {"puts": puts, "window_s": d["seconds"],
                                   "value_bytes": written.get("value_bytes_mean")}
            if puts:
                heartbeats = per["idle_bytes_per_s"] * d["seconds"]
                row["per_link"] = {f"h{a}-h{b}": link_bytes(d, a, b) / puts for a, b in LINKS}
                row["total"] = sum(row["per_link"].values())
                row["total_less_idle"] = (row["total"] * puts - heartbeats) / puts
                if dbs:
                    row.update(entry_sizes(dbs[0], prefix.encode(), puts))
            per[phase] = row
            say(f"  {label} {phase}: {puts} puts, {row.get('total', 0):,.0f} B/put on the 3 "
                f"links" + (f" (entry {row['entry_pb_bytes']:,.0f} B)"
                            if row.get("entry_pb_bytes") else ""))
        for db in dbs:
            db.close()
        out[label] = per
    return out


LINKS = [(1, 2), (1, 3), (2, 3)]
# run-replication's writer: 256 B values, or ~2 KB Pods each put changing two fields
REPLICATION_WRITER = "bench.replication.client"


def settle(cluster: Cluster, dbs: list[NodeDb], lab: EdgeLab, name: str) -> None:
    """Until every node holds every write: shim's entry counts per origin agree; etcd's
    members report the same revision."""
    if cluster.system == "shim":
        wait_all_entries(dbs, 120)
        return
    pollers = lab.pollers(cluster, sorted(cluster.servers), name)
    try:
        pollers.wait(lambda revs: len(set(revs.values())) == 1, 120)
    finally:
        pollers.stop()


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))

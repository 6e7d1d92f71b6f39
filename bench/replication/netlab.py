"""Scenarios C and D on real network faults: three shim nodes, one per network namespace of a
NetLab (tests/support/netns.py), in a full mesh over the lab's bridge.

C. Convergence after a partition: host 1 is cut off from hosts 2 and 3; writers on both sides
   put at a steady rate for the whole partition; heal; time until the three databases hold
   identical key/value sets (compared from the root namespace, read-only, as `shim sql` does).
D. Bytes replicated per put: the lab switch's per-link byte counters (nftables counters per
   pair of bridge ports, and the ports' own counters) during a steady write phase on host 1,
   for 256 B values and for ~2 KB Kubernetes-like JSON objects updated a field or two at a time.

Writers run inside the lab hosts (`python -m bench.replication.client write`): the bench process
cannot reach lab addresses. A writer on host N talks to host N's own address, which the kernel
routes over that namespace's loopback, so client traffic never touches the counted links.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.replication.common import Context, say
from bench.replication.nodes import (
    NetnsShimNode,
    NodeDb,
    wait_all_entries,
    wait_linked,
)
from shim.backend.sqlite_repl import ENTRY_VALUE_SQL
from shim.pb import replication_pb2
from tests.support import procfs
from tests.support.process import stop_all
from tests.support.shim_server import REPO_ROOT

PAIRS = [(1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)]
LINKS = [(1, 2), (1, 3), (2, 3)]
COUNT_TABLE = "rbenchcount"


class WireCounters:
    """Byte/packet counters of the lab switch: one nftables counter per (in port, out port)
    pair (bridge family, forward hook: every frame one host sends another), and each port's
    own rx/tx counters from `ip -s link`."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        rules = "".join(
            f'    iifname "sw-h{a}" oifname "sw-h{b}" counter comment "h{a}>h{b}"\n'
            for a, b in PAIRS
        )
        script = (f"table bridge {COUNT_TABLE} {{\n  chain count {{\n"
                  "    type filter hook forward priority -200; policy accept;\n"
                  f"{rules}  }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", lab.switch, "nft", "-f", "-"], input=script,
                       text=True, check=True, capture_output=True)

    def read(self) -> dict[str, Any]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.lab.switch, "nft", "-j", "list", "table", "bridge",
             COUNT_TABLE], capture_output=True, text=True, check=True).stdout
        pairs: dict[str, dict[str, int]] = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    pairs[rule["comment"]] = {"bytes": expr["counter"]["bytes"],
                                              "packets": expr["counter"]["packets"]}
        links = json.loads(subprocess.run(
            ["ip", "-n", self.lab.switch, "-s", "-j", "link", "show"], capture_output=True,
            text=True, check=True).stdout)
        ports = {
            link["ifname"]: {"rx_bytes": link["stats64"]["rx"]["bytes"],
                             "tx_bytes": link["stats64"]["tx"]["bytes"],
                             "rx_packets": link["stats64"]["rx"]["packets"],
                             "tx_packets": link["stats64"]["tx"]["packets"]}
            for link in links if link["ifname"].startswith("sw-h")
        }
        return {"at": time.monotonic(), "pairs": pairs, "ports": ports}


def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        "seconds": b["at"] - a["at"],
        "pairs": {k: {f: b["pairs"][k][f] - a["pairs"][k][f] for f in ("bytes", "packets")}
                  for k in b["pairs"]},
        "ports": {k: {f: b["ports"][k][f] - a["ports"][k][f] for f in b["ports"][k]}
                  for k in b["ports"]},
    }


def link_bytes(d: dict[str, Any], a: int, b: int, field: str = "bytes") -> int:
    return int(d["pairs"][f"h{a}>h{b}"][field] + d["pairs"][f"h{b}>h{a}"][field])


# ------------------------------------------------------------------ writers inside lab hosts


def writer(ctx: Context, lab: Any, host: int, name: str, args: list[str]) -> subprocess.Popen[Any]:
    out = ctx.raw / f"{name}.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "bench.replication.client", "write", *args, "--out", str(out)]
    (ctx.raw / f"{name}.cmd").write_text(
        f"ip netns exec {lab.namespace(host)} " + " ".join(argv) + "\n")
    err = (ctx.raw / f"{name}.err").open("wb")
    proc = lab.popen(host, argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=err,
                     stderr=subprocess.STDOUT)
    proc.bench_out = out  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen[Any], timeout: float) -> dict[str, Any]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"failure": f"writer still running after {timeout:.0f}s", "acked": 0,
                "acked_keys": []}
    path: Path = proc.bench_out  # type: ignore[attr-defined]
    if not path.exists():
        return {"failure": f"writer exited {proc.returncode} without a summary", "acked": 0,
                "acked_keys": []}
    return json.loads(path.read_text())


# ------------------------------------------------------------------ C: partition


def scenario_c(ctx: Context, lab: Any, nodes: list[NetnsShimNode],
               dbs: list[NodeDb]) -> dict[str, Any]:
    sizes = ctx.sizes
    prefix = b"/bench/part/"
    ep = {n.host_index: n.endpoint for n in nodes}
    result: dict[str, Any] = {"partition_s": sizes.partition_seconds,
                              "rate_per_side": sizes.partition_rate}

    # Warm-up: a few writes on host 1 with every link up, to see ordinary replication.
    warm = finish(writer(ctx, lab, 1, "partition_warmup", [
        "--endpoint", ep[1], "--rate", "50", "--duration", "1", "--prefix", "/bench/part/warm/",
    ]), 60)
    result["warmup_converged_s"] = wait_all_entries(dbs, 30)

    say(f"C: partition host 1 | hosts 2+3 for {sizes.partition_seconds:.0f} s, "
        f"{sizes.partition_rate:.0f} puts/s on each side")
    procfs.wait_quiet(ctx.wait_quiet)
    lab.partition(1, 2)
    lab.partition(1, 3)
    t_part = time.monotonic()
    result["partition_wall"] = time.time()
    run_for = max(1.0, sizes.partition_seconds - 2.0)  # writers need ~0.5 s to start
    common = ["--rate", str(sizes.partition_rate), "--duration", f"{run_for:.1f}",
              "--shared-prefix", "/bench/part/shared/", "--shared-keys", "50",
              "--shared-every", "10"]
    w1 = writer(ctx, lab, 1, "partition_writer_h1",
                ["--endpoint", ep[1], "--prefix", "/bench/part/h1/", "--seed", "11", *common])
    w2 = writer(ctx, lab, 2, "partition_writer_h2",
                ["--endpoint", ep[2], "--prefix", "/bench/part/h2/", "--seed", "22", *common])
    s1 = finish(w1, sizes.partition_seconds + 60)
    s2 = finish(w2, sizes.partition_seconds + 60)
    remaining = sizes.partition_seconds - (time.monotonic() - t_part)
    if remaining > 0:
        time.sleep(remaining)
    before = [db.kv_digest(prefix) for db in dbs]
    result["before_heal"] = {
        "keys": [c for c, _ in before],
        "h2_equals_h3": before[1] == before[2],
        "h1_equals_h2": before[0] == before[1],
    }
    t_heal_wall = time.time()
    t_heal = time.monotonic()
    lab.heal()
    result["partition_measured_s"] = t_heal - t_part
    say(f"  healed after {t_heal - t_part:.1f} s; backlog: host 1 wrote {s1.get('acked')}, "
        f"host 2 wrote {s2.get('acked')}")

    expected = set(warm.get("acked_keys", [])) | set(s1.get("acked_keys", [])) | set(
        s2.get("acked_keys", []))
    polls: list[tuple[float, list[tuple[int, str]]]] = []
    converged: float | None = None
    while time.monotonic() - t_heal < sizes.converge_timeout:
        now = time.monotonic() - t_heal
        digests = [db.kv_digest(prefix) for db in dbs]
        polls.append((now, digests))
        if all(d == digests[0] for d in digests) and digests[0][0] == len(expected):
            converged = now
            break
        for n in nodes:
            n.check_alive()
        time.sleep(0.05)
    final = polls[-1][1][0] if polls else None
    per_node = {}
    for i, node in enumerate(nodes):
        first_ok = next((t for t, d in polls if d[i] == final), None)
        per_node[node.node_name] = first_ok
    entries_s = wait_all_entries(dbs, 30) if converged is not None else None
    # When the links to host 1 came back (the dialers' "linked to" lines after the heal):
    # wait for both, even after convergence (one relinked link is enough to converge).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
        n.linked_to_at(nodes[0].url, t_heal_wall) for n in nodes[1:]
    ):
        time.sleep(0.1)
    relinks = [min(ts) for n in nodes[1:] if (ts := n.linked_to_at(nodes[0].url, t_heal_wall))]
    n1_admits = nodes[0].admitted_at(after=t_heal_wall)
    backlog = int(s1.get("acked", 0)) + int(s2.get("acked", 0))
    result.update({
        "writer_h1": {k: v for k, v in s1.items() if k != "acked_keys"},
        "writer_h2": {k: v for k, v in s2.items() if k != "acked_keys"},
        "backlog_entries": backlog,
        "expected_keys": len(expected),
        "converged_s": converged,
        "node_converged_s": per_node,
        "all_entries_s_after_converged": entries_s,
        "links_up_s": sorted(t - t_heal_wall for t in relinks),
        "h1_admitted_s": sorted(t - t_heal_wall for t in n1_admits),
        "final_keys": final[0] if final else None,
        "identical": converged is not None,
        "polls": len(polls),
        "conflicts_merged": [db.status().get("conflicts_merged") for db in dbs],
    })
    first_link = min(result["links_up_s"]) if relinks else None
    result["links_up_all_s"] = max(result["links_up_s"]) if len(relinks) >= 2 else None
    if converged is not None:
        result["catchup_rate_from_heal"] = backlog / converged if converged > 0 else None
        if first_link is not None and converged > first_link:
            result["catchup_rate_from_links_up"] = backlog / (converged - first_link)
        say(f"  converged {converged:.2f} s after the heal (first link to host 1 up after "
            f"{first_link if first_link is not None else float('nan'):.2f} s, both after "
            f"{result['links_up_all_s'] or float('nan'):.2f} s); "
            f"{len(expected)} keys identical on all three")
    else:
        say(f"  NOT converged {sizes.converge_timeout:.0f} s after the heal; last key counts "
            f"{[d[0] for d in polls[-1][1]] if polls else '?'}")
    return result


# ------------------------------------------------------------------ D: bytes on the wire


def entry_sizes(db: NodeDb, prefix: bytes, newest: int) -> dict[str, float]:
    """Mean protobuf size of the newest ``newest`` local entries under ``prefix`` as they go on
    the wire (replication_pb2.Entry), and of their value and field operations."""
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    rows = db.query(
        f"SELECT e.origin, e.seq, e.hlc, e.key, e.deleted, {ENTRY_VALUE_SQL}, e.lease, e.ops, "
        "e.base_uid, e.uid FROM repl_entry e "
        "WHERE e.key >= ? AND e.key < ? AND e.received_from IS NULL ORDER BY e.ingest DESC LIMIT ?",
        (prefix, end, newest))
    if not rows:
        return {}
    sizes, values, ops = [], [], []
    for origin, seq, hlc, key, deleted, value, lease, op, base_uid, uid in rows:
        msg = replication_pb2.Entry(origin=origin, seq=seq, hlc=hlc, key=bytes(key),
                                    deleted=bool(deleted), value=bytes(value), lease=lease,
                                    base_uid=base_uid or "", uid=uid or "")
        if op is not None:
            msg.has_ops = True
            msg.ops = json.dumps(json.loads(op), separators=(",", ":")).encode()
        sizes.append(msg.ByteSize())
        values.append(len(value))
        ops.append(len(msg.ops))
    n = len(rows)
    return {"entry_pb_bytes": sum(sizes) / n, "value_bytes": sum(values) / n,
            "ops_bytes": sum(ops) / n, "with_ops": sum(1 for o in ops if o) / n}


def _phase(ctx: Context, lab: Any, counters: WireCounters, dbs: list[NodeDb], name: str,
           args: list[str], prefix: bytes) -> dict[str, Any]:
    sizes = ctx.sizes
    wait_all_entries(dbs, 60)
    procfs.wait_quiet(ctx.wait_quiet)
    time.sleep(0.5)
    c0 = counters.read()
    summary = finish(writer(ctx, lab, 1, name, args), sizes.wire_seconds + 120)
    drained = wait_all_entries(dbs, 60)
    time.sleep(0.5)  # trailing ACKs
    d = delta(c0, counters.read())
    puts = int(summary.get("acked", 0))
    out: dict[str, Any] = {
        "writer": {k: v for k, v in summary.items() if k != "acked_keys"},
        "puts": puts, "window_s": d["seconds"], "drained_s": drained, "delta": d,
    }
    if puts:
        out["per_put"] = {
            f"h{a}-h{b}": link_bytes(d, a, b) / puts for a, b in LINKS
        }
        out["per_put_total"] = sum(out["per_put"].values())
        out["packets_per_put_total"] = sum(link_bytes(d, a, b, "packets") for a, b in LINKS) / puts
        out["port_bytes_per_put"] = {
            p: (v["rx_bytes"] + v["tx_bytes"]) / puts for p, v in d["ports"].items()}
        out.update(entry_sizes(dbs[0], prefix, puts))
        if out.get("entry_pb_bytes"):
            out["entry_copies"] = out["per_put_total"] / out["entry_pb_bytes"]
    say(f"  {name}: {puts} puts, {out.get('per_put_total', 0):,.0f} wire bytes per put over the "
        f"3 links (entry {out.get('entry_pb_bytes', 0):,.0f} B as protobuf)")
    return out


def scenario_d(ctx: Context, lab: Any, nodes: list[NetnsShimNode],
               dbs: list[NodeDb], counters: WireCounters) -> dict[str, Any]:
    sizes = ctx.sizes
    ep1 = nodes[0].endpoint
    say(f"D: bytes on the wire, {sizes.wire_rate:.0f} puts/s for {sizes.wire_seconds:.0f} s on "
        "host 1")
    result: dict[str, Any] = {"rate": sizes.wire_rate, "seconds": sizes.wire_seconds}
    wait_all_entries(dbs, 60)
    c0 = counters.read()
    time.sleep(sizes.wire_idle_seconds)
    idle = delta(c0, counters.read())
    result["idle_bytes_per_s"] = {f"h{a}-h{b}": link_bytes(idle, a, b) / idle["seconds"]
                                  for a, b in LINKS}
    rate, secs = str(sizes.wire_rate), str(sizes.wire_seconds)
    result["v256"] = _phase(ctx, lab, counters, dbs, "wire_256B", [
        "--endpoint", ep1, "--rate", rate, "--duration", secs, "--prefix", "/bench/wire/v256/",
        "--value-size", "256"], b"/bench/wire/v256/")
    # ~2 KB Pod-like JSON: create them (not counted), then update a field or two each time.
    objects = str(sizes.kube_objects)
    create = finish(writer(ctx, lab, 1, "wire_kube_create", [
        "--endpoint", ep1, "--rate", "200", "--duration", "1", "--prefix", "-",
        "--kube-objects", objects, "--kube-phase", "create"]), 120)
    result["kube_created"] = create.get("acked")
    result["kube"] = _phase(ctx, lab, counters, dbs, "wire_kube_update", [
        "--endpoint", ep1, "--rate", rate, "--duration", secs, "--prefix", "-",
        "--kube-objects", objects, "--kube-phase", "update"], b"/registry/pods/bench/")
    return result


# ------------------------------------------------------------------ both, on one lab


def run(ctx: Context, want_c: bool, want_d: bool) -> None:
    from tests.support.netns import NetLab  # the test suite's lab (root, iproute2, nftables)

    reason = NetLab.available()
    if reason:
        say(f"C/D skipped: {reason}")
        for sid, want in (("C", want_c), ("D", want_d)):
            if want:
                ctx.results[sid] = {"skipped": reason}
        return
    lab = NetLab(3, prefix=f"rbench{os.getpid()}", subnet="10.215.0")
    nodes: list[NetnsShimNode] = []
    dbs: list[NodeDb] = []
    work = ctx.work_dir / "netlab"
    try:
        lab.up()
        counters = WireCounters(lab)
        say("starting 3 shim nodes, one per network namespace, full mesh")
        n1 = NetnsShimNode(work / "h1", "h1", lab, 1)
        n1.start()
        n2 = NetnsShimNode(work / "h2", "h2", lab, 2, joins=[n1.url])
        n2.start()
        n3 = NetnsShimNode(work / "h3", "h3", lab, 3, joins=[n1.url, n2.url])
        n3.start()
        nodes = [n1, n2, n3]
        wait_linked(nodes, 60)
        dbs = [NodeDb(n) for n in nodes]
        if want_d:
            ctx.results["D"] = scenario_d(ctx, lab, nodes, dbs, counters)
        if want_c:
            ctx.results["C"] = scenario_c(ctx, lab, nodes, dbs)
    finally:
        for db in dbs:
            db.close()
        stop_all(nodes)
        lab.down()
        for n in nodes:
            if n.log_path.exists():
                shutil.copyfile(n.log_path, ctx.raw / f"server-lab-{n.node_name}.log")
                ctx.scan_logs(f"raw/server-lab-{n.node_name}.log", [n.log_path])
        shutil.rmtree(work, ignore_errors=True)

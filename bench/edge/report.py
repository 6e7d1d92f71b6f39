"""results.md and the charts of bench/run-edge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.replication.common import fmt_ms, fmt_num

COLORS = {"etcd": "#4c72b0", "shim-mesh": "#dd8452", "shim-star": "#55a868"}
WORKLOAD_TITLES = {
    "put_c1": "put, 1 client", "put_c16": "put, 16 clients", "get_c16": "get, 16 clients",
    "get_c1": "get, 1 client", "mix_c1": "kube mix, 1 client", "mix_c16": "kube mix, 16 clients",
    "put_c16_all": "put, 16 clients on every host",
}


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    return f"{r:.2f}x" if r < 10 else f"{r:,.0f}x"


def _cell(cell: dict[str, Any] | None) -> list[str]:
    if not cell:
        return ["-", "-", "-"]
    if cell.get("failure"):
        return ["FAILED", "-", "-"]
    errors = f" ({cell['errors']} err)" if cell.get("errors") else ""
    return [fmt_num(cell.get("rate")) + errors, fmt_ms(cell.get("p50")), fmt_ms(cell.get("p99"))]


def headline(results: dict[str, Any]) -> list[str]:
    """The "At the edge" table for README.md: one line per claim, etcd vs shim."""
    rows: list[tuple[str, str, str]] = []
    s1 = results.get("1", {}).get("rtts", {})
    for rtt, per in s1.items():
        cells = per["cells"]
        e, s = cells.get("put_c1.etcd", {}), cells.get("put_c1.shim-mesh", {})
        rows.append((f"write p50, 1 client, sites {rtt} ms apart",
                     f"{fmt_ms(e.get('p50'))} ms", f"{fmt_ms(s.get('p50'))} ms"))
    sizes = results.get("2", {}).get("sizes", {})
    if sizes:
        first, last = min(sizes, key=int), max(sizes, key=int)
        for rtt in sizes[last]:
            def p50(n: str, label: str, rtt: str = rtt) -> str:
                cell = sizes[n].get(rtt, {}).get("cells", {}).get(f"put_c1.{label}", {})
                return fmt_ms(cell.get("p50"))
            rows.append((f"write p50 at {first} -> {last} hosts, RTT {rtt} ms",
                         f"{p50(first, 'etcd')} -> {p50(last, 'etcd')} ms",
                         f"{p50(first, 'shim-mesh')} -> {p50(last, 'shim-mesh')} ms"))
    s3 = results.get("3", {})
    if s3.get("etcd") and s3.get("shim-mesh"):
        def side(label: str, name: str) -> str:
            data = s3[label].get("sides", {}).get(name, {})
            pct = data.get("accepted_pct")
            return "-" if pct is None else f"{pct:.0f} %"
        cut = s3["etcd"].get("cut_s", 0)
        for name in ("h3 (cut off)", "h1+h2 (majority)"):
            rows.append((f"writes accepted during a {cut:.0f} s partition, {name}",
                         side("etcd", name), side("shim-mesh", name)))
        rows.append(("identical data after the heal",
                     f"{fmt_num(s3['etcd'].get('identical_after_heal_s'), 2)} s",
                     f"{fmt_num(s3['shim-mesh'].get('identical_after_heal_s'), 2)} s"))
    for rtt, per in results.get("4", {}).get("rtts", {}).items():
        rows.append((f"scale -> Pod Running across 3 sites, RTT {rtt} ms (median)",
                     f"{fmt_ms((per.get('etcd') or {}).get('p50'))} ms",
                     f"{fmt_ms((per.get('shim-mesh') or {}).get('p50'))} ms"))
    for rtt, per in results.get("5", {}).get("rtts", {}).items():
        e, s = per.get("etcd", {}), per.get("shim-mesh", {})
        rows.append((f"catch-up after {results['5']['away_s']:.0f} s away, RTT {rtt} ms",
                     f"{fmt_num(e.get('entries_per_s'))} entries/s",
                     f"{fmt_num(s.get('entries_per_s'))} entries/s"))
    if not rows:
        return []
    return ["| | etcd 3.5.1 | shim |", "|---|---:|---:|",
            *(f"| {a} | {b} | {c} |" for a, b, c in rows)]


def targets(results: dict[str, Any]) -> list[str]:
    """Issue 14's targets, each with what was measured and whether it was met."""
    rows: list[tuple[str, str, str]] = []

    def met(ok: bool | None) -> str:
        return "-" if ok is None else "yes" if ok else "no"

    s1 = results.get("1", {}).get("rtts", {})
    if "50" in s1 and "0" in s1:
        e50 = s1["50"]["cells"].get("put_c1.etcd", {}).get("p50")
        s50 = s1["50"]["cells"].get("put_c1.shim-mesh", {}).get("p50")
        s0 = s1["0"]["cells"].get("put_c1.shim-mesh", {}).get("p50")
        if e50 and s50 and s0:
            rows.append(("at 50 ms RTT, shim write p50 <= 1/10 of etcd's",
                         f"{fmt_ms(s50)} vs {fmt_ms(e50)} ms ({_ratio(s50, e50)})",
                         met(s50 <= e50 / 10)))
            rows.append(("... and within 20 % of shim's own figure at RTT 0",
                         f"{fmt_ms(s50)} vs {fmt_ms(s0)} ms ({_ratio(s50, s0)})",
                         met(s50 <= s0 * 1.2)))
    sizes = results.get("2", {}).get("sizes", {})
    if len(sizes) > 1:
        ns = sorted(sizes, key=int)
        for rtt in sizes[ns[-1]]:
            for label in ("shim-mesh", "shim-star"):
                values = [sizes[n].get(rtt, {}).get("cells", {}).get(
                    f"put_c1.{label if n != '1' else 'shim-mesh'}", {}).get("p50") for n in ns]
                if all(v is not None for v in values):
                    flat = max(values) <= min(values) * 1.2  # type: ignore[type-var,operator]
                    rows.append((f"{label} write p50 flat as hosts are added (RTT {rtt} ms, "
                                 "within 20 %)",
                                 " -> ".join(fmt_ms(v) for v in values) + f" ms ({'/'.join(ns)}"
                                 " hosts)", met(flat)))
    s3 = results.get("3", {}).get("shim-mesh", {})
    if "sides" in s3:
        pcts = [s.get("accepted_pct") for s in s3["sides"].values()]
        rows.append(("100 % of writes accepted on both sides of a partition",
                     " / ".join(f"{p:.1f} %" for p in pcts if p is not None),
                     met(all(p == 100 for p in pcts))))
        heal = s3.get("identical_after_heal_s")
        rows.append((f"identical data <= 2 s after the heal of a {s3.get('cut_s', 0):.0f} s cut",
                     f"{fmt_num(heal, 2)} s", met(heal is not None and heal <= 2)))
    s4 = results.get("4", {}).get("rtts", {})
    faster = [(rtt, (per.get("etcd") or {}).get("p50"), (per.get("shim-mesh") or {}).get("p50"))
              for rtt, per in s4.items() if float(rtt) > 0]
    if faster:
        rows.append(("the Kubernetes flow faster than etcd's at every RTT above 0",
                     ", ".join(f"{rtt} ms: {fmt_ms(s)} vs {fmt_ms(e)}" for rtt, e, s in faster),
                     met(all(e is not None and s is not None and s < e for _, e, s in faster))))
    s5 = results.get("5", {}).get("rtts", {}).get("100", {}).get("shim-mesh", {})
    if s5.get("entries_per_s"):
        rows.append(("catch-up >= 5,000 entries/s at 100 ms RTT",
                     f"{fmt_num(s5['entries_per_s'])} entries/s (from the link up: "
                     f"{fmt_num(s5.get('entries_per_s_from_link_up'))})",
                     met(s5["entries_per_s"] >= 5000)))
    wire = results.get("W", {}).get("shim-mesh", {})
    for phase, title in (("256B", "256 B values"), ("pod", "~2 KB Pod")):
        r = wire.get(phase, {})
        if r.get("entry_pb_bytes") and r.get("total_less_idle"):
            per_link = r["total_less_idle"] / 2 / r["entry_pb_bytes"]
            rows.append((f"bytes per link crossed <= 1.5x the entry ({title})",
                         f"{per_link:.2f}x", met(per_link <= 1.5)))
    if not rows:
        return []
    return ["## The targets of issue 14", "", "| target | measured | met? |", "|---|---|---|",
            *(f"| {a} | {b} | {c} |" for a, b, c in rows), ""]


def markdown(meta: dict[str, Any], results: dict[str, Any], charts: list[str]) -> str:
    md = ["# bench/run-edge: etcd and shim across sites", "",
          f"`{meta['command']}` on {meta['date']}, {meta['mode']} mode, shim at "
          f"{meta['shim_commit']}, {meta.get('duration_s', 0):.0f} s.", "",
          f"- machine: {meta['machine']}; load average {meta['load_average_start']} at the "
          f"start, {meta.get('load_average_end', '?')} at the end", f"- data: {meta['data_dir']}",
          f"- etcd {meta['etcd']}, Python {meta['python']}, grpcio {meta['grpcio']}",
          "- hosts: network namespaces on one bridge, every host's ingress delayed by RTT/2 "
          "(NFQUEUE, tests/support/netns.py), so any two hosts are RTT apart; the probe "
          "column is the median TCP echo round trip measured just before",
          "- one etcd member and one shim node per host, data on disk, fsync on for both "
          "(etcd's default; shim `--sqlite-synchronous FULL`); clients on a host talk to their "
          "own host's member or node", ""]
    table = headline(results)
    if table:
        md += ["## At the edge (headline)", "", *table, ""]
    md += targets(results)
    md += _latency(results.get("1"))
    md += _sizes(results.get("2"))
    md += _partition(results.get("3"))
    md += _flow(results.get("4"))
    md += _catchup(results.get("5"))
    md += _wire(results.get("W"))
    failures = {k: v["failure"] for k, v in results.items()
                if isinstance(v, dict) and v.get("failure")}
    if failures:
        md += ["## Failures", ""] + [f"- {k}: `{v[:500]}`" for k, v in failures.items()] + [""]
    md += [f"![{name}]({name})" for name in charts]
    return "\n".join(md).rstrip() + "\n"


def _latency(s1: dict[str, Any] | None) -> list[str]:
    if not s1 or not s1.get("rtts"):
        return []
    md = ["## 1. Latency vs distance (3 hosts)", "",
          f"Closed loop for {s1['seconds']:g} s per cell, clients on host 1 (a follower: "
          "etcd's leader moved to host 3) except \"on every host\". Kubernetes mix: "
          "bench/kube_mix.py (Get, read-only Txn, GuaranteedUpdate Txn, short watches; "
          "1-4 KB JSON). req/s is the sum over hosts.", "",
          "| RTT ms (probe) | workload | etcd req/s | p50 ms | p99 ms | shim req/s | p50 ms "
          "| p99 ms | etcd p50 / shim p50 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rtt, per in s1["rtts"].items():
        probe = per["probe"]["median_ms"]
        for workload in s1["workloads"]:
            e = per["cells"].get(f"{workload}.etcd")
            s = per["cells"].get(f"{workload}.shim-mesh")
            md.append(f"| {rtt} ({probe:.1f}) | {WORKLOAD_TITLES.get(workload, workload)} | "
                      + " | ".join(_cell(e) + _cell(s)) + " | "
                      + _ratio((e or {}).get("p50"), (s or {}).get("p50")) + " |")
    leaders = {rtt: per.get("etcd_leader") for rtt, per in s1["rtts"].items()}
    md += ["", f"etcd's leader per RTT: {leaders}.", ""]
    return md


def _sizes(s2: dict[str, Any] | None) -> list[str]:
    if not s2 or not s2.get("sizes"):
        return []
    labels = ["etcd", "shim-mesh", "shim-star"]
    md = ["## 2. Cluster size", "",
          "Clients on host 1; etcd's leader on host 2. shim-mesh: every node linked to every "
          "other; shim-star: every node linked to host 1 only. 1 host: a single etcd / shim.",
          "", "| hosts | RTT ms | workload | " + " | ".join(
              f"{label} req/s | p50 ms | p99 ms" for label in labels) + " |",
          "|---:|---:|---|" + "---:|" * 9]
    for n, per_rtt in sorted(s2["sizes"].items(), key=lambda kv: int(kv[0])):
        for rtt, per in per_rtt.items():
            for workload in s2["workloads"]:
                cells = [_cell(per["cells"].get(f"{workload}.{label}")) for label in labels]
                md.append(f"| {n} | {rtt} | {WORKLOAD_TITLES.get(workload, workload)} | "
                          + " | ".join(x for c in cells for x in c) + " |")
    return [*md, ""]


def _partition(s3: dict[str, Any] | None) -> list[str]:
    if not s3:
        return []
    md = ["## 3. Partition", ""]
    for label, r in s3.items():
        if not isinstance(r, dict) or "sides" not in r:
            if isinstance(r, dict) and r.get("failure"):
                md += [f"{label}: FAILED `{r['failure'][:300]}`", ""]
            continue
        merge = r.get("merge", {})
        md += [f"### {label} (RTT {r['probe']['median_ms']:.1f} ms, cut {r['cut_s']:.1f} s"
               + (f", etcd leader {r['etcd_leader']}" if r.get("etcd_leader") else "") + ")", "",
               "| side | writes due in the cut | accepted (answered within 1 s) | % "
               "| p50 ms | p99 ms | acknowledged later | errors |",
               "|---|---:|---:|---:|---:|---:|---:|---|"]
        for side, s in r["sides"].items():
            pct = s.get("accepted_pct")
            md.append(f"| {side} | {s['writes']} | {s['accepted']} | "
                      f"{'-' if pct is None else f'{pct:.0f}'} | {fmt_ms(s['p50'])} | "
                      f"{fmt_ms(s['p99'])} | {s['acked_later']} | "
                      f"{', '.join(f'{k} {v}' for k, v in s['errors'].items()) or '-'} |")
        ups = r.get("links_up_s")
        md += ["", "p50/p99: every acknowledged write of the side, also those answered later "
               "(a write waiting for the heal counts its wait).",
               f"- identical on every host {fmt_num(r.get('identical_after_heal_s'), 2)} s "
               "after the heal"
               + (f"; host 3's links back up {', '.join(f'{u:.2f}' for u in ups)} s after it"
                  if ups else "")
               + (f"; etcd's leader after the heal: {r['etcd_leader_after']}"
                  if r.get("etcd_leader_after") else ""),
               *_heal_timeline(r.get("heal_timeline")),
               f"- shared Pods edited on both sides during the cut: "
               f"{merge.get('both_edited')}, with both sides' last edits kept after the heal: "
               f"{merge.get('both_kept')}; Pods missing an acknowledged edit (any time): "
               f"{merge.get('missing_an_edit') or 'none'}", ""]
    return md


def _heal_timeline(t: dict[str, Any] | None) -> list[str]:
    """One line: per node, the entries from across the cut and when the first and the last
    of them were held (seconds after the heal)."""
    if not t:
        return []
    parts = [f"{name} {n['entries_from_across']} entries at {fmt_num(n['first_s'], 2)}"
             f"-{fmt_num(n['last_s'], 2)} s" for name, n in t["nodes"].items()]
    return [f"- after the heal, entries from across the cut: {'; '.join(parts)}"]


def _flow(s4: dict[str, Any] | None) -> list[str]:
    if not s4 or not s4.get("rtts"):
        return []
    md = ["## 4. A Kubernetes flow across sites", "",
          "Scale a Deployment at host 1; the ReplicaSet controller at host 2 creates the Pod, "
          "the scheduler at host 3 binds it, the kubelet at host 1 sets it Running, each "
          "watching its own host's store. Time from the scale request to host 1's store "
          f"showing Running, {s4['iterations']} runs each.", "",
          "| RTT ms (probe) | etcd median ms | max | shim median ms | max | etcd / shim |",
          "|---|---:|---:|---:|---:|---:|"]
    for rtt, per in s4["rtts"].items():
        e, s = per.get("etcd") or {}, per.get("shim-mesh") or {}
        md.append(f"| {rtt} ({per['probe']['median_ms']:.1f}) | {fmt_ms(e.get('p50'))} | "
                  f"{fmt_ms(e.get('max'))} | {fmt_ms(s.get('p50'))} | {fmt_ms(s.get('max'))} | "
                  f"{_ratio(e.get('p50'), s.get('p50'))} |")
    return [*md, ""]


def _catchup(s5: dict[str, Any] | None) -> list[str]:
    if not s5 or not s5.get("rtts"):
        return []
    md = ["## 5. Catch-up over a slow link", "",
          f"Host 3 cut off for {s5['away_s']:g} s while host 1 writes {s5['rate']:g} puts/s "
          "(256 B values) to each system; then the link is back. Caught up: host 3 holds "
          "every write (etcd: its revision equals host 1's; shim: the same entries per "
          "origin). entries/s = writes acknowledged while away / time to catch up.", "",
          "| RTT ms (probe) | system | writes while away | caught up after s | entries/s "
          "| shim: links up after s | entries/s from the link up |",
          "|---|---|---:|---:|---:|---|---:|"]
    for rtt, per in s5["rtts"].items():
        for label in ("etcd", "shim-mesh"):
            r = per.get(label, {})
            ups = r.get("links_up_s")
            md.append(f"| {rtt} ({per['probe']['median_ms']:.1f}) | {label} | "
                      f"{fmt_num(r.get('acked'))} | {fmt_num(r.get('caught_up_s'), 2)} | "
                      f"{fmt_num(r.get('entries_per_s'))} | "
                      f"{', '.join(f'{u:.2f}' for u in ups) if ups else '-'} | "
                      f"{fmt_num(r.get('entries_per_s_from_link_up'))} |")
    return [*md, ""]


def _wire(w: dict[str, Any] | None) -> list[str]:
    if not w or "etcd" not in w:
        return []
    md = ["## W. Bytes on the wire per put", "",
          f"3 hosts at RTT {w['probe']['median_ms']:.1f} ms, writes on host 1 (etcd's leader: "
          f"{w.get('etcd_leader')}). Bytes: every frame between two hosts' switch ports "
          "(both directions: entries, gRPC/HTTP/2 framing, TCP/IP headers, ACKs, heartbeats), "
          "from the writer's start until every node holds every write, per acknowledged "
          "put. \"entry B\": shim's replication entry as sent (protobuf).", "",
          "| system | payload | puts | value B | entry B | h1-h2 B/put | h1-h3 B/put "
          "| h2-h3 B/put | total B/put | total less idle traffic | per link crossed / entry |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label in ("etcd", "shim-mesh"):
        for phase, title in (("256B", "256 B value"), ("pod", "~2 KB Pod, 2 fields changed")):
            r = (w.get(label) or {}).get(phase) or {}
            links = r.get("per_link", {})
            entry = r.get("entry_pb_bytes")
            crossed = 2  # a put must reach the 2 other hosts
            md.append(f"| {label} | {title} | {fmt_num(r.get('puts'))} | "
                      f"{fmt_num(r.get('value_bytes'))} | {fmt_num(entry)} | "
                      + " | ".join(fmt_num(links.get(k)) for k in ("h1-h2", "h1-h3", "h2-h3"))
                      + f" | {fmt_num(r.get('total'))} | {fmt_num(r.get('total_less_idle'))} | "
                      + (_ratio(r.get("total_less_idle", 0) / crossed, entry) if entry else "-")
                      + " |")
    return [*md, ""]


# ------------------------------------------------------------------ charts


def charts(results: dict[str, Any], out_dir: Path) -> list[str]:
    """latency_vs_rtt.png, cluster_size.png, partition.png (those with data). Needs
    matplotlib (the bench extra); without it, none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    s1 = results.get("1", {}).get("rtts")
    if s1:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        rtts = [float(r) for r in s1]
        for ax, workload in zip(axes, ("put_c1", "put_c16"), strict=True):
            for label in ("etcd", "shim-mesh"):
                for pct, style in (("p50", "-o"), ("p99", ":x")):
                    ys = [s1[r]["cells"].get(f"{workload}.{label}", {}).get(pct) for r in s1]
                    ax.plot(rtts, [y if y is not None else float("nan") for y in ys], style,
                            color=COLORS[label], label=f"{label} {pct}")
            ax.set_title(WORKLOAD_TITLES[workload])
            ax.set_xlabel("round trip between sites, ms")
            ax.set_ylabel("write latency, ms (log)")
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=8)
        fig.suptitle("Write latency vs distance between 3 sites (lower is better)")
        fig.tight_layout()
        fig.savefig(out_dir / "latency_vs_rtt.png", dpi=100)
        plt.close(fig)
        made.append("latency_vs_rtt.png")
    s2 = results.get("2", {}).get("sizes")
    if s2:
        ns = sorted(s2, key=int)
        rtts = list(s2[ns[-1]])
        fig, axes = plt.subplots(2, len(rtts), figsize=(5 * len(rtts), 7), squeeze=False)
        for col, rtt in enumerate(rtts):
            for row, (workload, key, title) in enumerate((
                ("put_c1", "p50", "write p50, 1 client (ms, log)"),
                ("put_c16", "rate", "writes/s, 16 clients"),
            )):
                ax = axes[row][col]
                for label in ("etcd", "shim-mesh", "shim-star"):
                    xs, ys = [], []
                    for n in ns:
                        cell = s2[n].get(rtt, {}).get("cells", {}).get(f"{workload}.{label}")
                        if n == "1" and label != "etcd":
                            cell = s2[n].get(rtt, {}).get("cells", {}).get(f"{workload}.shim-mesh")
                        if cell and cell.get(key) is not None:
                            xs.append(int(n))
                            ys.append(cell[key])
                    ax.plot(xs, ys, "-o", color=COLORS[label], label=label)
                ax.set_title(f"{title}, RTT {rtt} ms", fontsize=10)
                ax.set_xlabel("hosts")
                ax.set_xticks([int(n) for n in ns])
                if key == "p50":
                    ax.set_yscale("log")
                ax.grid(alpha=0.3, which="both")
        axes[0][0].legend(fontsize=8)
        fig.suptitle("Cluster size: write latency and throughput")
        fig.tight_layout()
        fig.savefig(out_dir / "cluster_size.png", dpi=100)
        plt.close(fig)
        made.append("cluster_size.png")
    s3 = results.get("3", {})
    parts = [(label, r) for label, r in s3.items() if isinstance(r, dict) and "timeline" in r]
    if parts:
        fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 3.6), squeeze=False)
        for ax, (label, r) in zip(axes[0], parts, strict=True):
            timeline = r["timeline"]
            per = timeline["accepted_per_s"]
            seconds = len(next(iter(per.values())))
            majority = [per["h1"][i] + per["h2"][i] for i in range(seconds)]
            ax.step(range(seconds), majority, where="post", color=COLORS["etcd"],
                    label="hosts 1+2 (majority side)")
            ax.step(range(seconds), per["h3"], where="post", color=COLORS["shim-mesh"],
                    label="host 3 (cut off)")
            ax.axvspan(timeline["cut_from_s"], timeline["cut_until_s"], color="grey",
                       alpha=0.2, label="partition")
            ax.set_title(label)
            ax.set_xlabel("seconds")
            ax.set_ylabel("writes acknowledged per second")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle("Writes acknowledged per second on each side of a partition")
        fig.tight_layout()
        fig.savefig(out_dir / "partition.png", dpi=100)
        plt.close(fig)
        made.append("partition.png")
    return made

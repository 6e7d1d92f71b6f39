"""results.md for bench/run-replication: one section per scenario."""

from __future__ import annotations

from typing import Any

from bench.replication.common import fmt_ms, fmt_num


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _fail(run: dict[str, Any] | None) -> str:
    if not run:
        return "not run"
    notes = []
    if run.get("failure"):
        notes.append(run["failure"])
    errors = sum((run.get("errors") or {}).values())
    if errors:
        notes.append(f"{errors} errors")
    return "; ".join(notes)


def section_a(a: dict[str, Any], sizes: Any) -> list[str]:
    runs = a["runs"]
    md = [
        "## A. 3 etcd members vs 3 shim replicas (puts spread over the 3 nodes)", "",
        "etcd's benchmark tool, `put --key-size=16 --val-size=256 --key-space-size=100000`, "
        "`--endpoints` = all three; each connection goes to one endpoint, round robin "
        "(1 client: `--conns=1`, all on node 1; 16 clients: `--conns=3`; 100 clients: "
        f"`--conns=9`). Puts per run: {sizes.put_c1:,} / {sizes.put_c16:,} / "
        f"{sizes.put_c100:,}. etcd: a real 3-member cluster (quorum commit, fsync on every "
        "member); shim: full mesh, `--sqlite-synchronous FULL`, a put is acknowledged once "
        "durable on the node that took it. \"caught up after\": time from the tool's exit "
        "until every node holds every entry. Server CPU: all three processes, per put.",
        "",
        "| clients | etcd req/s | p50 ms | p99 ms | shim req/s | p50 ms | p99 ms "
        "| shim/etcd req/s | shim/etcd p99 | shim caught up after s | server CPU µs/put "
        "etcd / shim | other processes % etcd / shim |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for c in (1, 16, 100):
        e, s = runs.get(f"etcd3_c{c}"), runs.get(f"shim3_c{c}")
        if e is None and s is None:
            continue
        e, s = e or {}, s or {}
        drained = s.get("drained_s")
        drain = fmt_num(drained, 2) if drained is not None else (
            f"not in {s.get('drain_timeout_s', 0):.0f}" if s else "-")
        md.append(
            f"| {c} | {fmt_num(e.get('rate'))} | {fmt_ms(e.get('p50'))} | {fmt_ms(e.get('p99'))} "
            f"| {fmt_num(s.get('rate'))} | {fmt_ms(s.get('p50'))} | {fmt_ms(s.get('p99'))} "
            f"| {_ratio(s.get('rate'), e.get('rate'))} | {_ratio(s.get('p99'), e.get('p99'))} "
            f"| {drain} | {fmt_num(e.get('cpu_us_per_put'))} / {fmt_num(s.get('cpu_us_per_put'))} "
            f"| {_pct(e.get('foreign_cpu_pct'))} / {_pct(s.get('foreign_cpu_pct'))} |")
        for label, run in (("etcd", e), ("shim", s)):
            if run and _fail(run):
                notes.append(f"- {c} clients, {label}: {_fail(run)} (raw/{run['name']}.out)")
    per_node = []
    for c in (1, 16, 100):
        s = runs.get(f"shim3_c{c}") or {}
        each, count = s.get("server_cpu_s_each"), s.get("count")
        if each and count:
            per_node.append(f"{c} clients " + " / ".join(
                f"{v / count * 1e6:,.0f}" for v in each))
    if per_node:
        md += ["", "shim server CPU per put by node, µs (n1 / n2 / n3; with 1 client all puts "
               "go to n1, so n2 and n3 only replicate): " + "; ".join(per_node) + "."]
    leaders = a.get("etcd_leader", {})
    if leaders:
        md += ["", "etcd leader at each run (node 1 = m1): "
               + ", ".join(f"{k}: {v}" for k, v in leaders.items()) + "."]
    md += notes
    md += [
        "", "### One client against one node: single node vs 3 members / replicas", "",
        "`--conns=1 --clients=1`, all puts to node 1 (for etcd: member m1, forwarded to the "
        "leader when m1 is a follower). Single nodes are fresh servers of the same kind on the "
        "same disk, run just before.", "",
        "| system | 1 node req/s | p50 ms | p99 ms | 3 nodes req/s | p50 ms | p99 ms "
        "| p50 3 / 1 | p99 3 / 1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, one, three in (("etcd", "etcd1_c1", "etcd3_c1"), ("shim", "shim1_c1", "shim3_c1")):
        o, t = runs.get(one) or {}, runs.get(three) or {}
        md.append(
            f"| {label} | {fmt_num(o.get('rate'))} | {fmt_ms(o.get('p50'))} "
            f"| {fmt_ms(o.get('p99'))} | {fmt_num(t.get('rate'))} | {fmt_ms(t.get('p50'))} "
            f"| {fmt_ms(t.get('p99'))} | {_ratio(t.get('p50'), o.get('p50'))} "
            f"| {_ratio(t.get('p99'), o.get('p99'))} |")
    return md


def section_b(b: dict[str, Any]) -> list[str]:
    shim, etcd = b.get("shim", {}), b.get("etcd", {})
    md = [
        "## B. Replication lag at a steady write rate", "",
        f"One writer puts 256 B values at {fmt_num(shim.get('rate'))}/s for "
        f"{fmt_num(shim.get('seconds'))} s on node 1 (open loop); a Watch stream on every node "
        "(same process, same clock) records each event's arrival. Lag = event arrival minus the "
        "put's acknowledgement on node 1 (node 1's own row is the local watch delay, and can be "
        "negative: the event may beat the ack). etcd: the same on the 3-member cluster "
        f"(leader: {b.get('etcd_leader', '?')}).", "",
        "| system | node | events | lag p50 ms | p99 ms | max ms | missing | writer: puts/s "
        "achieved, put p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, run in (("shim", shim), ("etcd", etcd)):
        if not run:
            continue
        pl = run.get("put_latency", {})
        writer = (f"{fmt_num(run.get('achieved_rate'))}, {fmt_ms(pl.get('p50'))} / "
                  f"{fmt_ms(pl.get('p99'))}")
        for name, node in run.get("nodes", {}).items():
            lag = node["lag"]
            md.append(f"| {label} | {name} | {node['events']:,} | {fmt_ms(lag['p50'])} "
                      f"| {fmt_ms(lag['p99'])} | {fmt_ms(lag['max'])} | {node['missing']} "
                      f"| {writer} |")
            writer = ""
    errs = {k: v for k, v in (("shim", shim), ("etcd", etcd)) if v.get("errors")}
    for k, v in errs.items():
        md.append(f"\n{k} writer errors: {v['errors']}")
    return md


def section_c(c: dict[str, Any]) -> list[str]:
    if c.get("skipped"):
        return ["## C. Convergence after a partition", "", f"Skipped: {c['skipped']}"]
    w1, w2 = c.get("writer_h1", {}), c.get("writer_h2", {})
    links = c.get("links_up_s") or []
    md = [
        "## C. Convergence after a partition (network namespaces, real packet drops)", "",
        "Three hosts (one shim each, full mesh) on a bridge; nftables drops every frame between "
        "host 1 and hosts 2+3 (open TCP connections stall, as in a real partition). During the "
        f"partition writers put 256 B values at {fmt_num(c.get('rate_per_side'))}/s on host 1 "
        "and on host 2, one put in ten to 50 keys both sides write (conflicts to merge). Heal = "
        "the drop rules removed. Converged = the three databases hold identical key/value sets "
        "containing every acknowledged key (sha256 over the sorted pairs, polled every 50 ms "
        "from the root namespace, read-only).", "",
        "| measure | value |", "|---|---:|",
        f"| partition length (measured) | {fmt_num(c.get('partition_measured_s'), 1)} s |",
        f"| backlog: puts acknowledged on host 1 / on host 2 during it | "
        f"{fmt_num(w1.get('acked'))} / {fmt_num(w2.get('acked'))} |",
        f"| backlog: entries each side lacked at the heal | {fmt_num(c.get('backlog_entries'))} |",
        f"| keys before the heal (h1 / h2 / h3) | "
        f"{' / '.join(fmt_num(k) for k in c.get('before_heal', {}).get('keys', []))} |",
        f"| heal → first link to host 1 up | {fmt_num(links[0], 2) if links else '-'} s |",
        f"| heal → both links to host 1 up | {fmt_num(c.get('links_up_all_s'), 2)} s |",
        f"| heal → identical on all three | {fmt_num(c.get('converged_s'), 2)} s |",
        "| per node: heal → final state (h1 / h2 / h3) | "
        + " / ".join(fmt_num(v, 2) for v in c.get("node_converged_s", {}).values()) + " s |",
        f"| catch-up rate, from the heal | {fmt_num(c.get('catchup_rate_from_heal'))} entries/s |",
        f"| catch-up rate, from the first link up | "
        f"{fmt_num(c.get('catchup_rate_from_links_up'))} entries/s |",
        f"| keys at the end (identical everywhere) | {fmt_num(c.get('final_keys'))} "
        f"({'yes' if c.get('identical') else 'NO'}) |",
        f"| conflicts merged (h1 / h2 / h3) | "
        f"{' / '.join(str(x) for x in c.get('conflicts_merged', []))} |",
        f"| ordinary replication before the partition (50 puts) | every node has every entry "
        f"{fmt_num(c.get('warmup_converged_s'), 2)} s after the writer ended |",
    ]
    return md


def section_d(d: dict[str, Any]) -> list[str]:
    if d.get("skipped"):
        return ["## D. Bytes replicated per put", "", f"Skipped: {d['skipped']}"]
    md = [
        "## D. Bytes replicated per put (wire counters of the lab switch)", "",
        f"Same lab, no faults. A writer on host 1 puts at {fmt_num(d.get('rate'))}/s for "
        f"{fmt_num(d.get('seconds'))} s; bytes = Ethernet frames forwarded between the bridge "
        "ports of each pair of hosts (nftables counters, both directions: entries, gRPC/HTTP2 "
        "framing, TCP/IP headers, ACKs, heartbeats, keepalives), from just before the writer "
        "starts until every node holds every entry. \"entry\" = one replication_pb2.Entry as "
        "serialised on the link; a put must reach 2 other nodes, so 2 entries is the floor "
        "of what any topology sends (plus framing and ACKs).", "",
        "| payload | puts | value B | ops B | entry B | h1-h2 B/put | h1-h3 B/put | h2-h3 B/put "
        "| total B/put | packets/put | total / entry |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in (("256 B value", "v256"), ("~2 KB Pod JSON, 2-field update", "kube")):
        ph = d.get(key)
        if not ph:
            continue
        pp = ph.get("per_put", {})
        md.append(
            f"| {label} | {fmt_num(ph.get('puts'))} | {fmt_num(ph.get('value_bytes'))} "
            f"| {fmt_num(ph.get('ops_bytes'))} | {fmt_num(ph.get('entry_pb_bytes'))} "
            f"| {fmt_num(pp.get('h1-h2'))} | {fmt_num(pp.get('h1-h3'))} "
            f"| {fmt_num(pp.get('h2-h3'))} | {fmt_num(ph.get('per_put_total'))} "
            f"| {fmt_num(ph.get('packets_per_put_total'), 1)} "
            f"| {fmt_num(ph.get('entry_copies'), 1)} |")
    idle = d.get("idle_bytes_per_s", {})
    if idle:
        md += ["", "Idle links (heartbeats every second, gRPC keepalive every 2 s), bytes/s: "
               + ", ".join(f"{k} {fmt_num(v)}" for k, v in idle.items()) + "."]
    return md


def section_e(e: dict[str, Any]) -> list[str]:
    p = e.get("propagation", {})
    p2 = e.get("propagation_settled") or {}
    leaves = 2 * e.get("leaves_per_middle", 0)
    md = [
        f"## E. Gaia-like tree: 1 root, 2 middles, {leaves} leaves ({leaves + 3} processes)", "",
        "All on loopback; each leaf `--join`s its middle, the middles join the root. Leaves "
        f"start {e.get('window')} at a time (a new one as soon as one is linked). Join: from "
        "the leaf's dial (its \"serving\" log line; the dial starts a few ms before) to its "
        "\"linked to\" line; process start = the bench's clock at spawn. Propagation: Watch "
        f"streams on the root and all {leaves} leaves from the bench process; "
        f"{p.get('writes', '?')} writes at the root, then {p.get('writes', '?')} writes on "
        "leaves (alternating middles), one at a time. Round 1 right after the idle "
        "measurement; round 2 once no leaf link has dropped for "
        f"{fmt_num(e.get('settle_quiet_s'))} s (if that happens within "
        f"{fmt_num(e.get('settle_limit_s'))} s). Link drops = leaf links that ended "
        "(\"link with node ... closed\" in the leaves' logs).", "",
        "| measure | n | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|",
    ]
    rows = [
        ("leaf: process start → serving", e.get("start_to_serving")),
        ("leaf join: dial → link up", e.get("join_dial_to_link")),
        ("leaf join: process start → link up", e.get("join_start_to_link")),
    ]
    for tag, r in (("round 1", p), ("round 2, links settled", p2)):
        if not r:
            continue
        rows += [
            (f"{tag}: root write → event on every leaf (slowest leaf)",
             r.get("root_to_all_leaves")),
            (f"{tag}: root write → event on a leaf (each leaf)", r.get("root_to_each_leaf")),
            (f"{tag}: leaf write → event at the root", r.get("leaf_to_root")),
            (f"{tag}: leaf write → event on every other leaf", r.get("leaf_to_all_leaves")),
        ]
    for label, st in rows:
        if st:
            md.append(f"| {label} | {st['count']} | {fmt_ms(st['p50'])} | {fmt_ms(st['p99'])} "
                      f"| {fmt_ms(st['max'])} |")
    settled = e.get("settled_after_s")
    md += [
        "",
        f"- whole tree up and linked in {fmt_num(e.get('startup_s'), 1)} s; stopped in "
        f"{fmt_num(e.get('stop_s'), 1)} s",
        f"- leaf link drops: {fmt_num(e.get('link_drops_startup'))} while the tree started, "
        f"{fmt_num(e.get('idle_link_drops'))} in the 5 s idle window, "
        f"{fmt_num(p.get('link_drops'))} during round 1 ({fmt_num(p.get('seconds'), 0)} s)"
        + (f", {fmt_num(p2.get('link_drops'))} during round 2" if p2 else "")
        + "; " + (f"quiet for {fmt_num(e.get('settle_quiet_s'))} s after waiting "
                  f"{fmt_num(settled, 0)} s" if settled is not None else
                  f"still dropping after {fmt_num(e.get('settle_limit_s'))} s"),
        f"- idle (links up, nothing written): {fmt_num(e.get('idle_cpu_cores'), 2)} cores for "
        f"all processes together; RSS {fmt_num(e.get('rss_mib_total'))} MiB in total "
        f"(a leaf {fmt_num(e.get('rss_mib_leaf'), 1)} MiB, a middle "
        f"{fmt_num(e.get('rss_mib_middle'), 1)} MiB)",
        f"- {p.get('watchers', '?')} Watch streams opened in "
        f"{fmt_num(p.get('watch_setup_s'), 1)} s; missing events: {p.get('missing_events', '?')}"
        + (f" / {p2.get('missing_events')}" if p2 else "")
        + (f"; watch errors: {p['watch_errors']}" if p.get("watch_errors") else ""),
        f"- other processes' share of the machine: idle window "
        f"{_pct(e.get('idle_foreign_pct'))} %, round 1 {_pct(p.get('foreign_pct'))} %"
        + (f", round 2 {_pct(p2.get('foreign_pct'))} %" if p2 else ""),
    ]
    return md


def markdown(meta: dict[str, Any], results: dict[str, Any], sizes: Any,
             log_findings: dict[str, list[str]] | None = None) -> str:
    md = [
        f"# shim replication benchmark ({meta['mode']} run)", "",
        f"- date: {meta['date']}; took {meta['duration_s']:.0f} s",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']}; load average at start {meta['load_average_start']}, "
        f"at end {meta['load_average_end']}",
        f"- data: {meta['data_dir']}",
        f"- etcd {meta['etcd']}; shim commit {meta['shim_commit']}; Python {meta['python']}, "
        f"grpcio {meta['grpcio']}; etcd tool {meta['tool']}",
        "",
    ]
    for sid, fn in (("A", lambda r: section_a(r, sizes)), ("B", section_b), ("C", section_c),
                    ("D", section_d), ("E", section_e)):
        if sid in results:
            r = results[sid]
            if r.get("failure"):
                md += [f"## {sid}: FAILED", "", "```", r["failure"], "```", ""]
                if len(r) > 1:
                    try:
                        md += [*fn(r), ""]
                    except Exception as exc:  # partial results may lack fields
                        md += [f"(partial results not shown: {exc!r})", ""]
                continue
            md += [*fn(r), ""]
    if log_findings:
        md += ["## Server log lines that look like errors", ""]
        for name, lines in log_findings.items():
            md += [f"{name}: (count x line)", "", "```", *lines, "```", ""]
    return "\n".join(md).rstrip() + "\n"

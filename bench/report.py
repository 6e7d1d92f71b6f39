"""results.md (tables) and the PNG charts from a suite's Measurements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.model import SHIMS, Footprint, Measurement
from bench.suite import Results
from bench.workloads import LOADGEN_ROWS, Sizes, tool_workloads

COLORS = {"etcd": "#4c72b0", "shim": "#dd8452", "shim-pg": "#c44e52", "bare": "#55a868"}
SUB_ROWS = ("mix_range", "mix_txn_range", "mix_txn_put", "mix_watch", "list_page")


def row_titles(sizes: Sizes) -> dict[str, str]:
    titles = {row: title for w in tool_workloads(sizes) for row, title, _ in w.rows}
    titles.update({row: title for row, title, _ in LOADGEN_ROWS})
    return titles


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    ratio = a / b
    if ratio < 0.1:
        return f"{ratio:.3f}x"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def ratio_pairs(targets: tuple[str, ...]) -> list[tuple[str, str, bool]]:
    """(numerator, denominator, with p99) of the ratio columns the targets allow: each shim
    against etcd (req/s and p99) and bare (req/s), and shim-pg against shim."""
    pairs = [(s, "etcd", True) for s in SHIMS if s in targets and "etcd" in targets]
    pairs += [(s, "bare", False) for s in SHIMS if s in targets and "bare" in targets]
    if set(SHIMS) <= set(targets):
        pairs.append(("shim-pg", "shim", True))
    return pairs


class Table:
    """Lookup of measurements by (row, target)."""

    def __init__(self, measurements: list[Measurement]) -> None:
        self.by_key = {(m.workload, m.target): m for m in measurements}
        self.rows = list(dict.fromkeys(m.workload for m in measurements))

    def get(self, row: str, target: str) -> Measurement | None:
        return self.by_key.get((row, target))


def results_table(results: Results, titles: dict[str, str], targets: tuple[str, ...]) -> str:
    table = Table(results.measurements)
    head = ["workload"]
    for target in targets:
        head += [f"{target} req/s", "p50 ms", "p99 ms"]
    pairs = ratio_pairs(targets)
    for a, b, with_p99 in pairs:
        head += [f"{a}/{b} req/s"] + ([f"{a}/{b} p99"] if with_p99 else [])
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    notes: list[str] = []
    for row in table.rows:
        cells = [titles.get(row, row)]
        for target in targets:
            m = table.get(row, target)
            if m is None:
                cells += ["n/a", "", ""]
            elif m.failure:
                notes.append(f"{titles.get(row, row)} on {target}: {m.failure}")
                cells += [f"FAILED [{len(notes)}]", "", ""]
            else:
                mark = ""
                if m.errors:
                    notes.append(f"{titles.get(row, row)} on {target}: {m.error_count} errors: "
                                 + "; ".join(f"{n}x {e}" for e, n in list(m.errors.items())[:3]))
                    mark = f" [{len(notes)}]"
                cells += [_rate(m.rate) + mark, _ms(m.p50), _ms(m.p99)]
        cells += _ratio_cells(table, row, pairs)
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    if notes:
        out += "\n\n" + "\n".join(f"[{i}] {note}  " for i, note in enumerate(notes, 1))
    return out


def _ratio_cells(table: Table, row: str, pairs: list[tuple[str, str, bool]]) -> list[str]:
    cells = []
    for a, b, with_p99 in pairs:
        ma, mb = (table.get(row, t) for t in (a, b))
        x = ma if ma is not None and not ma.failure else None
        y = mb if mb is not None and not mb.failure else None
        cells.append(_ratio(x and x.rate, y and y.rate))
        if with_p99:
            cells.append(_ratio(x and x.p99, y and y.p99))
    return cells


def footprint_table(footprints: list[Footprint]) -> str:
    if not footprints:
        return "(footprint not measured)"
    lines = [
        "| target | keys loaded | RSS fresh MiB | RSS loaded MiB | disk fresh MiB | "
        "disk loaded MiB | of which WAL MiB | load time s | load errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_target = {fp.target: fp for fp in footprints}
    for fp in footprints:
        errors = ", ".join(f"{n}x {e}" for e, n in fp.load_errors.items()) or "none"
        lines.append(
            f"| {fp.target} | {fp.keys:,} | {_mib(fp.rss_idle)} | {_mib(fp.rss_loaded)} | "
            f"{_mib(fp.disk_idle)} | {_mib(fp.disk_loaded)} | {_mib(fp.wal_loaded)} | "
            f"{fp.load_seconds:.1f} | {errors} |"
        )
    for a, b in (("shim", "etcd"), ("shim-pg", "etcd"), ("shim-pg", "shim")):
        x, y = by_target.get(a), by_target.get(b)
        if x and y:
            lines.append(_footprint_ratio_row(f"{a}/{b}", x, y))
    return "\n".join(lines)


def _footprint_ratio_row(label: str, x: Footprint, y: Footprint) -> str:
    return (
        f"| {label} | | {_ratio(x.rss_idle, y.rss_idle)} | {_ratio(x.rss_loaded, y.rss_loaded)} | "
        f"{_ratio(x.disk_idle, y.disk_idle)} | {_ratio(x.disk_loaded, y.disk_loaded)} | "
        f"{_ratio(x.wal_loaded, y.wal_loaded)} | {_ratio(x.load_seconds, y.load_seconds)} | |"
    )


def cpu_table(results: Results, titles: dict[str, str], targets: tuple[str, ...]) -> str:
    """Server CPU per request, and how busy the load generator and everything else were."""
    table = Table(results.measurements)
    head = ["workload", *[f"{t} server CPU µs/op" for t in targets],
            "client CPU cores (" + "/".join(targets) + ")",
            "other processes % of machine (" + "/".join(targets) + ")"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for row in table.rows:
        if row in SUB_ROWS:
            continue
        cells, cores, foreign = [titles.get(row, row)], [], []
        for target in targets:
            m = table.get(row, target)
            if m is None or m.failure or not m.count or m.server_cpu_s is None:
                cells.append("-")
                cores.append("-")
                foreign.append("-")
                continue
            cells.append(f"{m.server_cpu_s / m.count * 1e6:,.0f}")
            cores.append(f"{(m.client_cpu_s or 0) / m.seconds:.2f}" if m.seconds else "-")
            foreign.append("-" if m.foreign_cpu_pct is None else f"{m.foreign_cpu_pct:.0f}")
        if all(cell == "-" for cell in cells[1:] + cores):
            continue
        cells += [" / ".join(cores), " / ".join(foreign)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(results: Results, path: Path, meta: dict[str, Any]) -> None:
    path.write_text(json.dumps({
        "meta": meta,
        "measurements": [m.to_json() for m in results.measurements],
        "footprints": [fp.to_json() for fp in results.footprints],
        "log_findings": results.log_findings,
    }, indent=1))


def _pyplot() -> Any:
    """matplotlib's pyplot drawing to files, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def latency_chart(
    results: Results, titles: dict[str, str], targets: tuple[str, ...], path: Path
) -> bool:
    """p50/p90/p99 bars per workload and target. False if matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    table = Table(results.measurements)
    rows = [r for r in table.rows if any(
        (m := table.get(r, t)) is not None and m.p50 is not None for t in targets
    )]
    if not rows:
        return False
    ncols = 4
    nrows = (len(rows) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    pcts = ("p50", "p90", "p99")
    width = 0.8 / len(targets)
    for ax, row in zip(axes.flat, rows, strict=False):
        for i, target in enumerate(targets):
            m = table.get(row, target)
            values = [getattr(m, p) if m is not None and not m.failure else None for p in pcts]
            xs = [x + (i - (len(targets) - 1) / 2) * width for x in range(len(pcts))]
            heights = [v if v is not None else 0 for v in values]
            ax.bar(xs, heights, width, label=target, color=COLORS.get(target))
        ax.set_xticks(range(len(pcts)), pcts)
        ax.set_title(titles.get(row, row), fontsize=9)
        ax.set_ylabel("ms", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncols=len(targets))
    fig.suptitle("Latency percentiles per workload (ms; lower is better)", x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def throughput_chart(
    results: Results, titles: dict[str, str], targets: tuple[str, ...], path: Path
) -> bool:
    """Throughput of shim and bare relative to etcd (etcd = 1), one bar per workload."""
    plt = _pyplot()
    if plt is None:
        return False
    table = Table(results.measurements)
    rows = []
    for row in table.rows:
        etcd = table.get(row, "etcd")
        if etcd is not None and etcd.rate and not etcd.failure:
            rows.append(row)
    others = [t for t in targets if t != "etcd"]
    if not rows or not others:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    height = 0.8 / len(others)
    for i, target in enumerate(others):
        values = []
        for row in rows:
            m, etcd = table.get(row, target), table.get(row, "etcd")
            ok = m is not None and m.rate and not m.failure and etcd is not None and etcd.rate
            values.append(m.rate / etcd.rate if ok else float("nan"))  # type: ignore[union-attr,operator]
        ys = [y + (i - (len(others) - 1) / 2) * height for y in range(len(rows))]
        ax.barh(ys, values, height, label=target, color=COLORS.get(target))
    ax.axvline(1.0, color=COLORS["etcd"], linestyle="--", label="etcd = 1")
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), [titles.get(r, r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("throughput relative to etcd (log scale; higher is better)")
    ax.legend(fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

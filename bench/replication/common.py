"""What the scenarios share: sizes (full and --quick), the run context, statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.model import percentile


@dataclass(frozen=True)
class Sizes:
    # A: puts per run of etcd's benchmark tool (1, 16, 100 clients)
    put_c1: int
    put_c16: int
    put_c100: int
    tool_timeout: float
    drain_timeout: float
    # B: steady writer
    lag_rate: float
    lag_seconds: float
    # C: partition
    partition_seconds: float
    partition_rate: float  # puts/s on each side
    converge_timeout: float
    # D: bytes on the wire
    wire_rate: float
    wire_seconds: float
    wire_idle_seconds: float
    kube_objects: int
    # E: Gaia-like tree
    leaves_per_middle: int
    start_window: int  # leaves starting at once
    gaia_writes: int
    settle_max: float  # E: how long to wait for the leaf links to stop dropping


FULL = Sizes(
    put_c1=10_000, put_c16=50_000, put_c100=50_000, tool_timeout=300, drain_timeout=180,
    lag_rate=200, lag_seconds=10,
    partition_seconds=30, partition_rate=50, converge_timeout=120,
    wire_rate=100, wire_seconds=10, wire_idle_seconds=5, kube_objects=200,
    leaves_per_middle=60, start_window=4, gaia_writes=20, settle_max=60,
)
QUICK = Sizes(
    put_c1=1_000, put_c16=3_000, put_c100=3_000, tool_timeout=90, drain_timeout=60,
    lag_rate=200, lag_seconds=5,
    partition_seconds=10, partition_rate=50, converge_timeout=60,
    wire_rate=100, wire_seconds=5, wire_idle_seconds=3, kube_objects=100,
    leaves_per_middle=10, start_window=4, gaia_writes=20, settle_max=20,
)


@dataclass
class Context:
    sizes: Sizes
    tool: Path
    out_dir: Path
    work_dir: Path
    wait_quiet: float = 0.0  # before each measurement, wait up to this long for an idle box
    results: dict[str, Any] = field(default_factory=dict)  # scenario id -> its results
    log_findings: dict[str, list[str]] = field(default_factory=dict)  # log -> suspect lines

    def scan_logs(self, label: str, paths: list[Path], etcd: bool = False) -> None:
        """Error-looking lines of the servers' logs (counted, as the main suite does)."""
        from bench.suite import log_findings

        text = "\n".join(p.read_text(errors="replace") for p in paths if p.exists())
        found = log_findings(text, ignore_reconnects=etcd)
        if found:
            self.log_findings[label] = found

    @property
    def raw(self) -> Path:
        path = self.out_dir / "raw"
        path.mkdir(parents=True, exist_ok=True)
        return path


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def stats_ms(values_s: list[float]) -> dict[str, float | int | None]:
    """count, p50, p99, max (ms) of durations given in seconds (nearest-rank percentiles)."""
    values = sorted(values_s)
    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1000
    return {
        "count": len(values),
        "p50": ms(percentile(values, 50)),
        "p99": ms(percentile(values, 99)),
        "max": ms(values[-1] if values else None),
    }


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) < 1:
        return f"{value:.3f}"
    if abs(value) < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:,.0f}"


def fmt_num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"

"""What one measurement is: a workload run against one target, and its summary numbers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

TARGETS = ("etcd", "shim", "bare")  # the default run
# shim-pg: shim on PostgreSQL (bench/pg_server.py), by --targets or --shim-datastore postgres
KNOWN_TARGETS = ("etcd", "shim", "shim-pg", "bare")
SHIMS = ("shim", "shim-pg")


@dataclass
class Measurement:
    """One workload on one target. Latencies in milliseconds; ``rate`` is per second."""

    workload: str
    target: str
    rate: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    p999: float | None = None
    count: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    failure: str | None = None  # why there are no numbers (timeout, crash, ...)
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    foreign_cpu_pct: float | None = None  # share of the machine used by other processes
    raw: list[str] = field(default_factory=list)  # files kept for this run, relative names

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class Footprint:
    """Disk and memory of one target, fresh and after loading ``keys`` keys."""

    target: str
    keys: int
    value_size: int
    rss_idle: int
    rss_loaded: int
    disk_idle: int | None
    disk_loaded: int | None
    wal_loaded: int | None  # the WAL's share of disk_loaded
    load_seconds: float
    load_errors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/p999 in milliseconds of latencies given in seconds."""
    values = sorted(latencies_s)
    out: dict[str, float | None] = {}
    for name, pct in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
        value = percentile(values, pct)
        out[name] = None if value is None else value * 1000
    return out

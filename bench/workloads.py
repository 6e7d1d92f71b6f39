"""The workloads and their sizes: full (the baseline.md commands) and --quick."""

from __future__ import annotations

from dataclasses import dataclass

ALL = ("etcd", "shim", "shim-pg", "bare")
NO_BARE = ("etcd", "shim", "shim-pg")
RANGE_KEY = "bench-range-key"
RANGE_VALUE_SIZE = 256
KEYS = ["--key-size=16", "--val-size=256", "--key-space-size=100000"]


@dataclass(frozen=True)
class ToolWorkload:
    """One run of etcd's benchmark tool per target; ``rows`` maps report sections to rows."""

    id: str
    args: tuple[str, ...]
    targets: tuple[str, ...]
    # (row id, row title, section title; "" = the first). CPU use is charged to the first row.
    rows: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class Sizes:
    """How much each workload does."""

    c1_total: int
    many_total: int
    watch_latency_total: int
    watch_latency_w100_total: int  # puts; each one is an event for 100 watchers
    watch_put_total: int
    watch_hotkey_put_total: int  # puts; each one is an event for 1,000 watchers
    tool_timeout: float
    mix_seconds: float
    mix_objects_per_worker: int
    list_objects: int
    list_iterations: int
    list_max_seconds: float
    footprint_keys: int


FULL = Sizes(
    c1_total=20_000, many_total=50_000, watch_latency_total=5_000,
    watch_latency_w100_total=2_000, watch_put_total=5_000, watch_hotkey_put_total=500,
    tool_timeout=300, mix_seconds=20, mix_objects_per_worker=250, list_objects=10_000,
    list_iterations=10, list_max_seconds=60, footprint_keys=100_000,
)
QUICK = Sizes(
    c1_total=1_000, many_total=3_000, watch_latency_total=1_000,
    watch_latency_w100_total=600, watch_put_total=500, watch_hotkey_put_total=100,
    tool_timeout=90, mix_seconds=5, mix_objects_per_worker=100, list_objects=10_000,
    list_iterations=3, list_max_seconds=15, footprint_keys=10_000,
)


def _one(row_id: str, title: str) -> tuple[tuple[str, str, str], ...]:
    return ((row_id, title, ""),)


def tool_workloads(sizes: Sizes) -> list[ToolWorkload]:
    """The baseline.md commands (only ``--total``/``--put-total`` shrink in --quick)."""
    c1, many = f"--total={sizes.c1_total}", f"--total={sizes.many_total}"
    conns = {1: ("--conns=1", "--clients=1"), 16: ("--conns=4", "--clients=16"),
             100: ("--conns=10", "--clients=100")}
    work = [
        ToolWorkload("put_c1", (*conns[1], "put", *KEYS, c1), ALL, _one("put_c1", "put, 1 client")),
        ToolWorkload(
            "put_c16", (*conns[16], "put", *KEYS, many), ALL, _one("put_c16", "put, 16 clients")
        ),
        ToolWorkload(
            "put_c100", (*conns[100], "put", *KEYS, many), ALL,
            _one("put_c100", "put, 100 clients"),
        ),
        ToolWorkload(
            "txnput_c100", (*conns[100], "txn-put", *KEYS, "--txn-ops=1", many), NO_BARE,
            _one("txnput_c100", "txn-put, 100 clients"),
        ),
    ]
    for consistency, name in (("l", "linearizable"), ("s", "serializable")):
        for clients, total in ((1, c1), (100, many)):
            row = f"range_{consistency}_c{clients}"
            work.append(ToolWorkload(
                row, (*conns[clients], "range", RANGE_KEY, f"--consistency={consistency}", total),
                ALL, _one(row, f"range {name}, {clients} client{'s' if clients > 1 else ''}"),
            ))
    work.append(ToolWorkload(
        "watch_latency",
        (*conns[1], "watch-latency", "--put-rate=500", f"--total={sizes.watch_latency_total}",
         "--key-size=32", "--val-size=256"),
        ALL, _one("watch_latency", "watch latency (put ack → event), 500 puts/s"),
    ))
    work.append(ToolWorkload(
        "watch_latency_w100",
        (*conns[100], "watch-latency", "--put-rate=200",
         f"--total={sizes.watch_latency_w100_total}", "--key-size=32", "--val-size=256"),
        ALL,
        _one("watch_latency_w100", "watch latency (put ack → event), 100 watchers, 200 puts/s"),
    ))
    work.append(ToolWorkload(
        "watch_fanout",
        ("--conns=10", "--clients=10", "watch", "--streams=10", "--watch-per-stream=100",
         "--watched-key-total=100", f"--put-total={sizes.watch_put_total}", "--put-rate=100000",
         "--key-size=32", "--key-space-size=100000", "--sequential-keys"),
        ALL,
        (("watch_fanout_events", "watch fan-out: events received (events/s)",
          "Watch events received"),
         ("watch_fanout_create", "watch fan-out: create 1000 watchers", "Watch creation")),
    ))
    # The same 1,000 watchers on one key: every put is an event for each of them, so streams
    # fall behind and a watcher's waiting revisions travel together.
    work.append(ToolWorkload(
        "watch_hotkey",
        ("--conns=10", "--clients=10", "watch", "--streams=10", "--watch-per-stream=100",
         "--watched-key-total=1", f"--put-total={sizes.watch_hotkey_put_total}",
         "--put-rate=100000", "--key-size=32", "--key-space-size=100000", "--sequential-keys"),
        ALL,
        (("watch_hotkey_events", "watch fan-out, 1000 watchers of one key: events received "
          "(events/s)", "Watch events received"),),
    ))
    return work


def footprint_load_args(keys: int) -> list[str]:
    """Load ``keys`` distinct keys (16 B, 256 B values) with 100 clients, each key once."""
    return ["--conns=10", "--clients=100", "put", "--key-size=16", "--val-size=256",
            f"--key-space-size={keys}", f"--total={keys}", "--sequential-keys"]


# Rows measured with the Python load generator, in report order.
LOADGEN_ROWS = (
    ("mix", "kube mix: all ops", NO_BARE),
    ("mix_range", "kube mix: range (52%)", NO_BARE),
    ("mix_txn_range", "kube mix: txn range (16%)", NO_BARE),
    ("mix_txn_put", "kube mix: txn put (29%)", NO_BARE),
    ("mix_watch", "kube mix: watch create (2%)", NO_BARE),
    ("list_load", "LIST preload: put 1-4 KB objects", ALL),
    ("list_full", "LIST 10k objects, one request", ALL),
    ("list_paged", "LIST 10k objects, pages of 500 (whole walk)", ALL),
    ("list_page", "LIST 10k objects: one page of 500", ALL),
)

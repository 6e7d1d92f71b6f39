"""Soak: a steady update load with automatic compaction and replication retention keeps the
database (file + WAL) near the live data size instead of growing with every write."""

from __future__ import annotations

import threading
from pathlib import Path

from shim.pb import rpc_pb2
from tests.support.client import Client
from tests.support.shim_server import ShimServer

KEYS = 200
VALUE_BYTES = 1024
ROUNDS = 150  # 30,000 writes: about 60 MiB of values (log + entries) without hygiene
THREADS = 4
KEEP_REVISIONS = 2000


def _disk_bytes(db: Path) -> tuple[int, int]:
    wal = Path(f"{db}-wal")
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0


def test_database_stays_bounded_under_steady_updates(tmp_path: Path) -> None:
    db = tmp_path / "node" / "state.db"
    args = [
        "--auto-compaction-mode", "revision",
        "--auto-compaction-retention", str(KEEP_REVISIONS),
        "--maintenance-interval", "1s",
        "--replication-retention", "0s",
    ]
    samples: list[tuple[int, int, int]] = []  # (writes so far, db bytes, wal bytes)
    with ShimServer(tmp_path / "node", extra_args=args) as node:
        written = 0
        lock = threading.Lock()

        def load(worker: int) -> None:
            nonlocal written
            with Client(node.endpoint) as client:
                for round_ in range(ROUNDS):
                    for k in range(worker, KEYS, THREADS):
                        value = (f"{round_:06d}".encode() * VALUE_BYTES)[:VALUE_BYTES]
                        client.kv.Put(rpc_pb2.PutRequest(key=f"/soak/{k:04d}".encode(),
                                                         value=value), timeout=30)
                    with lock:
                        written += KEYS // THREADS
                        if worker == 0 and round_ % 15 == 14:
                            samples.append((written, *_disk_bytes(db)))

        workers = [threading.Thread(target=load, args=(w,)) for w in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        with Client(node.endpoint) as client:
            status = client.maintenance.Status(rpc_pb2.StatusRequest())
            live = client.kv.Range(rpc_pb2.RangeRequest(key=b"/soak/", range_end=b"/soak0"))
        final = _disk_bytes(db)
    writes = KEYS * ROUNDS
    live_bytes = sum(len(kv.key) + len(kv.value) for kv in live.kvs)
    assert len(live.kvs) == KEYS and writes == written
    assert status.header.revision == writes + 1
    # Every value written exists once in the log and once as a replication entry.
    written_bytes = 2 * writes * VALUE_BYTES
    total = final[0] + final[1]
    report = (
        f"writes {writes}, written {written_bytes / 2**20:.1f} MiB, live {live_bytes / 2**20:.2f} "
        f"MiB, kept history {KEEP_REVISIONS} revisions; db {final[0] / 2**20:.1f} MiB + WAL "
        f"{final[1] / 2**20:.1f} MiB; samples (writes, db, wal): {samples}"
    )
    print(report)
    # History kept on purpose: KEEP_REVISIONS versions in the log, plus each key's entry.
    kept = (KEEP_REVISIONS + KEYS) * VALUE_BYTES * 2
    assert total < 4 * (kept + live_bytes), report
    assert total < written_bytes / 4, report
    # Bounded, not merely slow growth: the second half of the run adds (almost) nothing.
    half = samples[len(samples) // 2]
    assert total <= 1.5 * (half[1] + half[2]) + 4 * 2**20, report

"""What replication retention costs the writer, and what it leaves on disk.

A node that takes part in replication records an entry for every write; retention
(``--replication-retention``) strips the entries no merge needs any more to stubs, in chunks
of 1,000 that go through the single write path (writes wait for each chunk). This runs in
process on a real SQLite file: ``--entries`` puts of 300 B values over 100 opaque keys (as
Kubernetes Leases are kept whole) on a Store with replication, a physical compaction, then
retention's chunks until none is left; it prints the slowest chunk (how long writes could
wait), the whole pass, a later pass with nothing to strip (what every maintenance interval
pays), and the database's bytes per write after a defragment (the stubs and their indexes).

    .venv/bin/python -m bench.retention_cost --entries 80000
    PYTHONPATH=OTHER/src .venv/bin/python -m bench.retention_cost   # another tree's shim
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from shim.backend.sqlite import SqliteBackend
from shim.mvcc.store import Store
from shim.pb import rpc_pb2
from shim.replication.policy import Policy
from shim.replication.requests import PruneEntries
from shim.replication.resolve import Replica
from shim.replication.signing import Signer

CHUNK = 1000


async def run(workdir: Path, entries: int) -> dict[str, float]:
    path = workdir / "state.db"
    backend = SqliteBackend(path, synchronous="NORMAL")
    backend.open()
    store = Store(backend, Replica(backend.node_id, policy=Policy.load(None), signer=Signer()))
    await store.start()
    try:
        for start in range(0, entries, 256):
            await asyncio.gather(*(
                store.put(rpc_pb2.PutRequest(
                    key=b"/registry/leases/kube-node-lease/node-%03d" % (i % 100),
                    value=b"x" * 300))
                for i in range(start, min(entries, start + 256))
            ))
        await store.compact(rpc_pb2.CompactionRequest(revision=store.revision, physical=True))
        cutoff = time.time_ns() // 1_000_000 + 1000  # every entry is old enough
        chunks: list[float] = []
        stripped = 0
        while True:
            started = time.perf_counter()
            count = await store.write_expecting(int, PruneEntries(cutoff, CHUNK))
            chunks.append(time.perf_counter() - started)
            stripped += count
            if count < CHUNK:
                break
        started = time.perf_counter()
        await store.write_expecting(int, PruneEntries(cutoff, CHUNK))
        idle = time.perf_counter() - started
        await store.defragment()
    finally:
        await store.close()
        backend.close()
    return {
        "stripped": float(stripped),
        "pass_s": sum(chunks),
        "slowest_chunk_ms": max(chunks) * 1000,
        "idle_pass_ms": idle * 1000,
        "db_bytes_per_write": path.stat().st_size / entries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="retention-cost-") as tmp:
        result = asyncio.run(run(Path(tmp), args.entries))
    print(json.dumps({"entries": args.entries, **{k: round(v, 3) for k, v in result.items()}}))


if __name__ == "__main__":
    main()

"""Where a catch-up entry's CPU goes, in-process, on this tree's install: the sender's part
(reading a page of entries, ``to_wire``, encoding the batch, gzip as the link does) and the
receiver's (gunzip, decoding, ``admission.admit_batch`` with its signature checks, the merge
through the store's write path: the SQL, the fold, the commit).

Node A (a real Store on a SQLite file, entries signed) takes ``--puts`` puts of 256 B values
(``--pods``: kubelet-like status updates of 50 Pods stored as protobuf, which B merges field
by field); its entries are then sent to node B in batches of 500, one phase at a time, each
phase timed with this process's CPU clock (the merge runs on B's writer thread while this one
waits).

    .venv/bin/python -m bench.ingest_cost [--pods]
    PYTHONPATH=OTHER/src .venv/bin/python -m bench.ingest_cost   # another tree's shim
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from shim.backend.base import ReadView
from shim.backend.sqlite import SqliteBackend
from shim.mvcc.store import Store
from shim.pb import replication_pb2 as pb
from shim.pb.rpc_pb2 import PutRequest
from shim.replication.admission import IngestLimits, admit_batch
from shim.replication.entry import Entry
from shim.replication.ingest import merge
from shim.replication.policy import Policy
from shim.replication.requests import MergeRequest, PeerRegistration
from shim.replication.resolve import Replica
from shim.replication.runs import cut_runs, signed_runs
from shim.replication.signing import Signer
from shim.replication.tables import tables
from shim.replication.wire import to_wire

BATCH = 500
LIMITS = IngestLimits(1572864)


class _Clock:
    """This process's CPU time per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.process_time()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.process_time() - started


async def _node(path: Path) -> tuple[SqliteBackend, Store, Replica]:
    backend = SqliteBackend(path)
    backend.open()
    replica = Replica(backend.node_id, signer=Signer())
    store = Store(backend, replica)
    await store.start()
    return backend, store, replica


async def run(puts: int, root: Path, pods: bool = False) -> dict[str, float]:
    clock = _Clock()
    backend_a, a, replica_a = await _node(root / "a.db")
    backend_b, b, replica_b = await _node(root / "b.db")
    try:
        if pods:
            for request in _pod_puts(puts):  # in order: each update is made over the last
                await a.write(request)
        for first in range(0, 0 if pods else puts, 100):
            await asyncio.gather(*(
                a.write(PutRequest(key=b"/catchup/%06d" % i, value=b"v" * 256))
                for i in range(first, min(first + 100, puts))
            ))
        await b.write(PeerRegistration(backend_a.node_id, "a", "bench", "peer",
                                       replica_a.origin))
        cursor = 0
        while True:
            with clock.phase("send: read page"):
                rows = await a.read(functools.partial(_page, after=cursor))
            if not rows:
                break
            cursor = rows[-1][0]
            entries = _send_and_receive(clock, rows, cursor, replica_b.policy)
            with clock.phase("receive: merge (writer)"):
                await merge(b, MergeRequest(backend_a.node_id, entries, cursor, cursor))
    finally:
        for store, backend in ((a, backend_a), (b, backend_b)):
            await store.close()
            backend.close()
    return {phase: round(seconds / puts * 1e6, 1) for phase, seconds in clock.seconds.items()}


def _pod_puts(puts: int) -> list[PutRequest]:
    """50 Pods stored as protobuf, then kubelet-like status updates of them (``puts`` in
    all): entries a replica merges field by field."""
    from bench.k8sproto_put import encoder, key, pod_updates

    encode = encoder("protobuf")
    created, changes = pod_updates(50, puts - 50)
    return [PutRequest(key=key(i), value=encode(pod)) for i, pod in enumerate(created)] + [
        PutRequest(key=key(i), value=encode(pod)) for i, pod in changes]


def _page(view: ReadView, after: int) -> list[tuple[int, Entry]]:
    repl = tables(view)
    page = repl.entries_at([p for p, _, _ in repl.positions_after(after, BATCH)])
    rows, _ = signed_runs(repl, page, {})
    return rows


def _send_and_receive(
    clock: _Clock, rows: list[tuple[int, Entry]], cursor: int, policy: Policy
) -> list[Entry]:
    with clock.phase("send: to_wire"):
        wire = [msg for _, msg in cut_runs([(i, to_wire(e)) for i, e in rows], 1 << 30,
                                           1 << 30)]
    with clock.phase("send: encode"):
        data = pb.LinkMessage(batch=pb.Batch(entries=wire, cursor=cursor, high=cursor))
        data_bytes = data.SerializeToString()
    with clock.phase("send: gzip"):
        packed = _gzip(data_bytes)
    with clock.phase("receive: gunzip"):
        data_bytes = zlib.decompress(packed, 31)
    with clock.phase("receive: decode"):
        msg = pb.LinkMessage.FromString(data_bytes)
    with clock.phase("receive: admit (signature)"):
        entries, refused = admit_batch(list(msg.batch.entries), policy, LIMITS)
    assert not refused, refused[0].reason
    return entries


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=31)
    return packer.compress(data) + packer.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=5000)
    parser.add_argument("--pods", action="store_true",
                        help="Pod status updates stored as protobuf, not 256 B values")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-cost-") as tmp:
        us = asyncio.run(run(args.puts, Path(tmp), args.pods))
    print(json.dumps({"puts": args.puts, "pods": args.pods, "cpu_us_per_entry": us}))


if __name__ == "__main__":
    main()

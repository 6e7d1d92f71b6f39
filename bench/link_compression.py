"""Would compressing replication batches pay? Bytes and CPU per entry, per batch size.

Builds the batches a link sends (``shim.pb.replication_pb2.Batch``, entries made the way a
node makes them: ``write_ops.describe_write`` records a Pod edit's field operations) for the two
payloads of bench/run-edge's scenario W (256 B values of hex text; ~2 KB Pods edited in two
fields), at batch sizes from 1 (a steady trickle: one put per batch) to 500 (catch-up), and
compresses each with gzip and deflate (zlib at its default level 6, as gRPC's own gzip and
deflate compression). Reports the encoded bytes per entry and the CPU time per entry to
compress and to decompress (best of several rounds, this process only).

    .venv/bin/python -m bench.link_compression
"""

from __future__ import annotations

import random
import time
import uuid
import zlib
from collections.abc import Callable

from bench.replication.client import kube_bytes, kube_object, kube_update, random_value
from shim.pb import replication_pb2 as pb
from shim.replication import ops as field_ops
from shim.replication.policy import Policy
from shim.replication.write_ops import describe_write

SIZES = (1, 10, 100, 500)
ROUNDS = 5


def value_entries(n: int, rng: random.Random) -> list[pb.Entry]:
    origin = uuid.UUID(int=rng.getrandbits(128)).hex
    hlc = int(time.time() * 1000) << 16
    return [pb.Entry(origin=origin, seq=1000 + i, hlc=hlc + i * 40000,
                     key=b"/edge/wire/h1/%06d" % i, value=random_value(256, rng))
            for i in range(n)]


def pod_entries(n: int, rng: random.Random) -> list[pb.Entry]:
    origin = uuid.UUID(int=rng.getrandbits(128)).hex
    hlc = int(time.time() * 1000) << 16
    policy = Policy.load()
    out = []
    for i in range(n):
        key = b"/registry/pods/bench/web-%05d" % (i % 100)
        doc = kube_object(i % 100, random.Random(i % 100))
        old, new = kube_bytes(doc), kube_bytes(kube_update(doc, i))
        ops, base_uid, uid = describe_write(old, new, policy.rules_for(key))
        entry = pb.Entry(origin=origin, seq=1000 + i, hlc=hlc + i * 40000, key=key, value=new,
                         base_uid=base_uid or "", uid=uid or "")
        if ops is not None:
            entry.has_ops, entry.ops = True, field_ops.dumps(ops).encode()
        out.append(entry)
    return out


def cpu_per_call(fn: Callable[[], object], calls: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return best


def gzip_compress(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def main() -> None:
    codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "gzip": (gzip_compress, lambda d: zlib.decompress(d, 47)),
        "deflate": (zlib.compress, zlib.decompress),
    }
    rng = random.Random(1)
    print("| payload | entries per batch | none B/entry | gzip B/entry | deflate B/entry "
          "| gzip compress us/entry | gzip decompress us/entry | deflate compress us/entry "
          "| deflate decompress us/entry |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for payload, make in (("256 B value", value_entries), ("~2 KB Pod, 2 fields", pod_entries)):
        for size in SIZES:
            msg = pb.LinkMessage(batch=pb.Batch(entries=make(size, rng), cursor=1, high=1,
                                                hlc=1, acked=1)).SerializeToString()
            cells = [payload, str(size), f"{len(msg) / size:,.0f}"]
            timings = []
            for compress, decompress in codecs.values():
                packed = compress(msg)
                assert decompress(packed) == msg
                cells.append(f"{len(packed) / size:,.0f}")
                calls = max(1, 2000 // size)
                timings += [cpu_per_call(lambda c=compress, m=msg: c(m), calls) / size * 1e6,
                            cpu_per_call(lambda d=decompress, p=packed: d(p), calls) / size * 1e6]
            cells += [f"{t:.1f}" for t in timings]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

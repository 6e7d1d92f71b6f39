"""What merging Kubernetes protobuf objects field by field costs a local put.

kube-apiserver stores Pods as protobuf; since shim decodes them to record field operations
(issue 15), every put of one costs a decode and a diff. This measures that cost where a user
pays it: server CPU per put (user + system, from /proc) of a shim node that admits replication
links, taking kubelet-like status updates of ~2 KB Pods, one client, one put at a time. The
same updates are also put as JSON (which shim already merged field by field) for comparison.

    .venv/bin/python -m bench.k8sproto_put                      # this tree's installed shim
    .venv/bin/python -m bench.k8sproto_put --shim-python OTHER  # another install (e.g. main's)
    .venv/bin/python -m bench.k8sproto_put --opaque             # Pods kept whole (no merging)
    .venv/bin/python -m bench.k8sproto_put --micro              # describe_write alone, in-process
    .venv/bin/python -m bench.k8sproto_put --store [--opaque]   # the write path in-process

Compare two installs in one run of the machine (same load), and read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from shim.pb import rpc_pb2, rpc_pb2_grpc
from shim.replication.policy import DEFAULT_POLICY_FILE
from tests.support import k8s_pb
from tests.support.shim_server import ShimServer


def pod_updates(objects: int, updates: int) -> tuple[list[Any], list[tuple[int, Any]]]:
    """``objects`` Pods, then ``updates`` kubelet-like status updates of them, round robin
    (the Ready condition flips; the kubelet's managedFields entry gets a new time)."""
    created = [k8s_pb.pod(name=f"web-7d4b9c8f6-{i:05d}", uid=f"uid-{i:05d}")
               for i in range(objects)]
    current = list(created)
    out = []
    for n in range(updates):
        i = n % objects

        def kubelet(pod: Any, n: int = n) -> None:
            ready = pod.status.conditions[1]
            ready.status = "False" if n // objects % 2 == 0 else "True"
            ready.lastTransitionTime.seconds += n + 1
            pod.metadata.managedFields[1].time.seconds += n + 1

        current[i] = k8s_pb.edited(current[i], kubelet)
        out.append((i, current[i]))
    return created, out


def as_json(obj: Any) -> bytes:
    doc = {"apiVersion": "v1", "kind": obj.DESCRIPTOR.name,
           **json_format.MessageToDict(obj, preserving_proto_field_name=True)}
    return json.dumps(doc, separators=(",", ":")).encode()


def encoder(encoding: str) -> Any:
    return k8s_pb.stored if encoding == "protobuf" else as_json


def key(i: int) -> bytes:
    return f"/registry/pods/default/web-7d4b9c8f6-{i:05d}".encode()


# -- a shim server ------------------------------------------------------------------------------


def opaque_policy(workdir: Path) -> Path:
    """The built-in merge policy with Pods kept whole: what a put costs when its value is
    opaque (recorded, never decoded), the figure merging must stay close to."""
    document = json.loads(DEFAULT_POLICY_FILE.read_text())
    document["kinds"].append({"prefix": "/registry/pods/", "merge": "whole"})
    path = workdir / "opaque-policy.json"
    path.write_text(json.dumps(document))
    return path


@contextmanager
def shim_server(python: str, workdir: Path, opaque: bool = False) -> Iterator[ShimServer]:
    # A node that admits links records an entry for every write (one that never replicates
    # need not), so this is the cost a replicating node pays.
    args = ["--log-level=warning", "--name=bench", "--bootstrap-token=bench-token"]
    if opaque:
        args.append(f"--merge-policy={opaque_policy(workdir)}")
    server = ShimServer(workdir, extra_args=args, startup_timeout=60,
                        python=os.path.abspath(python))
    with server:
        yield server


def measure_server(
    python: str, encoding: str, objects: int, updates: int, opaque: bool = False
) -> dict[str, float]:
    encode = encoder(encoding)
    creates, changes = pod_updates(objects, updates)
    create_values = [(key(i), encode(p)) for i, p in enumerate(creates)]
    update_values = [(key(i), encode(p)) for i, p in changes]
    with (
        tempfile.TemporaryDirectory(prefix="k8sproto-bench-") as tmp,
        shim_server(python, Path(tmp), opaque) as server,
        grpc.insecure_channel(server.endpoint) as channel,
    ):
        stub = rpc_pb2_grpc.KVStub(channel)
        for k, v in create_values:
            stub.Put(rpc_pb2.PutRequest(key=k, value=v))
        cpu0, wall0 = server.cpu_seconds(), time.perf_counter()
        for k, v in update_values:
            stub.Put(rpc_pb2.PutRequest(key=k, value=v))
        cpu1, wall1 = server.cpu_seconds(), time.perf_counter()
    size = sum(len(v) for _, v in update_values) / len(update_values)
    return {"bytes": size, "cpu_us_per_put": (cpu1 - cpu0) / updates * 1e6,
            "puts_per_s": updates / (wall1 - wall0)}


def measure_store(encoding: str, objects: int, updates: int, opaque: bool) -> dict[str, float]:
    """The same puts through a Store in this process (SQLite file, signed entries, no gRPC):
    the write path's CPU per put, without the serving stack's share (and its noise). Runs any
    install's shim (``PYTHONPATH=. OTHER/bin/python -m bench.k8sproto_put --store``)."""
    import asyncio

    from shim.backend.sqlite import SqliteBackend
    from shim.mvcc.store import Store
    from shim.replication.policy import Policy
    from shim.replication.resolve import Replica
    from shim.replication.signing import Signer

    encode = encoder(encoding)
    creates, changes = pod_updates(objects, updates)
    create_values = [(key(i), encode(p)) for i, p in enumerate(creates)]
    update_values = [(key(i), encode(p)) for i, p in changes]

    async def run(workdir: Path) -> float:
        backend = SqliteBackend(workdir / "bench.db")
        backend.open()
        policy = Policy.load(opaque_policy(workdir) if opaque else None)
        store = Store(backend, Replica(backend.node_id, policy=policy, signer=Signer()))
        await store.start()
        try:
            for k, v in create_values:
                await store.write(rpc_pb2.PutRequest(key=k, value=v))
            started = time.process_time()
            for k, v in update_values:
                await store.write(rpc_pb2.PutRequest(key=k, value=v))
            return time.process_time() - started
        finally:
            await store.close()
            backend.close()

    with tempfile.TemporaryDirectory(prefix="k8sproto-bench-") as tmp:
        seconds = asyncio.run(run(Path(tmp)))
    return {"cpu_us_per_put": seconds / updates * 1e6}


def measure_describe_write(encoding: str, objects: int, updates: int) -> dict[str, float]:
    """describe_write of each update over the one before, in order, as the node records
    them (each round from a fresh process state: the creates are recorded first)."""
    try:
        from shim.replication.write_ops import describe_write
    except ImportError:  # a build from before the merge's origin side had a module of its own
        from shim.replication.merge import describe_write
    from shim.replication.policy import Policy

    rules = Policy.load().rules_for(key(0))
    encode = encoder(encoding)
    creates, changes = pod_updates(objects, updates)
    created = [encode(p) for p in creates]
    current = dict(enumerate(created))
    pairs = []
    for i, p in changes:
        new = encode(p)
        pairs.append((current[i], new))
        current[i] = new
    rounds, total = 3, 0.0
    for _ in range(rounds):
        _forget_versions()
        for value in created:
            describe_write(None, value, rules)
        start = time.thread_time()  # CPU time: other processes' load counts less
        for old, new in pairs:
            describe_write(old, new, rules)
        total += time.thread_time() - start
    return {"cpu_us_per_describe_write": total / (rounds * len(pairs)) * 1e6}


def _forget_versions() -> None:
    """Empty what shim keeps of the versions it read (an install from before it kept
    anything has nothing to empty)."""
    try:
        from shim.replication import proto_changes
    except ImportError:
        return
    proto_changes.forget()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shim-python", default=sys.executable,
                        help="the python whose installed shim serves (default: this one)")
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--encoding", choices=["protobuf", "json", "both"], default="both")
    parser.add_argument("--opaque", action="store_true",
                        help="serve with Pods kept whole (merge policy 'whole'): the baseline")
    parser.add_argument("--micro", action="store_true",
                        help="time describe_write in this process instead of serving")
    parser.add_argument("--store", action="store_true",
                        help="time the puts through a Store in this process instead of serving")
    args = parser.parse_args()
    encodings = ["protobuf", "json"] if args.encoding == "both" else [args.encoding]
    for encoding in encodings:
        if args.micro:
            result = measure_describe_write(encoding, args.objects, args.puts)
        elif args.store:
            result = measure_store(encoding, args.objects, args.puts, args.opaque)
        else:
            result = measure_server(args.shim_python, encoding, args.objects, args.puts,
                                    args.opaque)
        label = {"encoding": encoding, "opaque": args.opaque, "store": args.store} if not (
            args.micro) else {"encoding": encoding}
        print(json.dumps({**label, **{k: round(v, 1) for k, v in result.items()}}))


if __name__ == "__main__":
    main()

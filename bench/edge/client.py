"""The edge bench's clients: programs run inside a lab host (``ip netns exec``), talking to
that host's own etcd member or shim node, writing a JSON summary to ``--out``.

    python -m bench.edge.client load   --endpoint E --op put|get|mix --clients C --duration S
    python -m bench.edge.client paced  --endpoint E --site NAME --rate R --duration S ...
    python -m bench.edge.client poll   --endpoint E --interval S --duration S
    python -m bench.edge.client actor  --endpoint E --role rs|scheduler|kubelet
    python -m bench.edge.client flow   --endpoint E --iterations N
    python -m bench.edge.client dump   --endpoint E --prefix P
    python -m bench.edge.client leader --endpoints E1,E2,... [--move-to E]

Every process measures with time.monotonic(), which all namespaces of the machine share, so
times from different hosts compare directly. ``--start-at T`` (a monotonic time) lines up
processes started on several hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc

from bench.kube_mix import MixWorker
from bench.model import percentile
from bench.replication.client import kube_bytes, kube_object, random_value
from bench.workers import CHANNEL_OPTIONS, prefix_end
from shim.pb import rpc_pb2, rpc_pb2_grpc

RPC_TIMEOUT = 30.0
POD_PREFIX = b"/registry/pods/edge/"
DEPLOYMENT_KEY = b"/registry/deployments/edge/web"


def channel(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


async def until(start_at: float | None) -> None:
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))


def summary(latencies_s: list[float], seconds: float) -> dict[str, Any]:
    values = sorted(latencies_s)

    def ms(pct: float) -> float | None:
        value = percentile(values, pct)
        return None if value is None else value * 1000

    return {"count": len(values), "rate": len(values) / seconds if seconds > 0 else None,
            "p50": ms(50), "p99": ms(99), "max": ms(100)}


def error_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return type(exc).__name__


# ------------------------------------------------------------------ load: closed loop


async def load(args: argparse.Namespace) -> dict[str, Any]:
    """``clients`` coroutines, each one request at a time, for ``duration`` seconds."""
    rng = random.Random(args.seed)
    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    async with channel(args.endpoint) as chan:
        kv = rpc_pb2_grpc.KVStub(chan)
        prefix = args.prefix.encode()
        value = random_value(args.value_size, rng)
        await kv.Put(rpc_pb2.PutRequest(key=prefix + b"read", value=value), timeout=RPC_TIMEOUT)
        mix: MixWorker | None = None
        if args.op == "mix":
            mix = MixWorker(args.seed, {"processes": 1, "objects_per_worker": args.objects,
                                        "concurrency": args.clients, "duration": args.duration,
                                        "seed": args.seed, "prefix": b"/registry" + prefix})
            await mix.setup(kv, parallel=16)
        await until(args.start_at)
        started = time.monotonic()
        if mix is not None:
            await mix.run(chan)
            latencies, errors = mix.out.latencies, mix.out.errors
        else:
            deadline = started + args.duration

            async def client(n: int) -> None:
                i = 0
                while time.monotonic() < deadline:
                    i += 1
                    if args.op == "put":
                        call: Awaitable[Any] = kv.Put(rpc_pb2.PutRequest(
                            key=prefix + b"c%03d/%06d" % (n, i % 1000), value=value),
                            timeout=RPC_TIMEOUT)
                    else:  # a linearizable read, as kube-apiserver's
                        call = kv.Range(rpc_pb2.RangeRequest(key=prefix + b"read"),
                                        timeout=RPC_TIMEOUT)
                    t0 = time.perf_counter()
                    try:
                        await call
                    except grpc.aio.AioRpcError as exc:
                        errors[error_name(exc)] = errors.get(error_name(exc), 0) + 1
                        continue
                    latencies.setdefault(args.op, []).append(time.perf_counter() - t0)

            await asyncio.gather(*(client(n) for n in range(args.clients)))
        seconds = time.monotonic() - started
    every = [v for values in latencies.values() for v in values]
    return {"op": args.op, "clients": args.clients, "seconds": seconds, "errors": errors,
            "started": started, "all": summary(every, seconds),
            "ops": {op: summary(values, seconds) for op, values in latencies.items()},
            "latencies_ms": [round(v * 1000, 3) for v in every]}


# ------------------------------------------------------------------ paced: open loop


def pod(n: int) -> dict[str, Any]:
    doc = kube_object(n, random.Random(n), "edge")
    doc["metadata"]["name"] = f"shared-{n:03d}"
    doc["metadata"]["annotations"] = {}
    return doc


def pod_key(n: int) -> bytes:
    return POD_PREFIX + b"shared-%03d" % n


async def edit_pod(kv: rpc_pb2_grpc.KVStub, n: int, site: str, seq: int,
                   timeout: float) -> None:
    """kube-apiserver's GuaranteedUpdate: read the object, set this site's annotation, write it
    back if nobody wrote it since (else read again and retry)."""
    key = pod_key(n)
    for _ in range(5):
        got = await kv.Range(rpc_pb2.RangeRequest(key=key), timeout=timeout)
        doc = json.loads(got.kvs[0].value) if got.kvs else pod(n)
        revision = got.kvs[0].mod_revision if got.kvs else 0
        doc["metadata"].setdefault("annotations", {})[f"edge/{site}"] = str(seq)
        resp = await kv.Txn(rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.MOD,
                                     result=rpc_pb2.Compare.EQUAL, mod_revision=revision)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
                key=key, value=kube_bytes(doc)))],
        ), timeout=timeout)
        if resp.succeeded:
            return
    raise RuntimeError("conflict: 5 tries")


async def paced(args: argparse.Namespace) -> dict[str, Any]:
    """Writes at ``rate`` per second whatever the answers (open loop), each with a deadline:
    most to this site's own keys, every ``shared_every``-th to a key every site writes, every
    ``pod_every``-th an edit of a shared Pod (this site's annotation). ``--create-pods`` first
    creates the Pods (not timed)."""
    rng = random.Random(args.seed)
    site = args.site
    # per write: [due offset s, latency s or None, kind, error or "", pod or -1, seq]
    records: list[list[Any]] = []
    async with channel(args.endpoint) as chan:
        kv = rpc_pb2_grpc.KVStub(chan)
        await kv.Range(rpc_pb2.RangeRequest(key=b"ready"), timeout=RPC_TIMEOUT)
        if args.create_pods:
            await asyncio.gather(*(edit_pod(kv, n, site, 0, RPC_TIMEOUT)
                                   for n in range(args.pods)))
        await until(args.start_at)
        started = time.monotonic()
        tasks = []
        # One site edits one Pod at a time (as one controller would): its last acknowledged
        # edit is then the last it made.
        pod_locks = [asyncio.Lock() for _ in range(args.pods)]

        async def edit(n: int, seq: int) -> None:
            async with pod_locks[n]:
                await edit_pod(kv, n, site, seq, args.timeout)

        async def one(record: list[Any], call: Awaitable[Any]) -> None:
            t0 = time.monotonic()
            try:
                await call
                record[1] = time.monotonic() - t0
            except Exception as exc:  # counted, not fatal: refusals are what is measured
                record[3] = error_name(exc)

        for i in range(int(args.rate * args.duration)):
            await asyncio.sleep(max(0.0, started + i / args.rate - time.monotonic()))
            record: list[Any] = [i / args.rate, None, "own", "", -1, i]
            call: Awaitable[Any]
            if args.pod_every and i % args.pod_every == 0:
                record[2], record[4] = "pod", rng.randrange(args.pods)
                call = edit(record[4], i)
            else:
                if args.shared_every and i % args.shared_every == 1:
                    record[2] = "shared"
                    key = args.shared_prefix.encode() + b"%03d" % rng.randrange(args.shared_keys)
                else:
                    key = args.prefix.encode() + b"%07d" % i
                call = kv.Put(rpc_pb2.PutRequest(key=key, value=random_value(
                    args.value_size, rng)), timeout=args.timeout)
            records.append(record)
            tasks.append(asyncio.ensure_future(one(record, call)))
        await asyncio.gather(*tasks)
        ended = time.monotonic()
    return {"site": site, "endpoint": args.endpoint, "rate": args.rate, "started": started,
            "ended": ended, "records": records}


# ------------------------------------------------------------------ poll: the revision


async def poll(args: argparse.Namespace) -> dict[str, Any]:
    """Every ``interval``, this node's revision and key count under ``prefix`` (a serializable
    read: what the node itself holds), for ``duration`` seconds or until SIGTERM. Each sample
    is also printed as it is taken: "monotonic-time revision count" (-1: the read failed)."""
    samples: list[list[float]] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    prefix = args.prefix.encode()
    async with channel(args.endpoint) as chan:
        kv = rpc_pb2_grpc.KVStub(chan)
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline and not stop.is_set():
            t0 = time.monotonic()
            try:
                resp = await kv.Range(rpc_pb2.RangeRequest(
                    key=prefix, range_end=prefix_end(prefix), count_only=True,
                    serializable=True), timeout=5)
                samples.append([t0, resp.header.revision, resp.count])
            except grpc.aio.AioRpcError:
                samples.append([t0, -1, -1])
            print(*samples[-1], flush=True)  # read live by the bench (EdgeLab.pollers)
            left = args.interval - (time.monotonic() - t0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, left))
    return {"samples": samples}


# ------------------------------------------------------------------ the Kubernetes flow


def deployment(replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "edge", "uid": "deploy-web",
                         "generation": replicas},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}}}


async def actor(args: argparse.Namespace) -> dict[str, Any]:
    """One controller at one site, reacting to its local store's watch events:
    rs: a Deployment with more replicas than Pods -> create a Pod (pending, unbound);
    scheduler: an unbound Pod -> bind it (spec.nodeName);
    kubelet: a Pod bound to its node, not Running -> status Running."""
    acted = 0
    async with channel(args.endpoint) as chan:
        kv = rpc_pb2_grpc.KVStub(chan)
        watch = rpc_pb2_grpc.WatchStub(chan)
        prefix = DEPLOYMENT_KEY if args.role == "rs" else POD_PREFIX
        end = b"" if args.role == "rs" else prefix_end(POD_PREFIX)
        call = watch.Watch()
        await call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=prefix, range_end=end)))
        created = await call.read()
        if created is grpc.aio.EOF or not created.created:
            raise RuntimeError(f"{args.role}: the watch was not created")
        print("watching", flush=True)
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                break
            for event in resp.events:
                if event.type != event.PUT:
                    continue
                doc = json.loads(event.kv.value)
                if await react(kv, args.role, event.kv.key, doc, event.kv.mod_revision):
                    acted += 1
    return {"role": args.role, "acted": acted}


async def react(kv: rpc_pb2_grpc.KVStub, role: str, key: bytes, doc: dict[str, Any],
                revision: int) -> bool:
    if role == "rs":
        replicas = doc["spec"]["replicas"]
        name = f"web-{replicas:04d}"
        pod_doc = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "edge", "uid": f"pod-{name}",
                                "ownerReferences": [{"kind": "ReplicaSet", "name": "web"}]},
                   "spec": {"containers": [{"name": "app", "image": "web:1"}]},
                   "status": {"phase": "Pending"}}
        new_key = POD_PREFIX + name.encode()
        return await create(kv, new_key, pod_doc)
    if role == "scheduler" and not doc["spec"].get("nodeName"):
        bound = copy.deepcopy(doc)
        bound["spec"]["nodeName"] = "edge-node-1"
        return await update(kv, key, bound, revision)
    if role == "kubelet" and doc["spec"].get("nodeName") == "edge-node-1" and (
            doc["status"].get("phase") != "Running"):
        running = copy.deepcopy(doc)
        running["status"]["phase"] = "Running"
        return await update(kv, key, running, revision)
    return False


async def create(kv: rpc_pb2_grpc.KVStub, key: bytes, doc: dict[str, Any]) -> bool:
    return await update(kv, key, doc, 0)


async def update(kv: rpc_pb2_grpc.KVStub, key: bytes, doc: dict[str, Any],
                 revision: int) -> bool:
    resp = await kv.Txn(rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.MOD,
                                 result=rpc_pb2.Compare.EQUAL, mod_revision=revision)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
            key=key, value=json.dumps(doc).encode()))],
    ), timeout=RPC_TIMEOUT)
    return bool(resp.succeeded)


async def flow(args: argparse.Namespace) -> dict[str, Any]:
    """The user and the observer at one site: scale the Deployment by one, then wait until the
    local store shows the new Pod Running; ``iterations`` times, one after the other."""
    times: list[float] = []
    async with channel(args.endpoint) as chan:
        kv = rpc_pb2_grpc.KVStub(chan)
        watch = rpc_pb2_grpc.WatchStub(chan)
        call = watch.Watch()
        await call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=POD_PREFIX, range_end=prefix_end(POD_PREFIX))))
        first = await call.read()
        assert first is not grpc.aio.EOF and first.created
        running: set[bytes] = set()
        base = int(args.base)
        for i in range(1, args.iterations + 1):
            replicas = base + i
            wanted = POD_PREFIX + f"web-{replicas:04d}".encode()
            await asyncio.sleep(args.pause)
            t0 = time.monotonic()
            await kv.Put(rpc_pb2.PutRequest(key=DEPLOYMENT_KEY,
                                            value=json.dumps(deployment(replicas)).encode()),
                         timeout=RPC_TIMEOUT)
            while wanted not in running:
                resp = await asyncio.wait_for(call.read(), args.timeout)
                if resp is grpc.aio.EOF:
                    raise RuntimeError("watch ended")
                for event in resp.events:
                    if event.type == event.PUT and json.loads(event.kv.value).get(
                            "status", {}).get("phase") == "Running":
                        running.add(event.kv.key)
            times.append(time.monotonic() - t0)
        call.cancel()
    return {"iterations": args.iterations, "seconds": times}


# ------------------------------------------------------------------ dump


async def dump(args: argparse.Namespace) -> dict[str, Any]:
    """Every key and value under ``prefix`` on this node (a serializable read)."""
    prefix = args.prefix.encode()
    async with channel(args.endpoint) as chan:
        resp = await rpc_pb2_grpc.KVStub(chan).Range(rpc_pb2.RangeRequest(
            key=prefix, range_end=prefix_end(prefix), serializable=True), timeout=RPC_TIMEOUT)
    return {"revision": resp.header.revision,
            "kvs": [[kv.key.decode(), kv.value.decode()] for kv in resp.kvs]}


# ------------------------------------------------------------------ etcd's leader


async def leader(args: argparse.Namespace) -> dict[str, Any]:
    """Which endpoint leads (and, with --move-to, hand leadership to that member first)."""
    endpoints = args.endpoints.split(",")

    async def status(endpoint: str) -> rpc_pb2.StatusResponse:
        async with channel(endpoint) as chan:
            return await rpc_pb2_grpc.MaintenanceStub(chan).Status(
                rpc_pb2.StatusRequest(), timeout=RPC_TIMEOUT)

    # Until every member names the same leader (after a partition, a returning member may
    # force an election first).
    deadline = time.monotonic() + args.timeout
    while True:
        states = {e: await status(e) for e in endpoints}
        ids = {s.header.member_id: e for e, s in states.items()}
        views = {ids.get(s.leader, "") for s in states.values()}
        if (len(views) == 1 and "" not in views) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    current = ids.get(next(iter(states.values())).leader, "")
    if args.move_to and current and current != args.move_to:
        async with channel(current) as chan:
            await rpc_pb2_grpc.MaintenanceStub(chan).MoveLeader(rpc_pb2.MoveLeaderRequest(
                targetID=states[args.move_to].header.member_id), timeout=RPC_TIMEOUT)
        states = {e: await status(e) for e in endpoints}
        current = ids.get(next(iter(states.values())).leader, "")
    return {"leader": current, "agreed": len(views) == 1 and "" not in views}


# ------------------------------------------------------------------ the program


def _write(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as out:
        json.dump(data, out)
    os.replace(tmp, path)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.edge.client")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name)
        c.add_argument("--endpoint", default="")
        c.add_argument("--out", required=True)
        c.add_argument("--start-at", type=float, default=None)
        c.add_argument("--seed", type=int, default=1)
        return c

    c = command("load")
    c.add_argument("--op", choices=("put", "get", "mix"), required=True)
    c.add_argument("--clients", type=int, default=1)
    c.add_argument("--duration", type=float, required=True)
    c.add_argument("--prefix", default="/edge/load/")
    c.add_argument("--value-size", type=int, default=256)
    c.add_argument("--objects", type=int, default=200, help="mix: objects created first")
    c = command("paced")
    c.add_argument("--site", required=True)
    c.add_argument("--rate", type=float, required=True)
    c.add_argument("--duration", type=float, required=True)
    c.add_argument("--prefix", required=True)
    c.add_argument("--value-size", type=int, default=256)
    c.add_argument("--shared-prefix", default="/edge/shared/")
    c.add_argument("--shared-keys", type=int, default=50)
    c.add_argument("--shared-every", type=int, default=0)
    c.add_argument("--pods", type=int, default=20)
    c.add_argument("--pod-every", type=int, default=0)
    c.add_argument("--create-pods", action="store_true")
    c.add_argument("--timeout", type=float, default=5.0)
    c = command("poll")
    c.add_argument("--interval", type=float, default=0.05)
    c.add_argument("--duration", type=float, required=True)
    c.add_argument("--prefix", default="/")
    c = command("actor")
    c.add_argument("--role", choices=("rs", "scheduler", "kubelet"), required=True)
    c = command("flow")
    c.add_argument("--iterations", type=int, required=True)
    c.add_argument("--base", type=int, default=0, help="replicas before the first scale")
    c.add_argument("--pause", type=float, default=0.2)
    c.add_argument("--timeout", type=float, default=30.0)
    c = command("dump")
    c.add_argument("--prefix", required=True)
    c = command("leader")
    c.add_argument("--endpoints", required=True)
    c.add_argument("--move-to", default="")
    c.add_argument("--timeout", type=float, default=60.0)
    return p.parse_args(argv)


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]] = {
    "load": load, "paced": paced, "poll": poll, "actor": actor, "flow": flow, "dump": dump,
    "leader": leader,
}


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        result = asyncio.run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 0
    _write(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

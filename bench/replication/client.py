"""Small etcd clients for the replication benchmarks (grpc.aio, shim.pb stubs).

- ``Watcher``: one Watch stream on a prefix, recording when each key's first event arrived.
- ``paced_puts``: puts at a fixed rate (open loop: a slow answer does not delay the next put),
  recording when each was acknowledged.
- Kubernetes-like JSON objects (about 2 KB) and small field updates of them.

Run as a program (``python -m bench.replication.client write ...``) it is the writer that the
network-namespace scenarios start inside a lab host, where the bench process cannot connect.
It prints nothing but writes a JSON summary to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.workers import prefix_end
from shim.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]


def channel(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


# ------------------------------------------------------------------ watching


class Watcher:
    """A Watch stream on ``prefix`` at one endpoint; ``seen[key]`` = perf_counter() when the
    key's first PUT event arrived (the events of one response share the time)."""

    def __init__(self, name: str, endpoint: str, prefix: bytes) -> None:
        self.name = name
        self.endpoint = endpoint
        self.prefix = prefix
        self.seen: dict[bytes, float] = {}
        self.seen_wall: dict[bytes, float] = {}
        self.events = 0
        self.error: str | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> Watcher:
        self._channel = channel(self.endpoint)
        self._call = rpc_pb2_grpc.WatchStub(self._channel).Watch()
        await self._call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=self.prefix, range_end=prefix_end(self.prefix))))
        resp = await asyncio.wait_for(self._call.read(), timeout)
        if resp is grpc.aio.EOF or not resp.created:
            raise RuntimeError(f"watch on {self.name} ({self.endpoint}) was not created")
        self._task = asyncio.ensure_future(self._loop())
        return self

    async def _loop(self) -> None:
        try:
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    self.error = "stream ended"
                    return
                now, wall = time.perf_counter(), time.time()
                for ev in resp.events:
                    self.events += 1
                    if ev.type == kv_pb2.Event.PUT and ev.kv.key not in self.seen:
                        self.seen[ev.kv.key] = now
                        self.seen_wall[ev.kv.key] = wall
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            self.error = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
        except Exception as exc:  # a bug here must show, not look like lost events
            self.error = repr(exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with _suppress_all():
                await self._task
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close()


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


async def start_watchers(watchers: list[Watcher], parallel: int = 20) -> None:
    sem = asyncio.Semaphore(parallel)

    async def one(w: Watcher) -> None:
        async with sem:
            await w.start()

    await asyncio.gather(*(one(w) for w in watchers))


async def wait_seen(watchers: list[Watcher], key: bytes, timeout: float) -> bool:
    """Until every watcher has seen ``key`` (True) or the timeout (False)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(key in w.seen for w in watchers):
            return True
        await asyncio.sleep(0.002)
    return all(key in w.seen for w in watchers)


# ------------------------------------------------------------------ writing


@dataclass
class PutLog:
    """What a paced writer did: per put, the key, when it was due and when it was acked."""

    keys: list[bytes] = field(default_factory=list)
    due: list[float] = field(default_factory=list)  # perf_counter()
    acked: list[float | None] = field(default_factory=list)  # perf_counter(), None: failed
    acked_wall: list[float | None] = field(default_factory=list)  # time.time()
    errors: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    behind: int = 0  # puts started late because too many were still in flight

    @property
    def ok(self) -> int:
        return sum(1 for a in self.acked if a is not None)

    def latencies_ms(self) -> list[float]:
        return [(a - d) * 1000 for d, a in zip(self.due, self.acked, strict=True)
                if a is not None]


async def paced_puts(
    stub: rpc_pb2_grpc.KVStub, rate: float, duration: float,
    make: Callable[[int], tuple[bytes, bytes]], max_in_flight: int = 256,
) -> PutLog:
    """Put ``make(i)`` (key, value) at ``rate`` per second for ``duration`` seconds."""
    log = PutLog()
    total = max(1, int(rate * duration))
    sem = asyncio.Semaphore(max_in_flight)
    tasks = []

    async def one(i: int, key: bytes, value: bytes) -> None:
        try:
            await stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=30)
            log.acked[i], log.acked_wall[i] = time.perf_counter(), time.time()
        except grpc.RpcError as exc:
            name = exc.code().name  # type: ignore[attr-defined]
            log.errors[name] = log.errors.get(name, 0) + 1
        finally:
            sem.release()

    log.started = start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if sem.locked():
            log.behind += 1
        await sem.acquire()
        key, value = make(i)
        log.keys.append(key)
        log.due.append(due)
        log.acked.append(None)
        log.acked_wall.append(None)
        tasks.append(asyncio.ensure_future(one(i, key, value)))
    await asyncio.gather(*tasks)
    log.ended = time.perf_counter()
    return log


def random_value(size: int, rng: random.Random) -> bytes:
    """``size`` bytes of hex text (like random bytes, but printable in `shim sql`)."""
    return rng.getrandbits(size * 4).to_bytes(size // 2, "big").hex().encode()[:size]


# ------------------------------------------------------------------ Kubernetes-like objects


def kube_object(n: int, rng: random.Random, namespace: str = "bench") -> dict[str, Any]:
    """A Pod-like object of about 2 KB of compact JSON."""
    name = f"web-{n:05d}-{rng.getrandbits(24):06x}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": f"{rng.getrandbits(128):032x}",
            "generation": 1, "creationTimestamp": "2026-11-23T20:00:00Z",
            "labels": {"app": "web", "pod-template-hash": f"{rng.getrandbits(32):08x}",
                       "tier": rng.choice(["frontend", "backend"])},
            "annotations": {"bench/seq": "0", "kubernetes.io/psp": "restricted"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": f"web-{n % 7}", "uid": f"{rng.getrandbits(128):032x}",
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "containers": [{
                "name": "app", "image": "registry.example/web:1.27.3",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": f"SETTING_{i}", "value": f"value-{rng.getrandbits(40):010x}"}
                        for i in range(4)],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}},
                "volumeMounts": [{"name": "kube-api-access", "readOnly": True,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "nodeName": f"node-{n % 13}", "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {
            "phase": "Running", "hostIP": f"10.0.{n % 250}.{n % 199 + 1}",
            "podIP": f"10.244.{n % 250}.{n % 201 + 1}", "startTime": "2026-11-23T20:00:01Z",
            "qosClass": "Burstable",
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": "2026-11-23T20:00:05Z"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [{
                "name": "app", "ready": True, "restartCount": 0, "started": True,
                "image": "registry.example/web:1.27.3",
                "containerID": "containerd://" + f"{rng.getrandbits(256):064x}",
                "state": {"running": {"startedAt": "2026-11-23T20:00:04Z"}},
            }],
        },
    }


def kube_key(doc: dict[str, Any]) -> bytes:
    meta = doc["metadata"]
    return f"/registry/pods/{meta['namespace']}/{meta['name']}".encode()


def kube_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def kube_update(doc: dict[str, Any], seq: int) -> dict[str, Any]:
    """A small change, as a kubelet status update or a controller's annotation: two fields."""
    new = copy.deepcopy(doc)
    new["metadata"]["annotations"]["bench/seq"] = str(seq)
    ready = next(c for c in new["status"]["conditions"] if c["type"] == "Ready")
    ready["lastProbeTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f".{seq}"
    return new


# ------------------------------------------------------------------ the writer program


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.replication.client")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="put at a fixed rate and write a JSON summary")
    w.add_argument("--endpoint", required=True)
    w.add_argument("--rate", type=float, required=True)
    w.add_argument("--duration", type=float, required=True)
    w.add_argument("--prefix", required=True, help="own keys: PREFIX<n>")
    w.add_argument("--value-size", type=int, default=256)
    w.add_argument("--shared-prefix", default="",
                   help="every --shared-every-th put goes to SHARED_PREFIX<k> instead (keys "
                   "both sides of a partition write: conflicts to merge)")
    w.add_argument("--shared-keys", type=int, default=50)
    w.add_argument("--shared-every", type=int, default=10)
    w.add_argument("--kube-objects", type=int, default=0,
                   help="instead: create this many ~2 KB Pod-like objects under "
                   "/registry/pods/<namespace>/ (--kube-phase create), or update them with "
                   "small field changes at --rate (--kube-phase update)")
    w.add_argument("--kube-phase", choices=("create", "update"), default="create")
    w.add_argument("--kube-namespace", default="bench")
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--out", required=True)
    return p.parse_args(argv)


async def _write(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    async with channel(args.endpoint) as chan:
        stub = rpc_pb2_grpc.KVStub(chan)
        await stub.Range(rpc_pb2.RangeRequest(key=b"bench-probe"), timeout=30)
        summary: dict[str, Any] = {}
        if args.kube_objects:
            docs = [kube_object(n, random.Random(args.seed * 100_000 + n), args.kube_namespace)
                    for n in range(args.kube_objects)]
            if args.kube_phase == "create":
                log = await paced_puts(
                    stub, args.rate, args.kube_objects / args.rate,
                    lambda i: (kube_key(docs[i]), kube_bytes(docs[i])),
                )
            else:
                def make(i: int) -> tuple[bytes, bytes]:
                    n = i % len(docs)
                    docs[n] = kube_update(docs[n], i + 1)
                    return kube_key(docs[n]), kube_bytes(docs[n])

                log = await paced_puts(stub, args.rate, args.duration, make)
            sizes = [len(kube_bytes(d)) for d in docs]
            summary["value_bytes_mean"] = sum(sizes) / len(sizes)
        else:
            own, shared = args.prefix.encode(), args.shared_prefix.encode()

            def make(i: int) -> tuple[bytes, bytes]:
                if shared and args.shared_every and i % args.shared_every == 0:
                    key = shared + b"%04d" % rng.randrange(args.shared_keys)
                else:
                    key = own + b"%07d" % i
                return key, random_value(args.value_size, rng)

            log = await paced_puts(stub, args.rate, args.duration, make)
            summary["value_bytes_mean"] = args.value_size
    lat = sorted(log.latencies_ms())
    summary.update({
        "endpoint": args.endpoint, "rate": args.rate, "planned": len(log.keys), "acked": log.ok,
        "errors": log.errors, "behind": log.behind,
        "seconds": log.ended - log.started,
        "first_ack_wall": min((a for a in log.acked_wall if a), default=None),
        "last_ack_wall": max((a for a in log.acked_wall if a), default=None),
        "latency_ms": {"p50": _pct(lat, 50), "p99": _pct(lat, 99), "max": lat[-1] if lat else None},
        "acked_keys": sorted({k.decode() for k, a in zip(log.keys, log.acked, strict=True) if a}),
    })
    return summary


def _pct(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    rank = max(1, -(-len(values) * pct // 100))
    return values[min(int(rank), len(values)) - 1]


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    summary = asyncio.run(_write(args))
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "w") as out:
        json.dump(summary, out)
    os.replace(tmp, args.out)
    return 0 if summary["acked"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

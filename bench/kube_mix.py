"""The Kubernetes-shaped mix: Get, read-only Txn, GuaranteedUpdate-style Txn, short watches."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc

from bench.workers import WorkerOutput, json_values, prefix_end, timed
from shim.pb import rpc_pb2, rpc_pb2_grpc

# The mix: 52% Get, 16% read-only Txn, 29% GuaranteedUpdate-style Txn, 2% short watch.
# (They add up to 99%: the shares are used as weights.)
MIX_WEIGHTS = {"range": 52, "txn_range": 16, "txn_put": 29, "watch": 2}
MIX_PREFIX = b"/registry/benchmix/"
MIX_NAMESPACES = 8
CREATE_SHARE = 0.1  # of the txn puts, this share creates a new key (compare mod_revision = 0)
def mix_key(worker: int, n: int, prefix: bytes = MIX_PREFIX) -> bytes:
    return prefix + f"ns-{n % MIX_NAMESPACES}/w{worker}-obj-{n:06d}".encode()


class MixWorker:
    """One process of the mix. It owns the keys it creates and tracks their mod_revision."""

    def __init__(self, index: int, params: dict[str, Any]) -> None:
        self.index = index
        self.workers: int = params["processes"]
        self.objects: int = params["objects_per_worker"]
        self.concurrency: int = params["concurrency"]
        self.duration: float = params["duration"]
        # where its keys go (a server that outlives one run needs a fresh prefix per run)
        self.prefix: bytes = params.get("prefix", MIX_PREFIX)
        self.rng = random.Random(params["seed"] * 1000 + index)
        self.values = json_values(self.rng, 64)
        self.revisions: dict[bytes, int] = {}  # owned key -> last known mod_revision
        self.created = 0
        self.out = WorkerOutput()

    async def setup(self, kv: rpc_pb2_grpc.KVStub, parallel: int = 1) -> None:
        """Create this worker's objects, ``parallel`` at a time (many where a write costs a
        round trip between sites)."""
        slots = asyncio.Semaphore(parallel)

        async def one(key: bytes) -> None:
            async with slots:
                resp = await kv.Txn(self._create(key))
            if resp.succeeded:
                self.revisions[key] = resp.header.revision
            else:  # left over from an earlier run on the same server
                self.revisions[key] = resp.responses[0].response_range.kvs[0].mod_revision

        keys = [mix_key(self.index, n, self.prefix) for n in range(self.objects)]
        await asyncio.gather(*(one(key) for key in keys))

    def _create(self, key: bytes) -> rpc_pb2.TxnRequest:
        return rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(
                key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=0
            )],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
                key=key, value=self.rng.choice(self.values)
            ))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        )

    def _update(self, key: bytes, revision: int) -> rpc_pb2.TxnRequest:
        return rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(
                key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL,
                mod_revision=revision,
            )],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
                key=key, value=self.rng.choice(self.values)
            ))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        )

    def _any_key(self) -> bytes:
        return mix_key(self.rng.randrange(self.workers), self.rng.randrange(self.objects),
                       self.prefix)

    async def run(self, channel: grpc.aio.Channel) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        watch = rpc_pb2_grpc.WatchStub(channel)
        deadline = time.monotonic() + self.duration
        ops, weights = list(MIX_WEIGHTS), list(MIX_WEIGHTS.values())
        mine = [list(self.revisions)[c :: self.concurrency] for c in range(self.concurrency)]

        async def client(owned: list[bytes]) -> None:
            while time.monotonic() < deadline:
                op = self.rng.choices(ops, weights)[0]
                if op == "range":
                    await timed(self.out, op, kv.Range(rpc_pb2.RangeRequest(key=self._any_key())))
                elif op == "txn_range":
                    req = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(
                        request_range=rpc_pb2.RangeRequest(key=self._any_key())
                    )])
                    await timed(self.out, op, kv.Txn(req))
                elif op == "txn_put":
                    await self._txn_put(kv, owned)
                else:
                    await self._watch(watch)

        await asyncio.gather(*(client(keys) for keys in mine))

    async def _txn_put(self, kv: rpc_pb2_grpc.KVStub, owned: list[bytes]) -> None:
        if not owned or self.rng.random() < CREATE_SHARE:
            self.created += 1
            key = mix_key(self.index, self.objects + self.created, self.prefix)
            request, op = self._create(key), "txn_put(create)"
            owned.append(key)
        else:
            key = self.rng.choice(owned)
            request, op = self._update(key, self.revisions[key]), "txn_put(update)"
        resp = await timed(self.out, "txn_put", kv.Txn(request))
        if resp is None:
            return
        if resp.succeeded:
            self.revisions[key] = resp.header.revision
        else:
            self.out.error(op, "compare failed (unexpected: keys are not shared)")
            kvs = resp.responses[0].response_range.kvs
            self.revisions[key] = kvs[0].mod_revision if kvs else 0

    async def _watch(self, watch: rpc_pb2_grpc.WatchStub) -> None:
        """A short-lived prefix watch, as a reflector's: create, wait for "created", cancel."""
        prefix = self.prefix + f"ns-{self.rng.randrange(MIX_NAMESPACES)}/".encode()
        started = time.perf_counter()
        call = watch.Watch()
        try:
            await call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
                key=prefix, range_end=prefix_end(prefix)
            )))
            while True:
                resp = await asyncio.wait_for(call.read(), 10.0)
                if resp is grpc.aio.EOF:
                    self.out.error("watch", "stream ended before created")
                    return
                if resp.created:
                    break
            self.out.record("watch", time.perf_counter() - started)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            self.out.error("watch", exc)
        finally:
            call.cancel()



"""Python load generator for what etcd's benchmark tool lacks: a Kubernetes-shaped mix, LIST.

Each worker is a separate (spawned) process with one grpc.aio channel and many coroutines, so
the generator is not held to one core by the GIL. Workers set up, meet at a barrier, run the
measured phase, and send back raw latencies (seconds) per operation type.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from bench.kube_mix import MixWorker
from bench.workers import CHANNEL_OPTIONS, WorkerOutput, json_values, prefix_end, timed
from shim.pb import rpc_pb2, rpc_pb2_grpc


def list_key(prefix: bytes, n: int) -> bytes:
    return prefix + f"object-{n:06d}".encode()


async def _load(channel: grpc.aio.Channel, index: int, params: dict[str, Any]) -> WorkerOutput:
    """Put this worker's share of ``params["count"]`` JSON objects under the prefix."""
    kv = rpc_pb2_grpc.KVStub(channel)
    out = WorkerOutput()
    rng = random.Random(params["seed"] * 1000 + index)
    values = json_values(rng, 64)
    prefix: bytes = params["prefix"]
    todo = list(range(index, params["count"], params["processes"]))
    pending = iter(todo)

    async def client() -> None:
        for n in pending:
            req = rpc_pb2.PutRequest(key=list_key(prefix, n), value=rng.choice(values))
            await timed(out, "put", kv.Put(req))

    await asyncio.gather(*(client() for _ in range(params["concurrency"])))
    return out


async def _list(channel: grpc.aio.Channel, params: dict[str, Any]) -> WorkerOutput:
    """LIST the prefix ``iterations`` times: whole, or in pages of ``page`` pinned to a revision.

    Paging is kube-apiserver's: limit, continue from the last key + "\\0", and every page after
    the first at the first page's revision.
    """
    kv = rpc_pb2_grpc.KVStub(channel)
    out = WorkerOutput()
    prefix: bytes = params["prefix"]
    end = prefix_end(prefix)
    page: int = params["page"]
    deadline = time.monotonic() + params["max_seconds"]
    for _ in range(params["iterations"]):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        seen = 0
        key, revision = prefix, 0
        while True:
            req = rpc_pb2.RangeRequest(key=key, range_end=end, limit=page, revision=revision)
            resp = await timed(out, "page", kv.Range(req)) if page else await timed(
                out, "list", kv.Range(req)
            )
            if resp is None:
                if page:
                    out.error("list", "a page failed")
                break
            seen += len(resp.kvs)
            if not page or not resp.more:
                break
            revision = revision or resp.header.revision
            key = resp.kvs[-1].key + b"\0"
        if page and resp is not None:
            out.record("list", time.perf_counter() - started)
        if resp is not None and seen != params["expected"]:
            out.error("list", f"got {seen} objects, expected {params['expected']}")
    return out


# ---------------------------------------------------------------- process plumbing


async def _worker(
    kind: str, index: int, params: dict[str, Any], barrier: Any
) -> WorkerOutput:
    async with grpc.aio.insecure_channel(params["endpoint"], options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        mix = MixWorker(index, params) if kind == "mix" else None
        if mix is not None:
            await mix.setup(rpc_pb2_grpc.KVStub(channel))
        await asyncio.to_thread(barrier.wait, 600)
        started, cpu = time.time(), time.process_time()
        if mix is not None:
            await mix.run(channel)
            out = mix.out
        elif kind == "load":
            out = await _load(channel, index, params)
        else:
            out = await _list(channel, params)
        out.started, out.ended, out.cpu_s = started, time.time(), time.process_time() - cpu
        return out


def _worker_main(kind: str, index: int, params: dict[str, Any], barrier: Any, results: Any) -> None:
    try:
        out = asyncio.run(_worker(kind, index, params, barrier))
        results.put((index, out, None))
    except BaseException as exc:  # report, never hang the parent
        barrier.abort()
        results.put((index, None, f"{type(exc).__name__}: {exc}"))


@dataclass
class LoadResult:
    latencies: dict[str, list[float]]
    errors: dict[str, int]
    wall_s: float
    client_cpu_s: float
    failure: str | None = None

    def ops(self, op: str) -> int:
        return len(self.latencies.get(op, []))

    def total_ops(self) -> int:
        return sum(len(v) for v in self.latencies.values() if v) - self.ops("page")


def run_workers(
    kind: str,
    params: dict[str, Any],
    processes: int,
    timeout: float,
    on_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Run ``processes`` workers of ``kind`` ("mix", "load" or "list") and merge their output.

    ``on_start`` is called once every worker has finished its setup, just as they start.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    params = {**params, "processes": processes}
    procs = [
        ctx.Process(target=_worker_main, args=(kind, i, params, barrier, results), daemon=True)
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    merged = LoadResult({}, {}, 0.0, 0.0)
    outputs: list[WorkerOutput] = []
    try:
        barrier.wait(timeout)
        if on_start is not None:
            on_start()
        for _ in procs:
            _, out, failure = results.get(timeout=timeout)
            if failure is not None:
                merged.failure = failure
            elif out is not None:
                outputs.append(out)
    except (queue.Empty, threading.BrokenBarrierError, TimeoutError) as exc:
        merged.failure = merged.failure or f"load generator: {type(exc).__name__} {exc}"
        # A worker that reported a failure put it on the queue before breaking the barrier.
        while True:
            try:
                _, _, failure = results.get_nowait()
            except queue.Empty:
                break
            merged.failure = failure or merged.failure
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    for out in outputs:
        for op, values in out.latencies.items():
            merged.latencies.setdefault(op, []).extend(values)
        for name, count in out.errors.items():
            merged.errors[name] = merged.errors.get(name, 0) + count
        merged.client_cpu_s += out.cpu_s
    if outputs:
        merged.wall_s = max(o.ended for o in outputs) - min(o.started for o in outputs)
    return merged

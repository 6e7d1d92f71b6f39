"""Shared pieces of the load generator's workers: timing, errors, JSON values, prefixes."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import grpc

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix"."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def json_values(rng: random.Random, count: int, lo: int = 1024, hi: int = 4096) -> list[bytes]:
    """``count`` Kubernetes-object-like JSON documents of lo..hi bytes each."""
    values = []
    for n in range(count):
        size = rng.randint(lo, hi)
        doc: dict[str, Any] = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": f"object-{n}", "namespace": "bench", "uid": f"{rng.getrandbits(128):032x}",
                "labels": {"app": "bench", "tier": rng.choice(["web", "db", "cache"])},
            },
            "data": {"payload": ""},
        }
        base = len(json.dumps(doc, separators=(",", ":")))
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        doc["data"]["payload"] = "".join(rng.choices(alphabet, k=max(0, size - base)))
        values.append(json.dumps(doc, separators=(",", ":")).encode())
    return values


def error_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {(exc.details() or '')[:80]}"
    return f"{type(exc).__name__}: {str(exc)[:80]}"


@dataclass
class WorkerOutput:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    started: float = 0.0  # time.time() at the start of the measured phase
    ended: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time during the measured phase

    def record(self, op: str, seconds: float) -> None:
        self.latencies.setdefault(op, []).append(seconds)

    def error(self, op: str, exc: BaseException | str) -> None:
        name = exc if isinstance(exc, str) else error_name(exc)
        key = f"{op}: {name}"
        self.errors[key] = self.errors.get(key, 0) + 1


async def timed(out: WorkerOutput, op: str, call: Awaitable[Any]) -> Any:
    started = time.perf_counter()
    try:
        result = await call
    except (TimeoutError, grpc.aio.AioRpcError) as exc:
        out.error(op, exc)
        return None
    out.record(op, time.perf_counter() - started)
    return result



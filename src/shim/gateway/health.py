"""``/health``, ``/livez`` and ``/readyz``: the answers etcd 3.5.21 gives, from two probes.

``/health`` fails on the first active alarm not named in ``?exclude=`` (``ALARM NOSPACE``,
``ALARM CORRUPT``), else when a read fails (``RANGE ERROR:...``); a one-node shim always has
a leader, so ``?serializable=true`` changes nothing. ``/livez`` and ``/readyz`` run named
checks (each also on its own sub-path, ``/readyz/data_corruption``), skip those in
``?exclude=``, and answer ``ok`` (with each check's line first under ``?verbose``) or 503 with
every check's line. etcd runs a registry's checks in Go's random map order; here they run in
the order etcd registers them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs

from shim.gateway.gojson import go_string
from shim.pb import rpc_pb2

# A failing check answers Go's http.Error: text, status 503, the message and a newline.
UNAVAILABLE = 503


@dataclass(frozen=True)
class HealthProbe:
    """What the answers are made of: the active alarm types, and a read through the store
    (None when it went through, else etcd's error text)."""

    alarms: Callable[[], Awaitable[Sequence[int]]]
    read: Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


async def health(probe: HealthProbe, query: str) -> Answer:
    """``GET /health``: etcd's ``{"health":...,"reason":...}``."""
    excluded = _query_set(query, "exclude")
    reason = ""
    for alarm in await probe.alarms():
        if _alarm_name(alarm) not in excluded:
            reason = _ALARM_REASONS.get(alarm, "ALARM UNKNOWN")
            break
    if not reason:
        failed = await probe.read()
        if failed is not None:
            reason = f"RANGE ERROR:{failed}"
    body = f'{{"health":"{"false" if reason else "true"}","reason":{go_string(reason)}}}'.encode()
    return Answer(UNAVAILABLE, body + b"\n") if reason else Answer(200, body)


def check_paths() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every path a check registry serves: the path -> (registry, checks it runs)."""
    paths: dict[str, tuple[str, tuple[str, ...]]] = {}
    for registry, checks in _REGISTRIES.items():
        paths[f"/{registry}"] = (registry, checks)
        for check in checks:
            paths[f"/{registry}/{check}"] = (registry, (check,))
    return paths


async def run_checks(
    probe: HealthProbe, path: str, checks: Sequence[str], query: str
) -> Answer:
    """``GET /livez``, ``/readyz`` or one of their checks."""
    if path.count("/") == 1:  # the registry's root path takes ?exclude=
        excluded = _query_set(query, "exclude")
        checks = [check for check in checks if check not in excluded]
    lines = []
    failed = False
    done: dict[Callable[[HealthProbe], Awaitable[str | None]], str | None] = {}
    for check in checks:
        run = _CHECKS[check]
        if run not in done:  # serializable_read and linearizable_read: one read here
            done[run] = await run(probe)
        error = done[run]
        failed = failed or error is not None
        lines.append(f"[+]{check} ok\n" if error is None else f"[-]{check} failed: {error}\n")
    report = "".join(lines)
    if failed:
        return Answer(UNAVAILABLE, (report + "\n").encode())
    verbose = "verbose" in parse_qs(query, keep_blank_values=True)
    return Answer(200, ((report if verbose else "") + "ok\n").encode())


def _query_set(query: str, name: str) -> set[str]:
    return {value for value in parse_qs(query, keep_blank_values=True).get(name, []) if value}


def _alarm_name(alarm: int) -> str:
    return rpc_pb2.AlarmType.Name(alarm) if alarm in rpc_pb2.AlarmType.values() else str(alarm)


_ALARM_REASONS: dict[int, str] = {
    rpc_pb2.NOSPACE: "ALARM NOSPACE", rpc_pb2.CORRUPT: "ALARM CORRUPT",
}


async def _corruption(probe: HealthProbe) -> str | None:
    return "alarm activated: CORRUPT" if rpc_pb2.CORRUPT in await probe.alarms() else None


async def _read(probe: HealthProbe) -> str | None:
    # A node's serializable and linearizable reads are the same read here.
    return await probe.read()


async def _not_learner(probe: HealthProbe) -> str | None:
    return None  # a shim node is never a learner


_CHECKS: dict[str, Callable[[HealthProbe], Awaitable[str | None]]] = {
    "data_corruption": _corruption,
    "serializable_read": _read,
    "linearizable_read": _read,
    "non_learner": _not_learner,
}
_REGISTRIES: dict[str, tuple[str, ...]] = {
    "livez": ("serializable_read",),
    "readyz": ("data_corruption", "serializable_read", "linearizable_read", "non_learner"),
}

"""Helpers for end-to-end replication tests: shim nodes linked to each other, what each node
holds (read through the etcd API), convergence with a readable diff, and `shim status` /
`shim sql` as the commands an operator runs.

Nodes are ordinary `ShimServer`s (usually made by the `shim_factory` fixture, so their logs
are added to a failing test's report) started with replication flags.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from shim.pb import rpc_pb2 as pb

from .client import Client
from .shim_server import OUTSIDE_CHECKOUT, ShimServer

TOKEN = "test-token"
POLL_SECONDS = 0.1
CONVERGE_SECONDS = 30.0

# What a node holds of a key, comparable across nodes: revisions are each node's own.
Item = tuple[bytes, bytes, int]  # key, value, lease
Snapshot = dict[bytes, tuple[bytes, int]]  # key -> (value, lease)

T = TypeVar("T")


def url(server: ShimServer) -> str:
    """The URL other nodes --join to reach `server`."""
    return f"http://{server.endpoint}"


def node_args(
    name: str,
    *,
    joins: Sequence[ShimServer | str] = (),
    admit: bool = True,
    token: str = TOKEN,
    extra: Sequence[str] = (),
) -> list[str]:
    """`shim serve` flags for a node called `name` that dials `joins` (servers or URLs) with
    `token` and, with `admit`, admits links presenting TOKEN."""
    args = ["--name", name]
    if admit:
        args += ["--bootstrap-token", TOKEN]
    for target in joins:
        args += ["--join", target if isinstance(target, str) else url(target)]
    if joins:
        args += ["--token", token]
    return [*args, *extra]


# --- reading a node through the etcd API ------------------------------------------------


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def snapshot(endpoint: str, prefix: bytes = b"") -> Snapshot:
    """Every key (under `prefix`) with its value and lease, by one Range on `endpoint`."""
    if prefix:
        request = pb.RangeRequest(key=prefix, range_end=prefix_end(prefix))
    else:
        request = pb.RangeRequest(key=b"\0", range_end=b"\0")
    # A node may hold more than gRPC's default 4 MiB receive limit: take any size.
    channel = grpc.insecure_channel(endpoint, options=[
        ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)])
    with Client(endpoint, channel) as client:
        response = client.kv.Range(request, timeout=5)
    return {kv.key: (kv.value, kv.lease) for kv in response.kvs}


def get(endpoint: str, key: bytes) -> bytes | None:
    with Client(endpoint) as client:
        response = client.kv.Range(pb.RangeRequest(key=key), timeout=5)
    return response.kvs[0].value if response.kvs else None


def put(endpoint: str, key: bytes, value: bytes, lease: int = 0) -> int:
    """Put and return the revision it was written at (on that node)."""
    with Client(endpoint) as client:
        response = client.kv.Put(pb.PutRequest(key=key, value=value, lease=lease), timeout=5)
    return response.header.revision


def delete(endpoint: str, key: bytes) -> int:
    """Delete one key; the number of keys deleted."""
    with Client(endpoint) as client:
        response = client.kv.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=5)
    return response.deleted


def _show(value: bytes | tuple[bytes, int] | None, limit: int = 120) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, tuple):
        text = repr(value[0])
        text = text if len(text) <= limit else text[:limit] + "..."
        return f"{text} lease={value[1]:x}" if value[1] else text
    return repr(value)


def describe_differences(snapshots: dict[str, Snapshot], limit: int = 20) -> str:
    """What differs between the nodes' snapshots, key by key (the first `limit` keys)."""
    names = list(snapshots)
    keys = sorted(set().union(*(set(s) for s in snapshots.values())))
    lines = []
    for key in keys:
        values = [snapshots[name].get(key) for name in names]
        if all(v == values[0] for v in values):
            continue
        lines.append(f"  {key!r}:")
        lines.extend(f"    {name}: {_show(v)}" for name, v in zip(names, values, strict=True))
        if len(lines) > limit * (len(names) + 1):
            lines.append("  ...")
            break
    counts = ", ".join(f"{name} {len(s)} keys" for name, s in snapshots.items())
    return f"{counts}\n" + "\n".join(lines)


def wait_converged(
    servers: Sequence[ShimServer],
    *,
    prefix: bytes = b"",
    timeout: float = CONVERGE_SECONDS,
    expect: Callable[[Snapshot], bool] | None = None,
    names: Sequence[str] | None = None,
) -> Snapshot:
    """Poll until every server holds the same keys, values and leases (under `prefix`), and
    `expect(snapshot)` holds if given; returns that snapshot. Fails with a per-key diff."""
    labels = list(names) if names else [f"{s.name}@{s.endpoint}" for s in servers]
    deadline = time.monotonic() + timeout
    snapshots: dict[str, Snapshot] = {}
    while True:
        snapshots = {
            label: snapshot(server.endpoint, prefix)
            for label, server in zip(labels, servers, strict=True)
        }
        first = snapshots[labels[0]]
        if all(s == first for s in snapshots.values()) and (expect is None or expect(first)):
            return first
        if time.monotonic() > deadline:
            same = all(s == first for s in snapshots.values())
            detail = (
                "they are equal, but not as expected:\n"
                + "\n".join(f"  {k!r}: {_show(v)}" for k, v in sorted(first.items())[:40])
                if same
                else describe_differences(snapshots)
            )
            raise AssertionError(
                f"nodes did not converge within {timeout:.0f}s (prefix {prefix!r}): {detail}"
            )
        time.sleep(POLL_SECONDS)


def wait_for(
    probe: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = CONVERGE_SECONDS
) -> T:
    """Poll `probe()` until `done(result)`; fail with `what` and the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {result!r}"
            )
        time.sleep(POLL_SECONDS)


def stays(probe: Callable[[], T], ok: Callable[[T], bool], what: str, seconds: float) -> None:
    """Check `ok(probe())` keeps holding for `seconds` (for things that must NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = probe()
        assert ok(result), f"{what}: {result!r}"
        time.sleep(POLL_SECONDS)


# --- links on and off: the topology file and SIGHUP ---------------------------------------


def write_topology(path: Path, *links: dict[str, str]) -> None:
    path.write_text(json.dumps({"links": list(links)}))


def hangup(server: ShimServer) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGHUP)


def log_count(server: ShimServer, text: str) -> int:
    return server.log_path.read_text(errors="replace").count(text)


def reload_topology(server: ShimServer, path: Path, *links: dict[str, str]) -> None:
    """Rewrite the topology file, SIGHUP, and wait until the node says it reloaded."""
    done = log_count(server, "topology reloaded")
    write_topology(path, *links)
    hangup(server)
    wait_for(lambda: log_count(server, "topology reloaded"), lambda n: n > done,
             "the node to log 'topology reloaded'", 10)


# --- shim status / shim sql ---------------------------------------------------------------


def shim_command(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`python -m shim ARGS` from the checkout; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "shim", *args],
        capture_output=True, text=True, timeout=timeout, cwd=OUTSIDE_CHECKOUT, check=False,
    )


def status(server: ShimServer) -> dict[str, Any]:
    """`shim status --json` of a node (it may be running)."""
    result = shim_command("status", "--datastore-endpoint", server.datastore_endpoint, "--json")
    assert result.returncode == 0, f"shim status failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def peer_named(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The peer called ``name`` in a ``status`` report (None: not a peer of that node)."""
    return next((p for p in report.get("peers", []) if p["name"] == name), None)


def sql(server: ShimServer, query: str) -> list[dict[str, Any]]:
    """`shim sql --json QUERY` on a node: its rows as dicts."""
    result = shim_command(
        "sql", "--datastore-endpoint", server.datastore_endpoint, query, "--json"
    )
    assert result.returncode == 0, f"shim sql failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def node_id(server: ShimServer) -> str:
    return str(status(server)["node_id"])

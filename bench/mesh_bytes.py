"""Bytes on the links of a 3-node full mesh per put (issue 14, "no duplicate forwarding").

Three shim nodes on loopback, each linked to the two others. Puts of 256 B values go to one
node (``--writers one``) or round robin to all three (``--writers all``); when every node holds
every write, the bytes each link carried (both directions, TCP payload as the kernel counts it
for the dialer's socket: ``ss -ti``, gRPC framing and gzip included) are summed and divided by
the puts. An entry needs 2 link crossings in a 3-node mesh (its origin to each other node);
what a node forwards that the receiver gets anyway shows as more.

    .venv/bin/python -m bench.mesh_bytes                        # this tree's installed shim
    .venv/bin/python -m bench.mesh_bytes --shim-python OTHER    # another install (before/after)

Idle links carry heartbeats; the idle rate (3 s, from 2 s after a warm-up write on each node)
is measured first and reported, not subtracted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support.replication import node_args, wait_converged
from tests.support.shim_server import ShimServer

_SOCKET = re.compile(r"(\S+):(\d+)\s+(\S+):(\d+)\s+users:\(\(.*?pid=(\d+)")
_BYTES = re.compile(r"\bbytes_(sent|received):(\d+)")


def link_sockets(nodes: list[ShimServer]) -> dict[tuple[int, int], int]:
    """Bytes (sent + received) of each link's dialer socket, by (local port, peer port):
    a socket of a node's process connected to another node's port."""
    pids = {node.pid for node in nodes}
    ports = {node.port for node in nodes}
    out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    found: dict[tuple[int, int], int] = {}
    current: tuple[int, int] | None = None
    for line in out.splitlines():
        match = _SOCKET.search(line)
        if match:
            local, peer, pid = int(match.group(2)), int(match.group(4)), int(match.group(5))
            dialer = pid in pids and peer in ports and local not in ports
            current = (local, peer) if dialer else None
            continue
        if current is not None:
            counts = dict(_BYTES.findall(line))
            if counts:
                found[current] = int(counts.get("sent", 0)) + int(counts.get("received", 0))
                current = None
    return found


def wait_links(nodes: list[ShimServer], want: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(link_sockets(nodes)) < want:
        if time.monotonic() > deadline:
            raise SystemExit(f"the mesh's {want} links did not come up")
        time.sleep(0.1)


def measure(python: str, puts: int, writers: str, value_size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mesh-bytes-") as tmp:
        root = Path(tmp)
        nodes: list[ShimServer] = []
        try:
            for i in range(3):
                joins = nodes[:i]
                server = ShimServer(root / f"n{i + 1}", python=os.path.abspath(python),
                                    extra_args=[*node_args(f"n{i + 1}", joins=joins),
                                                "--log-level=warning"], startup_timeout=60)
                nodes.append(server.start())
            wait_links(nodes, 3)
            channels = [grpc.insecure_channel(node.endpoint) for node in nodes]
            stubs = [rpc_pb2_grpc.KVStub(channel) for channel in channels]
            for i, stub in enumerate(stubs):
                stub.Put(rpc_pb2.PutRequest(key=f"/warm/{i}".encode(), value=b"w"))
            wait_converged(nodes, prefix=b"/warm/", expect=lambda s: len(s) == 3)
            time.sleep(2.0)  # what the warm-up's writes cause (vectors told) settles first
            idle0, t0 = link_sockets(nodes), time.monotonic()
            time.sleep(3.0)
            idle1, t1 = link_sockets(nodes), time.monotonic()
            idle_rate = (sum(idle1.values()) - sum(idle0.values())) / (t1 - t0)
            before = link_sockets(nodes)
            started = time.monotonic()
            value = b"v" * value_size
            for n in range(puts):
                stub = stubs[n % 3] if writers == "all" else stubs[0]
                stub.Put(rpc_pb2.PutRequest(key=f"/mesh/{n:06d}".encode(), value=value))
            wait_converged(nodes, prefix=b"/mesh/", expect=lambda s: len(s) == puts,
                           timeout=300)
            after = link_sockets(nodes)
            seconds = time.monotonic() - started
            if set(after) != set(before):
                raise SystemExit("a link was redialed during the run: its counts are lost")
            for channel in channels:
                channel.close()
        finally:
            for node in nodes:
                node.stop()
    total = sum(after.values()) - sum(before.values())
    return {"puts": puts, "bytes_per_put": total / puts, "idle_bytes_per_s": idle_rate,
            "seconds": seconds, "links": len(after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shim-python", default=sys.executable,
                        help="the python whose installed shim serves (default: this one)")
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--value-size", type=int, default=256)
    parser.add_argument("--writers", choices=["one", "all", "both"], default="both")
    args = parser.parse_args()
    for writers in (["one", "all"] if args.writers == "both" else [args.writers]):
        result = measure(args.shim_python, args.puts, writers, args.value_size)
        print(json.dumps({"writers": writers, "value_size": args.value_size, **result}))


if __name__ == "__main__":
    main()

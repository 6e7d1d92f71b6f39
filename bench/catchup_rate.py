"""How fast a node that was away catches up, on loopback: entries per second over one link.

Node 1 takes ``--puts`` puts of 256 B values (one client, one put at a time) while node 2 does
not exist; then node 2 starts, joins node 1, and the clock runs from its start until it holds
every put (its start-up included). Compare installs in one run of the machine (same load) and
read the ratio, not the absolute figures.

    .venv/bin/python -m bench.catchup_rate                        # this tree's installed shim
    .venv/bin/python -m bench.catchup_rate --shim-python OTHER    # another install
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc

from shim.pb import rpc_pb2, rpc_pb2_grpc
from tests.support.replication import node_args, snapshot
from tests.support.shim_server import ShimServer

PREFIX = b"/catchup/"


def measure(python: str, puts: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="catchup-") as tmp:
        root = Path(tmp)
        shim_python = os.path.abspath(python)
        with ShimServer(root / "n1", extra_args=[*node_args("n1"), "--log-level=warning"],
                        python=shim_python, startup_timeout=60) as n1:
            with grpc.insecure_channel(n1.endpoint) as channel:
                kv = rpc_pb2_grpc.KVStub(channel)
                for i in range(puts):
                    kv.Put(rpc_pb2.PutRequest(key=PREFIX + b"%06d" % i, value=b"v" * 256))
            started = time.monotonic()
            with ShimServer(root / "n2", extra_args=[*node_args("n2", joins=[n1]),
                                                     "--log-level=warning"],
                            python=shim_python, startup_timeout=60) as n2:
                while len(snapshot(n2.endpoint, PREFIX)) < puts:
                    time.sleep(0.05)
                seconds = time.monotonic() - started
    return {"puts": puts, "seconds": round(seconds, 2), "entries_per_s": round(puts / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shim-python", default=sys.executable,
                        help="the python whose installed shim serves (default: this one)")
    parser.add_argument("--puts", type=int, default=5000)
    args = parser.parse_args()
    print(json.dumps(measure(args.shim_python, args.puts)))


if __name__ == "__main__":
    main()

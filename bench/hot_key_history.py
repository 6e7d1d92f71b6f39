"""What reading one hot key's replication history costs a node, in-process.

A peer that catches up reads a node's entries in pages; so does a re-fold of a key. An
entry of a local write stores no copy of its value and reads it from its log row. Until
that row was named by its revision (migration 0016) it was found by clock stamp among every
version of the key, so reading a key's history was quadratic in its versions until the next
compaction. This puts ``--versions`` versions of one key on a Store (SQLite file, entries
signed), then times reading every entry in the link's pages of 500.

    .venv/bin/python -m bench.hot_key_history --versions 2000 8000 32000
    PYTHONPATH=. OTHER/bin/python -m bench.hot_key_history   # another install's shim
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tempfile
import time
from pathlib import Path

from bench.ingest_cost import _node, _page
from shim.pb.rpc_pb2 import PutRequest


async def measure(versions: int, root: Path) -> dict[str, float]:
    backend, store, _ = await _node(root / "hot.db")
    try:
        for first in range(0, versions, 100):
            await asyncio.gather(*(
                store.write(PutRequest(key=b"/hot", value=b"v%d" % i))
                for i in range(first, min(first + 100, versions))
            ))
        started, cursor, pages = time.process_time(), 0, 0
        while True:
            rows = await store.read(functools.partial(_page, after=cursor))
            if not rows:
                break
            cursor, pages = rows[-1][0], pages + 1
        seconds = time.process_time() - started
    finally:
        await store.close()
        backend.close()
    return {"versions": versions, "pages": pages, "read_s": round(seconds, 3),
            "us_per_entry": round(seconds / versions * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, nargs="+", default=[2000, 8000])
    args = parser.parse_args()
    for versions in args.versions:
        with tempfile.TemporaryDirectory(prefix="hot-key-") as tmp:
            print(json.dumps(asyncio.run(measure(versions, Path(tmp)))), flush=True)


if __name__ == "__main__":
    main()

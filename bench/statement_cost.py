"""What the SQL of a put costs, statement by statement, on shim's real schema (issue 13: "SQLite
statement shapes: RETURNING, fewer indexes, `current` folded into the log").

A scratch database made by ``SqliteBackend`` (every migration), the writer connection, the
statements the write path runs for a put of a new key (read the version it replaces, append the
log row, point ``current`` at it), 100 puts per transaction as a loaded writer batches them,
``synchronous = NORMAL`` so only CPU is counted, not waiting for the disk. Each variant leaves
one thing out or does it another way; the difference is the most that change could save:

- ``all``: as the write path does it;
- ``no-current``: no ``current`` table (what folding it into the log would save at most: a
  read of a key's newest version would then search the log instead);
- ``no-revision-index``: without the ``log (revision)`` index;
- ``returning``: the log row's id from ``INSERT ... RETURNING id`` instead of
  ``last_insert_rowid()``.

    .venv/bin/python -m bench.statement_cost [--puts 20000] [--rounds 2]

Figures: µs of this process's CPU per put, whole (statements and COMMIT), and per statement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from shim.backend.kv_wire import kv_head
from shim.backend.sqlite import SqliteBackend

VARIANTS = ("all", "no-current", "no-revision-index", "returning")
PER_TXN = 100
INSERT_LOG = (
    "INSERT INTO log (revision, key, value, create_revision, version, lease, deleted, "
    "prev_revision, node_id, hlc, kv_head) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
READ_OLD = "SELECT l.revision FROM log l WHERE l.id = (SELECT id FROM current WHERE key = ?)"
UPSERT_CURRENT = (
    "INSERT INTO current (key, id) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET id = excluded.id"
)


def measure(variant: str, puts: int, root: Path) -> dict[str, float]:
    backend = SqliteBackend(root / f"{variant}.db", synchronous="NORMAL")
    backend.open()
    conn = backend.writer()
    if variant == "no-revision-index":
        conn.execute("DROP INDEX log_revision")
    rng = random.Random(1)
    keys = [f"/registry/pods/ns-{i % 8}/pod-{rng.randrange(10**9):09d}".encode()
            for i in range(puts)]
    value = os.urandom(256)
    spent = {"read": 0.0, "insert log": 0.0, "upsert current": 0.0}
    revision = 1
    started = time.process_time()
    for first in range(0, puts, PER_TXN):
        conn.execute("BEGIN IMMEDIATE")
        for key in keys[first:first + PER_TXN]:
            revision += 1
            row = (revision, key, value, revision, 1, 0, 0, 0, "n", revision << 16,
                   kv_head(key, len(value), revision, revision, 1, 0))
            t0 = time.process_time()
            if variant != "no-current":
                conn.execute(READ_OLD, (key,)).fetchall()
            t1 = time.process_time()
            if variant == "returning":
                row_id = conn.execute(INSERT_LOG + " RETURNING id", row).fetchall()[0][0]
            else:
                conn.execute(INSERT_LOG, row)
                row_id = conn.last_insert_rowid()
            t2 = time.process_time()
            if variant != "no-current":
                conn.execute(UPSERT_CURRENT, (key, row_id))
            t3 = time.process_time()
            spent["read"] += t1 - t0
            spent["insert log"] += t2 - t1
            spent["upsert current"] += t3 - t2
        conn.execute("COMMIT")
    whole = time.process_time() - started
    backend.close()
    # The per-statement figures include reading the clock around each; the whole one is apart.
    out = {"put, whole": whole}
    out.update(spent)
    return {name: round(seconds / puts * 1e6, 2) for name, seconds in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2,
                        help="each variant this often, interleaved")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for variant in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:
                root = Path(tmp) / f"r{round_}"
                root.mkdir(exist_ok=True)
                result = measure(variant, args.puts, root)
                print(json.dumps({"variant": variant, "round": round_ + 1, "us_per_put": result}))


if __name__ == "__main__":
    main()

"""After a partition heals: when each shim node holds the other side's entries, and when every
node holds identical data (scenario 3's "identical after the heal" and its timeline).

A thread started at the heal reads each node's database (read-only, connections of its own).
Polled often (every 10 ms) is only what is cheap: each version vector (``repl_origin``, one
row per origin), summed per writing node. A node folds entries in the transaction that stores
them, so equal vectors mean every node has every entry; identical *data* is still checked, by
digests of every key and value under the scenario's prefixes, read whenever the vectors have
become equal (again). The clock is the heal's, whatever else the bench does meanwhile
(collecting the writers' results).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from bench.replication.nodes import NodeDb

POLL_SECONDS = 0.01


def node_id(db: NodeDb) -> str:
    rows = db.query("SELECT value FROM meta WHERE name = 'node_id'")
    return str(rows[0][0]) if rows else ""


def held_per_node(db: NodeDb) -> dict[str, int]:
    """Entries held per writing node (the sum of its origins' high-water marks)."""
    return {str(n): int(s) for n, s in db.query(
        "SELECT node_id, SUM(max_seq) FROM repl_origin GROUP BY node_id")}


class HealWatch:
    """Watches the nodes of ``dbs`` from ``healed`` (time.monotonic() at the heal) on;
    ``across[i]``: the node ids on the other side of the cut from node i."""

    def __init__(self, dbs: Sequence[NodeDb], across: Sequence[frozenset[str]],
                 prefixes: Sequence[bytes], healed: float) -> None:
        self._dbs = [NodeDb(db.node) for db in dbs]
        self._across = across
        self._prefixes = prefixes
        self.healed = healed
        self._at_heal = [self._from_across(i, held_per_node(db))
                         for i, db in enumerate(self._dbs)]
        self._first: list[float | None] = [None] * len(dbs)
        # per node: (seconds after the heal, entries held from across the cut) at each change
        self._series = [[(0.0, n)] for n in self._at_heal]
        # (seconds after the heal, keys under the first prefix) each time the digests agreed
        self._agreed: list[tuple[float, int]] = []
        self._digest_checks = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._poll, name="heal watch", daemon=True)
        self._thread.start()

    def _from_across(self, i: int, held: dict[str, int]) -> int:
        return sum(n for node, n in held.items() if node in self._across[i])

    def _poll(self) -> None:
        checked: dict[str, int] | None = None  # the vector the digests were last read at
        while not self._stop.is_set():
            at = time.monotonic() - self.healed
            vectors = [held_per_node(db) for db in self._dbs]
            for i, held in enumerate(vectors):
                n = self._from_across(i, held)
                if n != self._series[i][-1][1]:
                    self._series[i].append((at, n))
                if self._first[i] is None and n > self._at_heal[i]:
                    self._first[i] = at
            if all(v == vectors[0] for v in vectors) and vectors[0] != checked:
                self._digest_checks += 1
                digests = [[db.kv_digest(p) for p in self._prefixes] for db in self._dbs]
                if all(d == digests[0] for d in digests):
                    checked = vectors[0]
                    with self._lock:
                        self._agreed.append((time.monotonic() - self.healed, digests[0][0][0]))
            time.sleep(POLL_SECONDS)

    def identical(self, acked_own: int, timeout: float) -> float | None:
        """Seconds from the heal until every node held the same keys and values, at least
        ``acked_own`` keys under the first prefix among them; None at the timeout."""
        try:
            while time.monotonic() - self.healed < timeout:
                with self._lock:
                    for at, keys in self._agreed:
                        if keys >= acked_own:
                            return at
                time.sleep(POLL_SECONDS)
            return None
        finally:
            self.close()

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            for db in self._dbs:
                db.close()

    def timeline(self, names: Sequence[str]) -> dict[str, Any]:
        """Per node: entries it received from across the cut, when the first arrived and when
        it held the last (seconds after the heal); how many times digests were read."""
        nodes = {}
        for i, name in enumerate(names):
            steps = self._series[i]
            nodes[name] = {"entries_from_across": steps[-1][1] - self._at_heal[i],
                           "first_s": self._first[i],
                           "last_s": steps[-1][0] if len(steps) > 1 else None}
        return {"nodes": nodes, "digest_checks": self._digest_checks}

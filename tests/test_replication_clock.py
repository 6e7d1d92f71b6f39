"""The hybrid logical clock across restarts and against a peer whose clock runs ahead."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import apsw

from shim.backend.sqlite import SqliteBackend
from shim.mvcc.hlc import LOGICAL_BITS
from shim.mvcc.store import Store
from shim.pb.rpc_pb2 import PutRequest
from shim.replication.entry import Entry
from shim.replication.requests import MergeRequest, PeerRegistration
from shim.replication.resolve import Replica


def _hlcs(db: Path) -> list[tuple[str, int, int, str]]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [
            (str(r[0]), int(r[1]), int(r[2]), str(r[3]))
            for r in conn.execute(
                "SELECT CAST(key AS TEXT), hlc, skewed, outcome FROM repl_entry ORDER BY ingest"
            )
        ]
    finally:
        conn.close()


async def _session(db: Path, work: list[object]) -> list[object]:
    backend = SqliteBackend(db)
    backend.open()
    store = Store(backend, Replica(backend.node_id))
    await store.start()
    try:
        return [await store.write(item) for item in work]  # type: ignore[arg-type]
    finally:
        await store.close()
        backend.close()


def test_clock_never_goes_back_across_restarts_and_skewed_peers_are_flagged(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    asyncio.run(_session(db, [PutRequest(key=b"/a", value=b"1")]))
    first = _hlcs(db)[0][1]

    # A peer whose clock is an hour ahead: its entry is kept and flagged but held apart (not
    # applied until the clock gets there), and does not drag this node's clock forward.
    ahead = (time.time_ns() // 1_000_000 + 3_600_000) << LOGICAL_BITS
    skewed = Entry("peer-ahead", 1, ahead, b"/b", False, b"from the future", 0, None, None, None)
    # A peer 100 ms ahead is within the bound: it pulls the clock forward.
    near = (time.time_ns() // 1_000_000 + 100) << LOGICAL_BITS
    close = Entry("peer-near", 1, near, b"/c", False, b"close", 0, None, None, None)
    results = asyncio.run(_session(db, [
        PeerRegistration("peer-ahead", "ahead", "test", "child"),
        PeerRegistration("peer-near", "near", "test", "child"),
        MergeRequest("peer-ahead", [skewed], 1, 1),
        MergeRequest("peer-near", [close], 1, 1),
        PutRequest(key=b"/d", value=b"after"),
    ]))
    assert results[2].held == 1 and results[3].applied == 1  # type: ignore[attr-defined]
    rows = {key: (hlc, flag, outcome) for key, hlc, flag, outcome in _hlcs(db)}
    assert rows["/b"][1:] == (1, "held")
    assert rows["/c"][1:] == (0, "applied")
    assert rows["/d"][0] > near  # pulled past the close peer...
    assert rows["/d"][0] < ahead  # ...but not to the skewed one

    # After a restart the clock starts past everything it issued or accepted unflagged.
    asyncio.run(_session(db, [PutRequest(key=b"/e", value=b"restarted")]))
    rows = {key: (hlc, flag, outcome) for key, hlc, flag, outcome in _hlcs(db)}
    assert rows["/e"][0] > rows["/d"][0] > first
    assert rows["/e"][0] < ahead


def test_keys_from_before_replication_get_entries_at_start(tmp_path: Path) -> None:
    """A database written before replication existed (no entries): every live key gets its
    first entry when the server starts, so peers can receive it."""
    db = tmp_path / "state.db"
    asyncio.run(_session(db, [PutRequest(key=b"/old/a", value=b"1"),
                              PutRequest(key=b"/old/b", value=b"2"),
                              PutRequest(key=b"health", value=b"local only")]))
    conn = apsw.Connection(str(db))
    with conn:
        conn.execute("DELETE FROM repl_entry; DELETE FROM repl_origin")
    conn.close()
    asyncio.run(_session(db, [PutRequest(key=b"/new", value=b"3")]))
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    node = conn.execute("SELECT value FROM meta WHERE name = 'node_id'").fetchone()[0]
    rows = conn.execute(
        "SELECT origin, seq, key, value FROM replication_log ORDER BY seq"
    ).fetchall()
    conn.close()
    assert rows == [(node, 1, "/old/a", "1"), (node, 2, "/old/b", "2"), (node, 3, "/new", "3")]

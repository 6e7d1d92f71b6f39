"""The SQLite schema as an operator sees it: migrations, metadata, per-row provenance, the
debugging queries the README documents, and refusal of a schema from a newer shim."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

from shim.pb import rpc_pb2
from tests.support import OUTSIDE_CHECKOUT, REPO_ROOT, Client, ShimServer


def _open_readonly(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _migration_names() -> list[tuple[int, str]]:
    names = []
    for path in sorted((REPO_ROOT / "src" / "shim" / "migrations" / "sqlite").glob("*.sql")):
        number, name = path.stem.split("_", 1)
        names.append((int(number), name))
    return names


def test_fresh_database_records_migrations_and_metadata(shim: ShimServer) -> None:
    db = shim.workdir / "state.db"
    with _open_readonly(db) as conn:
        applied = conn.execute("SELECT version, name FROM schema_version ORDER BY version")
        assert list(applied) == _migration_names()
        meta = dict(conn.execute("SELECT name, value FROM meta"))
    assert meta["revision"] == 1
    assert meta["compact_revision"] == -1
    assert re.fullmatch(r"[0-9a-f]{32}", meta["node_id"])


def test_every_row_records_its_node_and_an_increasing_clock(shim: ShimServer) -> None:
    with Client(shim.endpoint) as client:
        for i in range(20):
            client.kv.Put(rpc_pb2.PutRequest(key=b"k%d" % (i % 3), value=b"v%d" % i))
        client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k0"))
    db = shim.workdir / "state.db"
    with _open_readonly(db) as conn:
        node_id = conn.execute("SELECT value FROM meta WHERE name = 'node_id'").fetchone()[0]
        rows = conn.execute("SELECT revision, node_id, hlc FROM log ORDER BY id").fetchall()
        revision = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
    assert [r[0] for r in rows] == list(range(2, 23))
    assert revision == 22
    assert {r[1] for r in rows} == {node_id}
    clocks = [r[2] for r in rows]
    assert clocks == sorted(clocks) and len(set(clocks)) == len(clocks)


def test_node_id_survives_restart(shim: ShimServer) -> None:
    db = shim.workdir / "state.db"
    with _open_readonly(db) as conn:
        before = conn.execute("SELECT value FROM meta WHERE name = 'node_id'").fetchone()[0]
    shim.restart()
    with _open_readonly(db) as conn:
        after = conn.execute("SELECT value FROM meta WHERE name = 'node_id'").fetchone()[0]
    assert before == after


def test_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    server = ShimServer(tmp_path).start()
    server.stop()
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (999, 'from_the_future')")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = db.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "shim", "serve", "--listen-address", "127.0.0.1:0",
         "--datastore-endpoint", f"sqlite://{db}"],
        capture_output=True, text=True, timeout=30, cwd=OUTSIDE_CHECKOUT,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "newer" in lines[0] and "999" in lines[0]
    assert db.read_bytes() == before


def _readme_queries() -> list[str]:
    """The `sqlite3 -readonly -box shim-data/state.db "..."` lines of the README."""
    readme = (REPO_ROOT / "README.md").read_text()
    queries = []
    for line in readme.splitlines():
        if line.startswith("sqlite3 ") and "shim-data/state.db" in line:
            argv = shlex.split(line)
            sql = argv[-1]
            if sql.startswith("."):
                continue  # shell dot-commands such as .backup
            queries.append(sql)
    return queries


def test_readme_debugging_queries_run_and_answer(shim: ShimServer) -> None:
    queries = _readme_queries()
    assert len(queries) >= 5, queries
    with Client(shim.endpoint) as client:
        client.kv.Put(rpc_pb2.PutRequest(key=b"/demo/greeting", value=b"hello"))
        client.kv.Put(rpc_pb2.PutRequest(key=b"/demo/name", value=b"shim"))
        client.kv.Put(rpc_pb2.PutRequest(key=b"/demo/greeting", value=b"hello again"))
    with _open_readonly(shim.workdir / "state.db") as conn:
        results = {sql: conn.execute(sql).fetchall() for sql in queries}
    # Every documented query answers something about the keys just written.
    for sql, rows in results.items():
        assert rows, f"README query returned nothing: {sql}"
    current = next(rows for sql, rows in results.items() if "FROM kv WHERE key =" in sql)
    assert current[0][:2] == ("/demo/greeting", "hello again")
    history = next(rows for sql, rows in results.items() if "FROM history WHERE key =" in sql)
    assert [row[0] for row in history] == [2, 4]

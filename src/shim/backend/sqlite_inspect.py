"""``shim status`` and ``shim sql``: look inside a node's database while it runs.

Both open the SQLite file read-only in WAL mode, so they see a consistent snapshot and never
block the server's writer (nor take its lock). Secrets never show: in ``shim sql`` password
hashes and the token key read as NULL (an authorizer on the connection) and the file's raw
pages cannot be read; ``shim status`` prints none of them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import apsw

from shim.backend.sqlite_rows import one
from shim.config import ConfigError, PostgresEndpoint, parse_datastore_endpoint


def open_read_only(endpoint: str) -> apsw.Connection:
    parsed = parse_datastore_endpoint(endpoint)
    if isinstance(parsed, PostgresEndpoint):
        raise ConfigError(
            "shim status and shim sql read the SQLite datastore; for PostgreSQL use psql"
        )
    path: Path = parsed.path
    if not path.is_file():
        raise ConfigError(f"no database at {path}")
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        conn.set_busy_timeout(5000)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
    except apsw.Error as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return conn


# Columns that read as NULL here: password hashes (in the users and in the replication entries
# that carry them), and the token key (with the other settings).
SECRET_COLUMNS = frozenset({
    ("auth_user", "password"), ("repl_entry", "secret"), ("auth_setting", "value"),
})
# Tables that would show the file's raw pages, secrets included.
RAW_TABLES = frozenset({"sqlite_dbpage"})


def _hide_secrets(
    action: int, first: str | None, second: str | None, _db: str | None, _source: str | None
) -> int:
    if action == apsw.SQLITE_READ and (first, second) in SECRET_COLUMNS:
        return apsw.SQLITE_IGNORE
    if first in RAW_TABLES or second in RAW_TABLES:
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


def status(conn: apsw.Connection) -> dict[str, Any]:
    meta: dict[str, Any] = dict(conn.execute("SELECT name, value FROM meta"))
    node_id = str(meta.get("node_id", ""))
    report: dict[str, Any] = {
        "node_id": node_id,
        "revision": int(meta.get("revision", 0)),
        "compact_revision": int(meta.get("compact_revision", -1)),
        "keys": one(conn.execute("SELECT COUNT(*) FROM current"))[0],
    }
    if _has_table(conn, "auth_user"):
        enabled = conn.execute(
            "SELECT 1 FROM auth_setting WHERE name = 'enabled' AND value = '1'"
        ).fetchone()
        report["auth"] = {
            "enabled": enabled is not None,
            "revision": int(meta.get("auth_revision", 1)),
            "users": one(conn.execute("SELECT COUNT(*) FROM auth_user WHERE deleted = 0"))[0],
            "roles": one(conn.execute("SELECT COUNT(*) FROM auth_role WHERE deleted = 0"))[0],
        }
    if not _has_table(conn, "repl_entry"):
        return report
    counts = one(conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(received_from IS NULL), 0), COALESCE(SUM(skewed), 0), "
        "COALESCE(SUM(outcome = 'superseded'), 0), COALESCE(MAX(ingest), 0), "
        "COALESCE(SUM(outcome = 'held'), 0) FROM repl_entry"
    ))
    report["entries"] = {
        "total": counts[0], "local": counts[1], "skewed": counts[2],
        "superseded": counts[3], "log_position": counts[4], "held": counts[5],
    }
    if _has_table(conn, "repl_quarantine"):
        report["quarantine"] = _quarantine(conn)
    if _has_table(conn, "repl_fork"):
        report["origins"] = _origins(conn)
    now_ms = time.time_ns() // 1_000_000
    report["peers"] = [
        {
            "node_id": row[0], "name": row[1], "address": row[2], "role": row[3],
            "cursor": row[4], "peer_high": row[5], "lag_entries": max(row[5] - row[4], 0),
            "last_lag_ms": row[6], "entries_received": row[7], "entries_applied": row[8],
            "conflicts_merged": row[9],
            "last_seen_s_ago": round((now_ms - row[10]) / 1000, 1) if row[10] else None,
        }
        for row in conn.execute(
            "SELECT node_id, name, address, role, cursor, peer_high, last_lag_ms, "
            "entries_received, entries_applied, conflicts, last_seen_ms FROM peer "
            "ORDER BY first_seen_ms, node_id"
        )
    ]
    if _has_table(conn, "link"):
        for peer in report["peers"]:
            peer["unacked_entries"] = _unacked(conn, peer["node_id"])
        report["links"] = [
            {
                "link": row[0], "role": row[1], "node_id": row[2], "state": row[3],
                "since_s_ago": round((now_ms - row[4]) / 1000, 1), "failures": row[5],
                "last_error": row[6],
                "last_error_s_ago": round((now_ms - row[7]) / 1000, 1) if row[7] else None,
            }
            for row in conn.execute(
                "SELECT link_key, role, node_id, state, since_ms, failures, last_error, "
                "last_error_ms FROM link ORDER BY role, link_key"
            )
        ]
    report["conflicts_merged"] = sum(p["conflicts_merged"] for p in report["peers"])
    return report


def _unacked(conn: apsw.Connection, node_id: str) -> int:
    """Entries of this node's log the peer has not confirmed, counted now (the peer's own
    entries, under any of its origins, and those it sent us, it has already)."""
    # Since migration 0010 a node writes under origins of its own (repl_origin.node_id).
    its_origins = ("AND e.origin NOT IN (SELECT origin FROM repl_origin WHERE node_id = ?1)"
                   if _has_table(conn, "repl_pending") else "")
    row = conn.execute(
        "SELECT COUNT(*) FROM repl_entry e, peer p WHERE p.node_id = ?1 AND e.ingest > p.acked "
        "AND e.origin != ?1 AND (e.received_from IS NULL OR e.received_from != ?1) "
        f"{its_origins}",
        (node_id,),
    ).fetchone()
    return int(row[0]) if row is not None else 0


# How many of the latest quarantined entries `shim status` shows.
QUARANTINE_SHOWN = 5


def _quarantine(conn: apsw.Connection) -> dict[str, Any]:
    """Entries set apart (shim.replication.quarantine): how many, and the latest reasons."""
    total, refused = one(conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(stage = 'ingest'), 0) FROM repl_quarantine"
    ))
    latest = [
        {"origin": row[0], "seq": row[1], "key": row[2], "stage": row[3], "reason": row[4],
         "from": row[5], "at_ms": row[6]}
        for row in conn.execute(
            "SELECT origin, seq, key, stage, reason, received_from, received_ms "
            "FROM repl_quarantine ORDER BY id DESC LIMIT ?", (QUARANTINE_SHOWN,)
        )
    ]
    return {"total": total, "refused": refused, "set_apart": total - refused, "latest": latest}


def _origins(conn: apsw.Connection) -> dict[str, Any]:
    """Origins known here, entries waiting for earlier ones, and the origins caught signing
    two different entries under one seq (shim.replication.signing)."""
    count = one(conn.execute("SELECT COUNT(*) FROM repl_origin"))[0]
    waiting = one(conn.execute("SELECT COUNT(*) FROM repl_pending"))[0]
    equivocating = [
        {"origin": row[0], "node_id": row[1], "from_seq": row[2], "since_ms": row[3]}
        for row in conn.execute(
            "SELECT origin, node_id, forked_seq, forked_ms FROM repl_origin "
            "WHERE forked_seq IS NOT NULL ORDER BY forked_ms"
        )
    ]
    return {"count": count, "waiting": waiting, "equivocating": equivocating}


def print_status(report: dict[str, Any], out: TextIO = sys.stdout) -> None:
    print(f"node       {report['node_id']}", file=out)
    print(f"revision   {report['revision']} (compacted to {report['compact_revision']})",
          file=out)
    print(f"keys       {report['keys']}", file=out)
    auth = report.get("auth")
    if auth is not None:
        print(f"auth       {'enabled' if auth['enabled'] else 'disabled'}, revision "
              f"{auth['revision']}, {auth['users']} users, {auth['roles']} roles", file=out)
    entries = report.get("entries")
    if entries is None:
        return
    print(f"entries    {entries['total']} ({entries['local']} written here, "
          f"{entries['skewed']} from skewed clocks, {entries['held']} held until the clock "
          f"reaches them, {entries['superseded']} superseded); "
          f"log position {entries['log_position']}", file=out)
    quarantine = report.get("quarantine")
    if quarantine is not None:
        print(f"quarantine {quarantine['total']} ({quarantine['refused']} refused on arrival, "
              f"{quarantine['set_apart']} set apart by a fold)", file=out)
        for q in quarantine["latest"]:
            key = _cell(q["key"])
            print(f"  {q['origin']}/{q['seq']} {key[:60]}: {q['reason']}", file=out)
    origins = report.get("origins")
    if origins is not None:
        print(f"origins    {origins['count']} ({origins['waiting']} entries waiting for earlier "
              f"ones, {len(origins['equivocating'])} equivocating)", file=out)
        for o in origins["equivocating"]:
            print(f"  EQUIVOCATING {o['origin']} (node {o['node_id'] or '?'}): signed two "
                  f"different entries; its entries from seq {o['from_seq']} on are left out",
                  file=out)
    print(f"conflicts  {report['conflicts_merged']} merged", file=out)
    columns = ["node_id", "name", "role", "address", "cursor", "peer_high", "lag_entries",
               "unacked_entries", "last_lag_ms", "entries_received", "entries_applied",
               "conflicts_merged", "last_seen_s_ago"]
    print(f"peers      {len(report['peers'])}", file=out)
    if report["peers"]:
        print_table(columns, [[p.get(c) for c in columns] for p in report["peers"]], out)
    links = report.get("links", [])
    print(f"links      {len(links)} ({sum(link['state'] == 'up' for link in links)} up)", file=out)
    if links:
        columns = ["link", "role", "state", "since_s_ago", "failures", "last_error",
                   "last_error_s_ago"]
        print_table(columns, [[link[c] for c in columns] for link in links], out)


def run_sql(conn: apsw.Connection, sql: str) -> tuple[list[str], list[list[Any]]]:
    conn.authorizer = _hide_secrets
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        # The columns are known while the statement runs (a query without rows has none).
        columns = [d[0] for d in cursor.getdescription()] if _described(cursor) else []
        rows = [list(row) for row in cursor]
    except apsw.ReadOnlyError:
        raise ConfigError("shim sql is read-only: only queries are allowed") from None
    except apsw.AuthError:
        raise ConfigError(
            "shim sql does not show the database's raw pages (they hold password hashes)"
        ) from None
    except apsw.Error as exc:
        raise ConfigError(f"SQL error: {exc}") from None
    return columns, rows


def _described(cursor: apsw.Cursor) -> bool:
    try:
        cursor.getdescription()
    except apsw.ExecutionCompleteError:
        return False
    return True


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    if not columns:
        print("(no rows)", file=out)
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return "x'" + value.hex() + "'"
    return str(value)


def _has_table(conn: apsw.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def dump_json(value: Any, out: TextIO = sys.stdout) -> None:
    json.dump(value, out, indent=2, default=_cell)
    out.write("\n")

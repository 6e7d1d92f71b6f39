"""Row shapes shared by the SQL backends: the columns they select and how a row becomes a
``KeyValue`` or a ``LogEntry``. The queries differ per dialect; these do not."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shim.backend.base import LogEntry, kv_from_row
from shim.pb.kv_pb2 import KeyValue

# A version's columns, in the order ``kv_from_row`` reads them.
KV_COLUMNS = "l.key, l.value, l.create_revision, l.revision, l.version, l.lease"
# A log entry's columns: the version, then whether it is a tombstone, then what it replaced
# (``p`` is the log row at ``l.prev_revision`` of the same key).
ENTRY_COLUMNS = (
    f"{KV_COLUMNS}, l.deleted, l.prev_revision, p.value, p.create_revision, p.version, p.lease"
)


def entry_from_row(row: Sequence[Any]) -> LogEntry:
    prev = None
    if row[7] and row[8] is not None:
        prev = KeyValue(
            key=row[0], value=row[8], create_revision=row[9], mod_revision=row[7],
            version=row[10], lease=row[11],
        )
    return LogEntry(kv=kv_from_row(row), deleted=bool(row[6]), prev=prev)


class KeySql:
    """How a dialect compares keys in SQL: here, as whole keys (``a = b``, ``a >= b``, ...).

    ``column`` and ``param`` are SQL expressions (a column, a placeholder)."""

    def eq(self, column: str, param: str) -> str:
        return f"{column} = {param}"

    def ge(self, column: str, param: str) -> str:
        return f"{column} >= {param}"

    def lt(self, column: str, param: str) -> str:
        return f"{column} < {param}"

    def order(self, column: str) -> str:
        return column


WHOLE_KEYS = KeySql()


def live_versions(
    key: bytes, end: bytes, revision: int, with_values: bool, placeholder: Callable[[int], str],
    keys: KeySql = WHOLE_KEYS,
) -> tuple[str, list[object], str]:
    """FROM ... WHERE selecting each key's live version in ``[key, end)`` at ``revision``
    (0: the current table; else history), its parameters, and what to order by.
    ``placeholder(n)`` spells the n-th parameter in the dialect (``?n`` or ``$n``), ``keys``
    its key comparisons."""
    if revision == 0:
        column = "c.key"
        source = "FROM current c JOIN log l ON l.id = c.id" if with_values else "FROM current c"
    else:
        column, source = "l.key", "FROM log l"
    params: list[object] = [key]
    sql = f"{source} WHERE {keys.ge(column, placeholder(1))}"
    if end:
        params.append(end)
        sql += f" AND {keys.lt(column, placeholder(len(params)))}"
    if revision != 0:
        params.append(revision)
        n = placeholder(len(params))
        sql += (
            f" AND l.revision <= {n} AND NOT l.deleted AND NOT EXISTS (SELECT 1 FROM log n "
            f"WHERE {keys.eq('n.key', 'l.key')} AND n.id > l.id AND n.revision <= {n})"
        )
    return sql, params, keys.order(column)


def hash_rows_sql(placeholder: Callable[[int], str], keys: KeySql = WHOLE_KEYS) -> str:
    """HashKV's read: log rows in (after, upto] in log order (parameters 1, 2), each marked
    kept unless it is at or below the compacted revision (3) and superseded by a newer
    version of its key at or below the hashed revision (4). Rows the compaction deletes
    are left out, whether or not it has reached them yet (it runs in steps)."""
    p = placeholder

    def newer_at(bound: str) -> str:
        return (
            f"EXISTS (SELECT 1 FROM log n WHERE {keys.eq('n.key', 'l.key')} AND n.id > l.id "
            f"AND n.revision <= {bound})"
        )

    return (
        "SELECT l.revision, l.key, l.value, l.create_revision, l.version, l.lease, "
        f"CASE WHEN l.deleted THEN 1 ELSE 0 END, CASE WHEN l.revision > {p(3)} OR NOT "
        f"{newer_at(p(4))} THEN 1 ELSE 0 END FROM log l "
        f"WHERE l.revision > {p(1)} AND l.revision <= {p(2)} "
        f"AND NOT (l.revision <= {p(3)} AND (l.deleted OR {newer_at(p(3))})) "
        "ORDER BY l.revision, l.id"
    )


# Alarms live in ``meta`` as rows named alarm:<member id>:<AlarmType number>.
ALARMS_SQL = "SELECT name FROM meta WHERE name LIKE 'alarm:%'"


def alarm_meta_name(alarm: tuple[int, int]) -> str:
    return f"alarm:{alarm[0]}:{alarm[1]}"


def parse_alarm_meta_name(name: str) -> tuple[int, int]:
    _, member, kind = name.split(":")
    return int(member), int(kind)

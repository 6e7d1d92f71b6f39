"""The PostgreSQL backend's views: the SQL of ``ReadView`` and ``WriteTxn`` (see
``postgres.py`` for the connections and the transactions they run in).

Every query goes through ``QueryRunner.query``, which runs it on the backend's loop thread and
waits. That hop costs more than the statement itself, so statements without a result
(SAVEPOINT, RELEASE, the revision update) are deferred and sent along with the next query or
with the COMMIT.
"""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg

from shim.backend.auth_tables import AuthTables
from shim.backend.base import EncodedKv, HashRow, KvRow, LogEntry, NewVersion, kv_from_row
from shim.backend.kv_wire import encode_rows
from shim.backend.rows import (
    ALARMS_SQL,
    ENTRY_COLUMNS,
    KV_COLUMNS,
    KeySql,
    alarm_meta_name,
    entry_from_row,
    hash_rows_sql,
    live_versions,
    parse_alarm_meta_name,
)
from shim.pb.kv_pb2 import KeyValue

CHANNEL = "shim_commit"
COMPACT_TIMEOUT = 3600.0

# Read with BEGIN, so every snapshot knows its revisions and its auth version without a query.
META_SQL = (
    "SELECT name, value FROM meta "
    "WHERE name IN ('revision', 'compact_revision', 'compact_progress', 'auth_revision', "
    "'auth_version')"
)


class QueryRunner(Protocol):
    """What the views need of the backend."""

    node_id: str
    instance: str  # tells this server's NOTIFYs apart from other servers'

    def query(
        self, conn: asyncpg.Connection, method: str, *args: Any, before: str | None = None,
        **kwargs: Any,
    ) -> Any: ...


def _pg_param(n: int) -> str:
    return f"${n}"


# The key indexes hold each key's first bytes (migration 0003_long_keys: a btree row holds at
# most 2704 bytes). Keys are compared on that prefix, which the indexes can answer, and then
# whole; ordered by prefix, then whole key.
KEY_PREFIX_BYTES = 1024


def _prefix(expression: str) -> str:
    if expression.startswith("$"):
        expression += "::bytea"  # a parameter's type is not inferred through substring()
    return f"substring({expression} from 1 for {KEY_PREFIX_BYTES})"


class PrefixedKeys(KeySql):
    def eq(self, column: str, param: str) -> str:
        return f"{_prefix(column)} = {_prefix(param)} AND {column} = {param}"

    def ge(self, column: str, param: str) -> str:
        return f"{_prefix(column)} >= {_prefix(param)} AND {column} >= {param}"

    def lt(self, column: str, param: str) -> str:
        # Two keys with one prefix may still be in order: the prefix comparison cannot be <.
        return f"{_prefix(column)} <= {_prefix(param)} AND {column} < {param}"

    def order(self, column: str) -> str:
        return f"{_prefix(column)}, {column}"


KEYS = PrefixedKeys()


class PostgresView:
    """Read queries on one pooled connection inside an open transaction."""

    def __init__(
        self, backend: QueryRunner, conn: asyncpg.Connection, meta: dict[str, int] | None
    ) -> None:
        self._backend = backend
        self._conn = conn
        # The revisions, read together with BEGIN: a snapshot's revisions cannot change.
        self._meta = meta
        # Statements without a result (SAVEPOINT, ...) that go out with the next query: every
        # call to the loop thread costs far more than a statement on the same connection.
        self._deferred: list[str] = []
        self.auth = AuthTables(
            lambda sql, args: self._fetch(sql, *args), _pg_param, self._meta_value,
            self._set_meta,
        )

    def _set_meta(self, name: str, value: int) -> None:
        raise RuntimeError("a read snapshot cannot write")

    def _take_deferred(self) -> str | None:
        if not self._deferred:
            return None
        text = "; ".join(self._deferred)
        self._deferred.clear()
        return text

    def _fetch(self, sql: str, *args: object) -> list[Any]:
        return self._backend.query(self._conn, "fetch", sql, *args, before=self._take_deferred())

    def _fetchval(self, sql: str, *args: object) -> Any:
        return self._backend.query(
            self._conn, "fetchval", sql, *args, before=self._take_deferred()
        )

    def _read_meta(self) -> dict[str, int]:
        return {row[0]: int(row[1]) for row in self._fetch(META_SQL)}

    def _meta_value(self, name: str, default: int = 0) -> int:
        if self._meta is None:
            self._meta = self._read_meta()
        return self._meta.get(name, default)

    def revision(self) -> int:
        return self._meta_value("revision")

    def compact_revision(self) -> int:
        return self._meta_value("compact_revision")

    def node_id(self) -> str:
        return str(self._fetchval("SELECT value FROM meta WHERE name = 'node_id'"))

    def max_hlc(self) -> int:
        return int(self._fetchval("SELECT COALESCE(MAX(hlc), 0) FROM log"))

    def get(self, key: bytes, revision: int) -> KeyValue | None:
        if revision == 0:
            rows = self._fetch(
                f"SELECT {KV_COLUMNS} FROM current c JOIN log l ON l.id = c.id "
                f"WHERE {KEYS.eq('c.key', '$1')}",
                key,
            )
            return kv_from_row(rows[0]) if rows else None
        rows = self._fetch(
            f"SELECT {KV_COLUMNS}, l.deleted FROM log l WHERE {KEYS.eq('l.key', '$1')} "
            "AND l.revision <= $2 "
            "ORDER BY l.revision DESC, l.id DESC LIMIT 1",
            key, revision,
        )
        return None if not rows or rows[0][6] else kv_from_row(rows[0])

    def range_rows(self, key: bytes, end: bytes, revision: int, limit: int) -> list[KvRow]:
        source, params, order = live_versions(key, end, revision, True, _pg_param, KEYS)
        sql = f"SELECT {KV_COLUMNS} {source} ORDER BY {order}"
        if limit > 0:
            params.append(limit)
            sql += f" LIMIT ${len(params)}"
        return self._fetch(sql, *params)

    def range_encoded(
        self, key: bytes, end: bytes, revision: int, limit: int
    ) -> list[EncodedKv]:
        # PostgreSQL keeps no heads: each row is encoded as it is read.
        return encode_rows(self.range_rows(key, end, revision, limit))

    def count(self, key: bytes, end: bytes, revision: int) -> int:
        source, params, _ = live_versions(key, end, revision, False, _pg_param, KEYS)
        return int(self._fetchval(f"SELECT COUNT(*) {source}", *params))

    def leases(self) -> dict[int, int]:
        return {int(row[0]): int(row[1]) for row in self._fetch("SELECT id, ttl FROM lease")}

    def lease_keys(self, lease_id: int) -> list[bytes]:
        rows = self._fetch(
            f"SELECT l.key FROM log l JOIN current c ON {KEYS.eq('c.key', 'l.key')} "
            f"AND c.id = l.id WHERE l.lease = $1 ORDER BY {KEYS.order('l.key')}",
            lease_id,
        )
        return [bytes(row[0]) for row in rows]

    def entries(
        self, key: bytes, end: bytes | None, after_revision: int, limit: int
    ) -> list[LogEntry]:
        def where(table: str) -> str:
            column = f"{table}.key"
            if end is None:
                return KEYS.eq(column, "$1")
            if end == b"":
                return KEYS.ge(column, "$1")
            return f"{KEYS.ge(column, '$1')} AND {KEYS.lt(column, '$2')}"

        params = [key] if not end else [key, end]
        n = len(params)
        # Whole revisions only: up to the revision of the limit-th row, and all of that one.
        rows = self._fetch(
            f"SELECT {ENTRY_COLUMNS} FROM log l LEFT JOIN log p "
            f"ON l.prev_revision <> 0 AND {KEYS.eq('p.key', 'l.key')} "
            "AND p.revision = l.prev_revision AND NOT p.deleted "
            f"WHERE {where('l')} AND l.revision > ${n + 1} AND l.revision <= COALESCE(("
            f"SELECT c.revision FROM log c WHERE {where('c')} AND c.revision > ${n + 1} "
            f"ORDER BY c.revision LIMIT 1 OFFSET ${n + 2}), 9223372036854775807) ORDER BY l.id",
            *params, after_revision, max(limit - 1, 0),
        )
        return [entry_from_row(row) for row in rows]


    def alarms(self) -> list[tuple[int, int]]:
        return sorted(parse_alarm_meta_name(row[0]) for row in self._fetch(ALARMS_SQL))

    def hash_rows(
        self, after: int, upto: int, compact_revision: int, revision: int
    ) -> list[HashRow]:
        rows = self._fetch(_HASH_ROWS_SQL, after, upto, compact_revision, revision)
        return [
            (row[0], bytes(row[1]), bytes(row[2]), row[3], row[4], row[5], row[6], row[7])
            for row in rows
        ]


_HASH_ROWS_SQL = hash_rows_sql(_pg_param, KEYS)


class PostgresWriteTxn(PostgresView):
    """The writer's view inside the batch transaction: reads see its own writes, and the
    ``meta`` revision row is locked until COMMIT."""

    def __init__(
        self, backend: QueryRunner, conn: asyncpg.Connection, meta: dict[str, int],
        leases: dict[int, int],
    ) -> None:
        # The revisions were read with the row lock at BEGIN: nobody else can change them
        # until COMMIT, and set_revision / set_compact_revision keep them up to date.
        super().__init__(backend, conn, meta)
        self._leases: dict[int, int] | None = leases  # as of BEGIN, until a lease changes
        self.new_revision: int | None = None

    def _execute(self, sql: str, *args: object, timeout: float | None = None) -> str:
        return self._backend.query(
            self._conn, "execute", sql, *args, timeout=timeout, before=self._take_deferred()
        )

    def leases(self) -> dict[int, int]:
        if self._leases is not None:
            return dict(self._leases)
        return super().leases()

    def commit_statements(self) -> str:
        """What is still deferred, then NOTIFY (for a new revision) and COMMIT: one message."""
        statements = list(self._deferred)
        self._deferred.clear()
        if self.new_revision is not None:
            # Delivered to listeners at COMMIT, in commit order. Digits and hex only.
            payload = f"{int(self.new_revision)} {self._backend.instance}"
            statements.append(f"SELECT pg_notify('{CHANNEL}', '{payload}')")
        statements.append("COMMIT")
        return "; ".join(statements)

    def append(self, versions: list[NewVersion]) -> None:
        node_id = self._backend.node_id
        for v in versions:
            # One round trip per version: the log row, and the key's entry in `current`.
            follow = (
                f"DELETE FROM current WHERE {KEYS.eq('key', '$2')}" if v.deleted else
                "INSERT INTO current (key, id) SELECT $2, id FROM ins ON CONFLICT "
                f"(({_prefix('key')}), sha256(key)) DO UPDATE SET id = excluded.id"
            )
            self._execute(
                "WITH ins AS (INSERT INTO log (revision, key, value, create_revision, version, "
                "lease, deleted, prev_revision, node_id, hlc) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id) " + follow,
                v.revision, v.key, v.value, v.create_revision, v.version, v.lease, v.deleted,
                v.prev_revision, node_id, v.hlc,
            )

    def add_lease(self, lease_id: int, ttl: int, granted_ms: int) -> None:
        self._leases = None
        self._execute(
            "INSERT INTO lease (id, ttl, granted_ms, node_id) VALUES ($1, $2, $3, $4)",
            lease_id, ttl, granted_ms, self._backend.node_id,
        )

    def remove_lease(self, lease_id: int) -> None:
        self._leases = None
        self._execute("DELETE FROM lease WHERE id = $1", lease_id)

    def add_alarm(self, alarm: tuple[int, int]) -> None:
        self._execute(
            "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            alarm_meta_name(alarm), str(alarm[1]),
        )

    def remove_alarm(self, alarm: tuple[int, int]) -> None:
        self._execute("DELETE FROM meta WHERE name = $1", alarm_meta_name(alarm))

    def database_size(self) -> int:
        return int(self._fetchval("SELECT pg_database_size(current_database())"))

    def set_revision(self, revision: int) -> None:
        # Sent with the COMMIT (an integer, formatted here: nothing to quote).
        self._deferred.append(f"UPDATE meta SET value = '{int(revision)}' WHERE name = 'revision'")
        self.new_revision = revision
        assert self._meta is not None
        self._meta["revision"] = revision

    def _set_meta(self, name: str, value: int) -> None:
        self._execute("UPDATE meta SET value = $1 WHERE name = $2", str(int(value)), name)
        assert self._meta is not None
        self._meta[name] = value

    def set_compact_revision(self, revision: int) -> None:
        self._execute(
            "UPDATE meta SET value = $1 WHERE name = 'compact_revision'", str(revision)
        )
        assert self._meta is not None
        self._meta["compact_revision"] = revision

    def compact(self, revision: int, after: int, upto: int) -> int:
        # Keep, for every key, its newest version at `revision` unless that is a tombstone:
        # exactly what reads at `revision` or later, and prev_kv of later events, can reach.
        status = self._execute(
            "DELETE FROM log WHERE revision > $2 AND revision <= $3 AND (deleted OR EXISTS ("
            f"SELECT 1 FROM log n WHERE {KEYS.eq('n.key', 'log.key')} AND n.id > log.id "
            "AND n.revision <= $1))",
            revision, after, upto, timeout=COMPACT_TIMEOUT,
        )
        return int(status.rsplit(" ", 1)[-1])

    def compact_progress(self) -> int:
        # No row: the database predates compaction in steps, when each one was complete.
        return self._meta_value("compact_progress", self.compact_revision())

    def set_compact_progress(self, revision: int) -> None:
        self._execute(
            "INSERT INTO meta (name, value) VALUES ('compact_progress', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            str(int(revision)),
        )
        assert self._meta is not None
        self._meta["compact_progress"] = revision

    # Savepoints go out with the next statement (or the COMMIT); a failure of theirs shows
    # there, and is a storage failure that fails the batch either way.

    def savepoint(self) -> None:
        self._deferred.append("SAVEPOINT op")

    def release(self) -> None:
        self._deferred.append("RELEASE SAVEPOINT op")

    def rollback_savepoint(self) -> None:
        self._deferred.append("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")

"""The embedded SQLite backend (apsw): one writer connection, per-thread read connections.

The database runs in WAL mode, so readers work on their own snapshot and never wait for the
writer, and the writer never waits for readers. Exactly one server may use a database file at a
time; a lock file next to it enforces that.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import apsw

from shim.backend.auth_tables import AuthTables
from shim.backend.base import (
    BackendOpenError,
    EncodedKv,
    ExternalCommitListener,
    HashRow,
    KvRow,
    LogEntry,
    NewVersion,
    kv_from_row,
)
from shim.backend.kv_wire import encode_rows, kv_head
from shim.backend.migrations import SchemaError, load_migrations, pending
from shim.backend.rows import (
    ALARMS_SQL,
    ENTRY_COLUMNS,
    KV_COLUMNS,
    alarm_meta_name,
    entry_from_row,
    hash_rows_sql,
    live_versions,
    parse_alarm_meta_name,
)
from shim.backend.sqlite_repl import SqliteReplicationTables
from shim.backend.sqlite_rows import one
from shim.pb.kv_pb2 import KeyValue

SYNCHRONOUS_MODES = ("FULL", "NORMAL")
_BUSY_TIMEOUT_MS = 10_000
_WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# Read connections map the database file (up to this much of it) instead of copying each page
# in with pread(2) into a 2 MB page cache per connection: a LIST of 10,000 Pods re-read 30 MB
# of pages that way, a fifth of its CPU (bench/runs/2026-12-07-list.md). Not the writer: its
# reads are the few pages a write touches, and pages it mapped would count in the RSS of a
# node that only takes writes. Off on 32-bit systems, whose address space would not take a
# mapping per connection.
_MMAP_BYTES = 1 << 30 if sys.maxsize > 2**32 else 0



T = TypeVar("T")


def _sqlite_param(n: int) -> str:
    return f"?{n}"


class SqliteView:
    """Read queries on one connection. Callers hold a read (or the write) transaction."""

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn
        self.replication = SqliteReplicationTables(conn)
        self.auth = AuthTables(self._query, _sqlite_param, self._meta, self._set_meta)

    def _query(self, sql: str, args: Sequence[object]) -> list[Any]:
        return self._conn.execute(sql, args).fetchall()

    def _set_meta(self, name: str, value: int) -> None:
        # Only the write transaction's connection may write; readers are query_only.
        self._conn.execute("UPDATE meta SET value = ? WHERE name = ?", (value, name))

    def _meta(self, name: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row is not None else 0

    def revision(self) -> int:
        return self._meta("revision")

    def compact_revision(self) -> int:
        return self._meta("compact_revision")

    def node_id(self) -> str:
        row = one(self._conn.execute("SELECT value FROM meta WHERE name = 'node_id'"))
        return str(row[0])

    def max_hlc(self) -> int:
        # One writer stamps rows in insertion order with a clock that only moves forward, so
        # the newest row carries the largest stamp (compaction never removes a live newest
        # row; a stamp it does remove is compared with nothing any more).
        row = self._conn.execute("SELECT hlc FROM log ORDER BY id DESC LIMIT 1").fetchone()
        return int(row[0]) if row is not None else 0

    def get(self, key: bytes, revision: int) -> KeyValue | None:
        if revision == 0:
            # A subquery, not a join: SQLite prepared the join on `c.key = ?` again for every
            # new key, most of its cost, and every put reads its key's version this way
            # (bench/runs/2026-12-07-reprepare.md).
            row = self._conn.execute(
                f"SELECT {KV_COLUMNS} FROM log l WHERE l.id = "
                "(SELECT id FROM current WHERE key = ?)",
                (key,),
            ).fetchone()
            return None if row is None else kv_from_row(row)
        row = self._conn.execute(
            f"SELECT {KV_COLUMNS}, l.deleted FROM log l WHERE l.key = ? AND l.revision <= ? "
            "ORDER BY l.revision DESC, l.id DESC LIMIT 1",
            (key, revision),
        ).fetchone()
        return None if row is None or row[6] else kv_from_row(row)

    def range_rows(self, key: bytes, end: bytes, revision: int, limit: int) -> list[KvRow]:
        source, params, order = live_versions(key, end, revision, True, _sqlite_param)
        sql = f"SELECT {KV_COLUMNS} {source} ORDER BY {order}"
        if limit > 0:
            sql += " LIMIT ?"
            params.append(limit)
        return self._conn.execute(sql, params).fetchall()  # type: ignore[return-value]  # KvRow columns

    def range_encoded(
        self, key: bytes, end: bytes, revision: int, limit: int
    ) -> list[EncodedKv]:
        source, params, order = live_versions(key, end, revision, True, _sqlite_param)
        sql = f"SELECT l.kv_head, l.value {source} ORDER BY {order}"
        if limit > 0:
            sql += " LIMIT ?"
            params.append(limit)
        rows = self._conn.execute(sql, params).fetchall()
        if any(head is None for head, _ in rows):
            # Rows written before heads were stored: encoded here, at the same snapshot.
            return encode_rows(self.range_rows(key, end, revision, limit))
        return rows  # type: ignore[return-value]  # (head, value) columns

    def count(self, key: bytes, end: bytes, revision: int) -> int:
        source, params, _ = live_versions(key, end, revision, False, _sqlite_param)
        row = one(self._conn.execute(f"SELECT COUNT(*) {source}", params))
        return int(row[0])

    def leases(self) -> dict[int, int]:
        rows = self._conn.execute("SELECT id, ttl FROM lease")
        return {int(lease): int(ttl) for lease, ttl in rows}

    def lease_keys(self, lease_id: int) -> list[bytes]:
        """Keys whose current version is attached to the lease, in key order."""
        rows = self._conn.execute(
            "SELECT l.key FROM log l JOIN current c ON c.key = l.key AND c.id = l.id "
            "WHERE l.lease = ? ORDER BY l.key",
            (lease_id,),
        )
        return [row[0] for row in rows]

    def entries(
        self, key: bytes, end: bytes | None, after_revision: int, limit: int
    ) -> list[LogEntry]:
        if end is None:
            where, params = "{t}.key = ?", [key]
        elif end == b"":
            where, params = "{t}.key >= ?", [key]
        else:
            where, params = "{t}.key >= ? AND {t}.key < ?", [key, end]
        # Whole revisions only: up to the revision of the limit-th row, and all of that one.
        rows = self._conn.execute(
            f"SELECT {ENTRY_COLUMNS} FROM log l LEFT JOIN log p "
            "ON l.prev_revision != 0 AND p.key = l.key AND p.revision = l.prev_revision "
            "AND p.deleted = 0 "
            f"WHERE {where.format(t='l')} AND l.revision > ? AND l.revision <= COALESCE(("
            f"SELECT c.revision FROM log c WHERE {where.format(t='c')} AND c.revision > ? "
            "ORDER BY c.revision LIMIT 1 OFFSET ?), 9223372036854775807) ORDER BY l.id",
            (*params, after_revision, *params, after_revision, max(limit - 1, 0)),
        )
        return [entry_from_row(row) for row in rows]


    def alarms(self) -> list[tuple[int, int]]:
        return sorted(parse_alarm_meta_name(row[0]) for row in self._conn.execute(ALARMS_SQL))

    def hash_rows(
        self, after: int, upto: int, compact_revision: int, revision: int
    ) -> list[HashRow]:
        return self._conn.execute(  # type: ignore[return-value]  # KvRow columns
            _HASH_ROWS_SQL, (after, upto, compact_revision, revision)
        ).fetchall()


_HASH_ROWS_SQL = hash_rows_sql(_sqlite_param)
# What nearly every read asks of meta, in one query (a read snapshot never changes them).
_SNAPSHOT_META = ("revision", "compact_revision", "auth_version")
_SNAPSHOT_META_SQL = (
    f"SELECT name, value FROM meta WHERE name IN ({', '.join(map(repr, _SNAPSHOT_META))})"
)


class SqliteReadView(SqliteView):
    """A read transaction's view: meta's revisions and auth version are read once, together."""

    def __init__(self, conn: apsw.Connection) -> None:
        super().__init__(conn)
        self._snapshot: dict[str, int] | None = None

    def _meta(self, name: str) -> int:
        if name not in _SNAPSHOT_META:
            return super()._meta(name)
        snapshot = self._snapshot
        if snapshot is None:
            rows = self._conn.execute(_SNAPSHOT_META_SQL)
            snapshot = self._snapshot = {row[0]: int(row[1]) for row in rows}
        return snapshot.get(name, 0)


class SqliteWriteTxn(SqliteView):
    """The writer's view: reads see the open transaction's own writes."""

    def __init__(self, conn: apsw.Connection, node_id: str) -> None:
        super().__init__(conn)
        self._node_id = node_id

    def append(self, versions: list[NewVersion]) -> None:
        conn = self._conn
        for v in versions:
            head = None if v.deleted else kv_head(
                v.key, len(v.value), v.create_revision, v.revision, v.version, v.lease
            )
            conn.execute(
                "INSERT INTO log (revision, key, value, create_revision, version, lease, deleted, "
                "prev_revision, node_id, hlc, kv_head) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (v.revision, v.key, v.value, v.create_revision, v.version, v.lease,
                 int(v.deleted), v.prev_revision, self._node_id, v.hlc, head),
            )
            if v.deleted:
                conn.execute("DELETE FROM current WHERE key = ?", (v.key,))
            else:
                conn.execute(
                    "INSERT INTO current (key, id) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET id = excluded.id",
                    (v.key, conn.last_insert_rowid()),
                )

    def add_lease(self, lease_id: int, ttl: int, granted_ms: int) -> None:
        self._conn.execute(
            "INSERT INTO lease (id, ttl, granted_ms, node_id) VALUES (?, ?, ?, ?)",
            (lease_id, ttl, granted_ms, self._node_id),
        )

    def remove_lease(self, lease_id: int) -> None:
        self._conn.execute("DELETE FROM lease WHERE id = ?", (lease_id,))

    def add_alarm(self, alarm: tuple[int, int]) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)",
            (alarm_meta_name(alarm), alarm[1]),
        )

    def remove_alarm(self, alarm: tuple[int, int]) -> None:
        self._conn.execute("DELETE FROM meta WHERE name = ?", (alarm_meta_name(alarm),))

    def database_size(self) -> int:
        # Pages the database holds (free ones included, like etcd's file size), whether they
        # are still in the WAL or already in the main file.
        pages = one(self._conn.execute("PRAGMA page_count"))[0]
        size = one(self._conn.execute("PRAGMA page_size"))[0]
        return int(pages * size)

    def set_revision(self, revision: int) -> None:
        self._conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))

    def set_compact_revision(self, revision: int) -> None:
        self._conn.execute(
            "UPDATE meta SET value = ? WHERE name = 'compact_revision'", (revision,)
        )

    def compact(self, revision: int, after: int, upto: int) -> int:
        # Keep, for every key, its newest version at `revision` unless that is a tombstone:
        # exactly what reads at `revision` or later, and prev_kv of later events, can reach.
        superseded = (
            "EXISTS (SELECT 1 FROM log n WHERE n.key = log.key AND n.id > log.id "
            "AND n.revision <= ?1)"
        )
        window = "revision > ?2 AND revision <= ?3"
        # Replication entries that read their value from a row about to go get a copy first.
        self.replication.keep_values_of(
            f"SELECT key, hlc, value FROM log WHERE {window} AND deleted = 0 AND {superseded}",
            (revision, after, upto),
        )
        self._conn.execute(
            f"DELETE FROM log WHERE {window} AND (deleted = 1 OR {superseded})",
            (revision, after, upto),
        )
        return self._conn.changes()

    def compact_progress(self) -> int:
        # No row: the database predates compaction in steps, when each one was complete.
        row = self._conn.execute(
            "SELECT value FROM meta WHERE name = 'compact_progress'").fetchone()
        return self.compact_revision() if row is None else int(row[0])

    def set_compact_progress(self, revision: int) -> None:
        self._conn.execute(
            "INSERT INTO meta (name, value) VALUES ('compact_progress', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (revision,),
        )

    def savepoint(self) -> None:
        self._conn.execute("SAVEPOINT op")

    def release(self) -> None:
        self._conn.execute("RELEASE op")

    def rollback_savepoint(self) -> None:
        self._conn.execute("ROLLBACK TO op; RELEASE op")


def lock_path(database: Path) -> Path:
    """The lock file a server holds while it uses ``database``: beside the file the path
    leads to, so a second path to it (a symlink to the file or to a directory on the way)
    meets the same lock."""
    real = database.resolve()
    return real.with_name(real.name + ".lock")


class SqliteBackend:
    """Owns the database file: opening, locking, migrating, and the connections."""

    dialect = "sqlite"
    replicates = True  # keeps the replication tables (shim/migrations/sqlite/0003)
    shared = False  # the file lock keeps every other server out
    errors: tuple[type[BaseException], ...] = (apsw.Error,)
    corruption_errors: tuple[type[BaseException], ...] = (apsw.CorruptError, apsw.NotADBError)

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        self.path = path
        self.location = str(path)
        self._synchronous = synchronous
        self._lock_fd: int | None = None
        self._writer: apsw.Connection | None = None
        self._readers = threading.local()
        self._all_readers: list[apsw.Connection] = []
        self._readers_lock = threading.Lock()
        self.node_id = ""

    # -- life cycle ---------------------------------------------------------------------------

    def open(self) -> None:
        self._take_file_lock()
        try:
            self._writer = self._connect()
            _refuse_foreign(self._writer)  # before anything is written to the file
            self._writer.execute("PRAGMA journal_mode = WAL").fetchall()
            self._migrate(self._writer)
            self.node_id = SqliteView(self._writer).node_id()
        except apsw.Error as exc:
            self.close()
            raise BackendOpenError(f"cannot use database {self.path}: {_describe(exc)}") from exc
        except SchemaError as exc:
            self.close()
            raise BackendOpenError(f"{self.path}: {exc}") from exc

    def open_reader(self) -> None:
        """Open for reading only, beside the process that opened it with ``open()`` (a serving
        process of --processes N): no lock, no migrations, no writer connection."""
        if not self.path.is_file():
            raise BackendOpenError(f"cannot use database {self.path}: it does not exist")
        try:
            with self.read() as view:
                self.node_id = view.node_id()
        except apsw.Error as exc:
            self.close()
            raise BackendOpenError(f"cannot use database {self.path}: {_describe(exc)}") from exc

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._all_readers:
                conn.close()
            self._all_readers.clear()
        if self._writer is not None:
            with contextlib.suppress(apsw.Error):
                # Fold the WAL back into the database so the file is complete on its own.
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._writer.close()
            self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _take_file_lock(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendOpenError(
                f"cannot create data directory {self.path.parent}: {exc.strerror}"
            ) from exc
        if self.path.exists() and not self.path.is_file():
            raise BackendOpenError(f"{self.path} is not a file")
        path = lock_path(self.path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BackendOpenError(
                f"cannot create lock file {path} for {self.path}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BackendOpenError(
                f"{self.path} is in use by another shim server (lock {path} is held)"
            ) from None
        self._lock_fd = fd

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(str(self.path))
        conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
        # After each checkpoint the WAL file is cut back to this size, so a burst of writes
        # (a compaction) does not leave a huge WAL file behind for ever.
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT_BYTES}")
        return conn

    def _migrate(self, conn: apsw.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT (datetime('now')))"
        )
        row = one(conn.execute("SELECT MAX(version) FROM schema_version"))
        applied = int(row[0] or 0)
        for migration in pending(applied, load_migrations(self.dialect)):
            with conn:
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (?, ?)",
                    (migration.version, migration.name),
                )
        with conn:
            # A fresh store starts at revision 1, like etcd; compaction has not happened (-1).
            conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('node_id', ?), "
                "('revision', 1), ('compact_revision', -1)",
                (uuid.uuid4().hex,),
            )

    # -- connections ------------------------------------------------------------------------

    def writer(self) -> apsw.Connection:
        assert self._writer is not None, "backend is not open"
        return self._writer

    @contextlib.contextmanager
    def write(self) -> Iterator[SqliteWriteTxn]:
        """One write transaction on the writer connection (one at a time: the Writer's lock)."""
        conn = self.writer()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield SqliteWriteTxn(conn, self.node_id)
            conn.execute("COMMIT")
        except BaseException:
            # Also after a failed COMMIT: never leave a transaction open on the writer.
            if not conn.get_autocommit():
                with contextlib.suppress(apsw.Error):
                    conn.execute("ROLLBACK")
            raise

    def _reader(self) -> apsw.Connection:
        """This thread's read connection."""
        conn: apsw.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
            self._readers.conn = conn
            with self._readers_lock:
                self._all_readers.append(conn)
        return conn

    @contextlib.contextmanager
    def read(self) -> Iterator[SqliteView]:
        """A consistent snapshot on this thread's read connection."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            yield SqliteReadView(conn)
        finally:
            conn.execute("COMMIT")

    async def read_async(self, fn: Callable[[SqliteView], T]) -> T:
        # SQLite reads are fast and local: run them on the event loop thread itself (its own
        # read connection), which costs less than a hop to a worker thread. read()'s
        # snapshot, spelled out: this is on the path of every Range.
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return fn(SqliteReadView(conn))
        finally:
            conn.execute("COMMIT")

    def set_commit_listener(self, listener: ExternalCommitListener | None) -> None:
        """Nothing to listen to: no other server writes this file."""

    def describe_error(self, exc: BaseException) -> str:
        return _describe(exc) if isinstance(exc, apsw.Error) else str(exc)

    def size_bytes(self) -> int:
        """Bytes the database uses on disk, WAL included."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(str(self.path) + suffix)
        return total

    def snapshot(self, target: str) -> int:
        """A consistent copy through SQLite's online backup, from one read transaction of a
        connection of its own (so writers go on meanwhile), as a standalone file (rollback
        journal mode: no -wal file belongs to it). Returns the revision copied."""
        source = self._connect()
        try:
            copy = apsw.Connection(target)
            try:
                source.execute("BEGIN")  # one snapshot for the whole copy
                revision = SqliteView(source).revision()
                with copy.backup("main", source, "main") as backup:
                    backup.step(-1)
                source.execute("COMMIT")
                copy.execute("PRAGMA journal_mode = DELETE").fetchall()
            finally:
                copy.close()
        finally:
            source.close()
        return revision

    @contextlib.contextmanager
    def read_copy(self, path: str) -> Iterator[SqliteView]:
        """A read view of a copy ``snapshot`` made, opened read-only."""
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            conn.execute("BEGIN")
            yield SqliteReadView(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def defragment(self) -> None:
        """VACUUM on the writer connection: the file is rebuilt without free pages. Writes
        wait for it (the writer's lock is held); readers go on from their WAL snapshots.
        Then the WAL is folded back and truncated, so the file system gets the space back."""
        conn = self.writer()
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def size_in_use_bytes(self) -> int:
        with self.read() as view:
            conn = view._conn
            pages = one(conn.execute("PRAGMA page_count"))[0]
            free = one(conn.execute("PRAGMA freelist_count"))[0]
            size = one(conn.execute("PRAGMA page_size"))[0]
        return int((pages - free) * size)


def _refuse_foreign(conn: apsw.Connection) -> None:
    """A database with tables but no ``schema_version`` belongs to another program: taking it
    over would bury its data under shim's tables. An empty file (or a new one) is shim's to
    fill, and every database shim made records its schema version first."""
    tables = [
        name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    if tables and "schema_version" not in tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise SchemaError(
            f"not a shim database (it holds another program's tables: {shown}); "
            "use a new file"
        )


def _describe(exc: apsw.Error) -> str:
    text = str(exc)
    if isinstance(exc, apsw.NotADBError):
        return "the file is not a SQLite database (or is corrupted)"
    if isinstance(exc, apsw.CorruptError):
        return (
            "the database file is corrupted (bring the node back from a snapshot: "
            "shim snapshot restore)"
        )
    if isinstance(exc, apsw.ReadOnlyError):
        return "the database file is read-only"
    if isinstance(exc, apsw.CantOpenError):
        return "the file cannot be opened (check the path and its permissions)"
    if isinstance(exc, apsw.FullError):  # the online backup says "not an error" for it
        return "database or disk is full"
    text = text.split(":", 1)[-1].strip()
    if isinstance(exc, apsw.IOError) and text in ("", "not an error"):
        return "disk I/O error"
    return text or "SQLite failed"

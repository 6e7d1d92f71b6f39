"""The PostgreSQL backend (asyncpg): a connection pool on a loop thread of its own.

Several shim servers may share one database. Every write batch first locks the ``meta``
revision row (``SELECT ... FOR UPDATE``) and holds it until COMMIT, so batches of all servers
commit one after the other, in revision order: a reader never sees revision N+1 without N, and a
compare-and-swap always compares against the latest committed state. A committed batch sends
``NOTIFY shim_commit``; every server LISTENs and tells its watch hub, which reads what it missed
from the log. Reads run in REPEATABLE READ, READ ONLY transactions: one snapshot per request.

The MVCC engine is synchronous, asyncpg is not: the views (``pg_views``) hand each query to
the backend's loop thread (``pg_bridge.LoopThread``) and wait for the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import asyncpg

from shim.backend.base import (
    BackendOpenError,
    ExternalCommitListener,
    ReadView,
    UnsupportedError,
)
from shim.backend.migrations import SchemaError, load_migrations, pending
from shim.backend.pg_bridge import LoopThread
from shim.backend.pg_views import CHANNEL, META_SQL, PostgresView, PostgresWriteTxn
from shim.config import PostgresEndpoint
from shim.mvcc.errors import StorageUnavailableError
from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)

T = TypeVar("T")
REVISION_SQL = "SELECT value FROM meta WHERE name = 'revision'"

POOL_SIZE = 16
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
# How often an idle LISTEN connection is checked (a dead peer that sent no FIN is found).
LISTEN_CHECK_INTERVAL = 2.0
RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)
# pg_advisory_xact_lock key held while migrating, so servers starting together take turns.
MIGRATION_LOCK = 0x5348_494D  # "SHIM"



class PostgresUnavailableError(StorageUnavailableError):
    """PostgreSQL cannot be reached or gave up on the operation; the request may be retried.
    The message never contains the password."""


# What "the storage failed" looks like from asyncpg: connection trouble (class 08), the server
# shutting down or starting (57), running out of resources (53), a serialization failure or
# deadlock (40), and the OS's socket errors and timeouts. Anything else (a syntax error, a
# constraint violation) is a bug and is not hidden behind UNAVAILABLE.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    # A server that became a read-only standby (failover in progress).
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    OSError,
    TimeoutError,
)


# asyncpg reports a connection (or pool) closed under it as an InterfaceError; the same class
# reports misuse too, which must stay visible, so only these messages count as an outage.
# "released back to the pool": asyncpg hands a pooled connection back by itself when the
# server closes it; this backend only ever releases a connection after its last use.
_LOST_CONNECTION_TEXTS = ("closed", "closing", "released back to the pool")


# While the server closes a connection, asyncpg may refuse the next operation on it as a
# second one in progress ("cannot switch to state 11; another operation (2) is in progress";
# seen once in CI during a PostgreSQL stop, under write load): an outage, not a bug here.
_BUSY_WHILE_LOST_TEXT = "another operation"


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, asyncpg.InternalClientError):
        return _BUSY_WHILE_LOST_TEXT in str(exc)
    return isinstance(exc, asyncpg.InterfaceError) and any(
        text in str(exc) for text in _LOST_CONNECTION_TEXTS
    )


async def _lost(conn: asyncpg.Connection, wait: float = 1.0) -> bool:
    """Whether ``conn`` is closed, or closes within ``wait`` seconds."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            if conn.is_closed():
                return True
        except asyncpg.InterfaceError:
            return True  # asyncpg already took it back into the pool: it was closed
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.02)


async def _on_live(conn: asyncpg.Connection, operation: Awaitable[T]) -> T:
    """Await ``operation`` on ``conn``. When the server ends a connection (a FATAL message at
    shutdown), asyncpg may report "cannot switch to state ..." while it is still taking the
    connection down: that is an outage if the connection is indeed gone a moment later;
    anything else is a bug and stays one."""
    try:
        return await operation
    except asyncpg.InternalClientError as exc:
        if await _lost(conn):
            raise ConnectionResetError(f"connection lost ({exc})") from exc
        raise


def _terminate(conn: asyncpg.Connection) -> None:
    """Close a connection at once; one that asyncpg already gave back is left alone."""
    with contextlib.suppress(Exception):
        conn.terminate()


def _describe(exc: BaseException) -> str:
    """One line about a failure talking to PostgreSQL, never a Python class name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time (the server or the network is stuck)"
    # PostgreSQL's messages may carry a DETAIL or HINT on lines of their own.
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or "the connection failed"


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """On return to the pool asyncpg itself rolls back a transaction left open; the default
    reset (RESET ALL, UNLISTEN *, ...) would cost a round trip per request and undo nothing
    that shim sets."""


class PostgresBackend:
    """A PostgreSQL database that one or several shim servers share."""

    dialect = "postgres"
    # Servers sharing one PostgreSQL database already see each other's writes; replication
    # between nodes is built on the SQLite datastore (docs/REPLICATION.md).
    replicates = False
    shared = True
    errors: tuple[type[BaseException], ...] = (PostgresUnavailableError,)
    corruption_errors: tuple[type[BaseException], ...] = (
        asyncpg.exceptions.DataCorruptedError, asyncpg.exceptions.IndexCorruptedError,
    )

    def __init__(
        self, endpoint: PostgresEndpoint, pool_size: int = POOL_SIZE,
        ssl: ssl_module.SSLContext | None = None,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self.endpoint = endpoint
        # The loop of the thread asyncpg runs on (the server's kind: uvloop by default).
        self._loop_factory = loop_factory
        # k3s-style --datastore-cafile/certfile/keyfile; None: the URL's sslmode decides.
        self._ssl = ssl
        self.location = endpoint.redacted
        self.node_id = ""
        self._pool_size = pool_size
        self._bridge: LoopThread | None = None
        self._pool: asyncpg.Pool | None = None
        self._listener: ExternalCommitListener | None = None
        self._listen_task: asyncio.Task[None] | None = None
        # Tells this server's own notifications apart from other servers'.
        self.instance = uuid.uuid4().hex

    # -- calls onto the loop thread ---------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a database coroutine on the loop thread and wait; storage failures become
        ``PostgresUnavailableError`` with the password masked."""
        bridge = self._bridge
        if bridge is None:
            coro.close()
            raise PostgresUnavailableError("the PostgreSQL backend is closed")
        try:
            return bridge.run(coro)
        except PostgresUnavailableError:
            raise
        except Exception as exc:
            if _is_unavailable(exc):
                raise PostgresUnavailableError(self._message(exc)) from exc
            raise

    def query(
        self, conn: asyncpg.Connection, method: str, *args: Any, before: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """``conn.<method>(*args)`` on the loop thread, after the statements ``before`` if
        any. The method is looked up there too: a pooled connection that asyncpg took back
        after losing it fails already at lookup."""

        async def run() -> Any:
            if before:
                await _on_live(conn, conn.execute(before))
            return await _on_live(conn, getattr(conn, method)(*args, **kwargs))

        return self.call(run())

    def _message(self, exc: BaseException) -> str:
        return self.endpoint.mask(f"PostgreSQL {self.location}: {_describe(exc)}")

    # -- life cycle ---------------------------------------------------------------------------

    def open(self) -> None:
        self._bridge = LoopThread("shim-postgres", self._loop_factory)
        try:
            self.node_id = self._bridge.run(self._open())
        except BackendOpenError:
            self.close()
            raise
        except SchemaError as exc:
            self.close()
            raise BackendOpenError(f"{self.location}: {exc}") from exc
        except Exception as exc:
            self.close()
            raise BackendOpenError(
                self.endpoint.mask(f"cannot use database {self.location}: {_describe(exc)}")
            ) from None

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "timeout": CONNECT_TIMEOUT,
            "command_timeout": COMMAND_TIMEOUT,
            "server_settings": {"application_name": "shim"},
        }
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
        return kwargs

    async def _open(self) -> str:
        self._pool = pool = await self._create_pool()
        try:
            conn = await pool.acquire(timeout=CONNECT_TIMEOUT)
        except asyncpg.InvalidCatalogNameError:
            await self._create_database()
            conn = await pool.acquire(timeout=CONNECT_TIMEOUT)
        try:
            node_id = await self._migrate(conn)
        finally:
            await pool.release(conn)
        self._listen_task = asyncio.get_running_loop().create_task(self._listen_loop())
        return node_id

    async def _create_pool(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(
            self.endpoint.url, min_size=0, max_size=self._pool_size,
            reset=_reset_connection, **self._connect_kwargs(),
        )
        assert pool is not None
        return pool

    async def _create_database(self) -> None:
        """Connect to the maintenance database with the same credentials and create ours."""
        name = self.endpoint.database
        last: Exception | None = None
        for maintenance in ("postgres", "template1"):
            try:
                conn = await asyncpg.connect(
                    self.endpoint.url, database=maintenance, **self._connect_kwargs()
                )
            except asyncpg.InvalidCatalogNameError as exc:
                last = exc
                continue
            try:
                await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
                log.info("created database %s", name)
            except asyncpg.DuplicateDatabaseError:
                pass  # another server created it just now
            except asyncpg.InsufficientPrivilegeError as exc:
                raise BackendOpenError(self.endpoint.mask(
                    f"database {name!r} does not exist and {self.location} may not create it: "
                    f"{_describe(exc)}"
                )) from None
            finally:
                await conn.close()
            return
        raise BackendOpenError(self.endpoint.mask(
            f"database {name!r} does not exist and there is no maintenance database to create "
            f"it from: {_describe(last) if last else ''}"
        ))

    async def _migrate(self, conn: asyncpg.Connection) -> str:
        async with conn.transaction():
            # Servers starting together take turns; the second finds the work done.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = int(
                await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            )
            for migration in pending(applied, load_migrations(self.dialect)):
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                    migration.version, migration.name,
                )
                log.info("applied migration %04d_%s", migration.version, migration.name)
            # A fresh store starts at revision 1, like etcd; compaction has not happened (-1).
            await conn.execute(
                "INSERT INTO meta (name, value) VALUES ('node_id', $1), ('revision', '1'), "
                "('compact_revision', '-1') ON CONFLICT (name) DO NOTHING",
                uuid.uuid4().hex,
            )
            return str(await conn.fetchval("SELECT value FROM meta WHERE name = 'node_id'"))

    def close(self) -> None:
        bridge, self._bridge = self._bridge, None
        if bridge is None:
            return
        with contextlib.suppress(Exception):
            bridge.run(self._close())
        bridge.stop()

    async def _close(self) -> None:
        await cancel_and_wait(self._listen_task)
        self._listen_task = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except Exception:
                pool.terminate()

    def _pool_or_fail(self) -> asyncpg.Pool:
        if self._pool is None:
            raise PostgresUnavailableError("the PostgreSQL backend is closed")
        return self._pool

    # -- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[PostgresWriteTxn]:
        """One batch transaction (the writer thread only). The revision row stays locked from
        the first statement until COMMIT, which is what orders the batches of all servers."""
        conn, meta, leases = self.call(self._begin_write())
        txn = PostgresWriteTxn(self, conn, meta, leases)
        committing = False
        try:
            yield txn
            committing = True
            self.call(self._commit(conn, txn.commit_statements()))
        except BaseException:
            self._end_quietly(conn)
            if committing:
                # The COMMIT may have happened even though its answer was lost: once the
                # database answers again, make sure the watch hub looks at the log.
                self._announce_later()
            raise

    async def _commit(self, conn: asyncpg.Connection, statements: str) -> None:
        await _on_live(conn, conn.execute(statements))
        await self._release(conn)

    @contextlib.contextmanager
    def read(self) -> Iterator[PostgresView]:
        """A consistent snapshot: a REPEATABLE READ, READ ONLY transaction (any thread but the
        backend's loop thread)."""
        conn, meta = self.call(self._begin_read())
        try:
            yield PostgresView(self, conn, meta)
        finally:
            # Nothing to wait for: the snapshot has given its answers. The COMMIT and the
            # return to the pool happen on the loop thread while the caller goes on.
            bridge = self._bridge
            if bridge is not None:
                asyncio.run_coroutine_threadsafe(self._end(conn), bridge.loop)

    async def read_async(self, fn: Callable[[PostgresView], T]) -> T:
        # The view blocks on every query: run it in a worker thread, never on the event loop.
        def run() -> T:
            with self.read() as view:
                return fn(view)

        return await asyncio.to_thread(run)

    async def _begin(self, *statements: str) -> asyncpg.Connection:
        """A pooled connection with ``statements`` (BEGIN ...) run on it. A connection that
        died while idle in the pool (the server restarted, or ended it) is only found when
        used: it is thrown away and the next one tried, since nothing has happened yet."""
        attempts = self._pool_size + 1
        for attempt in range(1, attempts + 1):
            try:
                conn = await self._pool_or_fail().acquire(timeout=CONNECT_TIMEOUT)
            except PostgresUnavailableError:
                raise
            except Exception as exc:
                # Whatever keeps a connection from being made (refused, a password or role
                # changed, the database dropped) is an outage to wait out, not a bug.
                raise PostgresUnavailableError(self._message(exc)) from exc
            try:
                for statement in statements:
                    await conn.execute(statement)
            except Exception as exc:
                _terminate(conn)
                await self._release(conn)
                if attempt == attempts:
                    raise PostgresUnavailableError(self._message(exc)) from exc
                continue
            except BaseException:
                _terminate(conn)
                await self._release(conn)
                raise
            return conn
        raise AssertionError("unreachable")

    async def _begin_read(self) -> tuple[asyncpg.Connection, dict[str, int]]:
        conn = await self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            rows = await conn.fetch(META_SQL)
        except BaseException:
            await self._discard(conn)
            raise
        return conn, {row[0]: int(row[1]) for row in rows}

    async def _begin_write(
        self,
    ) -> tuple[asyncpg.Connection, dict[str, int], dict[int, int]]:
        conn = await self._begin("BEGIN ISOLATION LEVEL READ COMMITTED")
        try:
            # Waits while another server's batch holds the rows; then reads what it committed.
            # The leases come in the same round trip (rows with a NULL name).
            rows = await conn.fetch(
                f"WITH locked AS ({META_SQL} ORDER BY name FOR UPDATE) "
                "SELECT name, value, NULL::bigint, NULL::bigint FROM locked "
                "UNION ALL SELECT NULL, NULL, id, ttl FROM lease"
            )
        except BaseException:
            await self._discard(conn)
            raise
        meta = {row[0]: int(row[1]) for row in rows if row[0] is not None}
        leases = {int(row[2]): int(row[3]) for row in rows if row[0] is None}
        return conn, meta, leases

    async def _end(self, conn: asyncpg.Connection) -> None:
        """End a read transaction and return its connection (errors only cost the
        connection: the reader already has its answer)."""
        try:
            await conn.execute("COMMIT")
        except Exception:
            _terminate(conn)
        await self._release(conn)

    async def _release(self, conn: asyncpg.Connection) -> None:
        pool = self._pool
        if pool is None:
            _terminate(conn)
            return
        try:
            await pool.release(conn, timeout=CONNECT_TIMEOUT)
        except Exception:
            _terminate(conn)  # the pool has already let it go, or gives up on it

    async def _discard(self, conn: asyncpg.Connection) -> None:
        """Give a connection back after a failure: rolled back if it still works, else closed."""
        try:
            await asyncio.wait_for(conn.execute("ROLLBACK"), CONNECT_TIMEOUT)
        except Exception:
            _terminate(conn)
        await self._release(conn)

    def _end_quietly(self, conn: asyncpg.Connection) -> None:
        with contextlib.suppress(Exception):
            self.call(self._discard(conn))

    # -- commits of other servers -------------------------------------------------------------

    def set_commit_listener(self, listener: ExternalCommitListener | None) -> None:
        self._listener = listener
        if listener is not None:
            self._announce_later()

    def _announce_later(self) -> None:
        """Tell the listener the current revision as soon as the database answers."""
        bridge = self._bridge
        if bridge is not None and self._listener is not None:
            asyncio.run_coroutine_threadsafe(self._announce_current(), bridge.loop)

    async def _announce_current(self) -> None:
        for attempt in range(1_000_000):
            try:
                async with self._pool_or_fail().acquire(timeout=CONNECT_TIMEOUT) as conn:
                    value = await _on_live(conn, conn.fetchval(REVISION_SQL))
                self._deliver(int(value))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not _is_unavailable(exc) and not isinstance(exc, PostgresUnavailableError):
                    log.exception("cannot read the current revision")
                    return
                await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])

    def _deliver(self, revision: int) -> None:
        listener = self._listener
        if listener is not None:
            with contextlib.suppress(RuntimeError):  # the server's loop has already stopped
                listener(revision)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        revision_text, _, instance = payload.partition(" ")
        if instance == self.instance:
            return  # this server's own commit: its writer publishes it
        try:
            revision = int(revision_text)
        except ValueError:
            log.warning("ignoring a malformed %s notification", CHANNEL)
            return
        self._deliver(revision)

    async def _listen_loop(self) -> None:
        """Keep one connection LISTENing; after every (re)connection tell the listener the
        current revision, so commits made while it was away are read from the log."""
        failures = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                try:
                    conn = await asyncpg.connect(self.endpoint.url, **self._connect_kwargs())
                except Exception as exc:
                    # As for the pool: failing to connect is an outage, whatever the reason.
                    raise PostgresUnavailableError(self._message(exc)) from exc
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                value = await _on_live(conn, conn.fetchval(REVISION_SQL))
                if failures:
                    log.info("PostgreSQL is back; listening for commits again")
                failures = 0
                self._deliver(int(value))
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_CHECK_INTERVAL)
                    if not lost.is_set():
                        await _on_live(conn, conn.execute("SELECT 1", timeout=CONNECT_TIMEOUT))
                raise ConnectionError("the LISTEN connection was closed")
            except asyncio.CancelledError:
                if conn is not None:
                    _terminate(conn)
                raise
            except Exception as exc:
                if conn is not None:
                    _terminate(conn)
                if not _is_unavailable(exc) and not isinstance(exc, PostgresUnavailableError):
                    log.exception("LISTEN connection failed")
                elif failures == 0:
                    log.warning("lost the LISTEN connection (%s); reconnecting", self._message(exc))
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                await asyncio.sleep(delay)

    # -- sizes ----------------------------------------------------------------------------------

    def describe_error(self, exc: BaseException) -> str:
        return str(exc)

    def size_bytes(self) -> int:
        async def query() -> int:
            async with self._pool_or_fail().acquire(timeout=CONNECT_TIMEOUT) as conn:
                return int(await conn.fetchval("SELECT pg_database_size(current_database())"))

        return self.call(query())

    def snapshot(self, target: str) -> int:
        raise UnsupportedError(
            "Snapshot of a PostgreSQL datastore is not implemented; back the database up "
            "with pg_dump (or pg_basebackup) instead"
        )

    def read_copy(self, path: str) -> AbstractContextManager[ReadView]:
        raise UnsupportedError("a PostgreSQL datastore makes no copies (see snapshot)")

    def defragment(self) -> None:
        """Plain VACUUM of shim's tables: it blocks neither reads nor writes; PostgreSQL
        returns pages at the end of each table to the file system and reuses the others."""

        async def vacuum() -> None:
            async with self._pool_or_fail().acquire(timeout=CONNECT_TIMEOUT) as conn:
                await conn.execute("VACUUM log, current, lease, meta")

        self.call(vacuum())

    def size_in_use_bytes(self) -> int:
        async def query() -> int:
            async with self._pool_or_fail().acquire(timeout=CONNECT_TIMEOUT) as conn:
                return int(await conn.fetchval(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "WHERE c.oid IN ('log'::regclass, 'current'::regclass, 'meta'::regclass, "
                    "'lease'::regclass)"
                ))

        return self.call(query())

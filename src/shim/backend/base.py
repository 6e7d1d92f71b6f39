"""The seam between the MVCC store and a SQL database.

A ``ReadView`` answers questions about the log at one consistent snapshot; a ``WriteTxn`` is a
``ReadView`` inside the single write transaction that can also append versions. Keys are bytes
and compare byte by byte. A range is ``[key, end)``; ``end == b""`` means no upper bound.
Versions are returned as ``mvccpb.KeyValue`` messages, the record type etcd itself stores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from shim.backend.auth_tables import AuthTables
from shim.pb.kv_pb2 import KeyValue

# A version as the backends return it for ranges: (key, value, create_revision, mod_revision,
# version, lease), the fields of a KeyValue in their protobuf order.
KvRow = tuple[bytes, bytes, int, int, int, int]

# A version as a Range answer carries it (``shim.backend.kv_wire``): its head (the
# RangeResponse.kvs field's bytes up to the value's) and its value, to be laid end to end.
EncodedKv = tuple[bytes, bytes]


def kv_row(kv: KeyValue) -> KvRow:
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def kv_from_row(row: KvRow | Sequence[Any]) -> KeyValue:
    return KeyValue(
        key=row[0], value=row[1], create_revision=row[2], mod_revision=row[3], version=row[4],
        lease=row[5],
    )


# A log row as HashKV reads it: (revision, key, value, create_revision, version, lease,
# deleted, kept). ``kept`` is false for a row at or below the compacted revision that is not
# its key's newest version at the hashed revision.
HashRow = tuple[int, bytes, bytes, int, int, int, int, int]


@dataclass(slots=True)
class NewVersion:
    """One row to append to the log: a put (``deleted`` false) or a tombstone."""

    key: bytes
    value: bytes
    create_revision: int
    revision: int
    version: int
    lease: int
    deleted: bool
    prev_revision: int
    hlc: int


@dataclass(slots=True)
class LogEntry:
    """A row read back from the log (for watch catch-up): the version and what it replaced."""

    kv: KeyValue
    deleted: bool
    prev: KeyValue | None


class ReadView(Protocol):
    # The auth store's tables (users, roles, settings) at this snapshot.
    auth: AuthTables

    def revision(self) -> int:
        """The current revision at this snapshot."""
        ...

    def compact_revision(self) -> int:
        """The revision history has been compacted to (0 = never compacted)."""
        ...

    def get(self, key: bytes, revision: int) -> KeyValue | None:
        """The live version of ``key`` at ``revision`` (0 = current), or None."""
        ...

    def range_rows(self, key: bytes, end: bytes, revision: int, limit: int) -> list[KvRow]:
        """Live versions in ``[key, end)`` at ``revision`` (0 = current), by key; limit 0 = all.
        Rows, not messages: a large range goes straight into its response (``kv_row``)."""
        ...

    def range_encoded(
        self, key: bytes, end: bytes, revision: int, limit: int
    ) -> list[EncodedKv]:
        """``range_rows``, each version as the bytes a Range answer carries."""
        ...

    def count(self, key: bytes, end: bytes, revision: int) -> int:
        """How many keys are live in ``[key, end)`` at ``revision`` (0 = current)."""
        ...

    def max_hlc(self) -> int:
        """The largest hybrid-clock stamp in the log (0 if empty): seeds the clock at start."""
        ...

    def leases(self) -> dict[int, int]:
        """Every lease: id -> granted TTL in seconds."""
        ...

    def lease_keys(self, lease_id: int) -> list[bytes]:
        """Keys whose current version is attached to the lease, in key order."""
        ...

    def entries(
        self, key: bytes, end: bytes | None, after_revision: int, limit: int
    ) -> list[LogEntry]:
        """Log rows of keys in the range (``end`` None: one key) with a revision above
        ``after_revision``, in log order: whole revisions, about ``limit`` rows (fewer means
        there is no more; more when the last revision holds more rows)."""
        ...

    def alarms(self) -> list[tuple[int, int]]:
        """The active alarms: (member id, AlarmType), sorted."""
        ...

    def hash_rows(
        self, after: int, upto: int, compact_revision: int, revision: int
    ) -> list[HashRow]:
        """Log rows with ``after < revision <= upto`` in log order, for HashKV at
        ``revision`` (see ``shim.mvcc.hash``)."""
        ...


class WriteTxn(ReadView, Protocol):
    def append(self, versions: list[NewVersion]) -> None:
        """Append versions to the log and update each key's current version."""
        ...

    def add_lease(self, lease_id: int, ttl: int, granted_ms: int) -> None: ...

    def add_alarm(self, alarm: tuple[int, int]) -> None: ...

    def remove_alarm(self, alarm: tuple[int, int]) -> None: ...

    def database_size(self) -> int:
        """Bytes the database takes, as the backend quota counts them."""
        ...

    def remove_lease(self, lease_id: int) -> None: ...

    def set_revision(self, revision: int) -> None: ...

    def set_compact_revision(self, revision: int) -> None: ...

    def compact(self, revision: int, after: int, upto: int) -> int:
        """Delete, among the log rows with ``after < revision <= upto``, the history no read
        at ``revision`` or later needs (compaction goes through the log a window of revisions
        at a time); returns rows removed."""
        ...

    def compact_progress(self) -> int:
        """The revision up to which the compaction at ``compact_revision`` has gone through
        the log, oldest first (``compact_revision`` itself once it is complete)."""
        ...

    def set_compact_progress(self, revision: int) -> None: ...

    def savepoint(self) -> None:
        """Start isolating one request inside the batch transaction."""
        ...

    def release(self) -> None:
        """Keep what the request since ``savepoint`` wrote."""
        ...

    def rollback_savepoint(self) -> None:
        """Undo what the request since ``savepoint`` wrote; the batch goes on."""
        ...


T = TypeVar("T")

# Called with a revision that another server committed on the same database (any thread).
ExternalCommitListener = Callable[[int], None]


class UnsupportedError(Exception):
    """The backend cannot do this; the message says what to use instead (one line)."""


class BackendOpenError(Exception):
    """The database cannot be opened; the message is meant for the operator, on one line."""


class Backend(Protocol):
    """A database holding one node's log. The store and the writer use nothing else of it."""

    dialect: str
    node_id: str
    # True when the database keeps replication entries (write transactions and views then
    # have a ``replication`` attribute: shim.replication.tables.ReplicationTables).
    replicates: bool
    # Where the data lives, for messages: a file path, or a URL without its password.
    location: str
    # True when other servers may write to the same database: the writer then takes the
    # revision, compacted revision and leases from the database at the start of every batch.
    shared: bool
    # The exception classes that mean "the storage failed"; the store answers them with a
    # retryable UNAVAILABLE instead of crashing.
    errors: tuple[type[BaseException], ...]
    # The exceptions that mean "the database is damaged": a write that meets one raises the
    # CORRUPT alarm.
    corruption_errors: tuple[type[BaseException], ...]

    def open(self) -> None: ...

    def close(self) -> None: ...

    def write(self) -> AbstractContextManager[WriteTxn]:
        """One write transaction (the writer thread only); commits when the block ends."""
        ...

    def read(self) -> AbstractContextManager[ReadView]:
        """A consistent snapshot, blocking; any thread but the event loop's."""
        ...

    async def read_async(self, fn: Callable[[ReadView], T]) -> T:
        """Run ``fn`` on a consistent snapshot, from the event loop."""
        ...

    def size_bytes(self) -> int: ...

    def describe_error(self, exc: BaseException) -> str:
        """One line for the operator about one of ``errors``."""
        ...

    def size_in_use_bytes(self) -> int: ...

    def snapshot(self, target: str) -> int:
        """Write a consistent copy of the whole database to the new file ``target``
        (blocking; any thread); returns the revision it holds. ``UnsupportedError`` where the
        backend cannot."""
        ...

    def read_copy(self, path: str) -> AbstractContextManager[ReadView]:
        """A read view of a copy ``snapshot`` made (blocking; any thread)."""
        ...

    def defragment(self) -> None:
        """Give free space back to the file system (the writer thread, with no write
        transaction open)."""
        ...

    def set_commit_listener(self, listener: ExternalCommitListener | None) -> None:
        """Be told (from any thread) when another server commits; with ``shared`` False there
        is nobody else and this does nothing. Right after a listener is set, and after every
        reconnection, it is called with the current revision so nothing in between is missed."""
        ...

"""The seam between the write path and replication, owned by the write path.

The Writer and the Applier know replication only through ``ReplicaHook`` (``shim.replication``
implements it; the composition root, ``shim.app``, passes one in only when the node takes part
in replication). Inside the write transaction the hook records local writes as entries and
says what the merge rules make of them, and it ingests the requests replication sends through
the write path (``ReplicaRequest``: a peer's batch, a peer registration, retention), turning
each change into local revisions through one primitive the applier offers,
``RevisionSink.emit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from shim.backend.base import ReadView, WriteTxn
from shim.mvcc.hlc import HybridClock
from shim.pb.kv_pb2 import KeyValue

# The auth store's live objects as (key, state, secret), read when they are needed.
AuthObjects = Callable[[], list[tuple[bytes, bytes, str | None]]]


class ReplicaRequest:
    """Base of the write requests that replication sends through the write path; the writer
    hands them to its hook inside the batch's transaction."""

    __slots__ = ()

    def writes(self) -> int:
        """How many writes it carries: the writer commits a large one in a transaction of its
        own, so the client writes queued with it do not wait for it."""
        return 1


class ReplicaAnswer:
    """Base of what the hook answers a ``ReplicaRequest`` with (besides plain ints)."""

    __slots__ = ()


class Resolved(Protocol):
    """What a key holds after a write, by the merge rules: ``value`` None is absent."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def lease(self) -> int: ...


class RevisionSink(Protocol):
    """What the applier offers the hook inside the write transaction."""

    def emit(
        self, key: bytes, old: KeyValue | None, value: bytes | None, lease: int,
        new_incarnation: bool,
    ) -> None:
        """Append ``value`` (None: a delete) to ``key`` as the next revision; with
        ``new_incarnation`` a DELETE revision first, then the PUT (watchers see both)."""
        ...

    def merge_auth(self, key: bytes, value: bytes, secret: str | None) -> bool:
        """Merge a user, role or setting into the auth store; whether it changed."""
        ...

    def guarded(self, action: Callable[[], None]) -> Exception | None:
        """Run ``action`` so that, if it raises, nothing it wrote stays (rows and revisions);
        answers the exception, or None."""
        ...


class ReplicaHook(Protocol):
    @property
    def node_id(self) -> str: ...

    def newest_stamp(self, view: ReadView) -> int:
        """The largest clock stamp replication has issued or accepted (seeds the clock)."""
        ...

    def start(self, txn: WriteTxn, clock: HybridClock, auth_objects: AuthObjects) -> None:
        """Load its state at start-up, in a write transaction of its own; on a database with
        nothing recorded yet (never linked before), record every live key and auth object."""
        ...

    def local_write(
        self, txn: WriteTxn, key: bytes, old: KeyValue | None, value: bytes | None, lease: int,
        hlc: int, revision: int,
    ) -> Resolved | None:
        """Record a local put (``value``) or delete (None), whose log row takes ``revision``;
        what the key then holds (None: exactly what was written)."""
        ...

    def local_auth(
        self, txn: WriteTxn, key: bytes, state: bytes, secret: str | None, hlc: int
    ) -> None:
        """Record a local write of an auth object (its whole new state)."""
        ...

    def apply(
        self, txn: WriteTxn, request: ReplicaRequest, sink: RevisionSink
    ) -> int | ReplicaAnswer:
        """Apply one of replication's own write requests."""
        ...

    def checkpoint(self) -> int:
        """A mark to roll back to when a request (or the batch) is rolled back."""
        ...

    def rollback(self, mark: int) -> None: ...

    def finish_batch(self, txn: WriteTxn, mark: int) -> None:
        """Before COMMIT: persist what changed since ``mark`` (taken at the batch's start)."""
        ...

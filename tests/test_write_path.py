"""The single ordered write path: a lone write commits on the event loop (no thread hand-off);
writes that arrive together, or while writes have recently been overlapping, commit in batches
on the writer thread. Either way every answer
comes after a durable COMMIT, revisions stay gap-free, and a failed request changes nothing.
In-process Stores on real SQLite files; which thread ran each COMMIT is read from SQLite's own
statement profile hook."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from shim.api.errors import from_store_error
from shim.auth.apply import Authorized, AuthWriter
from shim.auth.errors import AuthError
from shim.auth.state import NOBODY, Caller
from shim.backend.sqlite import SqliteBackend
from shim.mvcc import writer as writer_module
from shim.mvcc.apply import Applier
from shim.mvcc.errors import KeyNotFoundError, TooManyRequestsError
from shim.mvcc.hlc import HybridClock
from shim.mvcc.replica import ReplicaRequest
from shim.mvcc.store import Store
from shim.pb.auth_pb2 import UserAddOptions
from shim.pb.rpc_pb2 import (
    AuthEnableRequest,
    AuthUserAddRequest,
    AuthUserGrantRoleRequest,
    Compare,
    DefragmentRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)


def run(tmp_path: Path, test: Callable[[Store, list[int]], Awaitable[None]]) -> None:
    """Run ``test(store, commit_threads)``: the ids of the threads that ran each COMMIT."""

    async def main() -> None:
        backend = SqliteBackend(tmp_path / "state.db", synchronous="FULL")
        backend.open()
        store = Store(backend)
        await store.start()
        commits: list[int] = []

        def profile(statement: str, _nanoseconds: int) -> None:
            if statement == "COMMIT":
                commits.append(threading.get_ident())

        backend.writer().set_profile(profile)
        try:
            await test(store, commits)
        finally:
            await store.close()
            backend.close()

    asyncio.run(main())


def test_lone_writes_commit_on_the_event_loop(tmp_path: Path) -> None:
    async def test(store: Store, commits: list[int]) -> None:
        loop_thread = threading.get_ident()
        start = store.revision
        revisions = []
        for i in range(20):
            resp = await store.put(PutRequest(key=b"k%d" % i, value=b"v"))
            revisions.append(resp.header.revision)
        assert revisions == list(range(start + 1, start + 21))
        assert commits == [loop_thread] * 20

    run(tmp_path, test)


def test_writes_that_arrive_together_commit_in_batches_on_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A memory far longer than a loaded machine's pause between two statements of this test,
    # so "right after" below holds however slowly the test runs.
    monkeypatch.setattr(writer_module, "_CROWD_MEMORY_SECONDS", 0.5)

    async def test(store: Store, commits: list[int]) -> None:
        loop_thread = threading.get_ident()
        start = store.revision
        responses = await asyncio.gather(*(
            store.put(PutRequest(key=b"burst/%03d" % i, value=b"%d" % i)) for i in range(300)
        ))
        revisions = sorted(resp.header.revision for resp in responses)
        assert revisions == list(range(start + 1, start + 301))
        assert len(commits) < 300, "writes that arrived together should share commits"
        assert loop_thread not in commits, "a write with company should not commit on the loop"
        stored = await store.range(RangeRequest(key=b"burst/", range_end=b"burst0"))
        assert [kv.value for kv in stored.kvs] == [b"%d" % i for i in range(300)]

        # Right after writes overlapped (counted from their answers, however long their
        # commits took), a lone write still goes to the writer thread: under steady
        # concurrency, one committing on the loop would stall everybody else...
        commits.clear()
        await store.put(PutRequest(key=b"after", value=b"1"))
        assert commits and loop_thread not in commits
        # ...and once it has been quiet for longer than the memory, lone writes commit on the
        # loop again.
        await asyncio.sleep(0.6)
        commits.clear()
        await store.put(PutRequest(key=b"after", value=b"2"))
        assert commits == [loop_thread]

    run(tmp_path, test)


def test_a_failed_lone_write_changes_nothing(tmp_path: Path) -> None:
    async def test(store: Store, commits: list[int]) -> None:
        await store.put(PutRequest(key=b"a", value=b"1"))
        before = store.revision
        with pytest.raises(KeyNotFoundError):
            await store.put(PutRequest(key=b"missing", ignore_value=True))
        assert store.revision == before
        resp = await store.put(PutRequest(key=b"a", value=b"2"))
        assert resp.header.revision == before + 1
        got = await store.range(RangeRequest(key=b"a"))
        assert [(kv.value, kv.version) for kv in got.kvs] == [(b"2", 2)]
        missing = await store.range(RangeRequest(key=b"missing"))
        assert not missing.kvs

    run(tmp_path, test)


def test_a_write_cancelled_before_it_commits_leaves_the_path_as_it_was(tmp_path: Path) -> None:
    async def test(store: Store, commits: list[int]) -> None:
        loop_thread = threading.get_ident()
        before = store.revision
        task = asyncio.ensure_future(store.put(PutRequest(key=b"gone", value=b"1")))
        await asyncio.sleep(0)  # it is waiting for company now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store.revision == before and commits == []
        # The cancelled write is not counted as in flight for ever: lone writes still
        # commit on the loop.
        await asyncio.sleep(0.2)
        await store.put(PutRequest(key=b"next", value=b"1"))
        assert commits == [loop_thread]
        missing = await store.range(RangeRequest(key=b"gone"))
        assert not missing.kvs

    run(tmp_path, test)


def test_a_txn_reads_a_key_once_and_again_after_writing_it(tmp_path: Path) -> None:
    """A Txn's compare and its put read the key's current version once (the Applier keeps
    what the compare read); an operation after a write of the key reads what was written.
    (etcd's API refuses two writes of one key in a Txn; the write engine must not depend on
    that.)"""

    async def test(store: Store, _commits: list[int]) -> None:
        first = await store.put(PutRequest(key=b"k", value=b"v0"))
        revision = first.header.revision
        resp = await store.txn(TxnRequest(
            compare=[Compare(key=b"k", target=Compare.MOD, result=Compare.EQUAL,
                             mod_revision=revision)],
            success=[
                RequestOp(request_put=PutRequest(key=b"k", value=b"v1", prev_kv=True)),
                RequestOp(request_delete_range=DeleteRangeRequest(key=b"k", prev_kv=True)),
                RequestOp(request_put=PutRequest(key=b"k", value=b"v2", prev_kv=True)),
            ],
        ))
        assert resp.succeeded
        put1, deleted, put2 = resp.responses
        assert put1.response_put.prev_kv.value == b"v0"
        assert [kv.value for kv in deleted.response_delete_range.prev_kvs] == [b"v1"]
        assert not put2.response_put.HasField("prev_kv")
        now = await store.range(RangeRequest(key=b"k"))
        assert [(kv.value, kv.version, kv.create_revision) for kv in now.kvs] == [
            (b"v2", 1, revision + 1)
        ]

    run(tmp_path, test)


def test_client_writes_beyond_the_waiting_limit_are_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the write path held (its commit lock taken), writes wait; one more than
    ``MAX_WAITING_WRITES`` is refused at once with etcd's "too many requests" (what the gRPC
    edge answers), while a lease grant still gets in; once the path moves, the waiting writes
    commit and new ones are taken again."""
    monkeypatch.setattr(writer_module, "MAX_WAITING_WRITES", 3)

    async def test(store: Store, _commits: list[int]) -> None:
        writer = store._writer
        assert isinstance(writer, writer_module.Writer)
        writer._committing.acquire()
        try:
            waiting = [
                asyncio.create_task(store.put(PutRequest(key=b"k%d" % i, value=b"v")))
                for i in range(3)
            ]
            await asyncio.sleep(0)  # each has entered the write path
            with pytest.raises(TooManyRequestsError):  # at once: a wait would time out
                await asyncio.wait_for(store.put(PutRequest(key=b"k3", value=b"v")), 5)
            lease = asyncio.create_task(store.write(LeaseGrantRequest(ID=9, TTL=60)))
            await asyncio.sleep(0)
            assert not any(task.done() for task in [*waiting, lease])
        finally:
            writer._committing.release()
        await asyncio.gather(*waiting, lease)
        await store.put(PutRequest(key=b"k3", value=b"v"))
        got = await store.range(RangeRequest(key=b"k", range_end=b"l"))
        assert [kv.key for kv in got.kvs] == [b"k0", b"k1", b"k2", b"k3"]

    run(tmp_path, test)
    refused = from_store_error(TooManyRequestsError())
    assert (refused.code, refused.message) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"
    )


def test_writes_after_an_auth_change_in_the_same_batch_are_checked_against_it(
    tmp_path: Path,
) -> None:
    """The writer reads the auth state once per batch for its checks: an auth write inside
    the batch (one that commits, or one that fails and is rolled back) must be seen by the
    checks of the writes after it, as etcd's applier sees each change before the next entry."""
    backend = SqliteBackend(tmp_path / "state.db", synchronous="NORMAL")
    backend.open()
    auth = AuthWriter(backend.node_id)
    with backend.read() as view:
        revision = view.revision()
    nobody_put = Authorized(PutRequest(key=b"k", value=b"v"), NOBODY)
    root = Caller("root", 100)
    try:
        with backend.write() as txn:
            applier = Applier(txn, revision, -1, HybridClock(0), {}, auth=auth)

            def apply(request: object) -> object:
                # As the Writer does: each request in a savepoint of the batch's transaction.
                txn.savepoint()
                try:
                    resp = applier.apply(request)  # type: ignore[arg-type]  # the test's requests
                except Exception:
                    txn.rollback_savepoint()
                    raise
                txn.release()
                return resp

            apply(nobody_put)  # auth is off: anybody may write
            for request in (
                AuthUserAddRequest(name="root", options=UserAddOptions(no_password=True)),
                AuthUserGrantRoleRequest(user="root", role="root"),
            ):
                apply(Authorized(request, NOBODY))
            # A failed auth write in between changes nothing: the next put still passes.
            with pytest.raises(AuthError):
                apply(Authorized(AuthUserAddRequest(name="root", hashedPassword="x"), NOBODY))
            apply(nobody_put)
            apply(Authorized(AuthEnableRequest(), NOBODY))
            with pytest.raises(AuthError):
                apply(nobody_put)  # now refused, in the same transaction
            apply(Authorized(PutRequest(key=b"k", value=b"w"), root))
    finally:
        backend.close()


class _Carrying(ReplicaRequest):
    """A replication request that says it carries ``n`` writes."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def writes(self) -> int:
        return self.n


def test_a_large_replication_request_commits_alone_after_the_writes_taken_with_it() -> None:
    # A client's put queued beside a part of a catch-up must not wait for that part's apply.
    loop = asyncio.new_event_loop()
    try:
        def pending(request: object) -> writer_module._Pending:
            return writer_module._Pending(request, loop.create_future())  # type: ignore[arg-type]

        alone = writer_module._ALONE_WRITES
        part_1, part_2 = pending(_Carrying(alone)), pending(_Carrying(alone + 100))
        small = pending(_Carrying(alone - 1))
        put_1, put_2 = pending(PutRequest(key=b"a")), pending(PutRequest(key=b"b"))
        defrag, put_3 = pending(DefragmentRequest()), pending(PutRequest(key=b"c"))
        groups = writer_module._transactions(
            [part_1, put_1, small, part_2, put_2, defrag, put_3]
        )
        assert groups == [[put_1, small, put_2], [part_1], [part_2], defrag, [put_3]]
    finally:
        loop.close()

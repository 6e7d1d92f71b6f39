"""Single-key Range answers kept in memory (``shim.mvcc.current_values``): answered without a
SQLite read while no commit changed the key, exact whatever the writer thread is doing (the
header revision is one every other reader agrees with, a write's answer is never followed by
an older value). The rules on their own, then in-process Stores on real SQLite files; the
differential and replication suites drive the same path through real servers, and
test_processes checks that the serving processes of --processes N (which hear of commits
too late to keep answers) read every time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shim.auth.apply import Authorized
from shim.auth.errors import AuthError
from shim.auth.state import NOBODY, Caller
from shim.backend.sqlite import SqliteBackend
from shim.mvcc.current_values import CurrentValues, cacheable
from shim.mvcc.events import Change, Revision
from shim.mvcc.store import Store
from shim.pb.auth_pb2 import UserAddOptions
from shim.pb.kv_pb2 import KeyValue
from shim.pb.rpc_pb2 import (
    AuthDisableRequest,
    AuthEnableRequest,
    AuthUserAddRequest,
    AuthUserGrantRoleRequest,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RangeResponse,
)


def changed(revision: int, *keys: bytes) -> Revision:
    return Revision(revision, [Change(KeyValue(key=k), None, False) for k in keys])


# -- the rules ----------------------------------------------------------------------------------


def test_only_a_plain_read_of_one_current_key_is_kept() -> None:
    assert cacheable(RangeRequest(key=b"a"))
    assert cacheable(RangeRequest(key=b"a", serializable=True, limit=5))
    for other in (
        RangeRequest(key=b"a", range_end=b"b"), RangeRequest(key=b"a", revision=3),
        RangeRequest(key=b"a", keys_only=True), RangeRequest(key=b"a", count_only=True),
        RangeRequest(key=b"a", min_mod_revision=2), RangeRequest(key=b"a", max_create_revision=2),
        RangeRequest(key=b"a", sort_target=RangeRequest.VALUE),
    ):
        assert not cacheable(other), other


def test_an_answer_lives_until_a_commit_changes_its_key() -> None:
    committing = [5]
    values = CurrentValues(5, lambda: committing[0], lambda: False)
    values.keep(b"a", b"A", read_at=5)
    values.keep(b"b", b"B", read_at=5)
    assert values.get(b"a") == b"A"

    committing[0] = 6  # the writer is committing revision 6: nothing answered meanwhile
    assert values.get(b"a") is None and values.get(b"b") is None
    values.keep(b"c", b"C", read_at=5)  # read before: may miss revision 6, not kept
    values.keep(b"c", b"C", read_at=6)  # read after: not yet published, not kept
    values.published([changed(6, b"a")])
    assert values.revision == 6
    assert values.get(b"a") is None  # changed at 6
    assert values.get(b"b") == b"B"  # unchanged: still exact at 6
    assert values.get(b"c") is None

    values.published([])  # a batch that changed no key moves nothing
    assert values.revision == 6 and values.get(b"b") == b"B"


def test_a_failed_commit_hands_answering_back() -> None:
    committing = [5]
    values = CurrentValues(5, lambda: committing[0], lambda: False)
    values.keep(b"a", b"A", read_at=5)
    committing[0] = 6
    assert values.get(b"a") is None
    committing[0] = 5  # the writer rolled back: nothing was published
    assert values.get(b"a") == b"A"


def test_nothing_is_answered_while_auth_may_be_on() -> None:
    auth_on = [False]
    values = CurrentValues(5, lambda: 5, lambda: auth_on[0])
    values.keep(b"a", b"A", read_at=5)
    auth_on[0] = True  # a permission check would be skipped
    assert values.get(b"a") is None
    auth_on[0] = False
    assert values.get(b"a") == b"A"


def test_memory_is_bounded_and_the_least_recently_used_go_first() -> None:
    values = CurrentValues(1, lambda: 1, lambda: False, max_bytes=64 * 10)
    for i in range(100):
        values.keep(b"k%02d" % i, b"x" * 7, read_at=1)  # 10 bytes each
    kept = [i for i in range(100) if values.get(b"k%02d" % i) is not None]
    assert kept == list(range(36, 100))  # 640 bytes: the newest 64
    assert values.get(b"k36") is not None  # used now: k37 is the oldest
    values.keep(b"new", b"x" * 7, read_at=1)
    assert values.get(b"k37") is None and values.get(b"k36") is not None
    values.keep(b"big", b"x" * 11, read_at=1)  # over 1/64 of the budget: never kept
    assert values.get(b"big") is None


# -- in a store ---------------------------------------------------------------------------------


def run(tmp_path: Path, test: Callable[[Store, list[str]], Awaitable[None]]) -> None:
    """Run ``test(store, reads)``: ``reads`` collects the SQL the read connection runs."""

    async def main() -> None:
        backend = SqliteBackend(tmp_path / "state.db", synchronous="FULL")
        backend.open()
        store = Store(backend)
        await store.start()
        reads: list[str] = []
        backend._reader().set_profile(lambda statement, _ns: reads.append(statement))
        try:
            await test(store, reads)
        finally:
            await store.close()
            backend.close()

    asyncio.run(main())


def header(revision: int) -> bytes:
    return RangeResponse(header={"revision": revision}).SerializeToString()


async def get(store: Store, key: bytes, caller: Caller = NOBODY) -> RangeResponse:
    answer = await store.range_bytes(RangeRequest(key=key), header, caller)
    return RangeResponse.FromString(answer)


def test_a_repeated_read_is_answered_from_memory_until_its_key_changes(tmp_path: Path) -> None:
    async def test(store: Store, reads: list[str]) -> None:
        await store.put(PutRequest(key=b"a", value=b"1"))
        first = await get(store, b"a")
        assert reads, "the first read goes to SQLite"
        reads.clear()
        again = await get(store, b"a")
        assert again == first and not reads

        # Another key's write: the answer stays, under the newer revision.
        other = await store.put(PutRequest(key=b"b", value=b"x"))
        after_other = await get(store, b"a")
        assert not reads
        assert after_other.header.revision == other.header.revision
        assert after_other.kvs == first.kvs

        # Its own write: read again, and what SQLite holds is answered.
        put = await store.put(PutRequest(key=b"a", value=b"2"))
        changed = await get(store, b"a")
        assert reads
        assert changed.header.revision == put.header.revision
        assert [(kv.value, kv.version, kv.mod_revision) for kv in changed.kvs] == [
            (b"2", 2, put.header.revision)
        ]
        # The answer kept is byte for byte what the read that made it answered.
        reads.clear()
        assert await get(store, b"a") == changed and not reads

        deleted = await store.delete_range(DeleteRangeRequest(key=b"a"))
        gone = await get(store, b"a")
        assert not gone.kvs and gone.count == 0
        assert gone.header.revision == deleted.header.revision
        # An absent key's answer is kept too.
        reads.clear()
        assert await get(store, b"a") == gone and not reads

        # Anything but a plain read of one key is read every time.
        await store.range_bytes(RangeRequest(key=b"a", range_end=b"c"), header)
        assert reads

    run(tmp_path, test)


def test_reads_during_concurrent_writes_never_go_back(tmp_path: Path) -> None:
    """Writes of one key commit on the writer thread while a reader reads it in a loop: every
    answer is the value written at or before its header revision and no later than the last
    write answered, and neither header revisions nor values ever go back."""

    async def test(store: Store, reads: list[str]) -> None:
        await store.put(PutRequest(key=b"k", value=b"0"))
        base = store.revision
        acknowledged = [0]  # the newest value whose write was answered
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            for i in range(1, n + 1):
                # Two at once, so they commit on the writer thread, concurrently with reads.
                await asyncio.gather(
                    store.put(PutRequest(key=b"k", value=b"%d" % i)),
                    store.put(PutRequest(key=b"other", value=b"%d" % i)),
                )
                acknowledged[0] = i
            stop.set()

        async def reader() -> int:
            last_revision, last_value, count = 0, 0, 0
            while not stop.is_set():
                floor = acknowledged[0]
                got = await get(store, b"k")
                value = int(got.kvs[0].value)
                assert value >= floor, "an answered write was not seen"
                assert got.header.revision >= last_revision and value >= last_value
                assert got.kvs[0].mod_revision <= got.header.revision
                # Writes of k and of other alternate from revision base + 1 on, so the
                # value written by revision r is at least (r - base - 1) // 2.
                assert value >= (got.header.revision - base - 1) // 2
                last_revision, last_value = got.header.revision, value
                count += 1
                await asyncio.sleep(0)
            return count

        results = await asyncio.gather(writer(150), reader(), reader())
        assert all(count > 0 for count in results[1:])

    run(tmp_path, test)


def test_once_auth_is_enabled_every_read_is_checked_again(tmp_path: Path) -> None:
    async def test(store: Store, reads: list[str]) -> None:
        await store.put(PutRequest(key=b"a", value=b"1"))
        await get(store, b"a")
        reads.clear()
        await get(store, b"a")
        assert not reads  # kept
        for request in (
            AuthUserAddRequest(name="root", options=UserAddOptions(no_password=True)),
            AuthUserGrantRoleRequest(user="root", role="root"),
            AuthEnableRequest(),
        ):
            await store.write(Authorized(request, NOBODY))
        # No key changed, yet the answer kept must not skip the check now.
        with pytest.raises(AuthError):
            await get(store, b"a")
        root = Caller("root", 100)
        assert [kv.value for kv in (await get(store, b"a", root)).kvs] == [b"1"]
        await store.write(Authorized(AuthDisableRequest(), root))
        reads.clear()
        assert [kv.value for kv in (await get(store, b"a")).kvs] == [b"1"]
        assert not reads  # answered from memory again

    run(tmp_path, test)

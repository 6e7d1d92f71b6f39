"""Compaction deletes history a step at a time, on the writer thread between other writes (as
etcd's background compaction does in batches): the Compact answer comes at once, writes go on
while history is deleted, reads and HashKV see the compaction whole from the answer on, a
physical compaction answers once everything is deleted, and a pass cut short by a stop goes on
after the next start. In-process Stores on real SQLite files, with steps of 10 revisions so a
short history takes many; the writer's background steps are paused by making them fail (the
writer then waits before trying again), so what a paused pass leaves is certain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shim.backend.sqlite import SqliteBackend
from shim.mvcc import apply as apply_module
from shim.mvcc import writer as writer_module
from shim.mvcc.errors import CompactedError, StoreClosedError
from shim.mvcc.store import Store
from shim.pb.rpc_pb2 import CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest

STEP = 10
KEYS = 10
VERSIONS = 30  # per key: 300 revisions, 30 steps


@pytest.fixture(autouse=True)
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apply_module, "COMPACT_STEP_REVISIONS", STEP)


def pause_background_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step the writer takes by itself fails until ``resume_background_steps``; the
    compaction request's own first step (in ``Applier``) still runs."""

    def paused(_txn: object) -> bool:
        raise RuntimeError("compaction paused by the test")

    monkeypatch.setattr(writer_module, "compact_step", paused)


def resume_background_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "compact_step", apply_module.compact_step)


def log_rows(backend: SqliteBackend) -> int:
    with backend.read() as view:
        return int(view._conn.execute("SELECT count(*) FROM log").fetchone()[0])


def compact_progress(backend: SqliteBackend) -> int:
    with backend.read() as view:
        row = view._conn.execute(
            "SELECT value FROM meta WHERE name = 'compact_progress'").fetchone()
    return 0 if row is None else int(row[0])


def run(path: Path, test: Callable[[Store, SqliteBackend], Awaitable[None]]) -> None:
    async def main() -> None:
        backend = SqliteBackend(path, synchronous="NORMAL")
        backend.open()
        store = Store(backend)
        await store.start()
        try:
            await test(store, backend)
        finally:
            await store.close()
            backend.close()

    asyncio.run(main())


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls ``condition`` (the writer thread makes it true) until ``timeout`` seconds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting for the writer")


async def fill(store: Store) -> int:
    """``VERSIONS`` puts of each of ``KEYS`` keys, one revision each; the newest revision."""
    for version in range(VERSIONS):
        for key in range(KEYS):
            await store.put(PutRequest(key=b"k%d" % key, value=b"v%d" % version))
    return store.revision


def test_compact_answers_at_once_and_writes_go_on_while_history_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def test(store: Store, backend: SqliteBackend) -> None:
        revision = await fill(store)
        rows_before = log_rows(backend)
        pause_background_steps(monkeypatch)
        await store.compact(CompactionRequest(revision=revision))
        # The answer came after the oldest window only (revisions 2 to 10, each superseded);
        # the rest of the history is still there.
        assert compact_progress(backend) == STEP
        assert log_rows(backend) == rows_before - (STEP - 1)
        # Reads see the whole compaction; writes go on.
        with pytest.raises(CompactedError):
            await store.range(RangeRequest(key=b"k0", revision=revision - 1))
        await store.put(PutRequest(key=b"k0", value=b"after"))

        # A physical compaction answers only once the history is deleted.
        physical = asyncio.create_task(
            store.compact(CompactionRequest(revision=store.revision, physical=True))
        )
        await until(lambda: store.compact_revision == revision + 1)
        await store.put(PutRequest(key=b"other", value=b"x"))  # answered after its commit
        assert not physical.done()
        assert compact_progress(backend) == STEP  # it starts again from the oldest

        resume_background_steps(monkeypatch)
        await store.defragment()  # finishes the compaction first
        await asyncio.wait_for(physical, 10)
        # Each key's newest version at the compacted revision, and the later put.
        assert log_rows(backend) == KEYS + 1
        assert compact_progress(backend) == revision + 1

    run(tmp_path / "state.db", test)


def stored_rows(backend: SqliteBackend) -> list[tuple[object, ...]]:
    with backend.read() as view:
        return view._conn.execute(
            "SELECT revision, key, value, version, deleted FROM log ORDER BY id").fetchall()


@pytest.mark.parametrize("live", [True, False], ids=["keys-live", "all-deleted"])
def test_hash_reads_and_what_is_left_do_not_depend_on_how_far_deletion_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live: bool
) -> None:
    """HashKV and reads mid-way and after the deletion equal those of a store whose
    compaction was done in one step (steps larger than its history), and so do the rows
    left. The history deletes every key and writes it again, so a key's newest version
    before the deletion is superseded only by a tombstone in a later window. With no key
    live (``all-deleted``) etcd's HashKV counts every stored row, so the rows a compaction
    has yet to delete must not count."""
    seen: dict[str, list[object]] = {}

    def observe(name: str) -> Callable[[Store, SqliteBackend], Awaitable[None]]:
        async def test(store: Store, backend: SqliteBackend) -> None:
            await fill(store)
            await store.delete_range(DeleteRangeRequest(key=b"k", range_end=b"l"))
            for key in range(KEYS):
                await store.put(PutRequest(key=b"k%d" % key, value=b"again"))
            compacted = store.revision - 3
            if not live:
                await store.delete_range(DeleteRangeRequest(key=b"k", range_end=b"l"))
            await store.compact(CompactionRequest(revision=compacted))
            answers: list[object] = [
                (await store.hash_kv(0)).hash,
                (await store.range(RangeRequest(key=b"k", range_end=b"l"))).kvs,
                (await store.range(RangeRequest(key=b"k", range_end=b"l", revision=compacted))).kvs,
            ]
            if name == "paused":
                assert compact_progress(backend) < compacted, "should not be complete"
                resume_background_steps(monkeypatch)
                await store.defragment()
                assert compact_progress(backend) == compacted
                answers.append((await store.hash_kv(0)).hash)
            answers.append(stored_rows(backend))
            seen[name] = answers

        return test

    pause_background_steps(monkeypatch)
    run(tmp_path / "paused.db", observe("paused"))
    monkeypatch.setattr(apply_module, "COMPACT_STEP_REVISIONS", 1_000_000)
    run(tmp_path / "whole.db", observe("whole"))
    paused, whole = seen["paused"], seen["whole"]
    assert paused[:3] == whole[:3]
    assert paused[3] == whole[0]  # the hash once the deletion is complete
    assert paused[4] == whole[3]  # the rows left


def test_a_deletion_cut_short_by_a_stop_goes_on_after_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    outcome: dict[str, int] = {}

    async def stop_midway(store: Store, backend: SqliteBackend) -> None:
        revision = await fill(store)
        pause_background_steps(monkeypatch)
        physical = asyncio.create_task(
            store.compact(CompactionRequest(revision=revision, physical=True))
        )
        await until(lambda: store.compact_revision == revision)
        outcome["progress"] = compact_progress(backend)
        outcome["revision"] = revision
        await store.close()  # the physical compaction's caller is told the server stopped
        with pytest.raises(StoreClosedError):
            await asyncio.wait_for(physical, 10)

    run(path, stop_midway)
    assert outcome["progress"] == STEP
    revision = outcome["revision"]

    async def resumed(store: Store, backend: SqliteBackend) -> None:
        await until(lambda: compact_progress(backend) == revision)  # resumed by itself
        assert log_rows(backend) == KEYS

    resume_background_steps(monkeypatch)
    run(path, resumed)

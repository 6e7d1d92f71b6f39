"""Crash safety: kill -9 under a concurrent write load loses no acknowledged write.

Writer threads put distinct keys (and Txns putting two keys at once) and record every write
the server acknowledged, with its revision. The server is killed with SIGKILL in the middle
of the load, restarted on the same file, and then:

* every acknowledged write is present, with the acknowledged value and mod_revision, and a
  Range at that revision shows it (and the revision before does not);
* the current revision is at least the highest acknowledged one;
* revisions have no holes: every revision from 2 to the current one holds at least one write
  (each key is written once, so the mod_revisions of all keys cover 2..current), checked
  through the API and in the SQLite log itself.

Three rounds on the same database file, with different kill timings: the second loads the
server that just recovered from the first kill; the third runs with --sqlite-synchronous
NORMAL, which must survive a process crash too (only a power loss may cost it writes).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from shim.pb import rpc_pb2 as pb
from tests.support import Client, ShimServer

WRITERS = 16
# (acknowledged writes before the kill, synchronous mode of that round)
ROUNDS = ((25, "FULL"), (400, "FULL"), (1500, "NORMAL"))
SAMPLE_PER_ROUND = 150


@dataclass
class Ack:
    value: bytes
    revision: int


@dataclass
class WriteLoad:
    """WRITERS threads writing distinct keys under `prefix` until the server dies."""

    endpoint: str
    prefix: bytes
    acked: dict[bytes, Ack] = field(default_factory=dict)
    revisions_by_writer: dict[int, list[int]] = field(default_factory=dict)
    errors_before_kill: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.killing = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(WRITERS)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, n: int) -> None:
        revisions: list[int] = []
        self.revisions_by_writer[n] = revisions
        with Client(self.endpoint) as client:
            i = 0
            while True:
                key = self.prefix + b"w%02d/%06d" % (n, i)
                value = b"%d:%d:%s" % (n, i, b"v" * (i % 50))
                try:
                    if i % 4 == 3:
                        written = self._txn(client, key, value)
                    else:
                        resp = client.kv.Put(pb.PutRequest(key=key, value=value), timeout=10)
                        written = {key: Ack(value, resp.header.revision)}
                except grpc.RpcError as exc:
                    if not self.killing.is_set():
                        with self.lock:
                            self.errors_before_kill.append(f"{key!r}: {exc.code()} {exc.details()}")
                    return
                with self.lock:
                    self.acked.update(written)
                revisions.append(next(iter(written.values())).revision)
                i += 1

    def _txn(self, client: Client, key: bytes, value: bytes) -> dict[bytes, Ack]:
        second = key + b"/txn"
        resp = client.kv.Txn(
            pb.TxnRequest(
                compare=[
                    pb.Compare(
                        key=key,
                        target=pb.Compare.CREATE,
                        result=pb.Compare.EQUAL,
                        create_revision=0,
                    )
                ],
                success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=key, value=value)),
                    pb.RequestOp(request_put=pb.PutRequest(key=second, value=value + b"/2")),
                ],
            ),
            timeout=10,
        )
        assert resp.succeeded, f"compare on the new key {key!r} failed"
        rev = resp.header.revision
        return {key: Ack(value, rev), second: Ack(value + b"/2", rev)}

    def wait_for(self, acks: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < acks:
            assert not self.errors_before_kill, self.errors_before_kill
            assert time.monotonic() < deadline, f"only {len(self.acked)} writes acknowledged"
            time.sleep(0.001)

    def join(self) -> None:
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a writer is stuck"


def all_keys(client: Client) -> pb.RangeResponse:
    return client.kv.Range(pb.RangeRequest(key=b"\x00", range_end=b"\x00"), timeout=60)


def log_revisions(db: Path) -> tuple[list[int], int]:
    """Distinct revisions in the SQLite log, and the stored current revision."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        revisions = [r for (r,) in conn.execute("SELECT DISTINCT revision FROM log ORDER BY 1")]
        (current,) = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
    finally:
        conn.close()
    return revisions, int(current)


def check_store(server: ShimServer, db: Path, acked: dict[bytes, Ack], rng: random.Random) -> int:
    with Client(server.endpoint) as client:
        resp = all_keys(client)
        current = resp.header.revision
        stored = {kv.key: kv for kv in resp.kvs}

        lost = {
            key: ack
            for key, ack in acked.items()
            if key not in stored
            or (stored[key].value, stored[key].mod_revision) != (ack.value, ack.revision)
        }
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost or changed: " + (
            ", ".join(f"{k!r}@{a.revision}" for k, a in list(lost.items())[:10])
        )
        assert current >= max(a.revision for a in acked.values())

        # No holes: each key was written once, so mod_revisions cover every revision.
        assert {kv.mod_revision for kv in resp.kvs} == set(range(2, current + 1))
        assert all(kv.version == 1 and kv.create_revision == kv.mod_revision for kv in resp.kvs)

        for key in rng.sample(sorted(acked), min(SAMPLE_PER_ROUND, len(acked))):
            ack = acked[key]
            at = client.kv.Range(pb.RangeRequest(key=key, revision=ack.revision), timeout=10)
            assert [(kv.value, kv.mod_revision) for kv in at.kvs] == [(ack.value, ack.revision)]
            before = client.kv.Range(
                pb.RangeRequest(key=key, revision=ack.revision - 1), timeout=10
            )
            assert list(before.kvs) == [], f"{key!r} visible before its revision {ack.revision}"

    revisions, stored_current = log_revisions(db)
    assert stored_current == current
    assert revisions == list(range(2, current + 1)), "holes or extra revisions in the log"
    return current


@pytest.mark.slow
def test_kill_9_under_write_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    server = ShimServer(tmp_path / "shim")
    db = tmp_path / "shim" / "state.db"
    acked: dict[bytes, Ack] = {}
    last_revision = 1
    try:
        for round_no, (kill_after, synchronous) in enumerate(ROUNDS):
            args = ["--sqlite-synchronous", synchronous, "--log-level", "info"]
            if server.running and server.extra_args != args:
                assert server.stop() == 0
            if not server.running:  # else: load the server that recovered from the last kill
                server.extra_args = args
                server.start()
            load = WriteLoad(server.endpoint, prefix=b"r%d/" % round_no)
            load.start()
            load.wait_for(kill_after)
            load.killing.set()
            server.kill()
            load.join()
            assert not load.errors_before_kill, load.errors_before_kill
            assert server.returncode == -9
            for writer, revisions in load.revisions_by_writer.items():
                assert revisions == sorted(set(revisions)), f"writer {writer}: {revisions}"
            assert min(a.revision for a in load.acked.values()) > last_revision
            acked.update(load.acked)

            server.start()
            last_revision = check_store(server, db, acked, rng)

        assert server.stop() == 0
        wal = db.with_name(db.name + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
        revisions, current = log_revisions(db)
        assert current == last_revision
        assert revisions == list(range(2, current + 1))
    finally:
        server.stop()

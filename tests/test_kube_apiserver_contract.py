"""kube-apiserver's contract with etcd: the exact request shapes its etcd3 storage sends.

Every request here has the shape kube-apiserver (k8s.io/apiserver/pkg/storage/etcd3, through
etcd's clientv3) sends, see shared/research/kine.md section 12, and every assertion is
something the apiserver relies on. Each test runs against a real etcd 3.5 *and* against shim
(the `server` fixture is parametrised), so the expectations themselves are proven on etcd.

Known difference kept on purpose: etcd 3.5.1 reports version 3.5.1, while shim must report
>= 3.5.13, the release from which kube-apiserver uses RequestWatchProgress (etcd 3.5.1
answers a progress request with the current revision even while a watcher is still catching
up, etcd#15220; see test_requested_progress_during_catch_up, which therefore runs on shim
only).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from shim.pb import kv_pb2
from shim.pb import rpc_pb2 as pb
from tests.support import Client, EtcdServer, ServerProcess, ShimServer
from tests.support.postgres import postgres_endpoint
from tests.support.watch import WatchStream

COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"
PROGRESS_INTERVAL = "1s"
# kube-apiserver's clientv3 sets WithRequireLeader on its watches.
WATCH_METADATA = (("hasleader", "true"),)
PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE

SERVERS = ("etcd", "shim", "shim-postgres")  # shim on SQLite, shim on PostgreSQL


# --- servers ---------------------------------------------------------------------------------


def start_server(kind: str, workdir: Path) -> ServerProcess:
    if kind == "etcd":
        return EtcdServer(
            workdir,
            extra_args=[f"--experimental-watch-progress-notify-interval={PROGRESS_INTERVAL}"],
        ).start()
    return ShimServer(
        workdir,
        datastore_endpoint=postgres_endpoint() if kind == "shim-postgres" else None,
        extra_args=["--watch-progress-notify-interval", PROGRESS_INTERVAL],
    ).start()


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real etcd, then shim: every test of this module runs against both."""
    process = start_server(request.param, tmp_path_factory.mktemp(request.param))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.endpoint) as c:  # type: ignore[attr-defined]
        yield c


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> bytes:
    """A key prefix of this test's own, as the apiserver's /registry/<resource>/<ns>/."""
    name = re.sub(r"\W", "_", request.node.originalname)
    return f"/registry/{name}/ns/".encode()


# --- the apiserver's requests ----------------------------------------------------------------


def prefix_end(prefix: bytes) -> bytes:
    """clientv3.GetPrefixRangeEnd (the apiserver's prefixes never end in 0xff)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def mod_is(key: bytes, revision: int) -> pb.Compare:
    return pb.Compare(
        key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=revision
    )


def create(client: Client, key: bytes, value: bytes, lease: int = 0) -> pb.TxnResponse:
    """store.Create: Txn{MOD(key)==0; success Put(key, value[, lease])}, no failure ops."""
    return client.kv.Txn(
        pb.TxnRequest(
            compare=[mod_is(key, 0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))],
        ),
        timeout=10,
    )


def update(
    client: Client, key: bytes, value: bytes, orig_rev: int, lease: int = 0
) -> pb.TxnResponse:
    """store.GuaranteedUpdate: Txn{MOD(key)==origRev; success Put; failure Range(key)}."""
    return client.kv.Txn(
        pb.TxnRequest(
            compare=[mod_is(key, orig_rev)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
        ),
        timeout=10,
    )


def delete(client: Client, key: bytes, orig_rev: int) -> pb.TxnResponse:
    """store.Delete with preconditions: Txn{MOD==origRev; success DeleteRange; failure Range}."""
    return client.kv.Txn(
        pb.TxnRequest(
            compare=[mod_is(key, orig_rev)],
            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
        ),
        timeout=10,
    )


def get(client: Client, key: bytes, revision: int = 0) -> pb.RangeResponse:
    """store.Get: Range(key, revision, limit=1), no range_end."""
    return client.kv.Range(pb.RangeRequest(key=key, revision=revision, limit=1), timeout=10)


def list_page(
    client: Client, start: bytes, prefix: bytes, limit: int, revision: int
) -> pb.RangeResponse:
    """One page of store.GetList: Range(start, range_end=prefix+1, limit, revision)."""
    return client.kv.Range(
        pb.RangeRequest(
            key=start, range_end=prefix_end(prefix), limit=limit, revision=revision
        ),
        timeout=10,
    )


def current_revision(client: Client) -> int:
    """The global revision, as the apiserver's GetCurrentResourceVersion reads it."""
    return client.kv.Range(pb.RangeRequest(key=b"/registry/health"), timeout=10).header.revision


def rpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        result = call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    raise AssertionError(f"expected an error, got {result}")


# --- watch streams ---------------------------------------------------------------------------


@pytest.fixture
def watch(client: Client) -> Iterator[Callable[[], WatchStream]]:
    sessions: list[WatchStream] = []

    def open_session() -> WatchStream:
        sessions.append(WatchStream(client, metadata=WATCH_METADATA))
        return sessions[-1]

    yield open_session
    for session in sessions:
        session.close()


def events_of(responses: list[pb.WatchResponse], watch_id: int) -> list[kv_pb2.Event]:
    return [e for r in responses if r.watch_id == watch_id for e in r.events]


# --- tests: writes ---------------------------------------------------------------------------


def test_create(client: Client, prefix: bytes) -> None:
    key = prefix + b"pod-a"
    first = create(client, key, b"v1")
    assert first.succeeded
    assert first.responses[0].WhichOneof("response") == "response_put"
    # The header revision is the new global revision, which becomes the resourceVersion.
    assert first.header.revision == current_revision(client)
    stored = get(client, key).kvs[0]
    assert (stored.value, stored.mod_revision, stored.create_revision, stored.version) == (
        b"v1", first.header.revision, first.header.revision, 1
    )

    again = create(client, key, b"v2")
    assert not again.succeeded, "a second create of the same key must fail (AlreadyExists)"
    assert list(again.responses) == []  # no failure ops
    assert again.header.revision == first.header.revision  # nothing was written
    assert get(client, key).kvs[0].value == b"v1"


def test_create_with_lease(client: Client, prefix: bytes) -> None:
    # The apiserver's lease manager grants ttl + min(5% ttl, 60s) for Events (1h + 60s).
    lease = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3660), timeout=10)
    assert lease.ID != 0 and lease.TTL == 3660 and not lease.error
    try:
        key = prefix + b"event-1"
        assert create(client, key, b"e", lease=lease.ID).succeeded
        assert get(client, key).kvs[0].lease == lease.ID
        # The same lease is reused for more objects.
        assert create(client, prefix + b"event-2", b"e", lease=lease.ID).succeeded
        ttl = client.lease.LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=lease.ID, keys=True), timeout=10
        )
        assert sorted(ttl.keys) == [key, prefix + b"event-2"]
        assert 3600 <= ttl.TTL <= 3660 and ttl.grantedTTL == 3660
    finally:
        client.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease.ID), timeout=10)
    assert get(client, key).count == 0  # revoking deleted the objects


def test_guaranteed_update(client: Client, prefix: bytes) -> None:
    key = prefix + b"deploy"
    # origRev 0 when the object is absent and ignoreNotFound: the update creates it.
    made = update(client, key, b"v1", orig_rev=0)
    assert made.succeeded
    rev1 = made.header.revision

    updated = update(client, key, b"v2", orig_rev=rev1)
    assert updated.succeeded
    assert updated.responses[0].WhichOneof("response") == "response_put"
    rev2 = updated.header.revision
    assert rev2 == rev1 + 1 == current_revision(client)
    stored = get(client, key).kvs[0]
    assert (stored.value, stored.mod_revision, stored.create_revision, stored.version) == (
        b"v2", rev2, rev1, 2
    )

    # Conflict: the apiserver's cached origRev is stale. The failure Range hands back the
    # current object, which the apiserver retries the update function on.
    conflict = update(client, key, b"v3-lost", orig_rev=rev1)
    assert not conflict.succeeded
    assert conflict.header.revision == rev2  # nothing written
    kvs = conflict.responses[0].response_range.kvs
    assert len(kvs) == 1
    assert (kvs[0].key, kvs[0].value, kvs[0].mod_revision, kvs[0].version) == (key, b"v2", rev2, 2)

    # Retried with the revision it just learnt, it succeeds.
    retried = update(client, key, b"v3", orig_rev=kvs[0].mod_revision)
    assert retried.succeeded and retried.header.revision == rev2 + 1


def test_update_of_a_deleted_object_conflicts(client: Client, prefix: bytes) -> None:
    key = prefix + b"gone"
    rev = create(client, key, b"v1").header.revision
    assert delete(client, key, rev).succeeded
    conflict = update(client, key, b"v2", orig_rev=rev)
    assert not conflict.succeeded
    assert list(conflict.responses[0].response_range.kvs) == []  # NotFound for the apiserver


def test_delete_with_preconditions(client: Client, prefix: bytes) -> None:
    key = prefix + b"svc"
    rev1 = create(client, key, b"v1").header.revision
    rev2 = update(client, key, b"v2", orig_rev=rev1).header.revision

    stale = delete(client, key, rev1)
    assert not stale.succeeded
    assert stale.header.revision == rev2
    kvs = stale.responses[0].response_range.kvs
    assert [(kv.key, kv.value, kv.mod_revision) for kv in kvs] == [(key, b"v2", rev2)]
    assert get(client, key).count == 1

    deleted = delete(client, key, rev2)
    assert deleted.succeeded
    assert deleted.responses[0].response_delete_range.deleted == 1
    assert deleted.header.revision == rev2 + 1 == current_revision(client)
    assert get(client, key).count == 0

    # Deleting again: the object is gone, the failure Range says so.
    again = delete(client, key, rev2)
    assert not again.succeeded
    assert list(again.responses[0].response_range.kvs) == []


# --- tests: reads ----------------------------------------------------------------------------


def test_get_current_and_old_revision(client: Client, prefix: bytes) -> None:
    key = prefix + b"cm"
    rev1 = create(client, key, b"v1").header.revision
    rev2 = update(client, key, b"v2", orig_rev=rev1).header.revision
    # A write elsewhere: the header revision of a Get is the global revision, not the key's.
    other = create(client, prefix + b"other", b"x").header.revision
    assert other > rev2

    now = get(client, key)
    assert now.header.revision == other
    assert (now.count, len(now.kvs), now.more) == (1, 1, False)
    assert (now.kvs[0].value, now.kvs[0].mod_revision) == (b"v2", rev2)

    old = get(client, key, revision=rev1)
    assert old.header.revision == other  # still the current revision
    assert (old.kvs[0].value, old.kvs[0].mod_revision, old.kvs[0].version) == (b"v1", rev1, 1)

    before = get(client, key, revision=rev1 - 1)
    assert (before.count, list(before.kvs)) == (0, [])

    missing = get(client, prefix + b"missing")
    assert (missing.count, list(missing.kvs), missing.header.revision) == (0, [], other)


def test_paginated_list(client: Client, prefix: bytes) -> None:
    names = [f"obj-{i:02d}".encode() for i in range(23)]
    for name in names:
        assert create(client, prefix + name, b"v-" + name).succeeded
    # A key just outside the prefix must not show up.
    create(client, prefix_end(prefix) + b"outside", b"x")
    limit = 5

    first = list_page(client, prefix, prefix, limit, revision=0)
    list_rev = first.header.revision
    assert list_rev == current_revision(client)
    full = client.kv.Range(
        pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), revision=list_rev), timeout=10
    )
    assert [kv.key for kv in full.kvs] == [prefix + n for n in names]

    pages = [first]
    # Writes between pages, into the part of the range not listed yet: pinned pages
    # must not show any of them.
    created_between = create(client, prefix + b"obj-07a", b"new")
    assert created_between.succeeded
    victim = get(client, prefix + b"obj-12").kvs[0]
    assert update(client, prefix + b"obj-12", b"changed", victim.mod_revision).succeeded
    doomed = get(client, prefix + b"obj-20").kvs[0]
    assert delete(client, prefix + b"obj-20", doomed.mod_revision).succeeded

    while pages[-1].more:
        start = pages[-1].kvs[-1].key + b"\x00"
        pages.append(list_page(client, start, prefix, limit, revision=list_rev))
        assert len(pages) < 20, "pagination does not end"

    remaining = len(names)
    for page in pages:
        # count is what is left from this page's start; more iff there is more than a page.
        assert page.count == remaining
        assert page.more == (page.count > len(page.kvs))
        assert len(page.kvs) == min(limit, remaining)
        assert page.header.revision >= list_rev
        remaining -= len(page.kvs)
    assert remaining == 0
    listed = [kv for page in pages for kv in page.kvs]
    assert listed == list(full.kvs)
    assert all(kv.mod_revision <= list_rev for kv in listed)
    assert {kv.key: kv.value for kv in listed}[prefix + b"obj-12"] == b"v-obj-12"

    # The same list at the current revision sees all three writes.
    now = client.kv.Range(pb.RangeRequest(key=prefix, range_end=prefix_end(prefix)), timeout=10)
    keys = [kv.key for kv in now.kvs]
    assert prefix + b"obj-07a" in keys and prefix + b"obj-20" not in keys
    assert now.count == len(names)  # one created, one deleted


def test_count_only_and_keys_only(client: Client, prefix: bytes) -> None:
    for i in range(7):
        create(client, prefix + f"k{i}".encode(), b"x" * 100)
    rev = current_revision(client)

    count = client.kv.Range(
        pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True), timeout=10
    )
    assert (count.count, list(count.kvs), count.more) == (7, [], False)
    assert count.header.revision == rev

    keys = client.kv.Range(
        pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), keys_only=True), timeout=10
    )
    assert keys.count == 7
    assert [kv.key for kv in keys.kvs] == [prefix + f"k{i}".encode() for i in range(7)]
    assert all(kv.value == b"" and kv.mod_revision > 0 for kv in keys.kvs)


def test_health_probe(client: Client) -> None:
    # Any answer without an error means healthy, whether or not the key exists.
    response = client.kv.Range(pb.RangeRequest(key=b"/registry/health"), timeout=5)
    assert response.header.revision >= 1


def test_status_version(server: ServerProcess, client: Client) -> None:
    status = client.maintenance.Status(pb.StatusRequest(), timeout=10)
    version = tuple(int(part) for part in status.version.split(".")[:3])
    if isinstance(server, EtcdServer):
        # The harness runs etcd 3.5.1, older than kube-apiserver's RequestWatchProgress gate.
        assert status.version == "3.5.1"
    else:
        assert version >= (3, 5, 13), f"shim reports {status.version!r}"
    assert status.dbSize > 0


# --- tests: revisions out of range and compaction ---------------------------------------------


def test_future_revision(client: Client, prefix: bytes) -> None:
    rev = current_revision(client)
    code, details = rpc_error(lambda: get(client, prefix + b"x", revision=rev + 1))
    assert (code, details) == (grpc.StatusCode.OUT_OF_RANGE, FUTURE_REV)
    code, details = rpc_error(lambda: list_page(client, prefix, prefix, 10, revision=rev + 100))
    assert (code, details) == (grpc.StatusCode.OUT_OF_RANGE, FUTURE_REV)


def compact_rev_key_txn(client: Client, version: int, rev: int) -> pb.TxnResponse:
    """The apiserver's compaction lock: Txn{VERSION(compact_rev_key)==v; success
    Put(compact_rev_key, str(rev)); failure Range(compact_rev_key)}."""
    key = b"compact_rev_key"
    return client.kv.Txn(
        pb.TxnRequest(
            compare=[
                pb.Compare(
                    key=key, target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=version
                )
            ],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=str(rev).encode()))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
        ),
        timeout=10,
    )


def test_compaction(client: Client, prefix: bytes, watch: Callable[[], WatchStream]) -> None:
    key = prefix + b"obj"
    revs = [create(client, key, b"v0").header.revision]
    for i in range(1, 4):
        revs.append(update(client, key, f"v{i}".encode(), revs[-1]).header.revision)

    # What an apiserver that has never compacted sees of the lock key.
    lock = client.kv.Range(pb.RangeRequest(key=b"compact_rev_key"), timeout=10)
    version = lock.kvs[0].version if lock.kvs else 0
    target = revs[2]  # compact away revs[0] and revs[1]; revs[2] stays readable
    won = compact_rev_key_txn(client, version, target)
    assert won.succeeded
    client.kv.Compact(pb.CompactionRequest(revision=target), timeout=10)

    # A second apiserver with a stale view of the lock loses and learns the new version.
    lost = compact_rev_key_txn(client, version, target)
    assert not lost.succeeded
    kv = lost.responses[0].response_range.kvs[0]
    assert (kv.version, kv.value) == (version + 1, str(target).encode())

    for revision in (revs[0], revs[1], target - 1):
        code, details = rpc_error(lambda r=revision: get(client, key, revision=r))
        assert (code, details) == (grpc.StatusCode.OUT_OF_RANGE, COMPACTED)
    code, details = rpc_error(lambda: list_page(client, prefix, prefix, 10, revision=revs[1]))
    assert (code, details) == (grpc.StatusCode.OUT_OF_RANGE, COMPACTED)
    assert get(client, key, revision=target).kvs[0].value == b"v2"
    assert get(client, key, revision=revs[3]).kvs[0].value == b"v3"

    # A watch from a compacted revision: the apiserver's clientv3 drops the `created`
    # response (no WithCreatedNotify), so the compaction must come in a response of its
    # own, with compact_revision set and the watch canceled; it then relists (410 Gone).
    session = watch()
    created = session.create(
        key=prefix, range_end=prefix_end(prefix), start_revision=revs[1],
        prev_kv=True, progress_notify=True,
    )
    watch_id = created.watch_id
    session.wait_for(
        lambda rs: any(
            r.compact_revision and r.watch_id == watch_id and not r.created for r in rs
        ),
        3,
        "a compaction response for the watcher (other than its created response)",
    )
    compacted = [
        r for r in session.responses
        if r.watch_id == watch_id and r.compact_revision and not r.created
    ]
    assert compacted[0].compact_revision == target
    assert compacted[0].canceled
    assert not compacted[0].events

    # A watch from the compact revision itself still works.
    live = session.create(
        key=prefix, range_end=prefix_end(prefix), start_revision=target, prev_kv=True
    )
    assert not live.canceled
    session.wait_for(
        lambda rs: len(events_of(rs, live.watch_id)) == 2, 10, "events from the compact revision"
    )
    got = events_of(session.responses, live.watch_id)
    assert [(e.kv.mod_revision, e.kv.value, e.prev_kv.value) for e in got] == [
        (revs[2], b"v2", b""),  # its previous version is compacted away: no prev_kv
        (revs[3], b"v3", b"v2"),
    ]


def apiserver_errors(endpoint: str) -> list[tuple[grpc.StatusCode, str]]:
    """The errors of a fixed request sequence on a fresh server."""
    with Client(endpoint) as c:
        key = b"/registry/pods/default/p"
        rev = create(c, key, b"v1").header.revision
        rev = update(c, key, b"v2", rev).header.revision
        update(c, key, b"v3", rev)
        c.kv.Compact(pb.CompactionRequest(revision=rev), timeout=10)
        now = current_revision(c)
        return [
            rpc_error(lambda: get(c, key, revision=rev - 1)),
            rpc_error(lambda: get(c, key, revision=now + 1)),
            rpc_error(lambda: list_page(c, b"/registry/pods/", b"/registry/pods/", 5, rev - 1)),
            rpc_error(lambda: c.kv.Compact(pb.CompactionRequest(revision=rev - 1))),
            rpc_error(lambda: c.kv.Compact(pb.CompactionRequest(revision=now + 5))),
            rpc_error(lambda: c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=12345))),
        ]


def test_error_texts_match_etcd(tmp_path: Path) -> None:
    """The exact status of every error the apiserver maps (410 Gone, 504 too large RV)."""
    outcomes = {}
    for kind in SERVERS:
        process = start_server(kind, tmp_path / kind)
        try:
            outcomes[kind] = apiserver_errors(process.endpoint)  # type: ignore[attr-defined]
        finally:
            process.stop()
    assert outcomes["shim"] == outcomes["etcd"]
    assert outcomes["etcd"][:2] == [
        (grpc.StatusCode.OUT_OF_RANGE, COMPACTED),
        (grpc.StatusCode.OUT_OF_RANGE, FUTURE_REV),
    ]


# --- tests: watch ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    revision: int
    key: bytes
    type: int
    value: bytes  # for a delete: the value deleted


class ApiWriter:
    """Creates, updates and deletes objects under a prefix with the apiserver's txns,
    remembering each change's revision: the log a watcher must reproduce."""

    def __init__(self, client: Client, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self.live: dict[bytes, tuple[int, bytes]] = {}  # key -> (mod_revision, value)
        self.log: list[Written] = []
        self.creates: set[int] = set()  # revisions of creates
        self._serial = 0

    def step(self, value_size: int = 16) -> None:
        self._serial += 1
        n = self._serial
        value = f"{n:06d}".encode().ljust(value_size, b".")
        live = sorted(self.live)
        if len(live) < 5 or n % 3 == 0:
            key = self.prefix + f"obj-{n:05d}".encode()
            resp = create(self.client, key, value)
            assert resp.succeeded
            self.live[key] = (resp.header.revision, value)
            self.log.append(Written(resp.header.revision, key, PUT, value))
            self.creates.add(resp.header.revision)
        elif n % 3 == 1:
            key = live[n % len(live)]
            resp = update(self.client, key, value, self.live[key][0])
            assert resp.succeeded
            self.live[key] = (resp.header.revision, value)
            self.log.append(Written(resp.header.revision, key, PUT, value))
        else:
            key = live[n % len(live)]
            resp = delete(self.client, key, self.live[key][0])
            assert resp.succeeded
            self.log.append(Written(resp.header.revision, key, DELETE, self.live.pop(key)[1]))


def check_watch_stream(
    responses: list[pb.WatchResponse], watch_id: int, writer: ApiWriter, since: int
) -> int:
    """Check the apiserver's watch expectations on one stream, for the writer's changes
    from log index `since` on; return how many progress responses to RequestProgress came in
    while events were still due."""
    expected = writer.log[since:]
    progress_rev = 0
    progress_during = 0
    delivered: list[kv_pb2.Event] = []
    for response in responses:
        if response.created:
            continue
        assert not response.canceled, f"watch canceled: {response}"
        if not response.events:
            # Progress: -1 answers RequestProgress (etcd 3.5 sends no watch id for it), the
            # watcher's own id is a periodic progress_notify.
            assert response.watch_id in (-1, watch_id), f"unexpected response {response}"
            assert response.header.revision >= progress_rev, "progress went backwards"
            progress_rev = response.header.revision
            if response.watch_id == -1 and len(delivered) < len(expected):
                progress_during += 1
            continue
        assert response.watch_id == watch_id
        for event in response.events:
            # After progress at R, every later event must have a revision above R.
            assert event.kv.mod_revision > progress_rev, (
                f"event at revision {event.kv.mod_revision} arrived after a progress "
                f"notification at revision {progress_rev}"
            )
            assert event.kv.mod_revision <= response.header.revision
            delivered.append(event)

    got = [
        Written(e.kv.mod_revision, e.kv.key, e.type, e.kv.value or e.prev_kv.value)
        for e in delivered
    ]
    assert got == expected, "events missing, duplicated or out of order"
    values = {(w.key, w.revision): w.value for w in writer.log if w.type == PUT}
    for event in delivered:
        kv = event.kv
        if kv.mod_revision in writer.creates:
            # A create: CreateRevision == ModRevision, and no previous object.
            assert event.type == PUT
            assert (kv.create_revision, kv.version) == (kv.mod_revision, 1)
            assert not event.HasField("prev_kv")
            continue
        # Every update and delete carries the previous object.
        assert event.HasField("prev_kv"), f"no prev_kv on {event}"
        assert event.prev_kv.key == kv.key
        assert event.prev_kv.mod_revision < kv.mod_revision
        assert event.prev_kv.value == values[(kv.key, event.prev_kv.mod_revision)]
        if event.type == DELETE:
            assert (kv.value, kv.create_revision, kv.version) == (b"", 0, 0)
        else:
            assert kv.create_revision == event.prev_kv.create_revision
            assert kv.version == event.prev_kv.version + 1
    return progress_during


class ProgressTicker:
    """Sends WatchRequest.progress_request on a stream every 100 ms, as the apiserver's
    cacher does while a consistent read waits for its cache."""

    def __init__(self, session: WatchStream, interval: float = 0.1) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(session, interval), daemon=True
        )
        self._thread.start()

    def _run(self, session: WatchStream, interval: float) -> None:
        while not self._stop.wait(interval):
            session.request_progress()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_list_then_watch(
    client: Client,
    prefix: bytes,
    watch: Callable[[], WatchStream],
    writes_before_watch: int,
    writes_after_watch: int,
    progress_from_start: bool,
    value_size: int = 16,
) -> int:
    """The reflector/cacher sequence: LIST, then WATCH from the list revision + 1 with
    prev_kv and progress_notify, with progress requested every 100 ms on the stream."""
    writer = ApiWriter(client, prefix)
    for _ in range(10):
        writer.step()
    pages = [list_page(client, prefix, prefix, 4, revision=0)]
    list_rev = pages[0].header.revision
    while pages[-1].more:
        pages.append(
            list_page(client, pages[-1].kvs[-1].key + b"\x00", prefix, 4, revision=list_rev)
        )
    listed = {kv.key: kv.value for page in pages for kv in page.kvs}
    assert listed == {k: v for k, (_, v) in writer.live.items()}
    history = len(writer.log)

    # Objects change between the LIST and the WATCH: the watch must replay them.
    for _ in range(writes_before_watch):
        writer.step(value_size)

    session = watch()
    ticker = ProgressTicker(session) if progress_from_start else None
    created = session.create(
        key=prefix, range_end=prefix_end(prefix), start_revision=list_rev + 1,
        prev_kv=True, progress_notify=True,
    )
    assert created.created and not created.canceled
    if progress_from_start:
        session.request_progress()  # at once, while the replay has only begun
    if ticker is None:
        # Wait for the replay to end before asking for progress.
        session.wait_for(
            lambda rs: len(events_of(rs, created.watch_id)) >= writes_before_watch,
            20, "the replayed events",
        )
        ticker = ProgressTicker(session)
    try:
        for _ in range(writes_after_watch):
            writer.step(value_size)
            time.sleep(0.004)
        expected = writer.log[history:]
        session.wait_for(
            lambda rs: len(events_of(rs, created.watch_id)) >= len(expected),
            20, f"{len(expected)} events",
        )
        final = writer.log[-1].revision
        session.wait_for(
            lambda rs: any(
                r.watch_id == -1 and r.header.revision >= final and not r.events for r in rs
            ),
            10, "a progress response at the last revision",
        )
    finally:
        ticker.stop()
    return check_watch_stream(session.responses, created.watch_id, writer, history)


def test_watch_after_list_with_requested_progress(
    client: Client, prefix: bytes, watch: Callable[[], WatchStream]
) -> None:
    progress_during = run_list_then_watch(
        client, prefix, watch, writes_before_watch=20, writes_after_watch=250,
        progress_from_start=False,
    )
    # The test means something only if progress came in while events were flowing.
    assert progress_during >= 3, f"only {progress_during} progress responses while writing"


def test_requested_progress_during_catch_up(shim: ShimServer) -> None:
    """Progress requested while the watcher still replays history must not run ahead of it.

    kube-apiserver relies on this from etcd 3.5.13 on (it checks Status().version). etcd
    3.5.1 answers a progress request with the current revision at once, even while the
    watcher is catching up (etcd#15220), and fails this test: so it runs on shim only.
    """
    with Client(shim.endpoint) as c:
        sessions: list[WatchStream] = []

        def open_session() -> WatchStream:
            sessions.append(WatchStream(c, metadata=WATCH_METADATA))
            return sessions[-1]

        try:
            run_list_then_watch(
                c, b"/registry/catchup/ns/", open_session, writes_before_watch=300,
                writes_after_watch=100, progress_from_start=True, value_size=2000,
            )
        finally:
            for session in sessions:
                session.close()


def test_periodic_progress_notify(
    client: Client, prefix: bytes, watch: Callable[[], WatchStream]
) -> None:
    """Bookmarks: an idle watcher with progress_notify gets event-less responses with its own
    watch_id at the current revision (servers run with a 1 s progress interval)."""
    create(client, prefix + b"x", b"1")
    session = watch()
    quiet = session.create(key=prefix + b"nothing", range_end=prefix_end(prefix + b"nothing"))
    notified = session.create(
        key=prefix + b"idle/", range_end=prefix_end(prefix + b"idle/"), progress_notify=True
    )
    rev = current_revision(client)
    session.wait_for(
        lambda rs: any(r.watch_id == notified.watch_id and not r.created for r in rs),
        5, "a progress notification",
    )
    time.sleep(0.2)
    mine = [r for r in session.responses if not r.created]
    assert mine, "no progress notification"
    for response in mine:
        assert response.watch_id == notified.watch_id, f"unexpected {response}"
        assert not response.events and not response.canceled
        assert response.header.revision == rev
    assert quiet.watch_id != notified.watch_id


def test_lease_expiry_deletes_and_notifies(
    client: Client, prefix: bytes, watch: Callable[[], WatchStream]
) -> None:
    lease = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2), timeout=10)
    assert lease.TTL == 2
    key = prefix + b"event-1"
    made = create(client, key, b"event body", lease=lease.ID)
    assert made.succeeded
    session = watch()
    created = session.create(
        key=prefix, range_end=prefix_end(prefix), start_revision=made.header.revision,
        prev_kv=True, progress_notify=True,
    )
    session.wait_for(
        lambda rs: len(events_of(rs, created.watch_id)) >= 2, 10, "the expiry's DELETE event"
    )
    put_event, delete_event = events_of(session.responses, created.watch_id)
    assert put_event.type == PUT and put_event.kv.lease == lease.ID
    assert delete_event.type == DELETE
    assert delete_event.kv.key == key
    assert delete_event.kv.mod_revision > made.header.revision
    assert delete_event.prev_kv.value == b"event body"
    assert delete_event.prev_kv.lease == lease.ID
    assert delete_event.prev_kv.mod_revision == made.header.revision
    assert get(client, key).count == 0
    gone = client.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID), timeout=10)
    assert gone.TTL == -1

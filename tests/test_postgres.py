"""shim on PostgreSQL: several servers on one database, byte-exact keys, the database created
on first start, passwords kept out of every message, and a database restart under load.

Everything runs against a real PostgreSQL cluster (tests/support/postgres.py); the etcd
semantics themselves are checked on PostgreSQL by test_differential_kv and
test_kube_apiserver_contract, which run on every datastore.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest

from shim.app import open_backend
from shim.config import PostgresEndpoint, ServerConfig, parse_datastore_endpoint
from shim.pb import kv_pb2
from shim.pb import rpc_pb2 as pb
from tests.support import OUTSIDE_CHECKOUT, Client, ShimServer, free_port
from tests.support.postgres import PostgresServer
from tests.support.watch import WatchStream

# A password that is easy to grep for, with characters that need quoting in a URL.
PASSWORD = "Sekr1t:Dist1nct/Pa55@word"
PASSWORD_MARKERS = ("Sekr1t", "Dist1nct", "Pa55", "Sekr1t%3ADist1nct")


# --- helpers ---------------------------------------------------------------------------------


def put(client: Client, key: bytes, value: bytes, **kwargs: object) -> pb.PutResponse:
    return client.kv.Put(pb.PutRequest(key=key, value=value, **kwargs), timeout=10)


def get_all(client: Client, key: bytes, end: bytes, revision: int = 0) -> list[kv_pb2.KeyValue]:
    resp = client.kv.Range(pb.RangeRequest(key=key, range_end=end, revision=revision), timeout=10)
    return list(resp.kvs)


def watch_from(client: Client, request: pb.WatchCreateRequest) -> WatchStream:
    """A Watch stream with one watcher, created."""
    stream = WatchStream(client)
    stream.create(request)
    return stream


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for a prefix (clientv3.GetPrefixRangeEnd)."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\x00"


@pytest.fixture
def two_shims(
    postgres: PostgresServer, tmp_path: Path
) -> Iterator[tuple[ShimServer, ShimServer]]:
    """Two shim servers on one new PostgreSQL database."""
    endpoint = postgres.url(postgres.new_database_name("pair"))
    first = ShimServer(tmp_path / "a", datastore_endpoint=endpoint).start()
    second = ShimServer(tmp_path / "b", datastore_endpoint=endpoint).start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


# --- several servers on one database ---------------------------------------------------------


def test_concurrent_compare_and_swap_through_two_servers(
    two_shims: tuple[ShimServer, ShimServer],
) -> None:
    """Increment one counter with compare-and-swap Txns from threads on both servers: no
    increment is lost, and exactly one Txn wins each race for a given mod revision."""
    key = b"/counter"
    threads_per_server, increments = 4, 25
    with Client(two_shims[0].endpoint) as a, Client(two_shims[1].endpoint) as b:
        put(a, key, b"0")
        wins: list[tuple[int, int]] = []  # (mod revision compared against, new revision)
        losses = [0]
        lock = threading.Lock()

        def worker(client: Client) -> None:
            done = 0
            while done < increments:
                current = client.kv.Range(pb.RangeRequest(key=key), timeout=10).kvs[0]
                txn = pb.TxnRequest(
                    compare=[pb.Compare(
                        key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                        mod_revision=current.mod_revision,
                    )],
                    success=[pb.RequestOp(request_put=pb.PutRequest(
                        key=key, value=str(int(current.value) + 1).encode()
                    ))],
                )
                resp = client.kv.Txn(txn, timeout=10)
                with lock:
                    if resp.succeeded:
                        wins.append((current.mod_revision, resp.header.revision))
                        done += 1
                    else:
                        losses[0] += 1

        workers = [
            threading.Thread(target=worker, args=(client,))
            for client in (a, b) for _ in range(threads_per_server)
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(120)
        total = 2 * threads_per_server * increments
        assert len(wins) == total
        assert int(a.kv.Range(pb.RangeRequest(key=key)).kvs[0].value) == total
        assert int(b.kv.Range(pb.RangeRequest(key=key)).kvs[0].value) == total
        compared = [w[0] for w in wins]
        assert len(set(compared)) == total, "two Txns won against the same mod revision"
        new_revisions = sorted(w[1] for w in wins)
        assert new_revisions == list(range(new_revisions[0], new_revisions[0] + total))
        assert losses[0] > 0, "the threads never raced (the test proves nothing)"


def test_watcher_on_one_server_sees_every_write_through_the_other(
    two_shims: tuple[ShimServer, ShimServer],
) -> None:
    """Writes through B (and some through A) reach a watcher on A in revision order, without
    gaps, each within a short delay of its acknowledgement."""
    first, second = two_shims
    with Client(first.endpoint) as a, Client(second.endpoint) as b:
        start = put(a, b"/w/start", b"x").header.revision
        watch = watch_from(a, pb.WatchCreateRequest(key=b"/w/", range_end=prefix_end(b"/w/"),
                                                    start_revision=start + 1))
        try:
            acked: dict[int, float] = {}
            count = 200
            for i in range(count):
                client = a if i % 10 == 9 else b
                resp = put(client, b"/w/%03d" % i, b"v%d" % i)
                acked[resp.header.revision] = time.monotonic()
                if i % 20 == 0:
                    time.sleep(0.02)  # let some writes arrive on an idle watcher
            events = watch.wait_for_events(count, timeout=30)
        finally:
            watch.close()
    assert watch.error is None
    revisions = [event.kv.mod_revision for _, event in events]
    assert revisions == list(range(start + 1, start + 1 + count)), "gap or disorder"
    assert [event.kv.key for _, event in events] == [b"/w/%03d" % i for i in range(count)]
    delays = [arrived - acked[event.kv.mod_revision] for arrived, event in events]
    # LISTEN/NOTIFY, not polling: a few milliseconds normally; generous bounds for slow CI.
    assert statistics.median(delays) < 0.25, sorted(delays)[-10:]
    assert max(delays) < 2.0, sorted(delays)[-10:]


def test_revisions_from_two_servers_have_no_holes(
    two_shims: tuple[ShimServer, ShimServer],
) -> None:
    """Concurrent writers on both servers: every revision is used once, none is skipped, and
    both servers serve the same history."""
    first, second = two_shims
    with Client(first.endpoint) as a, Client(second.endpoint) as b:
        base = put(a, b"/h/base", b"0").header.revision
        revisions: list[int] = []
        lock = threading.Lock()

        def writer(client: Client, name: str) -> None:
            for i in range(40):
                revision = put(client, f"/h/{name}/{i % 7}".encode(), b"%d" % i).header.revision
                with lock:
                    revisions.append(revision)

        threads = [threading.Thread(target=writer, args=(c, f"{n}{t}"))
                   for n, c in (("a", a), ("b", b)) for t in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(revisions) == list(range(base + 1, base + 1 + len(revisions)))
        # Every revision is in the history as seen from either server, in order.
        for client in (a, b):
            watch = watch_from(client, pb.WatchCreateRequest(
                key=b"/h/", range_end=prefix_end(b"/h/"), start_revision=base + 1
            ))
            try:
                events = watch.wait_for_events(len(revisions), timeout=20)
            finally:
                watch.close()
            assert [e.kv.mod_revision for _, e in events] == sorted(revisions)


def test_lease_granted_through_one_server_is_usable_through_the_other(
    two_shims: tuple[ShimServer, ShimServer],
) -> None:
    first, second = two_shims
    with Client(first.endpoint) as a, Client(second.endpoint) as b:
        lease = b.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=10).ID
        put(a, b"/lease/k", b"v", lease=lease)
        assert get_all(b, b"/lease/k", b"")[0].lease == lease
        a.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), timeout=10)
        assert get_all(b, b"/lease/k", b"") == []
        with pytest.raises(grpc.RpcError) as info:
            put(b, b"/lease/k2", b"v", lease=lease)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


# --- bytes -----------------------------------------------------------------------------------

BYTE_KEYS = sorted({
    b"\x00", b"\x00\x00", b"\x01", b"a", b"a\x00", b"a\x7f", b"a\x80", b"a\xff", b"a\xff\x00",
    b"\x7e", b"\x7f", b"\x7f\x00", b"\x7f\xff", b"\x80", b"\x80\x00", b"\x80\x80", b"\xc3\x28",
    b"\xc3\xa9", b"\xe2\x82", b"\xfe", b"\xfe\xff", b"\xff", b"\xff\x00", b"\xff\x7f",
    b"\xff\x80", b"\xff\xfe", b"\xff\xff", b"\xff\xff\xff", b"Z", b"z", b"\xed\xa0\x80",
})


def test_keys_and_values_are_bytes(postgres: PostgresServer, tmp_path: Path) -> None:
    """Keys and values that are not UTF-8 round-trip; ranges and prefixes compare bytes
    (0x7f < 0x80 < 0xff), on current and historical reads, and in watches."""
    endpoint = postgres.url(postgres.new_database_name("bytes"))
    with ShimServer(tmp_path / "shim", datastore_endpoint=endpoint) as server, \
            Client(server.endpoint) as client:
        watch = watch_from(client, pb.WatchCreateRequest(key=b"\x7f", range_end=b"\x81"))
        try:
            for key in BYTE_KEYS:
                put(client, key, b"\xff\xfe" + key + b"\x80\x00")
            written = client.kv.Range(pb.RangeRequest(key=b"\x00", range_end=b"\x00")).header
            for key in BYTE_KEYS:
                put(client, key, b"later")  # history now differs from the current state
            in_watch = [k for k in BYTE_KEYS if b"\x7f" <= k < b"\x81"]
            events = watch.wait_for_events(2 * len(in_watch), timeout=10)
        finally:
            watch.close()
        assert [e.kv.key for _, e in events[: len(in_watch)]] == in_watch

        everything = get_all(client, b"\x00", b"\x00", revision=written.revision)
        assert [kv.key for kv in everything] == BYTE_KEYS
        assert [kv.value for kv in everything] == [b"\xff\xfe" + k + b"\x80\x00" for k in BYTE_KEYS]
        for prefix in (b"\x7f", b"\x80", b"\xff", b"\xff\xff", b"a", b"\xfe", b"\xc3"):
            end = prefix_end(prefix)
            expected = [k for k in BYTE_KEYS if k.startswith(prefix)]
            for revision in (0, written.revision):
                assert [kv.key for kv in get_all(client, prefix, end, revision)] == expected, (
                    prefix, revision
                )
        for low, high in ((b"\x7f", b"\x80"), (b"\x7f\xff", b"\x80\x01"), (b"\x80", b"\xff"),
                          (b"a\x7f", b"a\xff"), (b"\xfe\xff", b"\xff\x80")):
            expected = [k for k in BYTE_KEYS if low <= k < high]
            assert [kv.key for kv in get_all(client, low, high)] == expected, (low, high)
            count = client.kv.Range(pb.RangeRequest(key=low, range_end=high, count_only=True))
            assert count.count == len(expected)
        deleted = client.kv.DeleteRange(pb.DeleteRangeRequest(key=b"\xff", range_end=b"\x00"))
        assert deleted.deleted == len([k for k in BYTE_KEYS if k >= b"\xff"])


# --- the database, and the password ----------------------------------------------------------


@pytest.mark.parametrize(("kind", "loop_type"), [("uvloop", "uvloop.Loop"),
                                               ("asyncio", "asyncio.unix_events")])
def test_asyncpg_runs_on_the_servers_kind_of_event_loop(
    postgres: PostgresServer, kind: str, loop_type: str
) -> None:
    """The backend's asyncpg thread runs the loop ``--event-loop`` chose for the server."""
    endpoint = postgres.url(postgres.new_database_name("loop"))
    backend = open_backend(ServerConfig(datastore_endpoint=endpoint, event_loop=kind))
    try:
        with backend.read() as view:
            assert view.revision() == 1  # asyncpg answers on that loop
        loop = backend._bridge.loop  # type: ignore[attr-defined]  # the backend's own thread
        assert f"{type(loop).__module__}.{type(loop).__name__}".startswith(loop_type), loop
    finally:
        backend.close()


def test_database_is_created_when_missing(postgres: PostgresServer, tmp_path: Path) -> None:
    name = postgres.new_database_name("created")
    assert name not in postgres.databases()
    endpoint = postgres.url(name, scheme="postgresql")
    with ShimServer(tmp_path / "shim", datastore_endpoint=endpoint) as server, \
            Client(server.endpoint) as client:
        put(client, b"k", b"v")
    assert name in postgres.databases()
    tables = {row[0] for row in postgres.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        database=name,
    )}
    assert {"meta", "log", "current", "lease", "schema_version", "kv", "history"} <= tables
    assert postgres.execute("SELECT version, name FROM schema_version ORDER BY version",
                            database=name) == [
        (1, "log"), (2, "leases"), (3, "long_keys"), (4, "auth"),
    ]
    rows = postgres.execute("SELECT key, value, mod_revision FROM kv", database=name)
    assert rows == [("k", "v", 2)]
    # A second start finds everything in place and keeps the data.
    with ShimServer(tmp_path / "again", datastore_endpoint=endpoint) as server, \
            Client(server.endpoint) as client:
        assert get_all(client, b"k", b"")[0].value == b"v"


def _serve_failing(endpoint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shim", "serve", "--listen-address", f"127.0.0.1:{free_port()}",
         "--datastore-endpoint", endpoint, "--log-level", "debug"],
        capture_output=True, text=True, timeout=60, cwd=OUTSIDE_CHECKOUT,
    )


def _assert_no_password(text: str) -> None:
    for marker in PASSWORD_MARKERS:
        assert marker not in text, f"password text {marker!r} leaked:\n{text}"


def test_password_never_appears_in_logs_or_errors(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    role = f"masked_{free_port()}"
    postgres.create_role(role, PASSWORD, createdb=True)
    endpoint = postgres.url(postgres.new_database_name("masked"), user=role, password=PASSWORD)
    parsed = parse_datastore_endpoint(endpoint)
    assert isinstance(parsed, PostgresEndpoint)
    _assert_no_password(parsed.redacted)

    # A working server at debug level: its whole log, and a storage error it reports.
    server = ShimServer(tmp_path / "shim", datastore_endpoint=endpoint,
                        extra_args=["--log-level", "debug"])
    with server, Client(server.endpoint) as client:
        put(client, b"k", b"v")
        # The role may no longer log in, and its connections are gone: every write fails.
        postgres.execute(f'ALTER ROLE "{role}" NOLOGIN')
        postgres.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        try:
            with pytest.raises(grpc.RpcError) as info:
                for _ in range(20):
                    put(client, b"k", b"v2")
                    time.sleep(0.1)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            _assert_no_password(info.value.details() or "")
        finally:
            postgres.execute(f'ALTER ROLE "{role}" LOGIN')
    # Leave out the harness's own "=== starting: <argv>" lines: the argv is the test's.
    log_text = "\n".join(
        line for line in server.log_path.read_text().splitlines() if not line.startswith("===")
    )
    assert "***" in log_text  # the endpoint is logged, masked
    _assert_no_password(log_text)

    # Start-up failures: wrong password, a role that may not create the database, no server.
    wrong = postgres.url(postgres.new_database_name("masked"), user=role,
                         password=PASSWORD + "-wrong")
    readonly_role = f"nocreate_{free_port()}"
    postgres.create_role(readonly_role, PASSWORD, createdb=False)
    cannot_create = postgres.url(postgres.new_database_name("masked"), user=readonly_role,
                                 password=PASSWORD)
    nobody_listens = endpoint.replace(f":{postgres.port}/", f":{free_port()}/")
    for bad, fragment in ((wrong, "password authentication failed"),
                          (cannot_create, "may not create"),
                          (nobody_listens, "cannot use database")):
        result = _serve_failing(bad)
        assert result.returncode != 0
        assert fragment in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        _assert_no_password(result.stdout + result.stderr)
        assert "***" in result.stderr


# --- failure -----------------------------------------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A cluster of this test's own, so restarting it disturbs no other test."""
    with PostgresServer() as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_under_write_load(
    private_postgres: PostgresServer, tmp_path: Path, mode: str
) -> None:
    """While PostgreSQL restarts (a clean "fast" shutdown, or "immediate": a crash and
    recovery), writers get UNAVAILABLE and nothing else; the servers reconnect by themselves;
    every acknowledged write is there afterwards; a watcher on the other server gets every
    write, in order, once its LISTEN connection is back."""
    endpoint = private_postgres.url("restart")
    writer_shim = ShimServer(tmp_path / "w", datastore_endpoint=endpoint).start()
    watcher_shim = ShimServer(tmp_path / "r", datastore_endpoint=endpoint).start()
    acked: dict[bytes, int] = {}
    codes: dict[grpc.StatusCode, int] = {}
    unexpected: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(index: int) -> None:
        with Client(writer_shim.endpoint) as client:
            n = 0
            while not stop.is_set():
                key = b"/load/%d/%06d" % (index, n)
                n += 1
                try:
                    revision = put(client, key, key[::-1]).header.revision
                except grpc.RpcError as exc:
                    with lock:
                        codes[exc.code()] = codes.get(exc.code(), 0) + 1
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            unexpected.append(exc.details() or "")
                    time.sleep(0.05)
                    continue
                with lock:
                    acked[key] = revision

    try:
        with Client(watcher_shim.endpoint) as watch_client:
            base = put(watch_client, b"/base", b"x").header.revision
            watch = watch_from(watch_client, pb.WatchCreateRequest(
                key=b"/load/", range_end=prefix_end(b"/load/"), start_revision=base + 1
            ))
            threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            try:
                time.sleep(1.0)
                before = len(acked)
                private_postgres.restart(downtime=2.0, mode=mode)
                restarted_at = len(acked)
                deadline = time.monotonic() + 30
                while len(acked) < restarted_at + 200 and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(30)
            assert before > 0
            assert len(acked) >= restarted_at + 200, "writes did not resume after the restart"
            assert codes.get(grpc.StatusCode.UNAVAILABLE, 0) > 0, "the outage went unnoticed"
            assert set(codes) == {grpc.StatusCode.UNAVAILABLE}, (
                f"{codes} {unexpected[:3]}\n{writer_shim.log_tail(80)}"
            )

            # Every acknowledged write is stored, through either server.
            for server in (writer_shim, watcher_shim):
                with Client(server.endpoint) as client:
                    kvs = get_all(client, b"/load/", prefix_end(b"/load/"))
                stored = {kv.key: kv for kv in kvs}
                missing = [key for key in acked if key not in stored]
                assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"
                assert all(stored[k].mod_revision == r for k, r in acked.items())

            # The watcher on the other server saw every stored revision, in order, no gaps.
            with Client(watcher_shim.endpoint) as client:
                head = client.kv.Range(pb.RangeRequest(key=b"/load/", range_end=prefix_end(
                    b"/load/"), count_only=True)).header.revision
            expected = sorted(kv.mod_revision for kv in stored.values())
            events = watch.wait_for_events(len(expected), timeout=30)
            watch.close()
            revisions = [e.kv.mod_revision for _, e in events]
            assert revisions == expected
            assert revisions == list(range(base + 1, head + 1)), "revision hole"
    finally:
        writer_shim.stop()
        watcher_shim.stop()
    for server in (writer_shim, watcher_shim):
        log_text = server.log_path.read_text()
        assert "Traceback" not in log_text, log_text[-3000:]


def test_config_parses_both_schemes_and_hides_the_password() -> None:
    encoded = quote(PASSWORD, safe="")
    for scheme in ("postgres", "postgresql"):
        parsed = parse_datastore_endpoint(
            f"{scheme}://user:{encoded}@db:5433/k8s?sslmode=require"
        )
        assert isinstance(parsed, PostgresEndpoint)
        assert parsed.database == "k8s"
        assert parsed.redacted == f"{scheme}://user:***@db:5433/k8s?sslmode=require"
        _assert_no_password(parsed.mask(f"error for {PASSWORD} and {encoded}"))
    default = parse_datastore_endpoint("postgres://db")
    assert isinstance(default, PostgresEndpoint)
    assert default.database == "shim"
    assert default.url == "postgres://db/shim"
    query = parse_datastore_endpoint(f"postgres://u@db/x?password={encoded}")
    assert isinstance(query, PostgresEndpoint)
    _assert_no_password(query.redacted)
    _assert_no_password(query.mask(f"{PASSWORD} {encoded}"))


def test_what_asyncpg_reports_during_an_outage_is_unavailable() -> None:
    """A stop of PostgreSQL under load made asyncpg refuse the next operation on a connection
    the server was closing (seen once in CI): that is an outage (UNAVAILABLE, retried), while
    the same classes reporting misuse stay visible as errors."""
    import asyncpg

    from shim.backend.postgres import _is_unavailable

    assert _is_unavailable(asyncpg.InternalClientError(
        "cannot switch to state 11; another operation (2) is in progress"))
    assert not _is_unavailable(asyncpg.InternalClientError("unexpected protocol state"))
    assert _is_unavailable(asyncpg.InterfaceError("connection is closed"))
    assert not _is_unavailable(asyncpg.InterfaceError("the number of arguments does not match"))


def test_what_a_client_is_told_of_a_failing_postgres_is_one_line_without_class_names() -> None:
    """A PostgreSQL that stops answering (its processes stopped, seen with SIGSTOP) made
    asyncpg raise a TimeoutError with no text, which reached clients as "TimeoutError"; and
    PostgreSQL's own messages can carry a DETAIL line, which reached them as two lines."""
    import asyncpg

    from shim.backend.postgres import _describe

    assert _describe(TimeoutError()) == "no answer in time (the server or the network is stuck)"
    starting = asyncpg.CannotConnectNowError(
        "the database system is not yet accepting connections\n"
        "DETAIL:  Consistent recovery state has not been yet reached.")
    assert _describe(starting) == ("the database system is not yet accepting connections; "
                                   "DETAIL:  Consistent recovery state has not been yet reached.")
    assert _describe(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert "Error" not in _describe(asyncpg.InterfaceError(""))

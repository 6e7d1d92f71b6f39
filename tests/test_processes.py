"""`shim serve --processes N`: one store process, N serving processes sharing the port.

The suites that compare shim with etcd also run on this mode (conftest's "sqlite-processes"
datastore); these tests check what is particular to it: connections really spread over the
processes, writes through different processes are one ordered history, leases and watches
work across processes, and the process group lives and dies as one server.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shim.pb import rpc_pb2 as pb
from tests.support import Client, ShimServer
from tests.support.cli import run_shim
from tests.support.net import free_port
from tests.support.procfs import children, client_connections
from tests.support.waits import wait_until

PROCESSES = 2


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ShimServer]:
    with ShimServer(tmp_path / "shim", extra_args=["--processes", str(PROCESSES)]) as server:
        # Health answers SERVING from the first serving process up; wait for all of them.
        wait_until(lambda: f"from {PROCESSES} processes" in server.log_tail(20), 20,
                   "every serving process")
        yield server


def test_connections_spread_over_serving_processes_that_share_one_store(
    server: ShimServer,
) -> None:
    assert server.pid is not None
    serving = children(server.pid)
    assert len(serving) == PROCESSES, serving
    for pid in (server.pid, *serving):  # the event loop each runs: the default, uvloop
        assert "/uvloop/loop." in Path(f"/proc/{pid}/maps").read_text(), pid
    clients = [Client(server.endpoint) for _ in range(16)]
    try:
        revisions = []
        for i, client in enumerate(clients):
            put = client.kv.Put(pb.PutRequest(key=f"k/{i:02d}".encode(), value=b"v"), timeout=10)
            revisions.append(put.header.revision)
        # 16 connections on 2 processes: all on one would happen once in 32,768 runs.
        per_process = [client_connections(pid, server.port) for pid in serving]
        assert all(n > 0 for n in per_process), per_process
        assert sum(per_process) >= 16, per_process
        # One history: every write took the next revision, whichever process took it.
        assert sorted(revisions) == list(range(2, 18)), revisions
        for client in clients:  # every process reads every write at once
            got = client.kv.Range(pb.RangeRequest(key=b"k/", range_end=b"k0"), timeout=10)
            assert [kv.key for kv in got.kvs] == [f"k/{i:02d}".encode() for i in range(16)]
            assert got.header.revision == 17
    finally:
        for client in clients:
            client.close()


def test_a_write_answered_through_one_process_is_read_through_every_other(
    server: ShimServer,
) -> None:
    """Each process reads the key (so one that kept answers in memory would keep this one),
    then a write through one connection: every connection reads it once it is answered."""
    clients = [Client(server.endpoint) for _ in range(16)]
    try:
        for client in clients:  # connected: counted below
            client.kv.Range(pb.RangeRequest(key=b"seen"), timeout=10)
        assert server.pid is not None
        per_process = [client_connections(pid, server.port) for pid in children(server.pid)]
        assert all(n > 0 for n in per_process), per_process  # as in the test above
        for i in range(20):
            for client in clients:
                client.kv.Range(pb.RangeRequest(key=b"seen"), timeout=10)
            writer = clients[i % len(clients)]
            put = writer.kv.Put(pb.PutRequest(key=b"seen", value=b"%d" % i), timeout=10)
            for client in clients:
                got = client.kv.Range(pb.RangeRequest(key=b"seen"), timeout=10)
                assert [kv.value for kv in got.kvs] == [b"%d" % i]
                assert got.header.revision >= put.header.revision
    finally:
        for client in clients:
            client.close()


def test_compare_and_swap_through_every_process_has_one_winner_per_revision(
    server: ShimServer,
) -> None:
    """Eight clients increment one counter with mod_revision CAS: no update is lost."""
    with Client(server.endpoint) as client:
        client.kv.Put(pb.PutRequest(key=b"counter", value=b"0"), timeout=10)
    per_client, writers = 25, 8
    failures: list[BaseException] = []

    def increment() -> None:
        try:
            with Client(server.endpoint) as mine:
                done = 0
                while done < per_client:
                    current = mine.kv.Range(pb.RangeRequest(key=b"counter"), timeout=10).kvs[0]
                    swapped = mine.kv.Txn(pb.TxnRequest(
                        compare=[pb.Compare(
                            key=b"counter", target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                            mod_revision=current.mod_revision,
                        )],
                        success=[pb.RequestOp(request_put=pb.PutRequest(
                            key=b"counter", value=b"%d" % (int(current.value) + 1)
                        ))],
                    ), timeout=10)
                    done += swapped.succeeded
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=increment) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    with Client(server.endpoint) as client:
        final = client.kv.Range(pb.RangeRequest(key=b"counter"), timeout=10)
    assert int(final.kvs[0].value) == per_client * writers
    assert final.kvs[0].version == per_client * writers + 1
    assert final.header.revision == per_client * writers + 2


def test_watch_from_now_on_another_connection_starts_after_acknowledged_writes(
    server: ShimServer,
) -> None:
    """A write acknowledged on one connection is never an event of a watch created afterwards
    "from now" on another, and the next write is, exactly once, headed one revision later
    (the two connections are on different processes in about half of the runs: the writer's
    process is told of a commit before its reply, the other one a moment later, and a watch
    from now starts after the database's newest revision)."""
    with Client(server.endpoint) as writer, Client(server.endpoint) as watcher:
        requests: queue.Queue[pb.WatchRequest | None] = queue.Queue()
        responses = watcher.watch.Watch(iter(requests.get, None), timeout=60)
        try:
            for attempt in range(200):
                key = f"w/{attempt}".encode()
                writer.kv.Put(pb.PutRequest(key=key, value=b"before"), timeout=10)
                # The stream is open already: the create reaches its process at once.
                requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key)))
                created = next(responses)
                assert created.created
                writer.kv.Put(pb.PutRequest(key=key, value=b"after"), timeout=10)
                event = next(responses)
                assert [e.kv.value for e in event.events] == [b"after"], (attempt, event)
                assert event.header.revision == created.header.revision + 1
                requests.put(pb.WatchRequest(
                    cancel_request=pb.WatchCancelRequest(watch_id=created.watch_id)
                ))
                assert next(responses).canceled
        finally:
            requests.put(None)
            responses.cancel()


def test_leases_across_processes(server: ShimServer) -> None:
    clients = [Client(server.endpoint) for _ in range(6)]
    try:
        grant = clients[0].lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2), timeout=10)
        for i, client in enumerate(clients):
            client.kv.Put(pb.PutRequest(key=f"l/{i}".encode(), lease=grant.ID), timeout=10)
        kept = clients[1].lease.LeaseKeepAlive(
            iter([pb.LeaseKeepAliveRequest(ID=grant.ID)]), timeout=10
        )
        assert [r.TTL for r in kept] == [2]
        ttl = clients[2].lease.LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=grant.ID, keys=True), timeout=10
        )
        assert ttl.grantedTTL == 2 and 0 < ttl.TTL <= 2
        assert sorted(ttl.keys) == [f"l/{i}".encode() for i in range(6)]
        listed = clients[3].lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=10)
        assert [lease.ID for lease in listed.leases] == [grant.ID]
        # The store process expires it: its keys go, seen from every process.
        wait_until(
            lambda: all(
                not c.kv.Range(pb.RangeRequest(key=b"l/", range_end=b"l0"), timeout=10).kvs
                for c in clients
            ),
            10, "the lease's keys to expire",
        )
        with pytest.raises(grpc.RpcError) as refused:
            clients[4].lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=grant.ID), timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details() == "etcdserver: requested lease not found"
    finally:
        for client in clients:
            client.close()


def test_kill_9_ends_every_process_and_keeps_acknowledged_writes(server: ShimServer) -> None:
    assert server.pid is not None
    serving = children(server.pid)
    with Client(server.endpoint) as client:
        revisions = [
            client.kv.Put(pb.PutRequest(key=b"d/%d" % i, value=b"x" * 100), timeout=10)
            .header.revision for i in range(50)
        ]
    server.kill()
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in serving), 5,
               "the serving processes to die with the store process")
    server.start()  # the same port and database
    with Client(server.endpoint) as client:
        got = client.kv.Range(pb.RangeRequest(key=b"d/", range_end=b"d0"), timeout=10)
    assert len(got.kvs) == 50 and got.header.revision == revisions[-1]


def test_sigterm_stops_cleanly(server: ShimServer) -> None:
    with Client(server.endpoint) as client:
        client.kv.Put(pb.PutRequest(key=b"a", value=b"b"), timeout=10)
    assert server.stop() == 0
    log = server.log_tail(200)
    assert "stopped; database closed cleanly" in log
    assert "Traceback" not in log


def test_a_dead_serving_process_stops_the_server(server: ShimServer) -> None:
    assert server.pid is not None
    serving = children(server.pid)
    os.kill(serving[0], signal.SIGKILL)
    wait_until(lambda: not server.running, 20, "the server to stop")
    assert server.stop() == 1
    log = server.log_tail(50)
    assert "exited with status -9; stopping the server" in log, log
    assert not any(os.path.exists(f"/proc/{pid}") for pid in serving)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "0"], "argument --processes: must be at least 1"),
        (["--processes", "two"], "argument --processes: not a whole number: 'two'"),
        (["--processes", "2", "--datastore-endpoint", "postgres://u@127.0.0.1:1/db"],
         "shim: --processes needs the SQLite datastore"),
        (["--processes", "2", "--join", "http://127.0.0.1:1", "--token", "t"],
         "shim: --processes cannot be combined with replication"),
        (["--processes", "2", "--metrics-address", "127.0.0.1:0"],
         "shim: --processes cannot be combined with --metrics-address yet"),
        (["--processes", "2", "--listen-address", "127.0.0.1:0"],
         "shim: --processes needs a fixed port in --listen-address (not 0)"),
    ],
)
def test_refused_combinations(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_shim(
        "serve", "--datastore-endpoint", f"sqlite://{tmp_path / 'state.db'}",
        "--listen-address", f"127.0.0.1:{free_port()}", *args,
    )
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state.db").exists()  # refused before anything was opened


def test_busy_port_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    with ShimServer(tmp_path / "first") as first:
        result = run_shim(
            "serve", "--processes", "2", "--listen-address", first.endpoint,
            "--datastore-endpoint", f"sqlite://{tmp_path / 'second.db'}",
        )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("address already in use"), result.stderr

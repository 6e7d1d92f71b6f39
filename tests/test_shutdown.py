"""Stopping a server under write load (SIGTERM, or Ctrl-C's SIGINT to the process group).

A stop refuses every call it has not started with etcd's UNAVAILABLE "etcdserver: server
stopped" and finishes every call it has: each Put is either acknowledged (and then there after
a restart) or refused (and then not applied). None may end CANCELLED (etcd clients do not
retry that); the database is closed cleanly (WAL folded back) and nothing is logged as an
error. Also with ``--processes 2``, whose serving processes forward writes to a store process.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shim.api.gate import SERVER_STOPPED
from shim.api.server import SHUTDOWN_GRACE_SECONDS
from shim.pb import rpc_pb2 as pb
from shim.pb import v3lock_pb2
from tests.support import OUTSIDE_CHECKOUT, Client, ShimServer, find_etcd_binary
from tests.support.process import child_env
from tests.support.waits import wait_until

WRITERS = 16


class PutBurst:
    """Writer threads doing Puts of distinct keys, each until its first failure."""

    def __init__(self, endpoint: str, threads: int = WRITERS) -> None:
        self.endpoint = endpoint
        self.acked: dict[bytes, tuple[bytes, int]] = {}
        self.failures: list[tuple[bytes, grpc.StatusCode, str]] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]

    def start(self) -> PutBurst:
        for t in self._threads:
            t.start()
        return self

    def _run(self, n: int) -> None:
        with Client(self.endpoint) as client:
            i = 0
            while True:
                key, value = b"burst/%02d/%06d" % (n, i), b"value-%d-%d" % (n, i)
                try:
                    resp = client.kv.Put(pb.PutRequest(key=key, value=value), timeout=30)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failures.append((key, exc.code(), exc.details() or ""))
                    return  # the server is stopping: this thread is done
                with self._lock:
                    self.acked[key] = (value, resp.header.revision)
                i += 1

    def join(self) -> None:
        for t in self._threads:
            t.join(30)
        assert not any(t.is_alive() for t in self._threads)


def wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.mark.parametrize(
    ("processes", "how"),
    [(1, "SIGTERM"), (1, "Ctrl-C"), (2, "SIGTERM"), (2, "Ctrl-C")],
    ids=["alone-SIGTERM", "alone-Ctrl-C", "processes-SIGTERM", "processes-Ctrl-C"],
)
def test_stop_under_writes_finishes_or_refuses_every_put(
    tmp_path: Path, processes: int, how: str
) -> None:
    server = ShimServer(tmp_path / "shim", extra_args=["--processes", str(processes)]).start()
    db = tmp_path / "shim" / "state.db"
    try:
        if processes > 1:
            wait_until(lambda: f"from {processes} processes" in server.log_tail(20), 20,
                       "every serving process")
        burst = PutBurst(server.endpoint).start()
        wait_until(lambda: len(burst.acked) >= 300, 30, "300 acknowledged Puts")
        assert server.pid is not None
        if how == "SIGTERM":
            os.kill(server.pid, signal.SIGTERM)
        else:  # a terminal's Ctrl-C: SIGINT to every process of the group at once
            os.killpg(server.pid, signal.SIGINT)
        burst.join()  # every thread ends on its first refused Put
        wait_until(lambda: not server.running, 20, "the server to stop")
        log = server.log_tail(200)
        assert server.stop() == 0, log
        assert len(burst.failures) == WRITERS
        unexpected = [f for f in burst.failures if f[1] != grpc.StatusCode.UNAVAILABLE]
        assert not unexpected, f"Puts refused otherwise than UNAVAILABLE: {unexpected}"
        # Refused by the stopping server, or (sent after it stopped) by a closed port.
        assert any(details == SERVER_STOPPED for _, _, details in burst.failures)
        assert "Traceback" not in log and " ERROR " not in log, log
        assert "stopped; database closed cleanly" in log, log
        assert wal_size(db) == 0

        server.start()
        with Client(server.endpoint) as client:
            resp = client.kv.Range(
                pb.RangeRequest(key=b"burst/", range_end=b"burst0"), timeout=30
            )
        stored = {kv.key: (kv.value, kv.mod_revision) for kv in resp.kvs}
        missing = {k: v for k, v in burst.acked.items() if stored.get(k) != v}
        assert not missing, f"{len(missing)} acknowledged Puts lost or changed: {missing}"
        applied = [key for key, _, _ in burst.failures if key in stored]
        assert not applied, f"refused Puts were applied anyway: {applied}"
    finally:
        server.stop()


def test_streams_and_waits_open_at_the_stop_end_cleanly(tmp_path: Path) -> None:
    """A watch stream open at the stop, and a Lock call waiting for its turn, end at once
    with etcd's UNAVAILABLE "server stopped", which clients retry: neither is left to be
    CANCELLED, nor the watch ended with OK (a Go client takes that as canceled by the
    server and gives up the watch)."""
    with ShimServer(tmp_path / "shim") as server, Client(server.endpoint) as client:
        first, second = (
            client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=10).ID
            for _ in range(2)
        )
        client.lock.Lock(v3lock_pb2.LockRequest(name=b"l", lease=first), timeout=10)
        waiting = client.lock.Lock.future(
            v3lock_pb2.LockRequest(name=b"l", lease=second), timeout=30
        )
        stream = client.watch.Watch(iter([pb.WatchRequest(
            create_request=pb.WatchCreateRequest(key=b"w"))]), timeout=30)
        assert next(stream).created

        def both_in_line() -> bool:  # the waiting Lock has put its key: it is being served
            got = client.kv.Range(pb.RangeRequest(key=b"l/", range_end=b"l0"), timeout=10)
            return got.count == 2

        wait_until(both_in_line, 10, "the second Lock call to wait")
        assert server.pid is not None and not waiting.done()
        os.kill(server.pid, signal.SIGTERM)
        with pytest.raises(grpc.RpcError):
            next(stream)
        assert (stream.code(), stream.details()) == (grpc.StatusCode.UNAVAILABLE, SERVER_STOPPED)
        assert waiting.code() == grpc.StatusCode.UNAVAILABLE
        assert waiting.details() == SERVER_STOPPED
        wait_until(lambda: not server.running, 20, "the server to stop")
        assert server.stop() == 0


def test_clients_retrying_refused_calls_do_not_hold_the_stop(tmp_path: Path) -> None:
    """etcd clients retry UNAVAILABLE, and some at once (etcd3 for Node.js every 100 ms, on a
    new connection each time): calls go on arriving, each refused, as long as the server is
    up. The stop waits a moment for the calls gRPC held at the close, not for that stream of
    retries to cease (it used to, until the end of its 10 s grace)."""
    with ShimServer(tmp_path / "shim") as server:
        refusals: list[str] = []
        served = threading.Event()
        done = threading.Event()

        def retry_until_gone() -> None:
            while not done.is_set():
                with Client(server.endpoint) as client:
                    try:
                        client.kv.Range(pb.RangeRequest(key=b"k"), timeout=5)
                        served.set()
                    except grpc.RpcError as exc:
                        refusals.append(exc.details() or "")  # type: ignore[attr-defined]
                done.wait(0.05)  # the client's pace between its retries

        retrier = threading.Thread(target=retry_until_gone, daemon=True)
        retrier.start()
        try:
            assert served.wait(10)
            assert server.pid is not None
            os.kill(server.pid, signal.SIGTERM)
            stopping = time.monotonic()
            wait_until(lambda: not server.running, 20, "the server to stop")
            assert time.monotonic() - stopping < SHUTDOWN_GRACE_SECONDS / 2
            assert SERVER_STOPPED in refusals
        finally:
            done.set()
            retrier.join(10)
        log = server.log_tail(50)
        assert server.stop() == 0, log
        assert "Traceback" not in log and " ERROR " not in log, log


def test_a_lease_keep_alive_stream_open_at_the_stop_ends_at_once(tmp_path: Path) -> None:
    """A client holding a lease keeps its keep-alive stream open as long as it runs (every
    etcd client with a lease: kube-apiserver, etcd3 for Node.js, ...). The stop ends it at once
    with etcd's UNAVAILABLE "server stopped", as a stopping etcd ends every stream, and the
    server exits without waiting for it. It used to be left to gRPC's grace: any client with
    a lease made every stop take the whole 10 s (as long as `docker stop` waits before its
    SIGKILL), renewing the lease all along, while the watchers could not come back."""
    with ShimServer(tmp_path / "shim") as server, Client(server.endpoint) as client:
        lease = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=10).ID
        requests: queue.Queue[pb.LeaseKeepAliveRequest | None] = queue.Queue()

        def keep_alives() -> Iterator[pb.LeaseKeepAliveRequest]:  # the stream stays open
            while (request := requests.get()) is not None:
                yield request

        stream = client.lease.LeaseKeepAlive(keep_alives(), timeout=60)
        try:
            requests.put(pb.LeaseKeepAliveRequest(ID=lease))
            assert next(stream).TTL == 60
            assert server.pid is not None
            os.kill(server.pid, signal.SIGTERM)
            stopping = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                next(stream)
            assert (ended.value.code(), ended.value.details()) == (  # type: ignore[attr-defined]
                grpc.StatusCode.UNAVAILABLE, SERVER_STOPPED)
            wait_until(lambda: not server.running, 20, "the server to stop")
            assert time.monotonic() - stopping < SHUTDOWN_GRACE_SECONDS / 2
        finally:
            requests.put(None)
        log = server.log_tail(50)
        assert server.stop() == 0, log
        assert "Traceback" not in log and " ERROR " not in log, log


def test_etcdctl_watch_goes_on_across_a_restart(tmp_path: Path) -> None:
    """`etcdctl watch` (etcd's Go client) keeps watching while the server restarts, as it does
    across an etcd restart: it retries the UNAVAILABLE its stream ends with and resumes after
    the last revision it saw. (A stream ended with OK made it exit: "watch is canceled by the
    server".)"""
    with ShimServer(tmp_path / "shim") as server:
        watcher = subprocess.Popen(
            [find_etcd_binary("etcdctl"), f"--endpoints={server.endpoint}", "watch", "w"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=child_env({"ETCDCTL_API": "3"}), cwd=OUTSIDE_CHECKOUT,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(line.strip()) for line in watcher.stdout or ()], daemon=True
        ).start()

        def put_until_seen(value: str) -> None:
            deadline = time.monotonic() + 30
            with Client(server.endpoint) as client:
                # etcdctl's watch may not be registered yet: put again until it prints one.
                while time.monotonic() < deadline:
                    client.kv.Put(pb.PutRequest(key=b"w", value=value.encode()), timeout=10)
                    try:
                        while lines.get(timeout=1) != value:
                            pass
                        return
                    except queue.Empty:
                        assert watcher.poll() is None, watcher.stderr and watcher.stderr.read()
            raise AssertionError(f"etcdctl watch never printed {value}")

        try:
            put_until_seen("before")
            server.restart()
            put_until_seen("after")
            assert watcher.poll() is None
        finally:
            watcher.kill()
            watcher.wait(10)

"""Many writers and many watchers at once, and a watcher whose client stops reading.

The reference for what every watcher must see is the server's own complete log, read after
the writers stop through a fresh watch from revision 1 over all keys; that log is first
checked against the writers' acknowledged puts and against the final state of the store.
Each watcher must then have received exactly the reference events of its range from its
start revision on: no gap, no duplicate, in order, every revision whole in one response.

The many-watchers test also runs against a real etcd, which proves the checks themselves.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from shim.pb import kv_pb2, rpc_pb2_grpc
from shim.pb import rpc_pb2 as pb
from tests.support import Client, EtcdServer, ServerProcess, ShimServer
from tests.support.watch import WatchStream

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
GROUPS = "abcde"
KEYS = [f"/c/{g}/{i}".encode() for g in GROUPS for i in range(10)]  # 50 keys
WRITERS = 8
WRITE_SECONDS = 3.0
MAX_OPS_PER_WRITER = 250  # bounds the work on a fast server


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == b"\x00":
        return key >= start
    return start <= key < end


@pytest.fixture(params=["etcd", "shim", "shim-processes"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    process: ServerProcess
    if request.param == "etcd":
        process = EtcdServer(tmp_path / "etcd").start()
    elif request.param == "shim":
        process = ShimServer(tmp_path / "shim").start()
    else:  # writers and watchers on separate connections land on different processes
        process = ShimServer(tmp_path / "shim", extra_args=["--processes", "2"]).start()
    try:
        yield process
    finally:
        process.stop()


@dataclass
class WatcherSpec:
    key: bytes
    range_end: bytes
    prev_kv: bool
    start: str  # "now", "first" (revision 1) or "past" (some revision already written)


@dataclass
class Watcher:
    spec: WatcherSpec
    stream: WatchStream
    watch_id: int
    start_revision: int  # the first revision it must see

    def responses(self) -> list[pb.WatchResponse]:
        return self.stream.of(self.watch_id)

    def events(self) -> list[kv_pb2.Event]:
        return [e for r in self.responses() for e in r.events]

    def has_revision(self, revision: int) -> Callable[[list[pb.WatchResponse]], bool]:
        """A wait_for predicate: this watcher has received an event of ``revision``."""
        return lambda _: any(e.kv.mod_revision == revision for e in self.events())


SPECS = [
    WatcherSpec(b"/c/", prefix_end(b"/c/"), True, "now"),
    WatcherSpec(b"/c/a/", prefix_end(b"/c/a/"), True, "first"),
    WatcherSpec(b"/c/b/", prefix_end(b"/c/b/"), False, "now"),
    WatcherSpec(b"/c/a/3", b"", True, "now"),
    WatcherSpec(b"/c/b/5", b"/c/d/2", True, "first"),
    WatcherSpec(b"/c/d/", b"\x00", False, "now"),
    WatcherSpec(b"/c/e/", prefix_end(b"/c/e/"), True, "past"),
    WatcherSpec(b"/c/c/7", b"", False, "past"),
    WatcherSpec(b"/c/", prefix_end(b"/c/"), True, "past"),
    WatcherSpec(b"/c/c/", prefix_end(b"/c/c/"), True, "past"),
    WatcherSpec(b"/c/a/", b"/c/c/", False, "first"),
    WatcherSpec(b"/c/e/9", b"", True, "now"),
]


# --- writers ---------------------------------------------------------------------------------


@dataclass
class WriterLog:
    puts: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (revision, key, value)
    ops: int = 0


def writer(endpoint: str, seed: int, stop: threading.Event, log: WriterLog) -> None:
    rng = random.Random(seed)
    with Client(endpoint) as client:
        while not stop.is_set() and log.ops < MAX_OPS_PER_WRITER:
            log.ops += 1
            value = f"w{seed}-{log.ops}".encode() * rng.randint(1, 4)
            roll = rng.random()
            if roll < 0.45:
                key = rng.choice(KEYS)
                resp = client.kv.Put(pb.PutRequest(key=key, value=value), timeout=10)
                log.puts.append((resp.header.revision, key, value))
            elif roll < 0.60:
                client.kv.DeleteRange(pb.DeleteRangeRequest(key=rng.choice(KEYS)), timeout=10)
            elif roll < 0.85:
                # One revision, several events: two puts and a delete.
                k1, k2, k3 = rng.sample(KEYS, 3)
                client.kv.Txn(
                    pb.TxnRequest(
                        success=[
                            pb.RequestOp(request_put=pb.PutRequest(key=k1, value=value)),
                            pb.RequestOp(request_put=pb.PutRequest(key=k2, value=value)),
                            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k3)),
                        ]
                    ),
                    timeout=10,
                )
            elif roll < 0.97:
                # Conditional: update if present, else create another key.
                k1, k2 = rng.sample(KEYS, 2)
                client.kv.Txn(
                    pb.TxnRequest(
                        compare=[
                            pb.Compare(
                                key=k1, target=pb.Compare.VERSION,
                                result=pb.Compare.GREATER, version=0,
                            )
                        ],
                        success=[pb.RequestOp(request_put=pb.PutRequest(key=k1, value=value))],
                        failure=[pb.RequestOp(request_put=pb.PutRequest(key=k2, value=value))],
                    ),
                    timeout=10,
                )
            else:
                group = rng.choice(GROUPS).encode()
                prefix = b"/c/" + group + b"/"
                client.kv.DeleteRange(
                    pb.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix)), timeout=10
                )


# --- the reference log -----------------------------------------------------------------------


def read_reference(client: Client, final: int) -> list[pb.WatchResponse]:
    """Every event from revision 1 to `final` over all keys, with prev_kv."""
    stream = WatchStream(client)
    try:
        created = stream.create(
            pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00", start_revision=1, prev_kv=True)
        )

        def complete(responses: list[pb.WatchResponse]) -> bool:  # the last revision comes last
            last = responses[-1] if responses else None
            return bool(last and last.events and last.events[-1].kv.mod_revision == final)

        stream.wait_for(complete, 30, f"the reference log up to revision {final}")
        return stream.of(created.watch_id)
    finally:
        stream.close()


def check_reference(
    events: list[kv_pb2.Event], final: int, logs: list[WriterLog], client: Client
) -> None:
    """The reference must agree with what the writers were told and with the final state."""
    revisions = sorted({e.kv.mod_revision for e in events})
    assert revisions == list(range(2, final + 1)), "the log has gaps"
    assert [e.kv.mod_revision for e in events] == sorted(e.kv.mod_revision for e in events)
    by_revision: dict[int, list[kv_pb2.Event]] = {}
    for event in events:
        by_revision.setdefault(event.kv.mod_revision, []).append(event)
    for log in logs:
        for revision, key, value in log.puts:
            assert any(
                e.type == PUT and e.kv.key == key and e.kv.value == value
                for e in by_revision.get(revision, [])
            ), f"acknowledged put of {key!r} at revision {revision} is not in the log"
    state: dict[bytes, kv_pb2.KeyValue] = {}
    for event in events:
        previous = state.get(event.kv.key)
        if previous is None:
            assert not event.HasField("prev_kv")
        else:
            assert event.prev_kv == previous
        if event.type == DELETE:
            assert previous is not None, f"delete of an absent key {event}"
            del state[event.kv.key]
        else:
            assert event.kv.version == (previous.version + 1 if previous else 1)
            state[event.kv.key] = event.kv
    now = client.kv.Range(pb.RangeRequest(key=b"\x00", range_end=b"\x00"), timeout=10)
    assert now.header.revision == final
    assert list(now.kvs) == [state[k] for k in sorted(state)], "replayed log != final state"


def check_watcher(watcher: Watcher, reference: list[kv_pb2.Event]) -> None:
    spec = watcher.spec
    expected = []
    for event in reference:
        if event.kv.mod_revision >= watcher.start_revision and in_range(
            event.kv.key, spec.key, spec.range_end
        ):
            copy = kv_pb2.Event()
            copy.CopyFrom(event)
            if not spec.prev_kv:
                copy.ClearField("prev_kv")
            expected.append(copy)
    responses = watcher.responses()
    got = [e for r in responses for e in r.events]
    label = f"watcher {spec} from revision {watcher.start_revision}"
    assert [e.kv.mod_revision for e in got] == [e.kv.mod_revision for e in expected], (
        f"{label}: wrong revisions (gap, duplicate or disorder)"
    )
    assert got == expected, f"{label}: events differ from the log"
    where: dict[int, int] = {}
    for index, response in enumerate(responses):
        assert not response.canceled, f"{label}: canceled {response}"
        for event in response.events:
            assert where.setdefault(event.kv.mod_revision, index) == index, (
                f"{label}: revision {event.kv.mod_revision} split over two responses"
            )
            assert event.kv.mod_revision <= response.header.revision


def test_many_writers_many_watchers(server: ServerProcess) -> None:
    endpoint = server.endpoint  # type: ignore[attr-defined]
    rng = random.Random(7)
    with Client(endpoint) as client:
        for key in KEYS[::2]:
            client.kv.Put(pb.PutRequest(key=key, value=b"seed"), timeout=10)
        streams = [WatchStream(client) for _ in range(4)]
        watchers: list[Watcher] = []

        def add_watcher(spec: WatcherSpec, stream: WatchStream) -> None:
            current = client.kv.Range(pb.RangeRequest(key=b"/c/"), timeout=10).header.revision
            start = {"now": 0, "first": 1, "past": max(1, current - rng.randint(0, 300))}[
                spec.start
            ]
            created = stream.create(
                pb.WatchCreateRequest(
                    key=spec.key, range_end=spec.range_end, start_revision=start,
                    prev_kv=spec.prev_kv,
                )
            )
            assert not created.canceled, created
            first = start if start else created.header.revision + 1
            watchers.append(Watcher(spec, stream, created.watch_id, first))

        # Half of the watchers exist before the writes begin, the others join while they
        # run, most of them from a past revision: catch-up meets live delivery.
        for i, spec in enumerate(SPECS):
            add_watcher(spec, streams[i % len(streams)])

        stop = threading.Event()
        logs = [WriterLog() for _ in range(WRITERS)]
        threads = [
            threading.Thread(target=writer, args=(endpoint, seed, stop, logs[seed]), daemon=True)
            for seed in range(WRITERS)
        ]
        for thread in threads:
            thread.start()
        began = time.monotonic()
        late = [*SPECS, *SPECS[:2]]
        for i, spec in enumerate(late):
            time.sleep(WRITE_SECONDS * 0.8 / len(late))
            add_watcher(spec, streams[(i + 1) % len(streams)])
        time.sleep(max(0.0, WRITE_SECONDS - (time.monotonic() - began)))
        stop.set()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive(), "a writer is stuck"
        assert len(watchers) >= 20

        # The last revision puts every key at once: each watcher's range holds some of them,
        # so once a watcher has this revision's events, everything before it has arrived too
        # (a stream is in revision order), duplicates included.
        final = client.kv.Txn(pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"last")) for key in KEYS
        ]), timeout=10).header.revision
        assert final > 300, f"only {final} revisions were written"
        reference = [e for r in read_reference(client, final) for e in r.events]
        check_reference(reference, final, logs, client)

        for watcher in watchers:
            watcher.stream.wait_for(watcher.has_revision(final), 30,
                                    f"revision {final} on watcher {watcher.spec}")
        try:
            for watcher in watchers:
                check_watcher(watcher, reference)
        finally:
            for stream in streams:
                stream.close()


# --- a stalled watcher -----------------------------------------------------------------------


def timed_puts(endpoint: str, prefix: bytes, count: int, threads: int) -> tuple[float, float]:
    """Put `count` ~1 KB values from `threads` clients; (puts per second, median latency)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def run(t: int) -> None:
        mine: list[float] = []
        with Client(endpoint) as client:
            for i in range(count // threads):
                key = prefix + f"{t}/{i % 20}".encode()
                began = time.perf_counter()
                client.kv.Put(pb.PutRequest(key=key, value=b"%06d" % i * 170), timeout=30)
                mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    began = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - began
    return len(latencies) / elapsed, statistics.median(latencies)


def test_stalled_watcher_does_not_slow_writers_and_catches_up(shim: ShimServer) -> None:
    prefix = b"/stall/"
    with Client(shim.endpoint) as client:
        # A watcher that keeps reading is there throughout, in both measurements.
        reader = WatchStream(client)
        active = reader.create(
            pb.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix))
        )
        baseline_rate, baseline_latency = timed_puts(shim.endpoint, prefix + b"a/", 800, 4)

        # The stalled client: it creates its watcher, then reads nothing more.
        requests = iter(
            [
                pb.WatchRequest(
                    create_request=pb.WatchCreateRequest(
                        key=prefix, range_end=prefix_end(prefix), prev_kv=True
                    )
                )
            ]
        )
        # Without BDP probing the client's HTTP/2 window stays at 64 KB, as for a slow reader
        # on a real network, so the server's own buffer for the stream fills (with probing,
        # this client's transport would absorb megabytes before the server noticed).
        stalled_channel = grpc.insecure_channel(
            shim.endpoint, options=[("grpc.http2.bdp_probe", 0)]
        )
        # The request iterator ends after the create; the stream stays open (half-close).
        stalled = rpc_pb2_grpc.WatchStub(stalled_channel).Watch(requests)
        try:
            created = next(stalled)
            assert created.created and not created.canceled
            start = created.header.revision + 1
            stalled_rate, stalled_latency = timed_puts(shim.endpoint, prefix + b"b/", 3000, 4)
            final = client.kv.Range(pb.RangeRequest(key=prefix), timeout=10).header.revision

            # Writers were not held up by the client that does not read (coarse: 5x).
            assert stalled_rate >= baseline_rate / 5, (baseline_rate, stalled_rate)
            assert stalled_latency <= baseline_latency * 5 + 0.05, (
                baseline_latency, stalled_latency,
            )
            # Nor was the other watcher.
            reader.wait_for(
                lambda responses: bool(
                    responses and responses[-1].events
                    and responses[-1].events[-1].kv.mod_revision == final
                ),
                10, "the active watcher's last event",
            )
            active_revisions = [
                e.kv.mod_revision for r in reader.of(active.watch_id) for e in r.events
            ]
            assert active_revisions == list(range(active.header.revision + 1, final + 1))

            # The stalled client reads again: every event once, in order, from the log.
            got: list[kv_pb2.Event] = []
            problems: list[object] = []
            arrived = threading.Condition()

            def resume() -> None:
                try:
                    for response in stalled:
                        with arrived:
                            if response.canceled or response.watch_id != created.watch_id:
                                problems.append(response)
                            got.extend(response.events)
                            arrived.notify_all()
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.CANCELLED:
                        with arrived:
                            problems.append(error)
                            arrived.notify_all()

            def reached(revision: int) -> bool:
                with arrived:
                    return arrived.wait_for(
                        lambda: bool(problems or (got and got[-1].kv.mod_revision >= revision)),
                        30,
                    ) and not problems

            resumed = threading.Thread(target=resume, daemon=True)
            resumed.start()
            assert reached(final), (
                f"caught up only to revision {got[-1].kv.mod_revision if got else None} "
                f"of {final}; {problems}"
            )
            # One write more, after the catch-up: once it has arrived, so has anything the
            # catch-up sent after revision `final` (a duplicate would come before it).
            final = client.kv.Put(pb.PutRequest(key=prefix + b"last", value=b"L" * 1020),
                                  timeout=10).header.revision
            assert reached(final), f"the write after the catch-up did not arrive; {problems}"
            assert not problems, problems
            assert [e.kv.mod_revision for e in got] == list(range(start, final + 1))
            assert all(e.type == PUT and len(e.kv.value) == 1020 for e in got)
            updates = [e for e in got if e.kv.version > 1]
            assert updates and all(e.prev_kv.key == e.kv.key for e in updates)
        finally:
            stalled.cancel()
            stalled_channel.close()
            reader.close()

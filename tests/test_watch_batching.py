"""A watch stream that falls behind sends each watcher's waiting revisions in one response.

The client here stops reading on purpose: its channel has no BDP probing, so its HTTP/2
window stays at 64 KB and the server's sender is held up after a few responses of 8 KB
events. Every put is acknowledged only after its events are queued for the stream, so once
the puts are answered, the revisions past the window are certainly waiting in the stream's
outbox: the batching is deterministic, without any sleep.

What must hold: every event exactly once, in revision order, each response headed with the
newest revision it carries; responses whole revisions only, below the response limit;
a progress response or a cancel is never overtaken by an event queued after it; and a
stream whose client keeps up still gets each revision in its own response.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shim.pb import kv_pb2, rpc_pb2_grpc
from shim.pb import rpc_pb2 as pb
from tests.support import Client, ShimServer
from tests.support.watch import PROGRESS_WATCH_ID, WatchStream

PREFIX = b"/batch/"
PREFIX_END = b"/batch0"
VALUE = b"v" * 4096  # with prev_kv an event is about 8 KB
MAX_REQUEST_BYTES = 100_000
# shim's response limit: --max-request-bytes plus etcd's gRPC allowance of 512 KiB.
RESPONSE_LIMIT = MAX_REQUEST_BYTES + 512 * 1024


class SlowReader:
    """A Watch stream whose client reads only when told to (``read``)."""

    def __init__(self, endpoint: str) -> None:
        self._requests: queue.Queue[pb.WatchRequest | None] = queue.Queue()
        self._channel = grpc.insecure_channel(
            endpoint,
            options=[("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)],
        )
        self._call = rpc_pb2_grpc.WatchStub(self._channel).Watch(self._outgoing())
        self.responses: list[pb.WatchResponse] = []

    def _outgoing(self) -> Iterator[pb.WatchRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def send(self, **request: object) -> None:
        self._requests.put(pb.WatchRequest(**request))  # type: ignore[arg-type]  # one of its fields

    def read(self) -> pb.WatchResponse:
        response = next(self._call)
        self.responses.append(response)
        return response

    def read_until_revision(self, revision: int) -> None:
        """Read until an event of ``revision`` (or a later one) has arrived."""
        while not any(e.kv.mod_revision >= revision for e in self.read().events):
            pass

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._channel.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ShimServer]:
    with ShimServer(
        tmp_path / "shim", extra_args=["--max-request-bytes", str(MAX_REQUEST_BYTES)]
    ) as process:
        yield process


def put_many(client: Client, count: int, value: bytes = VALUE) -> list[int]:
    """Puts over eight keys, one after the other; their revisions."""
    return [
        client.kv.Put(pb.PutRequest(key=PREFIX + b"%d" % (i % 8), value=value), timeout=10)
        .header.revision
        for i in range(count)
    ]


def check_events(responses: list[pb.WatchResponse], watch_id: int, expected: list[int]) -> None:
    """Every expected revision exactly once, in order; each response headed with its newest
    revision; every update carrying its previous version."""
    carrying = [r for r in responses if r.watch_id == watch_id and r.events]
    revisions = [e.kv.mod_revision for r in carrying for e in r.events]
    assert revisions == expected
    for response in carrying:
        assert response.header.revision == response.events[-1].kv.mod_revision
        assert response.ByteSize() < RESPONSE_LIMIT
        assert not response.fragment
        for event in response.events:
            assert event.type == kv_pb2.Event.PUT and event.kv.value == VALUE
            if event.kv.version > 1:
                assert event.prev_kv.key == event.kv.key
                assert event.prev_kv.mod_revision < event.kv.mod_revision


def multi_revision(responses: list[pb.WatchResponse]) -> list[pb.WatchResponse]:
    return [r for r in responses if len({e.kv.mod_revision for e in r.events}) > 1]


def test_a_lagging_stream_gets_its_waiting_revisions_together(server: ShimServer) -> None:
    reader = SlowReader(server.endpoint)
    try:
        with Client(server.endpoint) as client:
            reader.send(create_request=pb.WatchCreateRequest(
                key=PREFIX, range_end=PREFIX_END, prev_kv=True
            ))
            created = reader.read()
            assert created.created
            # 120 events of 8 KB: far more than the client's 64 KB window.
            first = put_many(client, 60)
            reader.send(progress_request=pb.WatchProgressRequest())
            second = put_many(client, 60)
            reader.read_until_revision(second[-1])
        responses = reader.responses
        check_events(responses, created.watch_id, first + second)
        # The waiting revisions went out together, within the response limit (more than 80
        # events of 8 KB do not fit in one response below it).
        assert multi_revision(responses)
        assert max(len(r.events) for r in responses) < 80
        # The progress response comes after every event up to its revision, and no event
        # queued after it overtakes it.
        position = next(
            i for i, r in enumerate(responses) if r.watch_id == PROGRESS_WATCH_ID
        )
        progress = responses[position]
        assert progress.header.revision >= first[-1]
        before = [e.kv.mod_revision for r in responses[:position] for e in r.events]
        after = [e.kv.mod_revision for r in responses[position + 1:] for e in r.events]
        assert before == [r for r in first + second if r <= progress.header.revision]
        assert all(r > progress.header.revision for r in after)
    finally:
        reader.close()


def test_a_cancel_is_not_overtaken_by_waiting_events(server: ShimServer) -> None:
    reader = SlowReader(server.endpoint)
    try:
        with Client(server.endpoint) as client:
            reader.send(create_request=pb.WatchCreateRequest(
                key=PREFIX, range_end=PREFIX_END, prev_kv=True, watch_id=7
            ))
            assert reader.read().created
            revisions = put_many(client, 40)
            reader.send(cancel_request=pb.WatchCancelRequest(watch_id=7))
            # A second watcher on the same stream, created after the cancel, marks the point
            # the server has reached: its created response comes after the canceled one.
            reader.send(create_request=pb.WatchCreateRequest(key=b"/other", watch_id=8))
            while not (response := reader.read()).created:
                pass
        responses = reader.responses
        assert response.watch_id == 8
        canceled = [i for i, r in enumerate(responses) if r.watch_id == 7 and r.canceled]
        assert len(canceled) == 1
        # Events queued before the cancel are all delivered, before it.
        check_events(responses[: canceled[0]], 7, revisions)
        assert multi_revision(responses)
    finally:
        reader.close()


def test_a_stream_that_keeps_up_gets_each_revision_on_its_own(server: ShimServer) -> None:
    with Client(server.endpoint) as client, WatchStream(client) as stream:
        created = stream.create(pb.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END))
        revisions = []
        for i in range(10):
            revision = client.kv.Put(
                pb.PutRequest(key=PREFIX + b"%d" % i, value=VALUE), timeout=10
            ).header.revision
            revisions.append(revision)
            stream.wait_for(
                lambda responses, revision=revision: any(
                    e.kv.mod_revision == revision for r in responses for e in r.events
                ),
                10, f"the event of revision {revision}",
            )
        carrying = [r for r in stream.of(created.watch_id) if r.events]
        assert [[e.kv.mod_revision for e in r.events] for r in carrying] == [
            [revision] for revision in revisions
        ]
        assert [r.header.revision for r in carrying] == revisions

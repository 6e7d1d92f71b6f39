"""Watch catch-up from the log: history larger than one catch-up read, and a single revision
larger than one read, arrive complete, in order, each revision in one response."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from shim.mvcc.watch import CATCH_UP_ROWS
from shim.pb import kv_pb2, rpc_pb2
from tests.support import Client, ShimServer

PREFIX = b"/big/"


def _put_many(client: Client, count: int) -> None:
    keys = [PREFIX + b"%05d" % i for i in range(count)]
    for start in range(0, count, 100):
        ops = [
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=b"v"))
            for k in keys[start : start + 100]
        ]
        client.kv.Txn(rpc_pb2.TxnRequest(success=ops))


Responses = queue.Queue[rpc_pb2.WatchResponse]


def _watch(client: Client, start_revision: int) -> tuple[Responses, threading.Event]:
    responses: queue.Queue[rpc_pb2.WatchResponse] = queue.Queue()
    done = threading.Event()

    def requests() -> Iterator[rpc_pb2.WatchRequest]:
        yield rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=PREFIX, range_end=b"/big0", start_revision=start_revision, prev_kv=True
            )
        )
        done.wait(30)

    def reader() -> None:
        call = client.watch.Watch(requests())
        try:
            for resp in call:
                responses.put(resp)
        except Exception:  # the stream ends when the test is done
            pass

    threading.Thread(target=reader, daemon=True).start()
    return responses, done


def test_catch_up_delivers_big_history_and_big_revisions_whole(shim: ShimServer) -> None:
    count = CATCH_UP_ROWS + 500
    with Client(shim.endpoint) as client:
        _put_many(client, count)  # many revisions, more rows than one catch-up read
        deleted = client.kv.DeleteRange(
            rpc_pb2.DeleteRangeRequest(key=PREFIX, range_end=b"/big0")
        )
        assert deleted.deleted == count  # one revision with more rows than one read
        delete_revision = deleted.header.revision

        responses, done = _watch(client, start_revision=1)
        events: list[kv_pb2.Event] = []
        per_response_revisions: list[set[int]] = []
        try:
            created = responses.get(timeout=10)
            assert created.created
            while len(events) < 2 * count:
                resp = responses.get(timeout=10)
                events.extend(resp.events)
                per_response_revisions.append({e.kv.mod_revision for e in resp.events})
        finally:
            done.set()

    puts = [e for e in events if e.type == e.PUT]
    deletes = [e for e in events if e.type == e.DELETE]
    assert len(puts) == count and len(deletes) == count
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(revisions)
    assert all(e.kv.mod_revision == delete_revision for e in deletes)
    assert all(e.prev_kv.key == e.kv.key and e.prev_kv.value == b"v" for e in deletes)
    # Each revision is in exactly one response: the deletes of one revision are not split.
    seen: set[int] = set()
    for group in per_response_revisions:
        assert not (group & seen), "a revision was split across responses"
        seen |= group

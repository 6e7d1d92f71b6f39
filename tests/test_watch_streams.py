"""Watch stream life cycle: clients that go away leave nothing behind in the server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from shim.pb import rpc_pb2
from tests.support import Client, ShimServer


def test_streams_closed_by_clients_leave_no_errors(shim: ShimServer) -> None:
    with Client(shim.endpoint) as client:
        for round_ in range(20):
            stop = threading.Event()

            def requests(stop: threading.Event = stop) -> Iterator[rpc_pb2.WatchRequest]:
                yield rpc_pb2.WatchRequest(
                    create_request=rpc_pb2.WatchCreateRequest(key=b"k", start_revision=1)
                )
                stop.wait(5)

            call = client.watch.Watch(requests())
            assert next(call).created
            client.kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"%d" % round_))
            assert next(call).events  # the stream is live
            call.cancel()
            stop.set()
        # The server still serves watches afterwards.
        assert client.kv.Range(rpc_pb2.RangeRequest(key=b"k")).kvs[0].value == b"19"
    shim.stop()
    log = shim.log_path.read_text()
    assert "ERROR" not in log and "Traceback" not in log, log[-3000:]

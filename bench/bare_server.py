"""The ceiling of the Python gRPC stack: etcdserverpb.KV Put and Range over a dict, and Watch
of single keys from now on, nothing else.

No persistence, no MVCC history, no Txn, no watch history or ranges: what a Python grpc.aio
server costs per request (and per watch response) before any datastore work. With
``--processes N`` (N > 1) the port is shared with SO_REUSEPORT by N processes, each with its
*own* dict: fine for the throughput ceiling, not a consistent store.

    python -m bench.bare_server --listen-address 127.0.0.1:23999 [--processes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import grpc

from shim.mvcc import watch_wire
from shim.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc

CLUSTER_ID = 0xBA5E
MEMBER_ID = 0x1


class BareWatch(rpc_pb2_grpc.WatchServicer):
    """Watchers of single keys from the current revision on: each put is one response per
    watcher, its event encoded once (as shim does), queued on the watcher's stream."""

    def __init__(self) -> None:
        self.watchers: dict[bytes, list[tuple[int, asyncio.Queue[bytes]]]] = {}
        self.header: Callable[[rpc_pb2.ResponseHeader], None] = lambda header: None

    def publish(self, kv: kv_pb2.KeyValue) -> None:
        watchers = self.watchers.get(kv.key)
        if not watchers:
            return
        header = rpc_pb2.ResponseHeader()
        self.header(header)
        head = watch_wire.header_field(header.SerializeToString())
        event = watch_wire.EncodedEvent(kv, None, deleted=False).get(False)
        for watch_id, queue in watchers:
            queue.put_nowait(watch_wire.response(head, watch_id, [event]))

    async def Watch(
        self,
        request_iterator: AsyncIterator[rpc_pb2.WatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        mine: list[tuple[bytes, tuple[int, asyncio.Queue[bytes]]]] = []

        async def read() -> None:
            async for req in request_iterator:
                if req.HasField("create_request"):
                    entry = (len(mine), queue)
                    mine.append((req.create_request.key, entry))
                    self.watchers.setdefault(req.create_request.key, []).append(entry)
                    created = rpc_pb2.WatchResponse(watch_id=entry[0], created=True)
                    self.header(created.header)
                    queue.put_nowait(created.SerializeToString())

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                yield await queue.get()
        finally:
            reader.cancel()
            for key, entry in mine:
                self.watchers[key].remove(entry)


class BareKV(rpc_pb2_grpc.KVServicer):
    """Put and Range (single key, or [key, range_end) with limit) on an in-memory dict."""

    def __init__(self, watch: BareWatch) -> None:
        self._watch = watch
        watch.header = self._header
        self._data: dict[bytes, kv_pb2.KeyValue] = {}
        self._sorted: list[bytes] | None = []
        self._revision = 1

    def _header(self, header: rpc_pb2.ResponseHeader) -> None:
        header.cluster_id = CLUSTER_ID
        header.member_id = MEMBER_ID
        header.revision = self._revision
        header.raft_term = 1

    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        self._revision += 1
        old = self._data.get(request.key)
        if old is None:
            self._sorted = None  # a new key: re-sort on the next range scan
            kv = kv_pb2.KeyValue(
                key=request.key, value=request.value, create_revision=self._revision,
                mod_revision=self._revision, version=1,
            )
        else:
            kv = kv_pb2.KeyValue(
                key=request.key, value=request.value, create_revision=old.create_revision,
                mod_revision=self._revision, version=old.version + 1,
            )
        self._data[request.key] = kv
        self._watch.publish(kv)
        resp = rpc_pb2.PutResponse()
        self._header(resp.header)
        return resp

    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        resp = rpc_pb2.RangeResponse()
        self._header(resp.header)
        if not request.range_end:
            kv = self._data.get(request.key)
            if kv is not None:
                resp.kvs.append(kv)
                resp.count = 1
            return resp
        keys = self._keys_between(request.key, request.range_end)
        limit = request.limit if request.limit > 0 else len(keys)
        resp.kvs.extend(self._data[key] for key in keys[:limit])
        resp.count = len(keys)
        resp.more = len(keys) > limit
        return resp

    def _keys_between(self, start: bytes, end: bytes) -> list[bytes]:
        if self._sorted is None:
            self._sorted = sorted(self._data)
        lo = bisect.bisect_left(self._sorted, start)
        hi = len(self._sorted) if end == b"\0" else bisect.bisect_left(self._sorted, end)
        return self._sorted[lo:hi]


async def serve(address: str, reuse_port: bool) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2 * 1024 * 1024),
        ]
    )
    watch = BareWatch()
    rpc_pb2_grpc.add_KVServicer_to_server(BareKV(watch), server)
    # Watch responses are queued as their bytes (the events encoded once): no serializer.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "etcdserverpb.Watch",
        {"Watch": grpc.stream_stream_rpc_method_handler(
            watch.Watch, request_deserializer=rpc_pb2.WatchRequest.FromString,
            response_serializer=bytes,
        )},
    ),))
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"bare_server: cannot listen on {address}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-address", required=True, help="host:port")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    reuse_port = args.reuse_port or args.processes > 1
    # Siblings are plain copies of this command (no multiprocessing helper processes), so the
    # server's process tree is exactly N interpreters.
    child_argv = [sys.executable, "-m", "bench.bare_server",
                  f"--listen-address={args.listen_address}", "--processes=1", "--reuse-port"]
    children = [subprocess.Popen(child_argv) for _ in range(args.processes - 1)]
    try:
        asyncio.run(serve(args.listen_address, reuse_port))
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

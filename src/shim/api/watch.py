"""etcdserverpb.Watch: one bidirectional stream carries many watchers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from shim.mvcc.watch import WatchHub, WatchStream
from shim.pb import rpc_pb2, rpc_pb2_grpc
from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, hub: WatchHub) -> None:
        self._hub = hub

    async def Watch(
        self,
        request_iterator: AsyncIterator[rpc_pb2.WatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.WatchResponse | bytes]:
        stream = self._hub.open_stream()
        reader = asyncio.get_running_loop().create_task(self._read(request_iterator, stream))
        try:
            # None ends the stream: the server is shutting down, or the client sent something
            # that broke its request side. A client that only half-closes keeps receiving,
            # as with etcd.
            while (resp := await stream.queue.get()) is not None:
                yield resp
        finally:
            self._hub.close_stream(stream)
            await cancel_and_wait(reader)

    async def _read(
        self, request_iterator: AsyncIterator[rpc_pb2.WatchRequest], stream: WatchStream
    ) -> None:
        hub = self._hub
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request_union")
                if kind == "create_request":
                    hub.create(stream, req.create_request)
                elif kind == "cancel_request":
                    hub.cancel(stream, req.cancel_request.watch_id)
                elif kind == "progress_request":
                    hub.request_progress(stream)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("watch stream request side failed: %s", exc)
            stream.queue.put_nowait(None)

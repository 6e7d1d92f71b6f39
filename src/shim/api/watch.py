"""etcdserverpb.Watch: one bidirectional stream carries many watchers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from shim.api.gate import Stopping
from shim.auth import errors
from shim.auth.guard import Guard, Rule, permission
from shim.mvcc.errors import StoreError
from shim.mvcc.watch import WatchHub, WatchStream
from shim.pb import rpc_pb2, rpc_pb2_grpc
from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)


# The auth errors a refused watcher names; any other refusal says "permission denied".
_NAMED_REFUSALS = (errors.InvalidAuthToken, errors.AuthOldRevision, errors.UserEmpty)


def _cancel_reason(exc: errors.AuthError) -> str:
    """etcd's cancel_reason: the gRPC status as Go prints it."""
    if not isinstance(exc, _NAMED_REFUSALS):
        exc = errors.PermissionDenied()
    code = "".join(word.capitalize() for word in exc.code.split("_"))
    return f"rpc error: code = {code} desc = {exc.message}"


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, hub: WatchHub, guard: Guard) -> None:
        self._hub = hub
        self.guard = guard

    @permission(Rule.OPEN)  # each watcher's range is checked when it is created
    async def Watch(
        self,
        request_iterator: AsyncIterator[rpc_pb2.WatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.WatchResponse | bytes]:
        stream = self._hub.open_stream()
        reader = asyncio.get_running_loop().create_task(
            self._read(request_iterator, stream, context)
        )
        try:
            # None ends the stream: the server is shutting down, or the client sent something
            # that broke its request side. A client that only half-closes keeps receiving,
            # as with etcd.
            while (responses := await stream.next_responses()) is not None:
                for resp in responses:
                    yield resp
            if stream.stopped:
                # UNAVAILABLE, which clients retry (a Go client ends a watch that closes
                # with OK as canceled by the server), as they do when a stopping etcd drops
                # the connection.
                raise Stopping()
        finally:
            self._hub.close_stream(stream)
            await cancel_and_wait(reader)

    async def _read(
        self,
        request_iterator: AsyncIterator[rpc_pb2.WatchRequest],
        stream: WatchStream,
        context: grpc.aio.ServicerContext,
    ) -> None:
        hub = self._hub
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request_union")
                if kind == "create_request":
                    refusal = await self._refusal(req.create_request, context)
                    if refusal is not None:
                        hub.refuse(stream, refusal)
                    else:
                        hub.create(stream, req.create_request)
                elif kind == "cancel_request":
                    hub.cancel(stream, req.cancel_request.watch_id)
                elif kind == "progress_request":
                    hub.request_progress(stream)
        except asyncio.CancelledError:
            raise
        except Stopping:
            pass  # no more requests; the stop ends the stream itself, a moment later
        except Exception as exc:
            log.debug("watch stream request side failed: %s", exc)
            stream.end()

    async def _refusal(
        self, req: rpc_pb2.WatchCreateRequest, context: grpc.aio.ServicerContext
    ) -> str | None:
        """Why etcd would refuse this watcher for auth (its caller may not read the range,
        checked as etcd does: an empty key is "\0", and a range ending in "\0" is checked
        as its first key alone), or None."""
        key = req.key or b"\x00"
        end = b"" if req.range_end == b"\x00" else req.range_end
        try:
            caller = await self.guard.caller(context)
            await self.guard.read_auth(lambda state, _view: state.check_range(caller, key, end))
        except errors.AuthError as exc:
            return _cancel_reason(exc)
        except StoreError as exc:
            log.warning("watch refused: the auth store cannot be read: %s", exc)
            return _cancel_reason(errors.PermissionDenied())
        return None

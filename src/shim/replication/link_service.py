"""The Link service: how a node admits the links other nodes dial (``links.Replicator``
runs each one)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import grpc

from shim.pb import replication_pb2 as pb
from shim.replication.link_stream import (
    EXPECTED_FAILURES,
    LINK_METHOD,
    SILENCE_SECONDS,
    LinkRefused,
    describe_failure,
)
from shim.replication.links import ADMITS_NO_LINKS, Replicator

log = logging.getLogger(__name__)


def add_to_server(server: grpc.aio.Server, replicator: Callable[[], Replicator | None]) -> None:
    """Serve Link on ``server``. Requests arrive as bytes (decoded by LinkStream), so bytes that
    are not a LinkMessage refuse the link with one log line, not a traceback from gRPC."""
    service = ReplicationService(replicator)
    handler = grpc.stream_stream_rpc_method_handler(
        service.Link, response_serializer=pb.LinkMessage.SerializeToString
    )
    service_name, method = LINK_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service_name, {method: handler}),)
    )


class ReplicationService:
    def __init__(self, replicator: Callable[[], Replicator | None]) -> None:
        self._replicator = replicator

    async def Link(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """Admit one link. However it ends, the log gets at most one line for it, naming the
        peer's address and the reason."""
        replicator = self._replicator()
        if replicator is None:  # a node that takes no part in replication
            # The dialer's Hello is read first, as a node that admits links reads it before
            # any refusal: a stream ended while its first message was still arriving reached
            # the dialer at times as INTERNAL "Internal error from Core", not this answer.
            with contextlib.suppress(asyncio.TimeoutError, grpc.RpcError):
                await asyncio.wait_for(context.read(), SILENCE_SECONDS)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, ADMITS_NO_LINKS)
            return
        address = context.peer()
        try:
            await replicator.admit(context)
        except asyncio.CancelledError:
            return  # this node is stopping
        except LinkRefused as exc:
            log.warning("link from %s refused: %s", address, exc)
            await context.abort(exc.code, str(exc))
        except EXPECTED_FAILURES as exc:
            log.info("link from %s ended: %s", address, describe_failure(exc))
        except Exception:  # a bug: its traceback, once; the peer gets no Python detail
            log.exception("link from %s failed", address)
            await context.abort(grpc.StatusCode.UNKNOWN, "shim: internal error (logged)")

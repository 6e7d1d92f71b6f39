"""The table of service methods that both edges call: gRPC and the HTTP/JSON gateway.

Each method comes from its service's protobuf descriptor (request type, streaming shape) and
is wrapped once, here, so both edges get the same answers to what the servicers do not
handle themselves:

- a request whose bytes do not decode: INTERNAL "grpc: error unmarshalling request: ..." (a
  stream's later message: "grpc: failed to unmarshal the received message ..."), etcd's
  statuses, with the reason in the words of etcd's Go decoder where ``wire.py`` can tell it;
- any unexpected exception: logged here once with its traceback, and answered with UNKNOWN
  and a short message, never a Python class name or traceback text.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from shim.api.wire import decode_error_reason

log = logging.getLogger(__name__)

INTERNAL_ERROR = "shim: internal error (the server logged it)"
UNMARSHAL_REQUEST = "grpc: error unmarshalling request: "
UNMARSHAL_STREAM_MESSAGE = "grpc: failed to unmarshal the received message "


class Undecodable:
    """What the deserializer hands on instead of raising: gRPC would answer a raising
    deserializer with UNKNOWN and the exception's class name."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Method:
    """One method of a served service, callable by either edge."""

    service: str  # full service name, e.g. "etcdserverpb.KV"
    name: str
    request_type: type[Message]
    client_streaming: bool
    server_streaming: bool
    # (request or async iterator of requests, context) -> response or async iterator
    call: Callable[[Any, Any], Any]

    def parse(self, data: bytes) -> Message | Undecodable:
        try:
            return self.request_type.FromString(data)
        except DecodeError:
            return Undecodable(decode_error_reason(self.request_type.DESCRIPTOR, data))


def _serialize(resp: Message | bytes) -> bytes:
    # Watch responses come from the hub already encoded (see shim.mvcc.watch_wire).
    return resp if isinstance(resp, bytes) else resp.SerializeToString()


def service_methods(services: Mapping[str, object]) -> dict[str, Method]:
    """Every method of ``services`` (full service name -> servicer), by gRPC path
    ("/etcdserverpb.KV/Range")."""
    pool = descriptor_pool.Default()
    methods: dict[str, Method] = {}
    for service_name, servicer in services.items():
        service = pool.FindServiceByName(service_name)
        for md in service.methods:
            request_type = message_factory.GetMessageClass(md.input_type)
            methods[f"/{service_name}/{md.name}"] = Method(
                service=service_name,
                name=md.name,
                request_type=request_type,
                client_streaming=md.client_streaming,
                server_streaming=md.server_streaming,
                call=_guarded(md, getattr(servicer, md.name)),
            )
    return methods


def add_to_server(server: grpc.aio.Server, methods: Mapping[str, Method]) -> None:
    """Register ``methods`` with a gRPC server, each decoding its own requests."""
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for method in methods.values():
        handler = _grpc_handler(method)
        by_service.setdefault(method.service, {})[method.name] = handler
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(service, handlers)
            for service, handlers in by_service.items()
        )
    )


def _grpc_handler(method: Method) -> grpc.RpcMethodHandler:
    if method.client_streaming and method.server_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif method.client_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif method.server_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        method.call, request_deserializer=method.parse, response_serializer=_serialize
    )


def _guarded(md: MethodDescriptor, call: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    """``call`` with undecodable requests refused and unexpected errors contained."""
    name = f"{md.containing_service.full_name}/{md.name}"
    if md.server_streaming:
        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            request = await _checked_request(md, request, context)
            try:
                async for resp in call(request, context):
                    yield resp
            except grpc.aio.AbortError:
                raise
            except Exception:
                await _internal_error(name, context)

        return stream

    async def unary(request: Any, context: Any) -> Any:
        request = await _checked_request(md, request, context)
        try:
            return await call(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _internal_error(name, context)

    return unary


async def _checked_request(md: MethodDescriptor, request: Any, context: Any) -> Any:
    if md.client_streaming:
        return _checked_stream(request, context)
    if isinstance(request, Undecodable):
        await context.abort(grpc.StatusCode.INTERNAL, UNMARSHAL_REQUEST + request.reason)
    return request


async def _checked_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            # The stream ends with etcd's status however the servicer treats the abort.
            await context.abort(grpc.StatusCode.INTERNAL, UNMARSHAL_STREAM_MESSAGE + request.reason)
        yield request


async def _internal_error(name: str, context: Any) -> None:
    log.exception("unexpected error in %s", name)
    await context.abort(grpc.StatusCode.UNKNOWN, INTERNAL_ERROR)


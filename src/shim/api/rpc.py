"""The table of service methods that both edges call: gRPC and the HTTP/JSON gateway.

Each method comes from its service's protobuf descriptor (request type, streaming shape) and
is wrapped once, here, so both edges get the same answers to what the servicers do not
handle themselves:

- a request whose bytes do not decode: INTERNAL "grpc: error unmarshalling request: ..." (a
  stream's later message: "grpc: failed to unmarshal the received message ..."), etcd's
  statuses, with the reason in the words of etcd's Go decoder where ``wire.py`` can tell it;
  one over the size limit: RESOURCE_EXHAUSTED "grpc: received message larger than max ...";
- any unexpected exception: logged here once with its traceback, and answered with UNKNOWN
  and a short message, never a Python class name or traceback text;
- a call arriving once the server is stopping: UNAVAILABLE "etcdserver: server stopped" (the
  ``Gate``, which also counts the calls a stop waits for); so is a stream whose requests are
  still coming when the stop starts (a lease's keep-alives), since its requests end there.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from shim.api.empty_range_end import ADJUSTERS
from shim.api.gate import SERVER_STOPPED, Gate, Stopping
from shim.api.wire import decode_error_reason, refusal

log = logging.getLogger(__name__)

INTERNAL_ERROR = "shim: internal error (the server logged it)"
UNMARSHAL_REQUEST = "grpc: error unmarshalling request: "
UNMARSHAL_STREAM_MESSAGE = "grpc: failed to unmarshal the received message "


class Refused:
    """What the deserializer hands on instead of a request it refuses, with the status to
    answer (raising there would make gRPC answer UNKNOWN with the exception's class name)."""

    __slots__ = ("code", "single", "stream")

    def __init__(self, code: grpc.StatusCode, single: str, stream: str) -> None:
        self.code = code
        self.single = single  # the message for a unary request
        self.stream = stream  # for a message of a stream


def too_large(size: int, limit: int) -> str:
    return f"grpc: received message larger than max ({size} vs. {limit})"


def _undecodable(reason: str) -> Refused:
    return Refused(grpc.StatusCode.INTERNAL, UNMARSHAL_REQUEST + reason,
                   UNMARSHAL_STREAM_MESSAGE + reason)


@dataclass(frozen=True, slots=True)
class Method:
    """One method of a served service, callable by either edge."""

    service: str  # full service name, e.g. "etcdserverpb.KV"
    name: str
    request_type: type[Message]
    # What a reply decodes to: a servicer may answer pre-encoded bytes (Range, Watch).
    response_type: type[Message]
    client_streaming: bool
    server_streaming: bool
    # (request or async iterator of requests, context) -> response or async iterator
    call: Callable[[Any, Any], Any]
    max_request_bytes: int
    # What the decoded request needs from its bytes that Python's decoder drops (a field
    # sent empty, see empty_range_end.py); None for most methods.
    adjust: Callable[[Any, bytes], None] | None = None

    def reply(self, reply: Message | bytes) -> Message:
        """A reply as a message, whether the servicer answered one or its bytes."""
        return self.response_type.FromString(reply) if isinstance(reply, bytes) else reply

    def parse(self, data: bytes) -> Message | Refused:
        if len(data) > self.max_request_bytes:
            # gRPC's own refusal says "SERVER: Received ...": this is grpc-go's, as etcd's.
            text = too_large(len(data), self.max_request_bytes)
            return Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, text, text)
        try:
            request = self.request_type.FromString(data)
        except DecodeError:
            return _undecodable(decode_error_reason(self.request_type.DESCRIPTOR, data))
        # etcd's decoder drops unknown fields, and refuses a known field with the wrong wire
        # type, which Python keeps as an unknown one. Bytes that do not come out the same
        # size without the unknown fields (rare) are looked at the way etcd's decoder would.
        request.DiscardUnknownFields()
        if request.ByteSize() != len(data):
            reason = refusal(self.request_type.DESCRIPTOR, data)
            if reason is not None:
                return _undecodable(reason)
        if self.adjust is not None:
            self.adjust(request, data)
        return request


def _serialize(resp: Message | bytes) -> bytes:
    # Watch responses come from the hub already encoded (see shim.mvcc.watch_wire), Range
    # answers from the stored rows' bytes (shim.mvcc.range).
    return resp if isinstance(resp, bytes) else resp.SerializeToString()


def service_methods(
    services: Mapping[str, object], max_request_bytes: int, gate: Gate | None = None
) -> dict[str, Method]:
    """Every method of ``services`` (full service name -> servicer), by gRPC path
    ("/etcdserverpb.KV/Range"); requests of more than ``max_request_bytes`` are refused as
    etcd refuses them, and calls ``gate`` does not admit as a stopped etcd refuses them."""
    gate = gate if gate is not None else Gate()
    pool = descriptor_pool.Default()
    methods: dict[str, Method] = {}
    for service_name, servicer in services.items():
        service = pool.FindServiceByName(service_name)
        for md in service.methods:
            path = f"/{service_name}/{md.name}"
            methods[path] = Method(
                service=service_name,
                name=md.name,
                request_type=message_factory.GetMessageClass(md.input_type),
                response_type=message_factory.GetMessageClass(md.output_type),
                client_streaming=md.client_streaming,
                server_streaming=md.server_streaming,
                call=_guarded(md, getattr(servicer, md.name), gate),
                max_request_bytes=max_request_bytes,
                adjust=ADJUSTERS.get(path),
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


def _guarded(
    md: MethodDescriptor, call: Callable[..., Any], gate: Gate
) -> Callable[[Any, Any], Any]:
    """``call`` admitted by ``gate``, with refused requests answered and unexpected errors
    contained."""
    name = f"{md.containing_service.full_name}/{md.name}"
    if not md.client_streaming and not md.server_streaming:
        # The common case, kept lean: it is on the path of every unary request.
        async def unary(request: Any, context: Any) -> Any:
            if not gate.enter():
                await context.abort(grpc.StatusCode.UNAVAILABLE, SERVER_STOPPED)
            try:
                if isinstance(request, Refused):
                    await context.abort(request.code, request.single)
                return await call(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception:
                await _internal_error(name, context)
            finally:
                gate.leave()

        return unary

    # Streams are refused once the gate is closed, but not waited for: a stop ends them
    # (watch streams, election observers; the requests of every client stream end, see
    # _checked_stream) or gRPC's grace does.
    if md.server_streaming:
        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if not gate.admits():
                await context.abort(grpc.StatusCode.UNAVAILABLE, SERVER_STOPPED)
            refused: list[Refused] = []
            request = await _checked_request(md, request, context, refused, gate)
            async with _contained(name, context, refused):
                async for resp in call(request, context):
                    yield resp

        return stream

    async def stream_in(request: Any, context: Any) -> Any:
        if not gate.admits():
            await context.abort(grpc.StatusCode.UNAVAILABLE, SERVER_STOPPED)
        refused: list[Refused] = []
        request = await _checked_request(md, request, context, refused, gate)
        response = None
        async with _contained(name, context, refused):
            response = await call(request, context)
        return response

    return stream_in


@contextlib.asynccontextmanager
async def _contained(name: str, context: Any, refused: list[Refused]) -> AsyncIterator[None]:
    """Around a servicer call: an abort goes through, a refused stream message or an
    unexpected error becomes its status."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except RefusedMessage:
        pass
    except Stopping:
        await context.abort(grpc.StatusCode.UNAVAILABLE, SERVER_STOPPED)
    except Exception:
        await _internal_error(name, context)
    if refused:
        await context.abort(refused[0].code, refused[0].stream)


async def _checked_request(
    md: MethodDescriptor, request: Any, context: Any, refused: list[Refused], gate: Gate
) -> Any:
    if md.client_streaming:
        return _checked_stream(request, refused, gate)
    if isinstance(request, Refused):
        await context.abort(request.code, request.single)
    return request


class RefusedMessage(Exception):
    """Ends a stream's requests at a message that is refused."""


async def _checked_stream(
    requests: AsyncIterator[Any], refused: list[Refused], gate: Gate
) -> AsyncIterator[Any]:
    """A stream's requests, up to a refused one, or until the server stops: then the
    servicer reading them gets ``Stopping`` (and the call UNAVAILABLE, see _contained)."""
    pending = aiter(requests)
    while True:
        try:
            request = await gate.unless_closed(anext(pending))
        except StopAsyncIteration:
            return
        if isinstance(request, Refused):
            # The servicer may read requests in a task of its own, which cannot end the call
            # with a status: the handler does, once the servicer is done (see _contained).
            refused.append(request)
            raise RefusedMessage()
        yield request


async def _internal_error(name: str, context: Any) -> None:
    if isinstance(sys.exc_info()[1], NotImplementedError):
        # A method the servicer leaves to its generated base class: gRPC's own answer.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
    log.exception("unexpected error in %s", name)
    await context.abort(grpc.StatusCode.UNKNOWN, INTERNAL_ERROR)


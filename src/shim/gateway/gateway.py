"""etcd's HTTP/JSON gateway: ``POST /v3/...`` with JSON bodies, ``/health``, ``/version`` and
``/metrics``, answered the way etcd 3.5 answers them.

There is one path into the store: a JSON body becomes the request message, and the gateway
calls the same method of the same servicer the gRPC server calls (``shim.api.rpc``), with a
context object in place of gRPC's. So checks, errors and (with auth) permissions are the
same on both edges; an abort becomes the HTTP status and JSON error body grpc-gateway makes of
that gRPC status. Streaming methods (``/v3/watch``, ``/v3/lease/keepalive``) read JSON
messages from the request body as they arrive and answer one ``{"result": ...}`` object per
line, in HTTP chunks, until the stream ends.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc import StatusCode as Code

from shim.api.rpc import Method, too_large
from shim.etcd_version import cluster_version
from shim.gateway import websocket
from shim.gateway.gojson import JsonSyntaxError, decode_first, go_string
from shim.gateway.health import HealthProbe, check_paths, health, run_checks
from shim.gateway.http import (
    REASONS,
    BodyTimeout,
    BodyTooLarge,
    Headers,
    Request,
    RequestBody,
    Response,
    ResponseSink,
)
from shim.gateway.jsonpb import JsonpbError, from_json, to_json
from shim.gateway.routes import ROUTES
from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)


# etcd sends these on every response (its default --cors is "*").
CORS: Headers = [
    ("Access-Control-Allow-Headers", "accept, content-type, authorization"),
    ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
    ("Access-Control-Allow-Origin", "*"),
]
JSON: Headers = [*CORS, ("Content-Type", "application/json")]
# grpc-gateway passes the gRPC response's header metadata on as Grpc-Metadata-* headers.
JSON_OK: Headers = [*JSON, ("Grpc-Metadata-Content-Type", "application/grpc")]
TEXT: Headers = [
    *CORS, ("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff"),
]

# grpc-gateway v1's HTTPStatusFromCode.
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200, Code.CANCELLED: 408, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504, Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403, Code.UNAUTHENTICATED: 401, Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400, Code.ABORTED: 409, Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501, Code.INTERNAL: 500, Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500,
}
# How much JSON a request may take: base64 makes bytes a third longer, and JSON adds names
# and punctuation; the decoded message then meets the gRPC limit like any other.
BODY_BYTES_PER_MESSAGE_BYTE = 4
# /livez, /readyz and their checks' own paths.
CHECK_PATHS = check_paths()


class GatewayError(Exception):
    """A gRPC status for the client."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GatewayContext:
    """What a servicer asks of gRPC's ServicerContext, for a call that came over HTTP."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str) -> None:
        self._metadata = metadata
        self._peer = peer
        self._code: Code | None = None
        self._details = ""

    async def abort(
        self, code: Code, details: str = "", trailing_metadata: object = ()
    ) -> None:
        self._code, self._details = code, details
        # The same exception gRPC's abort raises, so servicers and shim.api.rpc treat both
        # edges alike.
        raise grpc.aio.AbortError(details)

    def error(self) -> GatewayError:
        return GatewayError(self._code or Code.UNKNOWN, self._details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # etcd ignores TLS client certificates on gateway requests

    def set_code(self, code: Code) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> Code | None:
        return self._code

    def details(self) -> str:
        return self._details

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


def call_metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """gRPC metadata from HTTP headers, as etcd's gateway forwards it: the Authorization
    header is the auth token (etcd reads it as "token" or "authorization"), and
    Grpc-Metadata-* headers pass on under their own names."""
    metadata: list[tuple[str, str]] = []
    token = headers.get("authorization")
    if token:
        metadata += [("token", token), ("authorization", token)]
    prefix = "grpc-metadata-"
    metadata += [(name[len(prefix):], value) for name, value in headers.items()
                 if name.startswith(prefix)]
    return tuple(metadata)


def error_body(code: Code, message: str) -> bytes:
    text = go_string(message)
    return f'{{"error":{text},"code":{code.value[0]},"message":{text}}}'.encode()


def stream_error_chunk(code: Code, message: str) -> bytes:
    status = HTTP_STATUS.get(code, 500)
    fields = [f'"grpc_code":{code.value[0]}' if code.value[0] else "", f'"http_code":{status}',
              f'"message":{go_string(message)}' if message else "",
              f'"http_status":{go_string(REASONS.get(status, ""))}']
    # grpc-gateway writes no delimiter after the error that ends a stream.
    return ('{"error":{' + ",".join(f for f in fields if f) + "}}").encode()


class Gateway:
    """The HTTP handler (see ``shim.gateway.http``)."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        max_message_bytes: int,
        health: HealthProbe,
        version: str,
        metrics: Callable[[], tuple[bytes, str] | None],
        api: bool = True,
    ) -> None:
        """``api``: the whole gateway; else only /metrics and the health paths, as etcd's
        --listen-metrics-urls serves."""
        self._methods = methods
        self._max_message_bytes = max_message_bytes
        self._health = health
        self._version = version
        self._metrics = metrics
        self._api = api

    async def __call__(self, request: Request, response: Response) -> None:
        path = request.path
        if not self._api:
            await self._serve_probes(path, request, response)
            return
        if request.method == "OPTIONS":
            await response.send(200, CORS, b"")
            return
        if path.startswith("/v3beta/"):  # etcd serves its old prefix too
            path = "/v3/" + path[len("/v3beta/"):]
        # Go's server leaves a CONNECT's target as it is (an authority "host:port" is a 404).
        moved = path if request.method == "CONNECT" else _served_path(path)
        if moved != path:
            await self._redirect(moved, request, response)
        elif path.startswith("/v3/") and websocket.is_upgrade(request.headers):
            await self._websocket(path, request, response)
        elif path.startswith("/v3/"):
            await self._gateway(path, request, response)
        elif path == "/version":
            await self._serve_version(request, response)
        else:
            await self._serve_probes(path, request, response)

    @staticmethod
    async def _redirect(path: str, request: Request, response: Response) -> None:
        """What Go's http.ServeMux answers for a path it does not serve as written: 301 to
        the path it serves (the query kept), a link to it as the body of a GET."""
        location = request.origin + (f"{path}?{request.query}" if request.query else path)
        html = ("Content-Type", "text/html; charset=utf-8")
        headers = [*CORS, html] if request.method in ("GET", "HEAD") else [*CORS]
        body = b""
        if request.method == "GET":
            link = location.translate(_GO_HTML_ESCAPES)
            body = f'<a href="{link}">Moved Permanently</a>.\n\n'.encode()
        await response.send(301, [*headers, ("Location", location)], body)

    # -- /v3/... --------------------------------------------------------------------------------

    async def _gateway(
        self, path: str, request: RequestBody, response: ResponseSink
    ) -> None:
        grpc_path = ROUTES.get(path)
        if grpc_path is None:
            await response.send(404, TEXT, b"Not Found\n")
            return
        if request.method != "POST":
            await response.send(405, TEXT, b"Method Not Allowed\n")
            return
        context = GatewayContext(call_metadata(request.headers), request.peer)
        method = self._methods.get(grpc_path)
        try:
            if method is None:  # a service this server does not register, as gRPC answers
                raise GatewayError(Code.UNIMPLEMENTED, "Method not found!")
            if method.client_streaming:
                await self._stream(method, request, response, context)
            else:
                await self._unary(method, request, response, context)
        except GatewayError as exc:
            if response.started:
                raise  # pragma: no cover - streams report their own errors
            await response.send(
                HTTP_STATUS.get(exc.code, 500), JSON, error_body(exc.code, exc.message)
            )

    async def _websocket(self, path: str, request: Request, response: Response) -> None:
        """A call over a websocket (etcd's wsproxy, see shim.gateway.websocket)."""
        refused = websocket.refusal(request.method, request.headers)
        if refused is not None:
            status, reason = refused
            log.debug("websocket handshake refused: %s", reason)
            await response.send(status, [*TEXT, ("Sec-Websocket-Version", "13")],
                                f"{REASONS.get(status, '')}\n".encode())
            return
        reader, writer, received = await response.switch(websocket.accept_headers(request.headers))
        socket = websocket.WebSocket(
            reader, writer, received, self._max_message_bytes * BODY_BYTES_PER_MESSAGE_BYTE
        )
        call = asyncio.create_task(self._gateway(
            path, websocket.socket_request(request, socket), websocket.SocketResponse(socket)
        ))
        gone = asyncio.create_task(socket.closed.wait())
        try:
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
            if call.done():
                call.result()
        finally:
            await cancel_and_wait(call, log_errors=False)
            await cancel_and_wait(gone)
            await socket.close()

    def _decode(self, data: bytes, method: Method, code: Code) -> Message | None:
        """The request message in ``data``'s first JSON value (None: an empty body)."""
        try:
            found = decode_first(data)
            if found is None:
                return None
            message = from_json(found[0], method.request_type)
        except (JsonSyntaxError, JsonpbError) as exc:
            raise GatewayError(code, str(exc)) from None
        size = message.ByteSize()
        if size > method.max_request_bytes:  # as gRPC would refuse it (see shim.api.rpc)
            raise GatewayError(Code.RESOURCE_EXHAUSTED, too_large(size, method.max_request_bytes))
        return message

    async def _read_body(self, request: RequestBody) -> bytes:
        limit = self._max_message_bytes * BODY_BYTES_PER_MESSAGE_BYTE
        try:
            return await request.read_all(limit)
        except BodyTooLarge:
            raise GatewayError(
                Code.RESOURCE_EXHAUSTED, f"shim: request body larger than {limit} bytes"
            ) from None
        except BodyTimeout:
            raise GatewayError(
                Code.DEADLINE_EXCEEDED, "shim: request body not sent in time"
            ) from None

    async def _unary(
        self, method: Method, request: RequestBody, response: ResponseSink,
        context: GatewayContext,
    ) -> None:
        message = self._decode(await self._read_body(request), method, Code.INVALID_ARGUMENT)
        if message is None:
            message = method.request_type()
        if method.server_streaming:
            await self._respond_stream(method, method.call(message, context), response, context)
            return
        try:
            reply = await method.call(message, context)
        except grpc.aio.AbortError:
            raise context.error() from None
        await response.send(200, JSON_OK, to_json(method.reply(reply)).encode())

    async def _stream(
        self, method: Method, request: RequestBody, response: ResponseSink,
        context: GatewayContext,
    ) -> None:
        """A client-streaming method: JSON messages from the body as they arrive. A first
        message that does not decode is refused as etcd 3.5 does (UNKNOWN); a later one ends
        the request side."""
        messages = _json_messages(request, self._max_message_bytes * BODY_BYTES_PER_MESSAGE_BYTE)
        first: Message | None = None
        try:
            data = await anext(messages, None)
            if data is not None:
                first = self._decode(data, method, Code.UNKNOWN)
        except JsonSyntaxError as exc:
            raise GatewayError(Code.UNKNOWN, str(exc)) from None
        except GatewayError as exc:
            raise GatewayError(Code.UNKNOWN, exc.message) from None

        async def requests() -> AsyncIterator[Message]:
            if first is None:
                return
            yield first
            try:
                async for data in messages:
                    message = self._decode(data, method, Code.UNKNOWN)
                    if message is not None:
                        yield message
            except (JsonSyntaxError, GatewayError) as exc:
                log.debug("gateway stream %s: request side ends: %s", method.name, exc)

        await self._respond_stream(method, method.call(requests(), context), response, context)

    async def _respond_stream(
        self, method: Method, replies: AsyncIterator[Any], response: ResponseSink,
        context: GatewayContext,
    ) -> None:
        """One ``{"result": ...}`` line per reply; a status that ends the stream becomes an
        ``{"error": ...}`` line (or, before any reply, the response's status)."""
        try:
            async for reply in replies:
                if not response.started:
                    await response.start(200, JSON_OK)
                await response.write(f'{{"result":{to_json(method.reply(reply))}}}\n'.encode())
        except grpc.aio.AbortError:
            error = context.error()
            if not response.started:
                await response.start(HTTP_STATUS.get(error.code, 500), JSON)
            await response.write(stream_error_chunk(error.code, error.message))
        finally:
            await replies.aclose()  # type: ignore[attr-defined]  # the servicer's clean-up
        if not response.started:  # no reply: grpc-gateway's empty stream, without metadata
            await response.start(200, JSON)
        await response.end()

    # -- /health, /version, /metrics ------------------------------------------------------------

    async def _serve_probes(self, path: str, request: Request, response: Response) -> None:
        if path == "/metrics" and request.method == "CONNECT":
            # etcd answers 200 and the metrics; a 2xx to CONNECT opens a tunnel in HTTP/1.1,
            # so h11 would send no body after it: refused instead.
            await _get_only(response)
        elif path == "/metrics":
            await self._serve_metrics(response)
        elif path == "/health" or path in CHECK_PATHS:
            await self._serve_health(path, request, response)
        else:
            await response.send(404, TEXT, b"404 page not found\n")

    async def _serve_health(self, path: str, request: Request, response: Response) -> None:
        if request.method != "GET":
            await _get_only(response)
            return
        if path == "/health":
            answer = await health(self._health, request.query)
            headers = [*CORS, ("Content-Type", "text/plain; charset=utf-8")]
        else:
            answer = await run_checks(self._health, path, CHECK_PATHS[path][1], request.query)
            headers = TEXT
        if answer.status != 200:
            log.warning("%s: %s", path, answer.body.decode(errors="replace").strip())
            headers = TEXT
        await response.send(answer.status, headers, answer.body)

    async def _serve_version(self, request: Request, response: Response) -> None:
        if request.method != "GET":
            await _get_only(response)
            return
        cluster = cluster_version(self._version)
        body = f'{{"etcdserver":"{self._version}","etcdcluster":"{cluster}"}}'
        await response.send(200, JSON, body.encode())

    async def _serve_metrics(self, response: Response) -> None:
        found = self._metrics()
        if found is None:
            await response.send(
                501, TEXT, b"shim: /metrics is not served with --processes > 1 (UNIMPLEMENTED)\n"
            )
            return
        body, content_type = found
        await response.send(200, [*CORS, ("Content-Type", content_type)], body)


async def _json_messages(request: RequestBody, limit: int) -> AsyncIterator[bytes]:
    """The body cut into whole JSON values as they arrive (each at most ``limit`` bytes)."""
    buffer = b""
    async for chunk in request.chunks():
        buffer += chunk
        while True:
            try:
                found = decode_first(buffer)
            except JsonSyntaxError as exc:
                if str(exc) == "unexpected EOF" and len(buffer) <= limit:
                    break  # the value goes on in the next chunk
                raise
            if found is None:
                buffer = b""
                break
            _, end = found
            yield buffer[:end]
            buffer = buffer[end:]
    if buffer.strip():
        decode_first(buffer)  # raises: a value the body ended inside


# As Go's net/http escapes a link (htmlEscape).
_GO_HTML_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"}
)


def _served_path(path: str) -> str:
    """The path Go's ServeMux (in front of etcd's gateway) serves a request for: "." and ".."
    resolved, repeated slashes made one, a trailing slash kept; and "/v3" (the "/v3/" subtree
    without its slash) as "/v3/"."""
    if path == "/v3":
        return "/v3/"
    cleaned = "/" + posixpath.normpath("/" + path).lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


async def _get_only(response: Response) -> None:
    """The answer of etcd's GET-only handlers (/health, /version) to another method."""
    await response.send(405, [*TEXT[:3], ("Allow", "GET"), *TEXT[3:]], b"Method Not Allowed\n")

"""The gateway's streams over a websocket, as etcd's wsproxy (tmc/grpc-websocket-proxy)
serves them: ``GET /v3/watch`` (any ``/v3/`` path) with ``Upgrade: websocket``.

After the handshake the call is the gateway's own POST: each message the client sends is one
piece of the request body (followed by a newline), and each line of the answer (``{"result":
...}``, or an error body) is one text message back. The HTTP status of the answer is not
sent, as wsproxy sends none. Only ``Origin`` and ``Referer`` come across from the upgrade
request; a ``Sec-WebSocket-Protocol: Bearer, <token>`` or a ``token`` cookie becomes the
``Authorization`` header. The client closing the socket ends the call. Unlike wsproxy, which
drops the connection, shim ends the socket with a close frame when the call ends.

The frames (masking, fragments, ping and pong, the closing handshake) are wsproto's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from http.cookies import CookieError, SimpleCookie

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, generate_accept_token

from shim.gateway.http import READ_BYTES, Headers, RequestBody, collect

log = logging.getLogger(__name__)

_FORWARDED = ("origin", "referer")  # wsproxy's default header forwarder
CLOSE_SECONDS = 0.5  # for the close frame to leave, at the end, before the connection is cut
MESSAGE_TOO_BIG = 1009
_BAD_HANDSHAKE = "websocket: the client is not using the websocket protocol: "


def is_upgrade(headers: dict[str, str]) -> bool:
    """gorilla/websocket's IsWebSocketUpgrade: ``Connection: upgrade`` and ``Upgrade:
    websocket`` (as tokens, any case)."""
    def tokens(name: str) -> set[str]:
        return {t.strip().lower() for t in headers.get(name, "").split(",")}
    return "upgrade" in tokens("connection") and "websocket" in tokens("upgrade")


def refusal(method: str, headers: dict[str, str]) -> tuple[int, str] | None:
    """Why gorilla's Upgrader refuses the handshake (status, reason), or None."""
    if method != "GET":
        return 405, _BAD_HANDSHAKE + "request method is not GET"
    if headers.get("sec-websocket-version", "") != "13":
        return 400, "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header"
    if not headers.get("sec-websocket-key", ""):
        return 400, ("websocket: not a websocket handshake: "
                     "'Sec-WebSocket-Key' header is missing or blank")
    return None


def accept_headers(headers: dict[str, str]) -> Headers:
    """The 101 answer's headers."""
    accepted: Headers = [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept",
         generate_accept_token(headers["sec-websocket-key"].encode()).decode()),
    ]
    if headers.get("sec-websocket-protocol", "").startswith("Bearer"):
        accepted.append(("Sec-WebSocket-Protocol", "Bearer"))
    return accepted


def inner_headers(headers: dict[str, str]) -> dict[str, str]:
    """What the POST inside the socket carries of the upgrade request's headers."""
    inner = {name: headers[name] for name in _FORWARDED if name in headers}
    protocol = headers.get("sec-websocket-protocol", "")
    if protocol:
        _, sep, token = protocol.partition("Bearer,")
        inner["authorization"] = f"Bearer {token.strip(' ')}" if sep else ""
    cookie = _cookie(headers.get("cookie", ""), "token")
    if cookie is not None:
        inner["authorization"] = f"Bearer {cookie}"
    return {name: value for name, value in inner.items() if value}


def _cookie(header: str, name: str) -> str | None:
    try:
        morsel = SimpleCookie(header).get(name)
    except CookieError:
        return None
    return morsel.value if morsel is not None else None


class WebSocket:
    """One accepted websocket: its messages in (each at most ``limit`` bytes: a larger one
    closes the socket with 1009), text messages out."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: bytes,
        limit: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._ws = Connection(ConnectionType.SERVER)
        self._pending = received
        self._limit = limit
        self.closed = asyncio.Event()  # closing or closed: nothing more is sent

    async def messages(self) -> AsyncIterator[bytes]:
        """Each message the client sends, whole, until it closes the socket."""
        parts: list[bytes] = []
        size = 0
        while not self.closed.is_set():
            data, self._pending = self._pending, b""
            if not data:
                try:
                    data = await self._reader.read(READ_BYTES)
                except (ConnectionError, OSError):
                    data = b""
            self._ws.receive_data(data or None)
            for event in self._ws.events():
                message = await self._handle(event)
                if message is None:
                    continue
                parts.append(message[0])
                size += len(message[0])
                if size > self._limit:
                    log.debug("websocket message over %d bytes: closed", self._limit)
                    await self.close(MESSAGE_TOO_BIG)
                    return
                if message[1]:
                    yield b"".join(parts)
                    parts, size = [], 0
            if not data:
                self.closed.set()

    async def _handle(self, event: Event) -> tuple[bytes, bool] | None:
        if isinstance(event, TextMessage):
            return event.data.encode(), event.message_finished
        if isinstance(event, BytesMessage):
            return bytes(event.data), event.message_finished
        if isinstance(event, Ping):
            await self._send(event.response())
        elif isinstance(event, CloseConnection):
            # Closed for sending from here on, before the reply goes (a stream's next
            # message must not try to follow it).
            self.closed.set()
            self._write(event.response())
        return None

    async def send_text(self, line: bytes) -> None:
        await self._send(TextMessage(data=line.decode("utf-8", "replace")))

    async def close(self, code: int = 1000) -> None:
        """End the socket: a close frame if it is still open, given a moment to leave (a
        client that reads nothing must not hold the server), then the connection."""
        if not self.closed.is_set():
            self.closed.set()
            self._write(CloseConnection(code=code))
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(self._writer.drain(), CLOSE_SECONDS)
        self._writer.transport.abort()

    async def _send(self, event: Event) -> None:
        if self.closed.is_set() or not self._write(event):
            return
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            self.closed.set()

    def _write(self, event: Event) -> bool:
        """Frame ``event`` into the socket's buffer (False: the socket can take nothing)."""
        if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return False
        try:
            self._writer.write(self._ws.send(event))
        except (LocalProtocolError, ConnectionError, OSError):
            self.closed.set()
            return False
        return True


class SocketRequest:
    """The POST the gateway serves inside a socket: its body is the client's messages."""

    method = "POST"

    def __init__(self, path: str, query: str, headers: dict[str, str], peer: str,
                 socket: WebSocket) -> None:
        self.path = path
        self.query = query
        self.headers = headers
        self.peer = peer
        self._socket = socket

    async def chunks(self) -> AsyncIterator[bytes]:
        async for message in self._socket.messages():
            yield message + b"\n"  # as wsproxy writes each message into the body

    async def read_all(self, limit: int) -> bytes:
        """The whole body: every message until the client closes the socket (BodyTooLarge
        past ``limit`` bytes)."""
        return await collect(self.chunks(), limit)


class SocketResponse:
    """The answer's lines, each a text message (empty lines are skipped, as wsproxy's)."""

    def __init__(self, socket: WebSocket) -> None:
        self._socket = socket
        self._buffer = b""
        self.started = False

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        self.started = True
        await self.write(body)
        await self.end()

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True

    async def write(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            if line:
                await self._socket.send_text(line)

    async def end(self) -> None:
        line, self._buffer = self._buffer, b""
        if line:
            await self._socket.send_text(line)


def socket_request(request: RequestBody, socket: WebSocket) -> SocketRequest:
    return SocketRequest(request.path, request.query, inner_headers(request.headers),
                         request.peer, socket)

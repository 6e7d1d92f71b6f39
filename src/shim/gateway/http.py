"""A small HTTP/1.1 server on asyncio, with h11 doing the protocol (framing, chunked bodies,
keep-alive, pipelining, 100-continue, malformed requests).

A handler gets a ``Request`` (its body read as it arrives, so a streaming request and a
streaming response can go on at once) and a ``Response`` to answer with, either whole or as
a stream of chunks. A client that goes away cancels its handler. Limits: request heads of at
most 64 KiB, and ``idle_timeout`` for a connection waiting for a request, or for the next
piece of a body a handler is waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from email.utils import formatdate
from typing import Any, Protocol

import h11

from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
# Reads smaller than the head limit, so that h11 sees an oversized head while it is incomplete.
READ_BYTES = 16 * 1024
# After answering a request whose body it did not read (a 404, a body over the limit), how
# long the server goes on reading and dropping what the client still sends before closing.
# Closing with bytes unread makes the kernel reset the connection, and a client still sending
# its body then loses the answer it was sent (Go's server waits 0.5 s after discarding
# 256 KiB; reading on keeps a body of any size that arrives in time from being cut off).
LINGER_SECONDS = 2.0
Headers = list[tuple[str, str]]
REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 301: "Moved Permanently",
    400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _response(status: int, headers: Headers) -> h11.Response:
    return h11.Response(status_code=status, headers=headers, reason=REASONS.get(status, ""))


# scheme ":" ["//" authority] path-and-query, as RFC 3986 (and Go's url package) read it.
_ABSOLUTE_TARGET = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(//[^/?#]*)?((?:[/?][^#]*)?)")


class ClientGone(Exception):
    """The connection closed (or broke) under the handler."""


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class RequestBody(Protocol):
    """What a handler reads of a request (an HTTP one, or a websocket's messages)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    peer: str

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read_all(self, limit: int) -> bytes: ...


class ResponseSink(Protocol):
    """Where a handler answers (an HTTP response, or a websocket's messages)."""

    started: bool

    async def send(self, status: int, headers: Headers, body: bytes) -> None: ...

    async def start(self, status: int, headers: Headers) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...


class Request:
    def __init__(
        self, event: h11.Request, connection: _Connection, idle_timeout: float
    ) -> None:
        self.method = event.method.decode("ascii", errors="replace")
        target = event.target.decode("ascii", errors="replace")
        # The scheme and host of the absolute form a proxy sends (`POST http://host/v3/...`):
        # the path is what counts ("" for the usual origin form). A target that is neither
        # is refused, as Go's server refuses what url.ParseRequestURI does not take.
        self.origin = ""
        exempt = event.method == b"CONNECT" or (event.method == b"OPTIONS" and target == "*")
        if not target.startswith("/") and not exempt:  # CONNECT's is an authority
            absolute = _ABSOLUTE_TARGET.fullmatch(target)
            if absolute is None:
                raise h11.RemoteProtocolError("malformed request target", 400)
            scheme, authority, target = absolute.groups()
            self.origin = f"{scheme.lower()}:{authority or ''}"
        self.path, _, self.query = target.partition("?")
        self.headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("ascii", errors="replace").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        self.peer = connection.peer
        self._connection = connection
        self._idle_timeout = idle_timeout

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (no time limit: a stream's body may stay open)."""
        while (chunk := await self._connection.body_chunk()) is not None:
            yield chunk

    async def read_all(self, limit: int) -> bytes:
        """The whole body; BodyTooLarge past ``limit`` bytes, BodyTimeout if the client stops
        sending for ``idle_timeout``."""
        return await collect(self._timed_chunks(), limit)

    async def _timed_chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await asyncio.wait_for(
                    self._connection.body_chunk(), self._idle_timeout
                )
            except TimeoutError:
                raise BodyTimeout() from None
            if chunk is None:
                return
            yield chunk


async def collect(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """A body's ``chunks`` joined; BodyTooLarge once they pass ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        parts.append(chunk)
    return b"".join(parts)


class Response:
    def __init__(self, connection: _Connection, head: bool = False) -> None:
        self._connection = connection
        # An answer to HEAD: its headers only. As Go's server: the length of the body a GET
        # would get, and none when there would be no body (a redirect).
        self._head = head
        self.started = False

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response."""
        self.started = True
        headers = [*headers, ("Date", _date())]
        if body or not self._head:
            headers.append(("Content-Length", str(len(body))))
        await self._connection.send(_response(status, headers))
        if body and not self._head:
            await self._connection.send(h11.Data(data=body))
        await self._connection.send(h11.EndOfMessage())

    async def start(self, status: int, headers: Headers) -> None:
        """A response sent in chunks (``write``), ended by ``end``."""
        self.started = True
        headers = [*headers, ("Date", _date()), ("Transfer-Encoding", "chunked")]
        await self._connection.send(_response(status, headers))

    async def write(self, data: bytes) -> None:
        if not self._head:
            await self._connection.send(h11.Data(data=data))

    async def end(self) -> None:
        await self._connection.send(h11.EndOfMessage())

    async def switch(
        self, headers: Headers
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """Answer 101 Switching Protocols; the socket is the caller's from here on: its
        reader, writer, and the bytes that already arrived after the request."""
        self.started = True
        self._connection.switched = True
        await self._connection.send(h11.InformationalResponse(
            status_code=101, headers=[*headers, ("Date", _date())], reason="Switching Protocols"
        ))
        return (self._connection.reader, self._connection.writer,
                bytes(self._connection.conn.trailing_data[0]))


Handler = Callable[[Request, Response], Coroutine[Any, Any, None]]


def _date() -> str:
    return formatdate(usegmt=True)


class _Connection:
    """One client connection: h11's state, the socket, and the body of the current request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.closed = asyncio.Event()  # the client went away
        self.body_finished = asyncio.Event()
        self.switched = False  # to another protocol (a websocket): no longer HTTP

    async def _read(self) -> bytes:
        """The next bytes from the client (b"" once it has gone) for h11."""
        try:
            data = await self.reader.read(READ_BYTES)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.closed.set()
        self.conn.receive_data(data)
        return data

    async def _receive(self) -> None:
        if self.conn.they_are_waiting_for_100_continue and self.conn.our_state == h11.SEND_RESPONSE:
            await self.send(
                h11.InformationalResponse(status_code=100, headers=[], reason="Continue")
            )
        await self._read()

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
                continue
            return event

    async def body_chunk(self) -> bytes | None:
        """The next piece of the request body; None at its end. ClientGone if the
        connection closes first."""
        if self.body_finished.is_set():
            return None
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                self.body_finished.set()
                return None
            if isinstance(event, h11.ConnectionClosed):
                raise ClientGone()

    def start_request(self) -> None:
        self.body_finished = asyncio.Event()

    async def send(self, event: Any) -> None:
        if self.closed.is_set():
            raise ClientGone()
        data = self.conn.send(event)
        if data:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, OSError):
                self.closed.set()
                raise ClientGone() from None

    def may_still_send(self) -> bool:
        """Whether the client may still be sending a request nobody read to the end."""
        return self.conn.their_state in (h11.SEND_BODY, h11.ERROR) and not self.closed.is_set()

    async def linger(self, seconds: float) -> None:
        """End the answer with a FIN and drop what the client still sends, for ``seconds``
        at most or until it closes its side."""
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            if self.writer.can_write_eof():  # not over TLS
                self.writer.write_eof()
            async with asyncio.timeout(seconds):
                while await self.reader.read(1 << 16):
                    pass

    async def wait_closed(self) -> None:
        """After the request body: read on, so that a client that goes away is noticed (its
        pipelined next request, if any, stays in h11's buffer)."""
        while not self.closed.is_set():
            if len(self.conn.trailing_data[0]) > MAX_HEAD_BYTES:
                await asyncio.Event().wait()  # enough is buffered: stop reading
            await self._read()


class HttpServer:
    """Serves ``handler`` on any number of listening sockets."""

    def __init__(
        self, handler: Handler, idle_timeout: float = 60.0, linger: float = LINGER_SECONDS
    ) -> None:
        self._handler = handler
        self._idle_timeout = idle_timeout
        self._linger = linger
        self._servers: list[asyncio.Server] = []
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._busy: set[asyncio.Task[None]] = set()  # connections inside a handler
        self._none_busy = asyncio.Event()
        self._none_busy.set()
        self._closing = False

    async def listen(
        self, host: str, port: int, ssl: Any = None, reuse_port: bool = False
    ) -> int:
        """Start listening; returns the bound port."""
        server = await asyncio.start_server(
            self._accept, host or None, port, ssl=ssl, reuse_port=reuse_port or None,
            limit=READ_BYTES,
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self, grace: float) -> None:
        """Stop accepting; let handlers that are running finish for up to ``grace`` seconds;
        then close every connection. As Go's Server.Shutdown: a connection is closed once
        its request is answered, so an idle keep-alive connection (a client's pool) does not
        hold the stop."""
        self._closing = True
        for server in self._servers:
            server.close()
        for task, connection in list(self._connections.items()):
            if connection.switched:  # a websocket: a stream, ended at once like the others
                await cancel_and_wait(task)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._none_busy.wait(), grace)
        for task in list(self._connections):
            await cancel_and_wait(task)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(reader, writer)
        self._connections[task] = connection
        try:
            await self._serve(connection, task)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("HTTP connection from %s failed", connection.peer)
        finally:
            self._connections.pop(task, None)
            self._leave_handler(task)
            try:
                if connection.may_still_send() and not connection.switched:
                    await connection.linger(self._linger)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _serve(self, connection: _Connection, task: asyncio.Task[None]) -> None:
        conn = connection.conn
        while True:
            try:
                event = await asyncio.wait_for(connection.next_event(), self._idle_timeout)
            except TimeoutError:
                return
            except h11.RemoteProtocolError as exc:
                await self._refuse(connection, exc.error_status_hint)
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):  # pragma: no cover - h11 orders events
                return
            connection.start_request()
            self._busy.add(task)
            self._none_busy.clear()
            try:
                await self._handle(connection, event)
            except h11.RemoteProtocolError as exc:
                await self._refuse(connection, exc.error_status_hint)
                return
            except ClientGone:
                return
            finally:
                self._leave_handler(task)
            if self._closing:
                return
            while conn.their_state is h11.SEND_BODY:  # a body nobody read, if it is all here
                leftover = conn.next_event()
                if leftover is h11.NEED_DATA or leftover is h11.PAUSED:
                    break
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return  # a body the handler did not read, or HTTP/1.0: close
            if conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()

    def _leave_handler(self, task: asyncio.Task[None]) -> None:
        self._busy.discard(task)
        if not self._busy:
            self._none_busy.set()

    async def _handle(self, connection: _Connection, event: h11.Request) -> None:
        request = Request(event, connection, self._idle_timeout)
        response = Response(connection, head=event.method == b"HEAD")
        handler = asyncio.create_task(self._handler(request, response))
        body_read = asyncio.create_task(connection.body_finished.wait())
        watcher: asyncio.Task[None] | None = None
        try:
            await asyncio.wait({handler, body_read}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                # A response still going on after the whole request arrived (a stream):
                # watch for the client leaving, which ends it.
                watcher = asyncio.create_task(connection.wait_closed())
                await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not handler.done():
                    raise ClientGone()
            handler.result()
        finally:
            await cancel_and_wait(handler, log_errors=False)  # its error was raised above
            await cancel_and_wait(body_read)
            await cancel_and_wait(watcher)

    async def _refuse(self, connection: _Connection, status: int) -> None:
        """Answer a request h11 could not read, as Go's server does, and close."""
        conn = connection.conn
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        reason = REASONS.get(status, "")
        body = f"{status} {reason}".strip().encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
        ]
        try:
            # h11 refuses to send after a protocol error: write the bytes ourselves.
            head = "".join(f"{name}: {value}\r\n" for name, value in headers)
            connection.writer.write(
                f"HTTP/1.1 {status} {reason}\r\n{head}\r\n".encode() + body
            )
            await connection.writer.drain()
        except (ConnectionError, OSError):
            pass


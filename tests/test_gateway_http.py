"""The gateway's HTTP/1.1 server (shim/gateway/http.py) and the method guard both edges share
(shim/api/rpc.py), in this process over real sockets: what a misbehaving client can do
(garbage, huge heads, silence, going away mid-stream) and what a failing servicer shows a
client (a short status, never a Python class name; its traceback in the log, once)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import Awaitable, Callable

import grpc
import pytest

from shim.api import rpc
from shim.gateway.http import LINGER_SECONDS, HttpServer, Request, Response
from shim.pb import rpc_pb2, rpc_pb2_grpc

TIMEOUT = 10.0


async def _ok(request: Request, response: Response) -> None:
    body = await request.read_all(1 << 20)
    text = f"{request.path}:{len(body)}"
    await response.send(200, [("Content-Type", "text/plain")], text.encode())


def serve(handler: Callable[[Request, Response], Awaitable[None]], idle_timeout: float,
          client: Callable[[int], Awaitable[None]], linger: float = LINGER_SECONDS) -> None:
    async def main() -> None:
        server = HttpServer(  # type: ignore[arg-type]
            handler, idle_timeout=idle_timeout, linger=linger
        )
        port = await server.listen("127.0.0.1", 0)
        try:
            await asyncio.wait_for(client(port), TIMEOUT)
        finally:
            await server.close(1.0)

    asyncio.run(main())


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def test_garbage_gets_400_and_the_server_goes_on() -> None:
    async def client(port: int) -> None:
        answer = await exchange(port, b"GARBAGE\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        request = b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await exchange(port, request)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"/after:0")

    serve(_ok, 5.0, client)


def test_a_huge_request_head_gets_431() -> None:
    async def client(port: int) -> None:
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        answer = await exchange(port, head)
        assert answer.startswith(b"HTTP/1.1 431 ")

    serve(_ok, 5.0, client)


async def _not_found(request: Request, response: Response) -> None:
    """Answers without reading the body, as the gateway does for an unknown path."""
    await response.send(404, [("Content-Type", "text/plain")], b"404 page not found\n")


def _send_body_after_the_answer(port: int) -> tuple[bytes, int]:
    """Send a 4 MiB body's head and first 256 KiB, read the whole answer, then send the rest
    and close this side. Returns the answer and the bytes read after it (until the server's
    close). The send buffer is small, so sending the rest takes the server's acks: had the
    server closed, its reset would break the send."""
    size, first = 4 << 20, 256 << 10
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            b"POST /unknown HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
            + b"x" * first
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"not found\n"):
            chunk = sock.recv(1 << 16)
            assert chunk, f"closed before the whole answer: {answer!r}"
            answer += chunk
        sock.sendall(b"x" * (size - first))
        sock.shutdown(socket.SHUT_WR)
        after = 0
        while chunk := sock.recv(1 << 16):
            after += len(chunk)
        return answer, after


def test_an_answer_sent_before_the_body_is_read_reaches_a_client_still_sending() -> None:
    """A client that sends its whole body before reading (http.client, treq) gets the 404 or
    413 the server answered early, never a reset: the server drops the rest of the body
    until the client closes (linger set long here so that no deadline is part of the test;
    without the linger the rest of the body meets a closed socket and its reset)."""
    result: list[tuple[bytes, int]] = []

    async def client(port: int) -> None:
        result.append(await asyncio.to_thread(_send_body_after_the_answer, port))

    serve(_not_found, 5.0, client, linger=60.0)
    answer, after = result[0]
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n"), answer
    assert after == 0, f"{after} bytes after the answer"


def test_pipelined_requests_are_answered_in_order() -> None:
    async def client(port: int) -> None:
        requests = (b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                    b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await exchange(port, requests)
        assert answer.count(b"HTTP/1.1 200 OK") == 3
        assert answer.index(b"/one:3") < answer.index(b"/two:0") < answer.index(b"/three:0")

    serve(_ok, 5.0, client)


def test_an_idle_connection_is_closed() -> None:
    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""  # the server closed it: nothing was ever sent
        writer.close()

    serve(_ok, 0.2, client)


def test_a_client_that_goes_away_ends_its_stream() -> None:
    ended = asyncio.Event()

    async def endless(request: Request, response: Response) -> None:
        await request.read_all(100)
        await response.start(200, [])
        await response.write(b"first\n")
        try:
            await asyncio.Event().wait()  # a stream with nothing more to say
        finally:
            ended.set()

    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        assert b"first" in await reader.readuntil(b"first\n")
        writer.close()
        await ended.wait()

    serve(endless, 5.0, client)


# --- the guard ----------------------------------------------------------------------------------


class BrokenKV(rpc_pb2_grpc.KVServicer):
    async def Range(self, request: rpc_pb2.RangeRequest, context: object) -> None:
        raise RuntimeError("a secret internal detail")


def test_an_unexpected_error_is_a_short_status_and_one_log_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[grpc.StatusCode, str, grpc.StatusCode]:
        server = grpc.aio.server()
        rpc.add_to_server(server, rpc.service_methods({"etcdserverpb.KV": BrokenKV()}, 1 << 20))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = rpc_pb2_grpc.KVStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as broken:
                    await stub.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=TIMEOUT)
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.Put(rpc_pb2.PutRequest(key=b"k"), timeout=TIMEOUT)
                return broken.value.code(), broken.value.details() or "", missing.value.code()
        finally:
            await server.stop(None)

    with caplog.at_level(logging.ERROR, logger="shim.api.rpc"):
        code, details, missing = asyncio.run(main())
    assert (code, details) == (grpc.StatusCode.UNKNOWN, rpc.INTERNAL_ERROR)
    assert "RuntimeError" not in details and "secret" not in details
    records = [r for r in caplog.records if r.name == "shim.api.rpc"]
    assert len(records) == 1 and records[0].exc_info is not None
    assert "etcdserverpb.KV/Range" in records[0].getMessage()
    assert missing == grpc.StatusCode.UNIMPLEMENTED  # a method the servicer does not have


# --- what a servicer sees of an HTTP request ----------------------------------------------------


class EchoKV(rpc_pb2_grpc.KVServicer):
    """Answers a Range with the call's metadata, one key-value per entry."""

    async def Range(self, request: rpc_pb2.RangeRequest, context: object) -> rpc_pb2.RangeResponse:
        metadata = context.invocation_metadata()  # type: ignore[attr-defined]
        response = rpc_pb2.RangeResponse()
        for name, value in metadata:
            response.kvs.add(key=name.encode(), value=value.encode())
        return response


def test_the_authorization_header_is_the_auth_token() -> None:
    from shim.gateway.gateway import Gateway
    from shim.gateway.health import HealthProbe

    methods = rpc.service_methods({"etcdserverpb.KV": EchoKV()}, 1 << 20)

    async def no_alarms() -> list[int]:
        return []

    async def reads() -> str | None:
        return None

    gateway = Gateway(methods, 1 << 20, HealthProbe(no_alarms, reads), "3.5.21", lambda: None)

    async def client(port: int) -> None:
        body = b'{"key": "YQ=="}'
        request = (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   b"Authorization: tokenABC.42\r\nGrpc-Metadata-Extra: yes\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = await exchange(port, request)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        document = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        seen = {base64.b64decode(kv["key"]): base64.b64decode(kv["value"])
                for kv in document["kvs"]}
        # etcd reads the token under "token" (gRPC clients) or "authorization" (its gateway)
        assert seen == {b"token": b"tokenABC.42", b"authorization": b"tokenABC.42",
                        b"extra": b"yes"}

    serve(gateway, 5.0, client)


def test_a_websocket_closed_by_the_client_takes_nothing_more() -> None:
    """The client's close frame arrives while a stream is still answering: the reply to it
    is the last frame, and later answers are dropped, never an error (one sent while the
    reply was on its way used to raise wsproto's 'cannot be sent in state CLOSED')."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import CloseConnection, TextMessage

    from shim.gateway.websocket import WebSocket

    async def main() -> None:
        client = Connection(ConnectionType.CLIENT)
        outgoing = client.send(TextMessage(data="first")) + client.send(CloseConnection(1000))
        server_side, client_side = await _socket_pair()
        reader, writer = server_side
        socket = WebSocket(reader, writer, outgoing, limit=1 << 20)
        assert [m async for m in socket.messages()] == [b"first"]
        assert socket.closed.is_set()
        await socket.send_text(b'{"result":{}}')  # an answer that was on its way
        await socket.close()
        client_reader, client_writer = client_side
        client.receive_data(await client_reader.read())
        events = list(client.events())
        assert [type(e) for e in events] == [CloseConnection]  # the reply, nothing after
        client_writer.close()

    asyncio.run(main())


async def _socket_pair() -> tuple[
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
]:
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future())

    async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    listener = await asyncio.start_server(on_accept, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = await asyncio.open_connection("127.0.0.1", port)
    server = await accepted
    listener.close()
    return server, client

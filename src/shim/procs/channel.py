"""Messages between the store process and its serving processes, over one socket pair each.

A frame is a 4-byte big-endian length and a pickled message. Pickle is safe here because the
only ends of the socket are the two processes of one server: the store process makes the pair
and hands one end to the child it starts (an inherited file descriptor, never a path that
another program could connect to).

The channel is an asyncio Protocol, not a stream, because it carries one small message per
write each way under load: incoming bytes are cut into frames and handed to the handler
without a coroutine per message, and the frames sent during one turn of the event loop leave
in one write at the end of it. Sending never waits, so a commit notice never holds up the
write path.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import io
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

_LENGTH = struct.Struct(">I")

Handler = Callable[[Any], None]


@functools.cache
def _message_class(full_name: str) -> type[Message]:
    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    return message_factory.GetMessageClass(descriptor)


def _message(full_name: str, data: bytes) -> Message:
    return _message_class(full_name).FromString(data)


class _Pickler(pickle.Pickler):
    # Generated protobuf classes cannot be pickled by reference (their module names are the
    # .proto packages); a message travels as its type name and its wire bytes instead.
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Message):
            return _message, (obj.DESCRIPTOR.full_name, obj.SerializeToString())
        return NotImplemented


def encode(message: Any) -> bytes:
    """A whole frame for ``message``: its length, then its pickle."""
    buffer = io.BytesIO()
    buffer.write(b"\0\0\0\0")
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    frame = buffer.getbuffer()
    _LENGTH.pack_into(frame, 0, len(frame) - _LENGTH.size)
    return bytes(frame)


class ChannelClosed(Exception):
    """The other process has gone (end of stream, or a broken socket)."""


class Channel(asyncio.Protocol):
    """One end of a socket pair, on an asyncio event loop.

    Messages go to the handler given to ``set_handler``; those that arrive before it is set
    are kept, in order, and the first of them can be awaited with ``first_message``.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._incoming = bytearray()
        self._outgoing: list[bytes] = []
        self._handler: Handler | None = None
        self._held: collections.deque[Any] = collections.deque()
        self._arrived = asyncio.Event()
        self._on_close: Callable[[], None] | None = None
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        loop = asyncio.get_running_loop()
        _, channel = await loop.create_unix_connection(cls, sock=sock)
        return channel

    # -- receiving ------------------------------------------------------------------------------

    def set_handler(self, handler: Handler, on_close: Callable[[], None]) -> None:
        """Hand every message to ``handler`` from now on (the held ones first); ``on_close``
        is called once when the other end goes away."""
        self._handler, self._on_close = handler, on_close
        while self._held:
            handler(self._held.popleft())
        if self.closed:
            on_close()

    async def first_message(self) -> Any:
        """The first message that arrived before a handler was set."""
        while not self._held:
            if self.closed:
                raise ChannelClosed("the other process closed the channel")
            self._arrived.clear()
            await self._arrived.wait()
        return self._held.popleft()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a pipe: always a Transport

    def data_received(self, data: bytes) -> None:
        buffer = self._incoming
        buffer += data
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + length
            if end > len(buffer):
                break
            message = pickle.loads(buffer[start + _LENGTH.size:end])
            start = end
            if self._handler is not None:
                self._handler(message)
            else:
                self._held.append(message)
                self._arrived.set()
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._arrived.set()
        if self._on_close is not None:
            self._on_close()

    # -- sending --------------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        self.send_frame(encode(message))

    def send_frame(self, frame: bytes) -> None:
        """Send a frame made by ``encode`` (one encoding can go to many channels)."""
        if self.closed or self._transport is None or self._transport.is_closing():
            raise ChannelClosed("channel is closed")
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(frame)

    def _flush(self) -> None:
        frames, self._outgoing = self._outgoing, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(frames))

    def close(self) -> None:
        if self._outgoing:
            self._flush()
        if self._transport is not None:
            self._transport.close()

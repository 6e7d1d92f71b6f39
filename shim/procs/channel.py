"""Messages between the store process and its serving processes, over one socket pair each.

A frame is a 4-byte big-endian length and a pickled message. Pickle is safe here because the
only ends of the socket are the two processes of one server: the store process makes the pair
and hands one end to the child it starts (an inherited file descriptor, never a path that
another program could connect to). Sending never waits: a frame goes into the transport's
buffer at once, so a commit notice never holds up the write path.
"""

from __future__ import annotations

import asyncio
import functools
import io
import pickle
import socket
import struct
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

_LENGTH = struct.Struct(">I")
# The largest message: a write request is at most --max-request-bytes, a commit notice of a
# big transaction can be larger; 2 GiB is the format's limit, not an expected size.
MAX_FRAME_BYTES = 2**31 - 1


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


class Channel:
    """One end of a socket pair, on an asyncio event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=2**20)
        return cls(reader, writer)

    def send(self, message: Any) -> None:
        self.send_frame(encode(message))

    def send_frame(self, frame: bytes) -> None:
        """Send a frame made by ``encode`` (one encoding can go to many channels)."""
        if self._writer.is_closing():
            raise ChannelClosed("channel is closed")
        self._writer.write(frame)

    async def receive(self) -> Any:
        try:
            header = await self._reader.readexactly(_LENGTH.size)
            (length,) = _LENGTH.unpack(header)
            data = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed("the other process closed the channel") from exc
        return pickle.loads(data)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise ChannelClosed("the other process closed the channel") from exc

    def close(self) -> None:
        self._writer.close()

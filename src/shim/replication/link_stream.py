"""A link's stream, dialed or admitted, and how a link ends.

``LinkStream`` reads and writes a link's messages the same way on both sides; ``handshake`` is
one dial attempt's Hello and answer; ``LinkRefused`` and ``describe_failure`` give every way a
link ends a one-line reason (the log, ``shim status``). The link's life around them (dialing
again, admitting, the sender) is ``links.Replicator``; its receiver, ``link_receiver``.
"""

from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from shim.mvcc.errors import StoreError
from shim.pb import replication_pb2 as pb
from shim.replication.framing import EntryTooLarge, OutOfRange, check_numbers

LINK_METHOD = "/shim.replication.v1.Replication/Link"
# A link with nothing to send sends a heartbeat this often.
HEARTBEAT_SECONDS = 1.0
# A link that hears nothing (not even a heartbeat) for this long is dropped and redialed.
SILENCE_SECONDS = 6.0


class NoAnswer(TimeoutError):
    """The peer did not answer a dial in time (unreachable, or its network cut)."""


async def handshake(
    channel: grpc.aio.Channel, call: grpc.aio.StreamStreamCall, stream: LinkStream,
    hello: pb.LinkMessage, timeout: float,
) -> pb.LinkMessage | None:
    """Send Hello and read the answer. Unconnected after ``timeout``, the attempt is
    abandoned (the peer is unreachable: a new attempt sends a new SYN at once, where TCP
    would wait a second and more before sending it again); connected, the peer is there and
    gets as long as a live link's silence to answer (it may be busy committing). gRPC does not
    give up a write that waits for a connection when cancelled (it ends when the connection
    attempt does, up to TCP's timeout), so on time out the call itself is cancelled."""

    async def exchange() -> pb.LinkMessage | None:
        await stream.send(hello)
        return await stream.recv()

    task = asyncio.ensure_future(exchange())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    reason = f"no connection within {timeout:.2f}s"
    if not done and channel.get_state() is grpc.ChannelConnectivity.READY:
        done, _ = await asyncio.wait({task}, timeout=SILENCE_SECONDS)
        reason = f"connected, no answer within {timeout + SILENCE_SECONDS:.2f}s"
    if task in done:
        return task.result()
    call.cancel()
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
    raise NoAnswer(reason)


def check_link_numbers(what: str, **numbers: int) -> None:
    try:
        check_numbers(what, **numbers)
    except OutOfRange as exc:
        raise LinkRefused(str(exc)) from None


def forget_attempt(exc: BaseException) -> None:
    """Let go of a failed dial's channel and call, which its traceback's frames hold: while
    they are referenced, gRPC keeps the channel and goes on reconnecting it (its backoff runs
    on after the channel is closed), a connection to the peer that no link uses."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for each in chain:
        if each.__traceback__ is not None:
            traceback.clear_frames(each.__traceback__)
            each.__traceback__ = None


class LinkRefused(Exception):
    """The other side will not link with us (or broke the protocol); the message says why,
    the code is what the acceptor answers."""

    def __init__(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(reason)
        self.code = code


# How a link ends without a bug: each has a one-line reason (describe_failure).
EXPECTED_FAILURES = (
    LinkRefused, EntryTooLarge, TimeoutError, grpc.aio.AioRpcError, StoreError,
    grpc.aio.UsageError, asyncio.InvalidStateError,
)


def describe_failure(exc: BaseException) -> str:
    """Why a link ended, in one line (for the log and `shim status`)."""
    if isinstance(exc, NoAnswer):
        return str(exc)
    if isinstance(exc, LinkRefused | EntryTooLarge):
        return f"refused: {exc}"
    if isinstance(exc, TimeoutError):
        return f"silent for {SILENCE_SECONDS:.0f}s"
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, StoreError):
        return f"local store: {exc}"
    if isinstance(exc, grpc.aio.UsageError | asyncio.InvalidStateError):
        return f"stream ended: {exc}"  # e.g. a write racing the stream's end
    return repr(exc)


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link this node dials: the peer's URL, its bootstrap token, and which way entries flow
    (``send``: ours to it; ``receive``: its to us)."""

    url: str
    token: str
    send: bool = True
    receive: bool = True

    @property
    def target(self) -> str:
        """host:port for gRPC (the URL without its scheme)."""
        return self.url.split("://", 1)[-1].rstrip("/")


class LinkStream:
    """One side of a Link: the dialer's call or the acceptor's servicer context, which read
    and write messages the same way. Messages arrive as bytes and are decoded here, so bytes
    that are not a LinkMessage end the link with a reason instead of a traceback."""

    def __init__(self, call: grpc.aio.StreamStreamCall | grpc.aio.ServicerContext) -> None:
        self._call = call
        # The sender and the receiver (answering refused entries) both write: one at a time.
        self._writing = asyncio.Lock()

    async def send(self, msg: pb.LinkMessage) -> None:
        async with self._writing:
            await self._call.write(msg)

    async def recv(self) -> pb.LinkMessage | None:
        data = await self._call.read()
        if data is grpc.aio.EOF:
            return None
        try:
            return pb.LinkMessage.FromString(data)
        except DecodeError:
            raise LinkRefused(f"not a Link message ({len(data)} undecodable bytes)") from None

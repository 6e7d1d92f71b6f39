"""A test client that speaks shim's Link protocol (proto/shimreplpb) with a valid token: it
plays a peer node, honest or not, against a real `shim serve` process.

    with LinkPeer(node.endpoint) as peer:
        hello = peer.handshake()                 # Hello, the node's Hello, Start
        peer.send(batch(entry(...), cursor=1))   # anything, valid or not
        peer.error()                             # how the node ended the link, if it did
"""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator
from typing import Any

import grpc

from shim.pb import replication_pb2 as pb
from shim.replication.policy import Policy
from shim.replication.wire import PROTOCOL

from .replication import TOKEN

LINK_METHOD = "/shim.replication.v1.Replication/Link"


def entry(origin: str, seq: int, key: bytes, value: bytes = b"v", **fields: Any) -> pb.Entry:
    """An entry as a peer sends it (hlc defaults to seq: any honest small stamp)."""
    return pb.Entry(origin=origin, seq=seq, hlc=fields.pop("hlc", seq), key=key, value=value,
                    **fields)


def batch(*entries: pb.Entry, **fields: Any) -> pb.LinkMessage:
    return pb.LinkMessage(batch=pb.Batch(entries=list(entries), **fields))


class LinkPeer:
    """One Link stream to a node. Messages go out as written (``send``, or ``send_raw`` for
    bytes that are not a LinkMessage); the node's messages are read with ``recv``."""

    def __init__(self, endpoint: str, *, timeout: float = 30.0) -> None:
        self.node_id = f"test-peer-{uuid.uuid4().hex[:12]}"
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self._channel = grpc.insecure_channel(
            endpoint, options=[("grpc.max_receive_message_length", -1)]
        )
        link = self._channel.stream_stream(
            LINK_METHOD, request_serializer=None, response_deserializer=pb.LinkMessage.FromString
        )
        self._call = link(self._requests(), timeout=timeout)

    def _requests(self) -> Iterator[bytes]:
        while (data := self._outbox.get()) is not None:
            yield data

    def hello(self, **fields: Any) -> pb.LinkMessage:
        values: dict[str, Any] = {
            "node_id": self.node_id, "name": "test-peer", "token": TOKEN,
            "policy_digest": Policy.load().digest, "send": True, "receive": True,
            "protocol": PROTOCOL, "origin": self.node_id,
        }
        return pb.LinkMessage(hello=pb.Hello(**(values | fields)))

    def handshake(self, cursor: int = 0, **hello_fields: Any) -> pb.Hello:
        """Hello, read the node's Hello, Start from ``cursor``: the link is up."""
        self.send(self.hello(**hello_fields))
        reply = self.recv()
        assert reply.WhichOneof("kind") == "hello", reply
        self.send(pb.LinkMessage(start=pb.Start(cursor=cursor)))
        return reply.hello

    def send(self, msg: pb.LinkMessage) -> None:
        self._outbox.put(msg.SerializeToString())

    def send_raw(self, data: bytes) -> None:
        self._outbox.put(data)

    def recv(self) -> pb.LinkMessage:
        return next(self._call)

    def error(self) -> grpc.RpcError:
        """Read until the node ends the link; its error (fails if it ends it cleanly)."""
        try:
            while True:
                self.recv()
        except grpc.RpcError as exc:
            return exc
        except StopIteration:
            raise AssertionError("the node closed the link without an error") from None

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
        self._channel.close()

    def __enter__(self) -> LinkPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
